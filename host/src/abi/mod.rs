//! The proxy-wasm ABI v0.2.1 host functions, with the statuses Envoy answers.
//!
//! Every function here runs while the filter is inside a call: it reads and writes the VM's
//! state and records effects, but never calls back into the filter's callbacks (only into its
//! allocator, as Envoy does).
//!
//! Each host call is a function of the same name, in the file of its area (`headers.rs` has
//! `proxy_get_header_map_pairs`); [`link`] lists them all. They read and write the filter's memory
//! through [`memory`]; the ABI's numbers (statuses, map and buffer types, log levels…) are the
//! enums of [`types`].

mod buffers;
mod calls;
mod headers;
mod logging;
mod memory;
mod metrics;
mod properties;
mod shared;
mod streams;
mod time;
pub(crate) mod types;
mod wasi;

use wasmtime::{Caller, Linker};

use super::vm::VmState;

pub(crate) use wasi::link_unsupported_wasi;

pub(crate) const ENV: &str = "env";
pub(crate) const WASI: &str = "wasi_snapshot_preview1";

/// What every host function receives first: the calling instance, with its [`VmState`].
type Ctx<'a> = Caller<'a, VmState>;

/// Defines every `env` function of ABI v0.2.1 and the WASI functions Rust SDK filters import.
pub(crate) fn link(linker: &mut Linker<VmState>) -> anyhow::Result<()> {
    linker.func_wrap(ENV, "proxy_log", logging::proxy_log)?;
    linker.func_wrap(ENV, "proxy_get_log_level", logging::proxy_get_log_level)?;
    linker.func_wrap(ENV, "proxy_get_current_time_nanoseconds", time::proxy_get_current_time_nanoseconds)?;
    linker.func_wrap(ENV, "proxy_set_tick_period_milliseconds", time::proxy_set_tick_period_milliseconds)?;

    linker.func_wrap(ENV, "proxy_get_buffer_bytes", buffers::proxy_get_buffer_bytes)?;
    linker.func_wrap(ENV, "proxy_set_buffer_bytes", buffers::proxy_set_buffer_bytes)?;

    linker.func_wrap(ENV, "proxy_get_header_map_pairs", headers::proxy_get_header_map_pairs)?;
    linker.func_wrap(ENV, "proxy_set_header_map_pairs", headers::proxy_set_header_map_pairs)?;
    linker.func_wrap(ENV, "proxy_get_header_map_value", headers::proxy_get_header_map_value)?;
    linker.func_wrap(ENV, "proxy_replace_header_map_value", headers::proxy_replace_header_map_value)?;
    linker.func_wrap(ENV, "proxy_add_header_map_value", headers::proxy_add_header_map_value)?;
    linker.func_wrap(ENV, "proxy_remove_header_map_value", headers::proxy_remove_header_map_value)?;

    linker.func_wrap(ENV, "proxy_get_property", properties::proxy_get_property)?;
    linker.func_wrap(ENV, "proxy_set_property", properties::proxy_set_property)?;

    linker.func_wrap(ENV, "proxy_get_shared_data", shared::proxy_get_shared_data)?;
    linker.func_wrap(ENV, "proxy_set_shared_data", shared::proxy_set_shared_data)?;
    linker.func_wrap(ENV, "proxy_register_shared_queue", shared::proxy_register_shared_queue)?;
    linker.func_wrap(ENV, "proxy_resolve_shared_queue", shared::proxy_resolve_shared_queue)?;
    linker.func_wrap(ENV, "proxy_enqueue_shared_queue", shared::proxy_enqueue_shared_queue)?;
    linker.func_wrap(ENV, "proxy_dequeue_shared_queue", shared::proxy_dequeue_shared_queue)?;

    linker.func_wrap(ENV, "proxy_continue_stream", streams::proxy_continue_stream)?;
    linker.func_wrap(ENV, "proxy_close_stream", streams::proxy_close_stream)?;
    linker.func_wrap(ENV, "proxy_send_local_response", streams::proxy_send_local_response)?;
    linker.func_wrap(ENV, "proxy_set_effective_context", streams::proxy_set_effective_context)?;
    linker.func_wrap(ENV, "proxy_done", streams::proxy_done)?;

    linker.func_wrap(ENV, "proxy_http_call", calls::proxy_http_call)?;
    linker.func_wrap(ENV, "proxy_grpc_call", calls::proxy_grpc_call)?;
    linker.func_wrap(ENV, "proxy_grpc_stream", calls::proxy_grpc_stream)?;
    linker.func_wrap(ENV, "proxy_grpc_send", calls::proxy_grpc_send)?;
    linker.func_wrap(ENV, "proxy_grpc_cancel", calls::proxy_grpc_cancel)?;
    linker.func_wrap(ENV, "proxy_grpc_close", calls::proxy_grpc_close)?;
    linker.func_wrap(ENV, "proxy_get_status", calls::proxy_get_status)?;
    linker.func_wrap(ENV, "proxy_call_foreign_function", calls::proxy_call_foreign_function)?;

    linker.func_wrap(ENV, "proxy_define_metric", metrics::proxy_define_metric)?;
    linker.func_wrap(ENV, "proxy_increment_metric", metrics::proxy_increment_metric)?;
    linker.func_wrap(ENV, "proxy_record_metric", metrics::proxy_record_metric)?;
    linker.func_wrap(ENV, "proxy_get_metric", metrics::proxy_get_metric)?;

    link_wasi(linker)
}

/// The WASI functions a Rust std filter imports (the others: [`link_unsupported_wasi`]).
fn link_wasi(linker: &mut Linker<VmState>) -> anyhow::Result<()> {
    linker.func_wrap(WASI, "fd_write", wasi::fd_write)?;
    linker.func_wrap(WASI, "environ_sizes_get", wasi::environ_sizes_get)?;
    linker.func_wrap(WASI, "environ_get", wasi::environ_get)?;
    linker.func_wrap(WASI, "args_sizes_get", wasi::args_sizes_get)?;
    linker.func_wrap(WASI, "args_get", wasi::args_get)?;
    linker.func_wrap(WASI, "proc_exit", wasi::proc_exit)?;
    linker.func_wrap(WASI, "clock_time_get", wasi::clock_time_get)?;
    linker.func_wrap(WASI, "random_get", wasi::random_get)?;
    linker.func_wrap(WASI, "fd_prestat_get", wasi::fd_prestat_get)?;
    Ok(())
}
