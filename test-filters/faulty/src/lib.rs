//! Test filter: misbehaviour. Written against the raw ABI, without the SDK, so it can return
//! garbage, trap, loop forever, hand the host bad pointers, or refuse its configuration.
#![cfg(target_arch = "wasm32")]

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_log(level: u32, message: *const u8, size: usize) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        out: *mut *mut u8,
        out_size: *mut usize,
    ) -> u32;
    fn proxy_get_buffer_bytes(kind: u32, start: usize, max: usize, out: *mut *mut u8, out_size: *mut usize) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
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

/// Refuses a configuration of `reject`, after saying why, as a real filter would.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_configure(_context: u32, size: usize) -> u32 {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut len = 0usize;
    unsafe { proxy_get_buffer_bytes(7, 0, size, &mut data, &mut len) };
    let config = if data.is_null() { Vec::new() } else { unsafe { Vec::from_raw_parts(data, len, len) } };
    if config == b"reject" {
        let message = "configuration `reject` is not acceptable";
        unsafe { proxy_log(4, message.as_ptr(), message.len()) };
        return 0;
    }
    1
}

fn request_path() -> String {
    let key = ":path";
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut len = 0usize;
    let status = unsafe { proxy_get_header_map_value(0, key.as_ptr(), key.len(), &mut data, &mut len) };
    if status != 0 || data.is_null() {
        return String::new();
    }
    String::from_utf8(unsafe { Vec::from_raw_parts(data, len, len) }).unwrap_or_default()
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_headers(_context: u32, _headers: usize, _end: u32) -> u32 {
    match request_path().as_str() {
        "/panic" => panic!("boom on purpose"),
        "/garbage" => 7,
        "/loop" => loop {
            std::hint::spin_loop();
        },
        "/bad-pointer" => {
            // The host must refuse memory outside the filter's, not crash.
            let status = unsafe { proxy_log(2, 0xffff_fff0 as *const u8, 4096) };
            let answer = status.to_string();
            let key = "x-log-status";
            unsafe { proxy_replace_header_map_value(0, key.as_ptr(), key.len(), answer.as_ptr(), answer.len()) };
            0
        }
        _ => 0,
    }
}

/// Traps on `/panic-in-body` once the response has started: the client must see the response
/// cut short, not a clean end.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_response_body(_context: u32, _size: usize, _end: u32) -> u32 {
    if request_path() == "/panic-in-body" {
        panic!("boom in the body on purpose");
    }
    0
}
