//! The filter's memory as host calls see it: read what it passes, write what it asks for, and
//! hand it data in memory it allocates itself.

use wasmtime::format_err;

use super::Ctx;
use super::types::Status;

/// The handles were found once when the VM started ([`crate::vm::GuestHandles`]): looking an
/// export up by name on every host call showed up in profiles.
fn memory(caller: &mut Ctx<'_>) -> Option<wasmtime::Memory> {
    caller.data().guest.memory
}

/// Copies `len` bytes at `ptr` out of the filter's memory; `None` when out of bounds.
pub(super) fn read(caller: &mut Ctx<'_>, ptr: u32, len: u32) -> Option<Vec<u8>> {
    if len == 0 {
        return Some(Vec::new());
    }
    let memory = memory(caller)?;
    let start = ptr as usize;
    memory.data(&*caller).get(start..start.checked_add(len as usize)?).map(<[u8]>::to_vec)
}

pub(super) fn read_str(caller: &mut Ctx<'_>, ptr: u32, len: u32) -> Option<String> {
    String::from_utf8(read(caller, ptr, len)?).ok()
}

pub(super) fn write(caller: &mut Ctx<'_>, ptr: u32, bytes: &[u8]) -> bool {
    let Some(memory) = memory(caller) else { return false };
    let start = ptr as usize;
    let Some(end) = start.checked_add(bytes.len()) else { return false };
    match memory.data_mut(&mut *caller).get_mut(start..end) {
        Some(slot) => {
            slot.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

pub(super) fn write_u32(caller: &mut Ctx<'_>, ptr: u32, value: u32) -> bool {
    write(caller, ptr, &value.to_le_bytes())
}

/// Allocates in the filter through its own allocator export.
fn allocate(caller: &mut Ctx<'_>, size: u32) -> wasmtime::Result<u32> {
    let func = caller.data().guest.allocate.clone().ok_or_else(|| format_err!("the filter has no allocator export"))?;
    func.call(&mut *caller, size)
}

/// The status of a call whose last step wrote its answer: BAD_ARGUMENT when the filter's return
/// pointer is out of bounds.
pub(super) fn status_of_write(ok: bool) -> u32 {
    if ok { Status::Ok } else { Status::BadArgument }.into()
}

/// Hands `data` to the filter: allocate, copy, and store address and size at the return pointers.
pub(super) fn give(caller: &mut Ctx<'_>, data: &[u8], ptr_out: u32, size_out: u32) -> wasmtime::Result<u32> {
    if data.is_empty() {
        let ok = write_u32(caller, ptr_out, 0) && write_u32(caller, size_out, 0);
        return Ok(status_of_write(ok));
    }
    let address = allocate(caller, data.len() as u32)?;
    if address == 0 {
        return Ok(Status::InternalFailure.into());
    }
    let ok = write(caller, address, data)
        && write_u32(caller, ptr_out, address)
        && write_u32(caller, size_out, data.len() as u32);
    Ok(status_of_write(ok))
}
