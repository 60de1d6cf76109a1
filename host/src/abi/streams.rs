//! Stream control (continue, close, answer locally) and the effective context.

use super::Ctx;
use super::memory::read;
use super::types::{Status, StreamType};
use crate::types::{Direction, Effect, HeaderList, LocalReply};

pub(super) fn proxy_continue_stream(mut caller: Ctx<'_>, stream_type: u32) -> u32 {
    stream_effect(&mut caller, stream_type, |context, direction| Effect::Continue { context, direction })
}

pub(super) fn proxy_close_stream(mut caller: Ctx<'_>, stream_type: u32) -> u32 {
    stream_effect(&mut caller, stream_type, |context, direction| Effect::Close { context, direction })
}

/// Records `make(context, direction)` for the effective stream.
fn stream_effect(caller: &mut Ctx<'_>, stream_type: u32, make: fn(u32, Direction) -> Effect) -> u32 {
    let state = caller.data_mut();
    let context = state.effective;
    let direction = match StreamType::try_from(stream_type) {
        Ok(StreamType::HttpRequest) => Direction::Request,
        Ok(StreamType::HttpResponse) => Direction::Response,
        // Downstream/upstream are TCP filter streams, which this HTTP host does not run.
        Ok(StreamType::Downstream | StreamType::Upstream) | Err(_) => return Status::BadArgument.into(),
    };
    if !state.streams.contains_key(&context) {
        return Status::BadArgument.into();
    }
    state.effects.push(make(context, direction));
    Status::Ok.into()
}

#[expect(clippy::too_many_arguments, reason = "the ABI's signature")]
pub(super) fn proxy_send_local_response(
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
        return Status::BadArgument.into();
    };
    let Ok(status) = u16::try_from(status_code) else { return Status::BadArgument.into() };
    if !(100..=999).contains(&status) {
        return Status::BadArgument.into();
    }
    let state = caller.data_mut();
    let context = state.effective;
    if !state.streams.contains_key(&context) {
        return Status::BadArgument.into();
    }
    let details = String::from_utf8_lossy(&details).into_owned();
    let reply = LocalReply { status, details, headers, body };
    state.effects.push(Effect::LocalReply { context, reply });
    Status::Ok.into()
}

/// Host calls then act on `context_id`: the root context or one of this VM's streams.
pub(super) fn proxy_set_effective_context(mut caller: Ctx<'_>, context_id: u32) -> u32 {
    let state = caller.data_mut();
    if context_id == state.root || state.streams.contains_key(&context_id) {
        state.effective = context_id;
        Status::Ok
    } else {
        Status::BadArgument
    }
    .into()
}

pub(super) fn proxy_done(_: Ctx<'_>) -> u32 {
    Status::Ok.into()
}
