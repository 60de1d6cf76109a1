//! Buffers: the stream's bodies, the HTTP call answer's body, and the configurations.

use super::Ctx;
use super::memory::{give, read};
use super::types::{BufferType, Status};
use crate::vm::{Phase, VmState};

pub(super) fn proxy_get_buffer_bytes(
    mut caller: Ctx<'_>,
    buffer_type: u32,
    start: u32,
    max_size: u32,
    return_data: u32,
    return_size: u32,
) -> wasmtime::Result<u32> {
    // A buffer type the ABI does not define is one that does not exist: NOT_FOUND, not BAD_ARGUMENT.
    let buffer_type = BufferType::try_from(buffer_type).ok();
    let Some(all) = buffer_type.and_then(|buffer_type| buffer(caller.data(), buffer_type)) else {
        return Ok(Status::NotFound.into());
    };
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
    let Some(data) = read(&mut caller, value_data, value_size) else { return Status::BadArgument.into() };
    let state = caller.data_mut();
    let context = state.effective;
    let Some(stream) = state.streams.get_mut(&context) else { return Status::BadArgument.into() };
    let body = match BufferType::try_from(buffer_type) {
        Ok(BufferType::HttpRequestBody) => &mut stream.request_body,
        Ok(BufferType::HttpResponseBody) => &mut stream.response_body,
        _ => return Status::BadArgument.into(),
    };
    edit_body(body, start as usize, size as usize, &data)
}

/// The readable buffers; `None` for one that does not exist now.
fn buffer(state: &VmState, buffer_type: BufferType) -> Option<&[u8]> {
    let stream = state.streams.get(&state.effective);
    match buffer_type {
        BufferType::HttpRequestBody => stream.map(|s| s.request_body.as_slice()),
        BufferType::HttpResponseBody => stream.map(|s| s.response_body.as_slice()),
        BufferType::HttpCallResponseBody => state.call_response.as_ref().map(|r| r.body.as_slice()),
        // As in Envoy: the VM's configuration is readable at any time, the plugin's only while
        // on_configure runs.
        BufferType::VmConfiguration => Some(&state.spec.vm_configuration),
        BufferType::PluginConfiguration if state.phase == Phase::Configure => Some(&state.spec.configuration),
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
        return Status::BadArgument.into();
    }
    Status::Ok.into()
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
