//! Properties: what the host knows of the plugin and the stream, and what the filter stores.

use super::Ctx;
use super::memory::{give, read};
use super::types::Status;
use crate::vm::VmState;

/// The path arrives as NUL-separated segments; see [`property`] for what is answered.
pub(super) fn proxy_get_property(
    mut caller: Ctx<'_>,
    path_data: u32,
    path_size: u32,
    return_value_data: u32,
    return_value_size: u32,
) -> wasmtime::Result<u32> {
    let Some(raw) = read(&mut caller, path_data, path_size) else { return Ok(Status::BadArgument.into()) };
    let text = String::from_utf8_lossy(&raw);
    let path: Vec<&str> = text.split('\0').filter(|part| !part.is_empty()).collect();
    match property(caller.data(), &path) {
        Some(value) => give(&mut caller, &value, return_value_data, return_value_size),
        None => Ok(Status::NotFound.into()),
    }
}

/// Stores the value on the effective context: the stream's, or the root's.
pub(super) fn proxy_set_property(
    mut caller: Ctx<'_>,
    path_data: u32,
    path_size: u32,
    value_data: u32,
    value_size: u32,
) -> u32 {
    let (Some(raw), Some(value)) = (read(&mut caller, path_data, path_size), read(&mut caller, value_data, value_size))
    else {
        return Status::BadArgument.into();
    };
    let key = String::from_utf8_lossy(&raw).split('\0').filter(|p| !p.is_empty()).collect::<Vec<_>>().join(".");
    let state = caller.data_mut();
    let context = state.effective;
    match state.streams.get_mut(&context) {
        Some(stream) => stream.properties.insert(key, value),
        None => state.root_properties.insert(key, value),
    };
    Status::Ok.into()
}

/// What `proxy_get_property` answers. Strings are raw bytes, integers and times (nanoseconds
/// since the epoch) 8-byte little-endian, booleans one byte, as Envoy serialises them.
fn property(state: &VmState, path: &[&str]) -> Option<Vec<u8>> {
    let key = path.join(".");
    let stream = state.streams.get(&state.effective);
    let custom = match stream {
        Some(stream) => stream.properties.get(&key),
        None => state.root_properties.get(&key),
    };
    if let Some(value) = custom {
        return Some(value.clone());
    }
    let text = |s: &str| Some(s.as_bytes().to_vec());
    let int = |n: i64| Some(n.to_le_bytes().to_vec());
    let header = |name: &str| stream.and_then(|s| s.request_headers.get(name)).map(<[u8]>::to_vec);
    match key.as_str() {
        "plugin_name" => text(&state.spec.name),
        "plugin_root_id" => text(&state.spec.root_id),
        "plugin_vm_id" => text(&state.spec.vm_id),
        "source.address" => text(&stream?.info.source?.to_string()),
        "source.port" => int(stream?.info.source?.port().into()),
        "destination.address" => text(&stream?.info.destination?.to_string()),
        "destination.port" => int(stream?.info.destination?.port().into()),
        "request.path" => header(":path"),
        "request.url_path" => {
            let path = header(":path")?;
            let end = path.iter().position(|&b| b == b'?').unwrap_or(path.len());
            Some(path[..end].to_vec())
        }
        "request.query" => {
            let path = header(":path")?;
            let start = path.iter().position(|&b| b == b'?').map_or(path.len(), |at| at + 1);
            Some(path[start..].to_vec())
        }
        "request.host" => header(":authority"),
        "request.useragent" => header("user-agent"),
        "request.referer" => header("referer"),
        "request.scheme" => header(":scheme"),
        "request.method" => header(":method"),
        "request.id" => header("x-request-id"),
        "request.protocol" => text(&stream?.info.protocol),
        "connection.id" => Some(stream?.info.connection_id?.to_le_bytes().to_vec()),
        "request.time" => {
            let since_epoch = stream?.started?.duration_since(std::time::UNIX_EPOCH).ok()?;
            int(i64::try_from(since_epoch.as_nanos()).ok()?)
        }
        // The request's `content-length`, or what of its body has arrived.
        "request.size" => {
            let stream = stream?;
            let declared = stream.request_headers.get_str("content-length").and_then(|v| v.trim().parse().ok());
            int(declared.unwrap_or(i64::try_from(stream.request_body_received).ok()?))
        }
        // Whether the client presented a certificate over TLS: never, as the runner asks for none.
        "connection.mtls" => Some(vec![u8::from(false)]),
        "xds.cluster_name" => text(stream?.cluster.as_deref()?),
        "response.code_details" => text(stream?.response_code_details.as_deref()?),
        "response.code" => {
            let status = stream?.response_headers.get_str(":status")?;
            int(status.parse().ok()?)
        }
        _ => None,
    }
}
