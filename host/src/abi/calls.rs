//! Calls out of the filter: HTTP calls, gRPC calls (refused) and foreign functions.

use std::time::Duration;

use super::Ctx;
use super::memory::{give, read, read_str, write_u32};
use super::types::{GRPC_STATUS_UNKNOWN, Status};
use crate::types::{Effect, HeaderList, HttpCallRequest};

/// Only to the plugin's clusters, and only with `:method`, `:path` and `:authority`; the driver
/// performs the call ([`Effect::HttpCall`]) and answers with `on_http_call_response`.
#[expect(clippy::too_many_arguments, reason = "the ABI's signature")]
pub(super) fn proxy_http_call(
    mut caller: Ctx<'_>,
    upstream_data: u32,
    upstream_size: u32,
    headers_data: u32,
    headers_size: u32,
    body_data: u32,
    body_size: u32,
    trailers_data: u32,
    trailers_size: u32,
    timeout_ms: u32,
    return_call_id: u32,
) -> u32 {
    let cluster = read_str(&mut caller, upstream_data, upstream_size);
    let headers = read(&mut caller, headers_data, headers_size).and_then(|bytes| HeaderList::decode(&bytes));
    let body = read(&mut caller, body_data, body_size);
    let trailers = read(&mut caller, trailers_data, trailers_size).and_then(|bytes| HeaderList::decode(&bytes));
    let (Some(cluster), Some(headers), Some(body), Some(trailers)) = (cluster, headers, body, trailers) else {
        return Status::BadArgument.into();
    };
    let complete = [":method", ":path", ":authority"].iter().all(|name| headers.get(name).is_some());
    if !complete || !caller.data().spec.clusters.contains(&cluster) {
        return Status::BadArgument.into();
    }
    let state = caller.data_mut();
    let token = state.next_token;
    if !write_u32(&mut caller, return_call_id, token) {
        return Status::BadArgument.into();
    }
    let state = caller.data_mut();
    state.next_token = state.next_token.wrapping_add(1).max(1);
    state.calls.insert(token, state.effective);
    let timeout = Duration::from_millis(timeout_ms.into());
    state.effects.push(Effect::HttpCall(HttpCallRequest { token, cluster, headers, body, trailers, timeout }));
    Status::Ok.into()
}

// gRPC is not provided yet. A call to a cluster the plugin does not have fails as in Envoy
// (which cannot parse the name into a gRPC service: ParseFailure); one to a cluster it has fails
// with InternalFailure, as Envoy's does when the call cannot start.

/// What a gRPC call or stream to `upstream` is answered.
fn refuse_grpc(caller: &mut Ctx<'_>, upstream_data: u32, upstream_size: u32) -> u32 {
    let Some(cluster) = read_str(caller, upstream_data, upstream_size) else { return Status::BadArgument.into() };
    if !caller.data().spec.clusters.contains(&cluster) {
        return Status::ParseFailure.into();
    }
    tracing::warn!(cluster, "the filter made a gRPC call, which this host does not support yet: refused");
    Status::InternalFailure.into()
}

#[expect(clippy::too_many_arguments, reason = "the ABI's signature")]
pub(super) fn proxy_grpc_call(
    mut caller: Ctx<'_>,
    upstream_data: u32,
    upstream_size: u32,
    _service_data: u32,
    _service_size: u32,
    _method_data: u32,
    _method_size: u32,
    _metadata_data: u32,
    _metadata_size: u32,
    _message_data: u32,
    _message_size: u32,
    _timeout_ms: u32,
    _return_call_id: u32,
) -> u32 {
    refuse_grpc(&mut caller, upstream_data, upstream_size)
}

#[expect(clippy::too_many_arguments, reason = "the ABI's signature")]
pub(super) fn proxy_grpc_stream(
    mut caller: Ctx<'_>,
    upstream_data: u32,
    upstream_size: u32,
    _service_data: u32,
    _service_size: u32,
    _method_data: u32,
    _method_size: u32,
    _metadata_data: u32,
    _metadata_size: u32,
    _return_stream_id: u32,
) -> u32 {
    refuse_grpc(&mut caller, upstream_data, upstream_size)
}

pub(super) fn proxy_grpc_send(
    _: Ctx<'_>,
    _stream_id: u32,
    _message_data: u32,
    _message_size: u32,
    _end_stream: u32,
) -> u32 {
    Status::NotFound.into()
}

pub(super) fn proxy_grpc_cancel(_: Ctx<'_>, _call_or_stream_id: u32) -> u32 {
    Status::NotFound.into()
}

pub(super) fn proxy_grpc_close(_: Ctx<'_>, _call_or_stream_id: u32) -> u32 {
    Status::NotFound.into()
}

pub(super) fn proxy_get_status(
    mut caller: Ctx<'_>,
    return_status_code: u32,
    return_message_data: u32,
    return_message_size: u32,
) -> wasmtime::Result<u32> {
    // Only meaningful after a gRPC callback, which never happens here: report gRPC UNKNOWN.
    if !write_u32(&mut caller, return_status_code, GRPC_STATUS_UNKNOWN) {
        return Ok(Status::BadArgument.into());
    }
    give(&mut caller, b"", return_message_data, return_message_size)
}

pub(super) fn proxy_call_foreign_function(
    mut caller: Ctx<'_>,
    name_data: u32,
    name_size: u32,
    _arguments_data: u32,
    _arguments_size: u32,
    return_results_data: u32,
    return_results_size: u32,
) -> wasmtime::Result<u32> {
    let Some(name) = read_str(&mut caller, name_data, name_size) else { return Ok(Status::BadArgument.into()) };
    match name.as_str() {
        // Routing happens after the request headers here, so there is no cache to clear.
        "clear_route_cache" => give(&mut caller, b"", return_results_data, return_results_size),
        _ => Ok(Status::NotFound.into()),
    }
}
