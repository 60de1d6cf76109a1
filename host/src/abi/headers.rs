//! HTTP fields: the stream's header and trailer maps and those of the HTTP call answer being
//! delivered.

use super::Ctx;
use super::memory::{give, read, read_str};
use super::types::{MapType, Status};
use crate::types::HeaderList;
use crate::vm::VmState;

pub(super) fn proxy_get_header_map_pairs(
    mut caller: Ctx<'_>,
    map_type: u32,
    return_data: u32,
    return_size: u32,
) -> wasmtime::Result<u32> {
    let Ok(map_type) = MapType::try_from(map_type) else { return Ok(Status::BadArgument.into()) };
    let encoded = match header_map(caller.data_mut(), map_type) {
        Some(map) => map.encode(),
        // An absent map reads as empty: the SDKs accept nothing but OK here.
        None => HeaderList::new().encode(),
    };
    give(&mut caller, &encoded, return_data, return_size)
}

pub(super) fn proxy_set_header_map_pairs(mut caller: Ctx<'_>, map_type: u32, pairs_data: u32, pairs_size: u32) -> u32 {
    let Some(new) = read(&mut caller, pairs_data, pairs_size).and_then(|bytes| HeaderList::decode(&bytes)) else {
        return Status::BadArgument.into();
    };
    let Ok(map_type) = MapType::try_from(map_type) else { return Status::BadArgument.into() };
    match header_map(caller.data_mut(), map_type) {
        Some(map) => {
            *map = HeaderList::from_pairs(new.0);
            Status::Ok
        }
        None => Status::BadArgument,
    }
    .into()
}

pub(super) fn proxy_get_header_map_value(
    mut caller: Ctx<'_>,
    map_type: u32,
    key_data: u32,
    key_size: u32,
    return_value_data: u32,
    return_value_size: u32,
) -> wasmtime::Result<u32> {
    let Some(key) = read_str(&mut caller, key_data, key_size) else { return Ok(Status::BadArgument.into()) };
    let Ok(map_type) = MapType::try_from(map_type) else { return Ok(Status::BadArgument.into()) };
    let value = header_map(caller.data_mut(), map_type).and_then(|map| map.get(&key).map(<[u8]>::to_vec));
    match value {
        Some(value) => give(&mut caller, &value, return_value_data, return_value_size),
        None => Ok(Status::NotFound.into()),
    }
}

pub(super) fn proxy_replace_header_map_value(
    mut caller: Ctx<'_>,
    map_type: u32,
    key_data: u32,
    key_size: u32,
    value_data: u32,
    value_size: u32,
) -> u32 {
    let value = Some((value_data, value_size));
    edit_map(&mut caller, map_type, (key_data, key_size), value, |map, key, value| map.set(key, value))
}

pub(super) fn proxy_add_header_map_value(
    mut caller: Ctx<'_>,
    map_type: u32,
    key_data: u32,
    key_size: u32,
    value_data: u32,
    value_size: u32,
) -> u32 {
    let value = Some((value_data, value_size));
    edit_map(&mut caller, map_type, (key_data, key_size), value, |map, key, value| map.add(key, value))
}

pub(super) fn proxy_remove_header_map_value(mut caller: Ctx<'_>, map_type: u32, key_data: u32, key_size: u32) -> u32 {
    edit_map(&mut caller, map_type, (key_data, key_size), None, |map, key, _| map.remove(key))
}

/// Reads a key (and a value) and applies `edit` to the map; a map that does not exist right now
/// cannot be edited.
fn edit_map(
    caller: &mut Ctx<'_>,
    map_type: u32,
    key: (u32, u32),
    value: Option<(u32, u32)>,
    edit: fn(&mut HeaderList, &str, &[u8]),
) -> u32 {
    let Some(key) = read_str(caller, key.0, key.1) else { return Status::BadArgument.into() };
    let value = match value {
        Some((ptr, len)) => match read(caller, ptr, len) {
            Some(value) => value,
            None => return Status::BadArgument.into(),
        },
        None => Vec::new(),
    };
    let Ok(map_type) = MapType::try_from(map_type) else { return Status::BadArgument.into() };
    match header_map(caller.data_mut(), map_type) {
        Some(map) => {
            edit(map, &key, &value);
            Status::Ok
        }
        None => Status::BadArgument,
    }
    .into()
}

/// The header maps: the stream's request/response headers and trailers, and the answer of the
/// HTTP call being delivered. `None`: a map that does not exist right now.
fn header_map(state: &mut VmState, map_type: MapType) -> Option<&mut HeaderList> {
    let stream = state.streams.get_mut(&state.effective);
    let call_response = state.call_response.as_mut();
    match map_type {
        MapType::HttpRequestHeaders => stream.map(|stream| &mut stream.request_headers),
        MapType::HttpRequestTrailers => stream.map(|stream| &mut stream.request_trailers),
        MapType::HttpResponseHeaders => stream.map(|stream| &mut stream.response_headers),
        MapType::HttpResponseTrailers => stream.map(|stream| &mut stream.response_trailers),
        MapType::HttpCallResponseHeaders => call_response.map(|response| &mut response.headers),
        MapType::HttpCallResponseTrailers => call_response.map(|response| &mut response.trailers),
        // gRPC metadata: this host makes no gRPC calls, so there never is any.
        MapType::GrpcReceiveInitialMetadata | MapType::GrpcReceiveTrailingMetadata => None,
    }
}
