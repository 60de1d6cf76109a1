//! Test filter: imports a host function no proxy-wasm host provides. Loading it must fail
//! with an error that names the import.
#![cfg(target_arch = "wasm32")]

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_make_coffee(strength: u32) -> u32;
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut buffer = Vec::<u8>::with_capacity(size);
    let pointer = buffer.as_mut_ptr();
    std::mem::forget(buffer);
    pointer
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_context_create(_context: u32, _parent: u32) {}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_headers(_context: u32, _headers: usize, _end: u32) -> u32 {
    unsafe { proxy_make_coffee(3) }
}
