//! The proxy-wasm ABI v0.2.1 host functions, with the statuses Envoy answers.
//!
//! Every function here runs while the filter is inside a call: it reads and writes the VM's
//! state and records effects, but never calls back into the filter's callbacks (only into its
//! allocator, as Envoy does).

use std::time::Duration;

use wasmtime::format_err;
use wasmtime::{Caller, FuncType, Linker, Val};

use super::env::{MetricKind, SetError};
use super::types::{Direction, Effect, HeaderList, HttpCallRequest, LocalReply};
use super::vm::{Phase, VmState};

pub(crate) const ENV: &str = "env";
pub(crate) const WASI: &str = "wasi_snapshot_preview1";

// Statuses of ABI v0.2.1. The SDKs panic on any status a call does not expect, so each function
// below answers only those its callers handle.
const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const BAD_ARGUMENT: u32 = 2;
const EMPTY: u32 = 7;
const CAS_MISMATCH: u32 = 8;
const INTERNAL_FAILURE: u32 = 10;

// WASI errno values.
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_INVAL: i32 = 28;
const ERRNO_FAULT: i32 = 21;
const ERRNO_NOSYS: i32 = 52;

type Ctx<'a> = Caller<'a, VmState>;

fn memory(caller: &mut Ctx<'_>) -> Option<wasmtime::Memory> {
    caller.get_export("memory").and_then(|export| export.into_memory())
}

/// Copies `len` bytes at `ptr` out of the filter's memory; `None` when out of bounds.
fn read(caller: &mut Ctx<'_>, ptr: u32, len: u32) -> Option<Vec<u8>> {
    if len == 0 {
        return Some(Vec::new());
    }
    let memory = memory(caller)?;
    let start = ptr as usize;
    memory.data(&*caller).get(start..start.checked_add(len as usize)?).map(<[u8]>::to_vec)
}

fn read_str(caller: &mut Ctx<'_>, ptr: u32, len: u32) -> Option<String> {
    String::from_utf8(read(caller, ptr, len)?).ok()
}

fn write(caller: &mut Ctx<'_>, ptr: u32, bytes: &[u8]) -> bool {
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

fn write_u32(caller: &mut Ctx<'_>, ptr: u32, value: u32) -> bool {
    write(caller, ptr, &value.to_le_bytes())
}

/// Allocates in the filter through its own allocator export.
fn allocate(caller: &mut Ctx<'_>, size: u32) -> wasmtime::Result<u32> {
    let func = caller
        .get_export("proxy_on_memory_allocate")
        .or_else(|| caller.get_export("malloc"))
        .and_then(|export| export.into_func())
        .ok_or_else(|| format_err!("the filter has no allocator export"))?;
    func.typed::<u32, u32>(&*caller)?.call(&mut *caller, size)
}

/// Hands `data` to the filter: allocate, copy, and store address and size at the return pointers.
fn give(caller: &mut Ctx<'_>, data: &[u8], ptr_out: u32, size_out: u32) -> wasmtime::Result<u32> {
    if data.is_empty() {
        let ok = write_u32(caller, ptr_out, 0) && write_u32(caller, size_out, 0);
        return Ok(if ok { OK } else { BAD_ARGUMENT });
    }
    let address = allocate(caller, data.len() as u32)?;
    if address == 0 {
        return Ok(INTERNAL_FAILURE);
    }
    let ok = write(caller, address, data)
        && write_u32(caller, ptr_out, address)
        && write_u32(caller, size_out, data.len() as u32);
    Ok(if ok { OK } else { BAD_ARGUMENT })
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

fn log_line(state: &mut VmState, level: u32, message: &str) {
    let plugin = state.spec.name.as_str();
    match level {
        0 => tracing::trace!(target: "filter", plugin, "{message}"),
        1 => tracing::debug!(target: "filter", plugin, "{message}"),
        2 => tracing::info!(target: "filter", plugin, "{message}"),
        3 => tracing::warn!(target: "filter", plugin, "{message}"),
        _ => tracing::error!(target: "filter", plugin, "{message}"),
    }
    if level >= 4 {
        state.remember_error(message.to_string());
    }
}

/// What `proxy_get_property` answers. Strings are raw bytes and integers 8-byte little-endian,
/// as Envoy serialises them.
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
        "plugin_name" | "plugin_root_id" => text(&state.spec.name),
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
        "request.host" => header(":authority"),
        "request.scheme" => header(":scheme"),
        "request.method" => header(":method"),
        "request.id" => header("x-request-id"),
        "request.protocol" => text(&stream?.info.protocol),
        "response.code" => {
            let status = stream?.response_headers.get_str(":status")?;
            int(status.parse().ok()?)
        }
        _ => None,
    }
}

