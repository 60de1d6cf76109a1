//! Logging: what the filter logs becomes `tracing` events under the `filter` target.

use super::Ctx;
use super::memory::{read, status_of_write, write_u32};
use super::types::{LogLevel, Status};
use crate::vm::VmState;

/// A level past the ABI's is logged as an error.
pub(super) fn proxy_log(mut caller: Ctx<'_>, log_level: u32, message_data: u32, message_size: u32) -> u32 {
    let Some(message) = read(&mut caller, message_data, message_size) else { return Status::BadArgument.into() };
    let level = LogLevel::try_from(log_level).unwrap_or(LogLevel::Critical);
    log_line(caller.data_mut(), level, &String::from_utf8_lossy(&message));
    Status::Ok.into()
}

pub(super) fn proxy_get_log_level(mut caller: Ctx<'_>, return_log_level: u32) -> u32 {
    use tracing::level_filters::LevelFilter;
    let level = match LevelFilter::current() {
        LevelFilter::TRACE => LogLevel::Trace,
        LevelFilter::DEBUG => LogLevel::Debug,
        LevelFilter::INFO => LogLevel::Info,
        LevelFilter::WARN => LogLevel::Warn,
        _ => LogLevel::Error,
    };
    status_of_write(write_u32(&mut caller, return_log_level, level as u32))
}

/// Logs one line of the filter's (from `proxy_log` or its stdout and stderr); error lines are
/// also kept to explain a later failure.
pub(super) fn log_line(state: &mut VmState, level: LogLevel, message: &str) {
    let plugin = state.spec.name.as_str();
    match level {
        LogLevel::Trace => tracing::trace!(target: "filter", plugin, "{message}"),
        LogLevel::Debug => tracing::debug!(target: "filter", plugin, "{message}"),
        LogLevel::Info => tracing::info!(target: "filter", plugin, "{message}"),
        LogLevel::Warn => tracing::warn!(target: "filter", plugin, "{message}"),
        LogLevel::Error | LogLevel::Critical => {
            tracing::error!(target: "filter", plugin, "{message}");
            state.remember_error(message.to_string());
        }
    }
}
