//! The shared key-value store and shared queues, which every VM of the plugin sees ([`HostEnv`](crate::HostEnv)).

use super::Ctx;
use super::memory::{give, read, read_str, status_of_write, write_u32};
use super::types::Status;
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
    let Some(key) = read_str(&mut caller, key_data, key_size) else { return Ok(Status::BadArgument.into()) };
    let Some((value, cas)) = caller.data().env.get_shared_data(&key) else { return Ok(Status::NotFound.into()) };
    if !write_u32(&mut caller, return_cas, cas) {
        return Ok(Status::BadArgument.into());
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
        return Status::BadArgument.into();
    };
    match caller.data().env.set_shared_data(&key, &value, cas) {
        Ok(()) => Status::Ok,
        Err(SetError::CasMismatch) => Status::CasMismatch,
        // Envoy has no size limit; ours is a safety net. A refused write is reported as the
        // one refusal SDKs handle without panicking, so the filter just does not cache.
        Err(SetError::TooLarge) => {
            tracing::warn!(target: "filter", key, "shared data is full; write refused");
            Status::CasMismatch
        }
    }
    .into()
}

/// The queue belongs to this VM's effective context: it gets `on_queue_ready`.
pub(super) fn proxy_register_shared_queue(
    mut caller: Ctx<'_>,
    name_data: u32,
    name_size: u32,
    return_queue_id: u32,
) -> u32 {
    let Some(name) = read_str(&mut caller, name_data, name_size) else { return Status::BadArgument.into() };
    let state = caller.data();
    let id = state.env.register_queue(&state.spec.vm_id, &name, state.number, state.effective);
    status_of_write(write_u32(&mut caller, return_queue_id, id))
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
        return Status::BadArgument.into();
    };
    match caller.data().env.resolve_queue(&vm_id, &name) {
        Some(id) => status_of_write(write_u32(&mut caller, return_queue_id, id)),
        None => Status::NotFound.into(),
    }
}

/// The queue's owner is told with an [`Effect::QueueReady`].
pub(super) fn proxy_enqueue_shared_queue(mut caller: Ctx<'_>, queue_id: u32, value_data: u32, value_size: u32) -> u32 {
    let Some(value) = read(&mut caller, value_data, value_size) else { return Status::BadArgument.into() };
    match caller.data().env.enqueue(queue_id, &value) {
        None => Status::NotFound,
        Some(Err(())) => Status::InternalFailure,
        Some(Ok((vm, context))) => {
            caller.data_mut().effects.push(Effect::QueueReady { vm, context, queue: queue_id });
            Status::Ok
        }
    }
    .into()
}

pub(super) fn proxy_dequeue_shared_queue(
    mut caller: Ctx<'_>,
    queue_id: u32,
    return_value_data: u32,
    return_value_size: u32,
) -> wasmtime::Result<u32> {
    match caller.data().env.dequeue(queue_id) {
        None => Ok(Status::NotFound.into()),
        Some(None) => Ok(Status::Empty.into()),
        Some(Some(item)) => give(&mut caller, &item, return_value_data, return_value_size),
    }
}