/// Defines every `env` function of ABI v0.2.1 and the WASI functions Rust SDK filters import.
pub(crate) fn link(linker: &mut Linker<VmState>) -> anyhow::Result<()> {
    // --- logging, time, timers -------------------------------------------------------------
    linker.func_wrap(ENV, "proxy_log", proxy_log)?;
    linker.func_wrap(ENV, "proxy_get_log_level", proxy_get_log_level)?;
    linker.func_wrap(ENV, "proxy_get_current_time_nanoseconds", proxy_get_current_time_nanoseconds)?;
    linker.func_wrap(ENV, "proxy_set_tick_period_milliseconds", proxy_set_tick_period_milliseconds)?;

    // --- buffers ---------------------------------------------------------------------------
    linker.func_wrap(ENV, "proxy_get_buffer_bytes", proxy_get_buffer_bytes)?;
    linker.func_wrap(ENV, "proxy_set_buffer_bytes", proxy_set_buffer_bytes)?;

    // --- header maps -----------------------------------------------------------------------
    linker.func_wrap(ENV, "proxy_get_header_map_pairs", proxy_get_header_map_pairs)?;
    linker.func_wrap(ENV, "proxy_set_header_map_pairs", proxy_set_header_map_pairs)?;
    linker.func_wrap(ENV, "proxy_get_header_map_value", proxy_get_header_map_value)?;
    linker.func_wrap(ENV, "proxy_replace_header_map_value", proxy_replace_header_map_value)?;
    linker.func_wrap(ENV, "proxy_add_header_map_value", proxy_add_header_map_value)?;
    linker.func_wrap(ENV, "proxy_remove_header_map_value", proxy_remove_header_map_value)?;

    // --- properties ------------------------------------------------------------------------
    linker.func_wrap(ENV, "proxy_get_property", proxy_get_property)?;
    linker.func_wrap(ENV, "proxy_set_property", proxy_set_property)?;

    // --- shared data and queues --------------------------------------------------------------
    linker.func_wrap(ENV, "proxy_get_shared_data", proxy_get_shared_data)?;
    linker.func_wrap(ENV, "proxy_set_shared_data", proxy_set_shared_data)?;
    linker.func_wrap(ENV, "proxy_register_shared_queue", proxy_register_shared_queue)?;
    linker.func_wrap(ENV, "proxy_resolve_shared_queue", proxy_resolve_shared_queue)?;
    linker.func_wrap(ENV, "proxy_enqueue_shared_queue", proxy_enqueue_shared_queue)?;
    linker.func_wrap(ENV, "proxy_dequeue_shared_queue", proxy_dequeue_shared_queue)?;

    // --- stream control --------------------------------------------------------------------
    linker.func_wrap(ENV, "proxy_continue_stream", proxy_continue_stream)?;
    linker.func_wrap(ENV, "proxy_close_stream", proxy_close_stream)?;
    linker.func_wrap(ENV, "proxy_send_local_response", proxy_send_local_response)?;

    // --- HTTP and gRPC calls ---------------------------------------------------------------
    linker.func_wrap(ENV, "proxy_http_call", proxy_http_call)?;
    linker.func_wrap(ENV, "proxy_grpc_call", proxy_grpc_call)?;
    linker.func_wrap(ENV, "proxy_grpc_stream", proxy_grpc_stream)?;
    linker.func_wrap(ENV, "proxy_grpc_send", proxy_grpc_send)?;
    linker.func_wrap(ENV, "proxy_grpc_cancel", proxy_grpc_cancel)?;
    linker.func_wrap(ENV, "proxy_grpc_close", proxy_grpc_close)?;
    linker.func_wrap(ENV, "proxy_get_status", proxy_get_status)?;

    // --- contexts and foreign functions --------------------------------------------------------
    linker.func_wrap(ENV, "proxy_set_effective_context", proxy_set_effective_context)?;
    linker.func_wrap(ENV, "proxy_done", proxy_done)?;
    linker.func_wrap(ENV, "proxy_call_foreign_function", proxy_call_foreign_function)?;

    // --- metrics ---------------------------------------------------------------------------
    linker.func_wrap(ENV, "proxy_define_metric", proxy_define_metric)?;
    linker.func_wrap(ENV, "proxy_increment_metric", proxy_increment_metric)?;
    linker.func_wrap(ENV, "proxy_record_metric", proxy_record_metric)?;
    linker.func_wrap(ENV, "proxy_get_metric", proxy_get_metric)?;

    link_wasi(linker)
}

