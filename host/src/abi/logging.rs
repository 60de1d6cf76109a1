//! Logging: what the filter logs becomes `tracing` events under the `filter` target.

use super::memory::{read, write_u32};
use super::{BAD_ARGUMENT, Ctx, OK};
use crate::vm::VmState;

pub(super) fn proxy_log(mut caller: Ctx<'_>, log_level: u32, message_data: u32, message_size: u32) -> u32 {
    let Some(message) = read(&mut caller, message_data, message_size) else { return BAD_ARGUMENT };
    log_line(caller.data_mut(), log_level, &String::from_utf8_lossy(&message));
    OK
}

pub(super) fn proxy_get_log_level(mut caller: Ctx<'_>, return_log_level: u32) -> u32 {
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

/// Logs one line of the filter's (from `proxy_log` or its stdout and stderr); error lines are
/// also kept to explain a later failure.
pub(super) fn log_line(state: &mut VmState, level: u32, message: &str) {
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
