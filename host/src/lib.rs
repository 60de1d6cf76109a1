//! A generic proxy-wasm ABI v0.2.1 host on wasmtime.
//!
//! It knows nothing about Ory: it would run any Rust, Go or C++ SDK filter. [`Plugin`] compiles a
//! module once; [`Vm`] is one instance of it (Envoy runs one per worker). The VM is synchronous
//! and deterministic: callbacks run when asked, and whatever the filter wants done afterwards
//! (resume a stream, answer locally, call a cluster, set a timer) comes back as [`Effect`]s for
//! the driver — the proxy, or the test [`harness`] — to carry out once the call has returned.

mod abi;
mod code_cache;
mod env;
pub mod exchange;
#[cfg(feature = "harness")]
pub mod harness;
mod types;
mod vm;

pub use abi::types::{MetricType, Status};
pub use env::{Clock, EnvLimits, HISTOGRAM_BOUNDS, HostEnv, MetricSnapshot, SetError};
pub use exchange::{Exchange, Out, Step};
pub use types::{Action, Direction, Effect, HeaderList, HttpCallRequest, HttpCallResponse, LocalReply, StreamInfo};
pub use vm::{ModuleBytes, Plugin, PluginSpec, StreamData, Vm, VmError};
