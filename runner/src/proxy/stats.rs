//! The runner's own counts, beside the filter's metrics: what an operator of the host watches.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts of one proxy, shared by its acceptor and workers.
#[derive(Debug, Default)]
pub struct RunnerStats {
    connections: AtomicU64,
    active_connections: AtomicU64,
    requests: AtomicU64,
    upstream_errors: AtomicU64,
    vm_restarts: AtomicU64,
}

/// One of [`RunnerStats`], as exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub name: &'static str,
    pub help: &'static str,
    /// A gauge (goes up and down) rather than a counter.
    pub gauge: bool,
    pub value: u64,
}

impl RunnerStats {
    /// A client connection was accepted; it counts as active until the guard is dropped.
    pub fn connection(self: &std::sync::Arc<Self>) -> ActiveConnection {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.active_connections.fetch_add(1, Ordering::Relaxed);
        ActiveConnection(self.clone())
    }

    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn upstream_error(&self) {
        self.upstream_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn vm_restart(&self) {
        self.vm_restarts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> [Stat; 5] {
        let read = |value: &AtomicU64| value.load(Ordering::Relaxed);
        [
            Stat {
                name: "ory_proxy_runner_connections_total",
                help: "Client connections accepted.",
                gauge: false,
                value: read(&self.connections),
            },
            Stat {
                name: "ory_proxy_runner_connections_active",
                help: "Client connections open now.",
                gauge: true,
                value: read(&self.active_connections),
            },
            Stat {
                name: "ory_proxy_runner_requests_total",
                help: "Requests received.",
                gauge: false,
                value: read(&self.requests),
            },
            Stat {
                name: "ory_proxy_runner_upstream_errors_total",
                help: "Requests whose upstream could not be reached, timed out or had no route.",
                gauge: false,
                value: read(&self.upstream_errors),
            },
            Stat {
                name: "ory_proxy_runner_vm_restarts_total",
                help: "Filter VMs replaced after a trap.",
                gauge: false,
                value: read(&self.vm_restarts),
            },
        ]
    }
}

/// An open client connection: no longer active once dropped.
pub struct ActiveConnection(std::sync::Arc<RunnerStats>);

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.active_connections.fetch_sub(1, Ordering::Relaxed);
    }
}
