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

/// A loopback TCP port to listen on later, for a server that must know its port before it binds
/// (Envoy's listeners, a deployment's public URL, a child process's `--port`).
///
/// Taken below the kernel's ephemeral range, so that no client connection of the tests can make
/// it its source port in the meantime (with thousands of connections in a load test, one picked
/// by `bind(0)` was, and Envoy could not start); and never handed out twice by one process, so two
/// tests running side by side cannot be given the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static TAKEN: AtomicU32 = AtomicU32::new(0);
    // Ports from 10000 up to where the ephemeral ones begin (32768 unless configured otherwise).
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, span) = (10_000, ephemeral_low.saturating_sub(10_000).max(1_000));
    // Processes start at different places, so test binaries run one after another (or a
    // child's own tests) rarely meet.
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..span {
        let port = low + start.wrapping_add(TAKEN.fetch_add(1, Ordering::Relaxed)) % span;
        let port = u16::try_from(port).expect("below the ephemeral range");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {low} and {}", low + span)
}

pub use demo_app::{DemoApp, DemoAppConfig, RunningDemoApp};
pub use standin::{Fault, FaultRule, IdentitySeed, RunningStandin, SessionHandle, Standin, StandinConfig};

#[cfg(test)]
mod tests {
    #[test]
    fn free_ports_are_distinct_listenable_and_outside_the_ephemeral_range() {
        let ports: Vec<u16> = (0..64).map(|_| super::free_port()).collect();
        let distinct: std::collections::HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port handed out twice: {ports:?}");
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
        let ephemeral_low: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
        for port in ports {
            assert!(port < ephemeral_low, "{port} is where client connections take their ports");
            std::net::TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| panic!("port {port}: {e}"));
        }
    }
}
