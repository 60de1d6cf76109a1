//! The shared key-value store and shared queues, which every VM of the plugin sees ([`HostEnv`]).

use super::memory::{give, read, read_str, write_u32};
use super::{BAD_ARGUMENT, CAS_MISMATCH, Ctx, EMPTY, INTERNAL_FAILURE, NOT_FOUND, OK};
use crate::env::SetError;
use crate::types::Effect;

pub(super) fn proxy_get_shared_data(
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

pub(super) fn proxy_set_shared_data(
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
pub(super) fn proxy_register_shared_queue(
    mut caller: Ctx<'_>,
    name_data: u32,
    name_size: u32,
    return_queue_id: u32,
) -> u32 {
    let Some(name) = read_str(&mut caller, name_data, name_size) else { return BAD_ARGUMENT };
    let state = caller.data();
    let id = state.env.register_queue(&state.spec.vm_id, &name, state.number, state.effective);
    if write_u32(&mut caller, return_queue_id, id) { OK } else { BAD_ARGUMENT }
}

pub(super) fn proxy_resolve_shared_queue(
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
pub(super) fn proxy_enqueue_shared_queue(mut caller: Ctx<'_>, queue_id: u32, value_data: u32, value_size: u32) -> u32 {
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

pub(super) fn proxy_dequeue_shared_queue(
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
