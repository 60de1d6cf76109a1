//! Test tooling for ory-proxy.
//!
//! - [`standin`]: a local **Ory stand-in**, a small server that speaks the part of the Ory
//!   (Kratos) public API the proxy relies on. It is a development and test tool, not Ory.
//! - [`demo_app`]: a tiny web app that verifies the proxy's JWT and greets the logged-in user.
//! - [`http`]: the small hyper-based server and client plumbing both use, also handy in tests.
//!
//! Both servers can run in-process on an ephemeral port (`port: 0`) for tests, or as the
//! binaries `ory-standin` and `demo-app`.

pub mod demo_app;
pub mod envoy;

/// The host's test filters (`test-filters/`), built for wasm32-wasip1 by this crate's build
/// script.
pub fn test_filter(name: &str) -> std::path::PathBuf {
    let file = format!("test_filter_{}.wasm", name.replace('-', "_"));
    std::path::Path::new(env!("ORY_PROXY_TEST_FILTERS_DIR")).join(file)
}
pub mod http;
pub mod standin;
pub mod util;

pub use demo_app::{DemoApp, DemoAppConfig, RunningDemoApp};
pub use standin::{Fault, FaultRule, IdentitySeed, RunningStandin, SessionHandle, Standin, StandinConfig};
