//! Buffers: the stream's bodies, the HTTP call answer's body, and the configurations.

use super::memory::{give, read};
use super::{BAD_ARGUMENT, Ctx, NOT_FOUND, OK};
use crate::vm::{Phase, VmState};

pub(super) fn proxy_get_buffer_bytes(
    mut caller: Ctx<'_>,
    buffer_type: u32,
    start: u32,
    max_size: u32,
    return_data: u32,
    return_size: u32,
) -> wasmtime::Result<u32> {
    let Some(all) = buffer(caller.data(), buffer_type) else { return Ok(NOT_FOUND) };
    let start = (start as usize).min(all.len());
    let end = start.saturating_add(max_size as usize).min(all.len());
    let slice = all[start..end].to_vec();
    give(&mut caller, &slice, return_data, return_size)
}

/// Only the stream's bodies can be written, by [`edit_body`]'s rules.
pub(super) fn proxy_set_buffer_bytes(
    mut caller: Ctx<'_>,
    buffer_type: u32,
    start: u32,
    size: u32,
    value_data: u32,
    value_size: u32,
) -> u32 {
    let Some(data) = read(&mut caller, value_data, value_size) else { return BAD_ARGUMENT };
    let state = caller.data_mut();
    let context = state.effective;
    let Some(stream) = state.streams.get_mut(&context) else { return BAD_ARGUMENT };
    match buffer_type {
        0 => edit_body(&mut stream.request_body, start as usize, size as usize, &data),
        1 => edit_body(&mut stream.response_body, start as usize, size as usize, &data),
        _ => BAD_ARGUMENT,
    }
}

/// Readable buffers by ABI number; `None` for one that does not exist now.
fn buffer(state: &VmState, buffer_type: u32) -> Option<&[u8]> {
    let stream = state.streams.get(&state.effective);
    match buffer_type {
        0 => stream.map(|s| s.request_body.as_slice()),
        1 => stream.map(|s| s.response_body.as_slice()),
        4 => state.call_response.as_ref().map(|r| r.body.as_slice()),
        // Configuration is readable only while the call it belongs to runs, as in Envoy.
        6 if state.phase == Phase::VmStart => Some(&state.spec.vm_configuration),
        7 if state.phase == Phase::Configure => Some(&state.spec.configuration),
        _ => None,
    }
}

/// Envoy's body edit rules: prepend (start 0, size 0), replace all (start 0, size ≥ length),
/// append (start ≥ length); anything else is refused.
fn edit_body(body: &mut Vec<u8>, start: usize, size: usize, data: &[u8]) -> u32 {
    if start == 0 && size == 0 {
        body.splice(0..0, data.iter().copied());
    } else if start == 0 && size >= body.len() {
        body.clear();
        body.extend_from_slice(data);
    } else if start >= body.len() {
        body.extend_from_slice(data);
    } else {
        return BAD_ARGUMENT;
    }
    OK
}

#[cfg(test)]
mod tests {
    use super::edit_body;

    #[test]
    fn body_edits_follow_envoy() {
        let mut body = b"middle".to_vec();
        assert_eq!(edit_body(&mut body, 0, 0, b"<"), 0);
        assert_eq!(body, b"<middle");
        assert_eq!(edit_body(&mut body, 7, 0, b">"), 0);
        assert_eq!(body, b"<middle>");
        assert_eq!(edit_body(&mut body, 2, 3, b"x"), 2, "a splice in the middle is refused");
        assert_eq!(edit_body(&mut body, 0, usize::MAX, b"all"), 0);
        assert_eq!(body, b"all");
    }
}
