//! HTTP fields: the stream's header and trailer maps and those of the HTTP call answer being
//! delivered.

use super::memory::{give, read, read_str};
use super::{BAD_ARGUMENT, Ctx, NOT_FOUND, OK};
use crate::types::HeaderList;
use crate::vm::VmState;

pub(super) fn proxy_get_header_map_pairs(
    mut caller: Ctx<'_>,
    map_type: u32,
    return_data: u32,
    return_size: u32,
) -> wasmtime::Result<u32> {
    let encoded = match header_map(caller.data_mut(), map_type) {
        Err(status) => return Ok(status),
        Ok(Some(map)) => map.encode(),
        // An absent map reads as empty: the SDKs accept nothing but OK here.
        Ok(None) => HeaderList::new().encode(),
    };
    give(&mut caller, &encoded, return_data, return_size)
}

pub(super) fn proxy_set_header_map_pairs(mut caller: Ctx<'_>, map_type: u32, pairs_data: u32, pairs_size: u32) -> u32 {
    let Some(new) = read(&mut caller, pairs_data, pairs_size).and_then(|bytes| HeaderList::decode(&bytes)) else {
        return BAD_ARGUMENT;
    };
    match header_map(caller.data_mut(), map_type) {
        Ok(Some(map)) => {
            *map = HeaderList::from_pairs(new.0);
            OK
        }
        Ok(None) => BAD_ARGUMENT,
        Err(status) => status,
    }
}

pub(super) fn proxy_get_header_map_value(
    mut caller: Ctx<'_>,
    map_type: u32,
    key_data: u32,
    key_size: u32,
    return_value_data: u32,
    return_value_size: u32,
) -> wasmtime::Result<u32> {
    let Some(key) = read_str(&mut caller, key_data, key_size) else { return Ok(BAD_ARGUMENT) };
    let value = match header_map(caller.data_mut(), map_type) {
        Err(status) => return Ok(status),
        Ok(map) => map.and_then(|map| map.get(&key).map(<[u8]>::to_vec)),
    };
    match value {
        Some(value) => give(&mut caller, &value, return_value_data, return_value_size),
        None => Ok(NOT_FOUND),
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
    let Some(key) = read_str(caller, key.0, key.1) else { return BAD_ARGUMENT };
    let value = match value {
        Some((ptr, len)) => match read(caller, ptr, len) {
            Some(value) => value,
            None => return BAD_ARGUMENT,
        },
        None => Vec::new(),
    };
    match header_map(caller.data_mut(), map_type) {
        Ok(Some(map)) => {
            edit(map, &key, &value);
            OK
        }
        Ok(None) => BAD_ARGUMENT,
        Err(status) => status,
    }
}

/// Header maps by ABI number: 0-3 the stream's request/response headers and trailers, 6-7 the
/// answer of the HTTP call being delivered. `Ok(None)`: a map that does not exist right now.
fn header_map(state: &mut VmState, map_type: u32) -> Result<Option<&mut HeaderList>, u32> {
    let context = state.effective;
    Ok(match map_type {
        0..=3 => state.streams.get_mut(&context).map(|stream| match map_type {
            0 => &mut stream.request_headers,
            1 => &mut stream.request_trailers,
            2 => &mut stream.response_headers,
            _ => &mut stream.response_trailers,
        }),
        6 => state.call_response.as_mut().map(|response| &mut response.headers),
        7 => state.call_response.as_mut().map(|response| &mut response.trailers),
        // gRPC metadata: this host makes no gRPC calls, so there never is any.
        4 | 5 => None,
        _ => return Err(BAD_ARGUMENT),
    })
}