/// The WASI functions a Rust std filter imports. Filters have no files or arguments; their
/// environment is the plugin's `environment` (Envoy's `vm_config.environment_variables`); what
/// they print becomes log lines.
fn link_wasi(linker: &mut Linker<VmState>) -> anyhow::Result<()> {
    linker.func_wrap(WASI, "fd_write", fd_write)?;
    linker.func_wrap(WASI, "environ_sizes_get", environ_sizes_get)?;
    linker.func_wrap(WASI, "environ_get", environ_get)?;
    linker.func_wrap(WASI, "args_sizes_get", args_sizes_get)?;
    linker.func_wrap(WASI, "args_get", args_get)?;
    linker.func_wrap(WASI, "proc_exit", proc_exit)?;
    linker.func_wrap(WASI, "clock_time_get", clock_time_get)?;
    linker.func_wrap(WASI, "random_get", random_get)?;
    linker.func_wrap(WASI, "fd_prestat_get", fd_prestat_get)?;
    Ok(())
}

// --- logging, time, timers -----------------------------------------------------------------

fn proxy_log(mut caller: Ctx<'_>, log_level: u32, message_data: u32, message_size: u32) -> u32 {
    let Some(message) = read(&mut caller, message_data, message_size) else { return BAD_ARGUMENT };
    log_line(caller.data_mut(), log_level, &String::from_utf8_lossy(&message));
    OK
}

fn proxy_get_log_level(mut caller: Ctx<'_>, return_log_level: u32) -> u32 {
    use tracing::level_filters::LevelFilter;
    let level = match LevelFilter::current() {
        LevelFilter::TRACE => 0,
        LevelFilter::DEBUG => 1,
        LevelFilter::INFO => 2,
        LevelFilter::WARN => 3,
        _ => 4,
    };
    if write_u32(&mut caller, return_log_level, level) { OK } else { BAD_ARGUMENT }
}

fn proxy_get_current_time_nanoseconds(mut caller: Ctx<'_>, return_time: u32) -> u32 {
    let now = caller.data().env.clock.unix_nanos();
    if write(&mut caller, return_time, &now.to_le_bytes()) { OK } else { BAD_ARGUMENT }
}

/// A period of 0 stops the timer.
fn proxy_set_tick_period_milliseconds(mut caller: Ctx<'_>, tick_period: u32) -> u32 {
    let period = (tick_period > 0).then(|| Duration::from_millis(tick_period.into()));
    caller.data_mut().effects.push(Effect::TickPeriod(period));
    OK
}

// --- buffers -------------------------------------------------------------------------------

fn proxy_get_buffer_bytes(
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
fn proxy_set_buffer_bytes(
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

// --- header maps ---------------------------------------------------------------------------

fn proxy_get_header_map_pairs(
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

fn proxy_set_header_map_pairs(mut caller: Ctx<'_>, map_type: u32, pairs_data: u32, pairs_size: u32) -> u32 {
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

fn proxy_get_header_map_value(
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

fn proxy_replace_header_map_value(
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

fn proxy_add_header_map_value(
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

fn proxy_remove_header_map_value(mut caller: Ctx<'_>, map_type: u32, key_data: u32, key_size: u32) -> u32 {
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

// --- properties ----------------------------------------------------------------------------

/// The path arrives as NUL-separated segments; see [`property`] for what is answered.
fn proxy_get_property(
    mut caller: Ctx<'_>,
    path_data: u32,
    path_size: u32,
    return_value_data: u32,
    return_value_size: u32,
) -> wasmtime::Result<u32> {
    let Some(raw) = read(&mut caller, path_data, path_size) else { return Ok(BAD_ARGUMENT) };
    let text = String::from_utf8_lossy(&raw);
    let path: Vec<&str> = text.split('\0').filter(|part| !part.is_empty()).collect();
    match property(caller.data(), &path) {
        Some(value) => give(&mut caller, &value, return_value_data, return_value_size),
        None => Ok(NOT_FOUND),
    }
}

/// Stores the value on the effective context: the stream's, or the root's.
fn proxy_set_property(mut caller: Ctx<'_>, path_data: u32, path_size: u32, value_data: u32, value_size: u32) -> u32 {
    let (Some(raw), Some(value)) = (read(&mut caller, path_data, path_size), read(&mut caller, value_data, value_size))
    else {
        return BAD_ARGUMENT;
    };
    let key = String::from_utf8_lossy(&raw).split('\0').filter(|p| !p.is_empty()).collect::<Vec<_>>().join(".");
    let state = caller.data_mut();
    let context = state.effective;
    match state.streams.get_mut(&context) {
        Some(stream) => stream.properties.insert(key, value),
        None => state.root_properties.insert(key, value),
    };
    OK
}

// --- shared data and queues ----------------------------------------------------------------

fn proxy_get_shared_data(
    mut caller: Ctx<'_>,
    key_data: u32,
    key_size: u32,
    return_value_data: u32,
    return_value_size: u32,
    return_cas: u32,
) -> wasmtime::Result<u32> {
    let Some(key) = read_str(&mut caller, key_data, key_size) else { return Ok(BAD_ARGUMENT) };
    let Some((value, cas)) = caller.data().env.get_shared_data(&key) else { return Ok(NOT_FOUND) };
    if !write_u32(&mut caller, return_cas, cas) {
        return Ok(BAD_ARGUMENT);
    }
    give(&mut caller, &value, return_value_data, return_value_size)
}

fn proxy_set_shared_data(
    mut caller: Ctx<'_>,
    key_data: u32,
    key_size: u32,
    value_data: u32,
    value_size: u32,
    cas: u32,
) -> u32 {
    let (Some(key), Some(value)) =
        (read_str(&mut caller, key_data, key_size), read(&mut caller, value_data, value_size))
    else {
        return BAD_ARGUMENT;
    };
    match caller.data().env.set_shared_data(&key, &value, cas) {
        Ok(()) => OK,
        Err(SetError::CasMismatch) => CAS_MISMATCH,
        // Envoy has no size limit; ours is a safety net. A refused write is reported as the
        // one refusal SDKs handle without panicking, so the filter just does not cache.
        Err(SetError::TooLarge) => {
            tracing::warn!(target: "filter", key, "shared data is full; write refused");
            CAS_MISMATCH
        }
    }
}

/// The queue belongs to this VM's effective context: it gets `on_queue_ready`.
fn proxy_register_shared_queue(mut caller: Ctx<'_>, name_data: u32, name_size: u32, return_queue_id: u32) -> u32 {
    let Some(name) = read_str(&mut caller, name_data, name_size) else { return BAD_ARGUMENT };
    let state = caller.data();
    let id = state.env.register_queue(&state.spec.vm_id, &name, state.number, state.effective);
    if write_u32(&mut caller, return_queue_id, id) { OK } else { BAD_ARGUMENT }
}

fn proxy_resolve_shared_queue(
    mut caller: Ctx<'_>,
    vm_id_data: u32,
    vm_id_size: u32,
    name_data: u32,
    name_size: u32,
    return_queue_id: u32,
) -> u32 {
    let (Some(vm_id), Some(name)) =
        (read_str(&mut caller, vm_id_data, vm_id_size), read_str(&mut caller, name_data, name_size))
    else {
        return BAD_ARGUMENT;
    };
    match caller.data().env.resolve_queue(&vm_id, &name) {
        Some(id) if write_u32(&mut caller, return_queue_id, id) => OK,
        Some(_) => BAD_ARGUMENT,
        None => NOT_FOUND,
    }
}

/// The queue's owner is told with an [`Effect::QueueReady`].
fn proxy_enqueue_shared_queue(mut caller: Ctx<'_>, queue_id: u32, value_data: u32, value_size: u32) -> u32 {
    let Some(value) = read(&mut caller, value_data, value_size) else { return BAD_ARGUMENT };
    match caller.data().env.enqueue(queue_id, &value) {
        None => NOT_FOUND,
        Some(Err(())) => INTERNAL_FAILURE,
        Some(Ok((vm, context))) => {
            caller.data_mut().effects.push(Effect::QueueReady { vm, context, queue: queue_id });
            OK
        }
    }
}

fn proxy_dequeue_shared_queue(
    mut caller: Ctx<'_>,
    queue_id: u32,
    return_value_data: u32,
    return_value_size: u32,
) -> wasmtime::Result<u32> {
    match caller.data().env.dequeue(queue_id) {
        None => Ok(NOT_FOUND),
        Some(None) => Ok(EMPTY),
        Some(Some(item)) => give(&mut caller, &item, return_value_data, return_value_size),
    }
}

// --- stream control ------------------------------------------------------------------------

fn proxy_continue_stream(mut caller: Ctx<'_>, stream_type: u32) -> u32 {
    stream_effect(&mut caller, stream_type, |context, direction| Effect::Continue { context, direction })
}

fn proxy_close_stream(mut caller: Ctx<'_>, stream_type: u32) -> u32 {
    stream_effect(&mut caller, stream_type, |context, direction| Effect::Close { context, direction })
}

/// Records `make(context, direction)` for the effective stream.
fn stream_effect(caller: &mut Ctx<'_>, stream_type: u32, make: fn(u32, Direction) -> Effect) -> u32 {
    let state = caller.data_mut();
    let context = state.effective;
    let direction = match stream_type {
        0 => Direction::Request,
        1 => Direction::Response,
        // Downstream/upstream are TCP filter streams, which this HTTP host does not run.
        _ => return BAD_ARGUMENT,
    };
    if !state.streams.contains_key(&context) {
        return BAD_ARGUMENT;
    }
    state.effects.push(make(context, direction));
    OK
}

#[expect(clippy::too_many_arguments, reason = "the ABI's signature")]
fn proxy_send_local_response(
    mut caller: Ctx<'_>,
    status_code: u32,
    details_data: u32,
    details_size: u32,
    body_data: u32,
    body_size: u32,
    headers_data: u32,
    headers_size: u32,
    _grpc_status: i32,
) -> u32 {
    let details = read(&mut caller, details_data, details_size);
    let body = read(&mut caller, body_data, body_size);
    let headers = read(&mut caller, headers_data, headers_size).and_then(|bytes| HeaderList::decode(&bytes));
    let (Some(details), Some(body), Some(headers)) = (details, body, headers) else {
        return BAD_ARGUMENT;
    };
    let Ok(status) = u16::try_from(status_code) else { return BAD_ARGUMENT };
    if !(100..=999).contains(&status) {
        return BAD_ARGUMENT;
    }
    let state = caller.data_mut();
    let context = state.effective;
    if !state.streams.contains_key(&context) {
        return BAD_ARGUMENT;
    }
    let details = String::from_utf8_lossy(&details).into_owned();
    let reply = LocalReply { status, details, headers, body };
    state.effects.push(Effect::LocalReply { context, reply });
    OK
}

// --- HTTP and gRPC calls -------------------------------------------------------------------

/// Only to the plugin's clusters, and only with `:method`, `:path` and `:authority`; the driver
/// performs the call ([`Effect::HttpCall`]) and answers with `on_http_call_response`.
#[expect(clippy::too_many_arguments, reason = "the ABI's signature")]
fn proxy_http_call(
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
        return BAD_ARGUMENT;
    };
    let complete = [":method", ":path", ":authority"].iter().all(|name| headers.get(name).is_some());
    if !complete || !caller.data().spec.clusters.contains(&cluster) {
        return BAD_ARGUMENT;
    }
    let state = caller.data_mut();
    let token = state.next_token;
    if !write_u32(&mut caller, return_call_id, token) {
        return BAD_ARGUMENT;
    }
    let state = caller.data_mut();
    state.next_token = state.next_token.wrapping_add(1).max(1);
    state.calls.insert(token, state.effective);
    let timeout = Duration::from_millis(timeout_ms.into());
    state.effects.push(Effect::HttpCall(HttpCallRequest { token, cluster, headers, body, trailers, timeout }));
    OK
}

// gRPC is not provided: calls fail the way SDKs expect a refused call to fail.

#[expect(clippy::too_many_arguments, reason = "the ABI's signature")]
fn proxy_grpc_call(
    _: Ctx<'_>,
    _upstream_data: u32,
    _upstream_size: u32,
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
    INTERNAL_FAILURE
}

#[expect(clippy::too_many_arguments, reason = "the ABI's signature")]
fn proxy_grpc_stream(
    _: Ctx<'_>,
    _upstream_data: u32,
    _upstream_size: u32,
    _service_data: u32,
    _service_size: u32,
    _method_data: u32,
    _method_size: u32,
    _metadata_data: u32,
    _metadata_size: u32,
    _return_stream_id: u32,
) -> u32 {
    INTERNAL_FAILURE
}

fn proxy_grpc_send(_: Ctx<'_>, _stream_id: u32, _message_data: u32, _message_size: u32, _end_stream: u32) -> u32 {
    NOT_FOUND
}

fn proxy_grpc_cancel(_: Ctx<'_>, _call_or_stream_id: u32) -> u32 {
    NOT_FOUND
}

fn proxy_grpc_close(_: Ctx<'_>, _call_or_stream_id: u32) -> u32 {
    NOT_FOUND
}

fn proxy_get_status(
    mut caller: Ctx<'_>,
    return_status_code: u32,
    return_message_data: u32,
    return_message_size: u32,
) -> wasmtime::Result<u32> {
    // Only meaningful after a gRPC callback, which never happens here: report gRPC UNKNOWN.
    if !write_u32(&mut caller, return_status_code, 2) {
        return Ok(BAD_ARGUMENT);
    }
    give(&mut caller, b"", return_message_data, return_message_size)
}

// --- contexts and foreign functions --------------------------------------------------------

/// Host calls then act on `context_id`: the root context or one of this VM's streams.
fn proxy_set_effective_context(mut caller: Ctx<'_>, context_id: u32) -> u32 {
    let state = caller.data_mut();
    if context_id == state.root || state.streams.contains_key(&context_id) {
        state.effective = context_id;
        OK
    } else {
        BAD_ARGUMENT
    }
}

fn proxy_done(_: Ctx<'_>) -> u32 {
    OK
}

fn proxy_call_foreign_function(
    mut caller: Ctx<'_>,
    name_data: u32,
    name_size: u32,
    _arguments_data: u32,
    _arguments_size: u32,
    return_results_data: u32,
    return_results_size: u32,
) -> wasmtime::Result<u32> {
    let Some(name) = read_str(&mut caller, name_data, name_size) else { return Ok(BAD_ARGUMENT) };
    match name.as_str() {
        // Routing happens after the request headers here, so there is no cache to clear.
        "clear_route_cache" => give(&mut caller, b"", return_results_data, return_results_size),
        _ => Ok(NOT_FOUND),
    }
}

// --- metrics -------------------------------------------------------------------------------

fn proxy_define_metric(
    mut caller: Ctx<'_>,
    metric_type: u32,
    name_data: u32,
    name_size: u32,
    return_metric_id: u32,
) -> u32 {
    let kind = match metric_type {
        0 => MetricKind::Counter,
        1 => MetricKind::Gauge,
        2 => MetricKind::Histogram,
        _ => return BAD_ARGUMENT,
    };
    let Some(name) = read_str(&mut caller, name_data, name_size) else { return BAD_ARGUMENT };
    let id = caller.data().env.define_metric(kind, &name);
    if write_u32(&mut caller, return_metric_id, id) { OK } else { BAD_ARGUMENT }
}

fn proxy_increment_metric(caller: Ctx<'_>, metric_id: u32, offset: i64) -> u32 {
    match caller.data().env.increment_metric(metric_id, offset) {
        None => NOT_FOUND,
        Some(false) => BAD_ARGUMENT,
        Some(true) => OK,
    }
}

fn proxy_record_metric(caller: Ctx<'_>, metric_id: u32, value: u64) -> u32 {
    match caller.data().env.record_metric(metric_id, value) {
        None => NOT_FOUND,
        Some(()) => OK,
    }
}

fn proxy_get_metric(mut caller: Ctx<'_>, metric_id: u32, return_value: u32) -> u32 {
    match caller.data().env.get_metric(metric_id) {
        None => NOT_FOUND,
        Some(value) if write(&mut caller, return_value, &value.to_le_bytes()) => OK,
        Some(_) => BAD_ARGUMENT,
    }
}

// --- WASI ----------------------------------------------------------------------------------

/// Only stdout and stderr, which become log lines.
fn fd_write(mut caller: Ctx<'_>, fd: i32, iovs: u32, iovs_len: u32, return_written: u32) -> i32 {
    if fd != 1 && fd != 2 {
        return ERRNO_BADF;
    }
    let mut text = Vec::new();
    for i in 0..iovs_len {
        let Some(iov) = read(&mut caller, iovs.wrapping_add(i * 8), 8) else { return ERRNO_FAULT };
        let ptr = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
        let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
        let Some(chunk) = read(&mut caller, ptr, len) else { return ERRNO_FAULT };
        text.extend_from_slice(&chunk);
    }
    let message = String::from_utf8_lossy(&text);
    let message = message.trim_end();
    if !message.is_empty() {
        // Panic messages arrive on stderr: log them as errors so a trap can be explained.
        log_line(caller.data_mut(), if fd == 2 { 4 } else { 2 }, message);
    }
    if write_u32(&mut caller, return_written, text.len() as u32) { ERRNO_SUCCESS } else { ERRNO_FAULT }
}

fn environ_sizes_get(mut caller: Ctx<'_>, return_count: u32, return_buffer_size: u32) -> i32 {
    let entries = environ(caller.data());
    let size: usize = entries.iter().map(Vec::len).sum();
    let (Ok(count), Ok(size)) = (u32::try_from(entries.len()), u32::try_from(size)) else { return ERRNO_INVAL };
    if write_u32(&mut caller, return_count, count) && write_u32(&mut caller, return_buffer_size, size) {
        ERRNO_SUCCESS
    } else {
        ERRNO_FAULT
    }
}

/// `KEY=VALUE\0` strings packed into `buffer`, and a pointer to each in `pointers`, in the sizes
/// `environ_sizes_get` announced.
fn environ_get(mut caller: Ctx<'_>, pointers: u32, buffer: u32) -> i32 {
    let mut at = buffer;
    for (index, entry) in environ(caller.data()).iter().enumerate() {
        let slot = pointers.wrapping_add(4 * index as u32);
        if !write_u32(&mut caller, slot, at) || !write(&mut caller, at, entry) {
            return ERRNO_FAULT;
        }
        at = at.wrapping_add(entry.len() as u32);
    }
    ERRNO_SUCCESS
}

fn args_sizes_get(mut caller: Ctx<'_>, return_count: u32, return_buffer_size: u32) -> i32 {
    if write_u32(&mut caller, return_count, 0) && write_u32(&mut caller, return_buffer_size, 0) {
        ERRNO_SUCCESS
    } else {
        ERRNO_FAULT
    }
}

fn args_get(_: Ctx<'_>, _pointers: u32, _buffer: u32) -> i32 {
    ERRNO_SUCCESS
}

fn proc_exit(_: Ctx<'_>, code: i32) -> wasmtime::Result<()> {
    Err(format_err!("the filter called proc_exit({code})"))
}

fn clock_time_get(mut caller: Ctx<'_>, clock_id: i32, _precision: i64, return_time: u32) -> i32 {
    let nanos = match clock_id {
        0 => caller.data().env.clock.unix_nanos(),
        1..=3 => caller.data().started.elapsed().as_nanos() as u64,
        _ => return ERRNO_INVAL,
    };
    if write(&mut caller, return_time, &nanos.to_le_bytes()) { ERRNO_SUCCESS } else { ERRNO_FAULT }
}

fn random_get(mut caller: Ctx<'_>, buffer: u32, buffer_size: u32) -> i32 {
    let mut bytes = vec![0u8; buffer_size as usize];
    if getrandom::fill(&mut bytes).is_err() {
        return ERRNO_NOSYS;
    }
    if write(&mut caller, buffer, &bytes) { ERRNO_SUCCESS } else { ERRNO_FAULT }
}

/// A filter has no preopened directories: this ends libc's scan for them.
fn fd_prestat_get(_: Ctx<'_>, _fd: i32, _return_prestat: u32) -> i32 {
    ERRNO_BADF
}

/// The VM's environment as WASI hands it over: `KEY=VALUE` followed by a NUL, one per variable.
fn environ(state: &VmState) -> Vec<Vec<u8>> {
    state
        .spec
        .environment
        .iter()
        .map(|(key, value)| {
            let mut entry = Vec::with_capacity(key.len() + value.len() + 2);
            entry.extend_from_slice(key.as_bytes());
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            entry.push(0);
            entry
        })
        .collect()
}

/// Links a WASI function this host does not implement: it answers ENOSYS, or traps with a clear
/// message when its signature has no errno to answer with.
pub(crate) fn link_unsupported_wasi(linker: &mut Linker<VmState>, name: &str, ty: FuncType) -> anyhow::Result<()> {
    let name = name.to_string();
    let returns_errno = ty.results().len() == 1 && ty.results().all(|r| r.is_i32());
    linker.func_new(WASI, &name.clone(), ty, move |_caller, _params, results| {
        if returns_errno {
            results[0] = Val::I32(ERRNO_NOSYS);
            Ok(())
        } else {
            Err(format_err!("the filter called WASI `{name}`, which this host does not provide"))
        }
    })?;
    Ok(())
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
