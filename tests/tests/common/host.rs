//! The proxy under test, in either host: the runner (`ory-proxy local`, in this process) or a
//! real Envoy started from the bootstrap `ory-proxy envoy-config` prints for the same deployment.
//! Tests are written once against [`Proxy`] and run in both through [`both_hosts!`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use ory_proxy::deployment::{Deployment, Plan};
use ory_proxy::envoy::{EnvoyOptions, bootstrap_yaml};
use ory_proxy::local;
use ory_proxy::proxy::ProxyHandle;
use ory_proxy_tests::envoy::{EnvoyStart, RunningEnvoy};

/// Which proxy-wasm host runs the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    Runner,
    Envoy,
}

/// Worker threads Envoy runs in the tests: more than one, so that every test also checks that
/// what must be process-wide (key, cache) is shared across VMs.
pub const ENVOY_WORKERS: u32 = 2;

/// A filter module to run.
#[derive(Debug, Clone, Copy)]
pub enum Filter {
    /// The ory-proxy filter built with the runner.
    Embedded,
    /// One of `test-filters/` (by crate name without the `test-filter-` prefix).
    Test(&'static str),
}

impl Filter {
    fn bytes(self) -> Vec<u8> {
        match self {
            Filter::Embedded => local::EMBEDDED_FILTER.to_vec(),
            Filter::Test(name) => std::fs::read(self.path()).unwrap_or_else(|e| panic!("test filter {name}: {e}")),
        }
    }

    /// A file Envoy can load.
    fn path(self) -> PathBuf {
        match self {
            Filter::Embedded => {
                static WRITTEN: OnceLock<PathBuf> = OnceLock::new();
                WRITTEN
                    .get_or_init(|| {
                        let path = std::env::temp_dir().join(format!("ory-proxy-filter-{}.wasm", std::process::id()));
                        std::fs::write(&path, local::EMBEDDED_FILTER).expect("writing the filter for Envoy");
                        path
                    })
                    .clone()
            }
            Filter::Test(name) => ory_proxy_tests::test_filter(name),
        }
    }
}

/// A running proxy: the same questions answered for either host.
pub struct Proxy {
    pub host: Host,
    pub addr: SocketAddr,
    running: Running,
}

enum Running {
    Runner(ProxyHandle),
    Envoy(RunningEnvoy),
}

/// A free loopback port: the plan needs the proxy's real port for its public URL.
pub use ory_proxy_tests::free_port;

/// A deployment of `upstream` on a free loopback port, signing with a fresh key.
pub fn deployment(upstream: &str) -> Deployment {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap().serialize_pem();
    let upstream = url::Url::parse(upstream).unwrap();
    Deployment::new(upstream, SocketAddr::from(([127, 0, 0, 1], free_port())), key)
}

impl Proxy {
    /// Runs `deployment` with the embedded filter.
    pub async fn start(host: Host, deployment: &Deployment) -> Proxy {
        Proxy::start_filter(host, deployment, Filter::Embedded).await
    }

    /// Runs `deployment` with `filter`, in `host`.
    pub async fn start_filter(host: Host, deployment: &Deployment, filter: Filter) -> Proxy {
        let plan = deployment.plan().expect("a valid deployment");
        Proxy::try_start_plan(host, &plan, filter, &plan.plugin.environment)
            .await
            .unwrap_or_else(|error| panic!("{error:#}"))
    }

    /// Runs `plan` with `filter`, its VMs seeing `environment` instead of the plan's own: the
    /// runner hands it to its VMs, Envoy is started with it in its process environment (and
    /// passes on what the bootstrap's `host_env_keys` names, as in production).
    pub async fn try_start_plan(
        host: Host,
        plan: &Plan,
        filter: Filter,
        environment: &[(String, String)],
    ) -> anyhow::Result<Proxy> {
        match host {
            Host::Runner => {
                let mut plan = plan.clone();
                plan.plugin.environment = environment.to_vec();
                // Metrics and health on a port of their own, as `--metrics-addr` asks.
                plan.metrics_addr.get_or_insert(SocketAddr::from(([127, 0, 0, 1], 0)));
                let handle = local::start(&plan, &filter.bytes()).await?.spawn()?;
                Ok(Proxy { host, addr: handle.addr, running: Running::Runner(handle) })
            }
            Host::Envoy => {
                let envoy = RunningEnvoy::start(envoy_start(plan, filter, environment, Some(plan.listen))).await?;
                Ok(Proxy { host, addr: plan.listen, running: Running::Envoy(envoy) })
            }
        }
    }

    /// Runs `plan` (of `ory-proxy run`, say) with `filter`, in `host`.
    pub async fn start_plan(host: Host, plan: &Plan, filter: Filter) -> Proxy {
        Proxy::try_start_plan(host, plan, filter, &plan.plugin.environment)
            .await
            .unwrap_or_else(|error| panic!("{error:#}"))
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// How many VMs of the filter serve requests (the most whoami calls one session may cost
    /// when its requests arrive all at once).
    pub fn vms(&self) -> usize {
        match &self.running {
            Running::Runner(_) => ory_proxy::proxy::PoolOptions::default().workers,
            Running::Envoy(envoy) => envoy.concurrency as usize,
        }
    }

    /// The metrics in the Prometheus text format: the runner's `/metrics` (`--metrics-addr`), or
    /// Envoy's admin `/stats/prometheus`.
    pub async fn metrics_text(&self) -> String {
        match &self.running {
            Running::Runner(handle) => {
                let addr = handle.metrics_addr.expect("the runner serves metrics in the tests");
                let answer = ory_proxy_tests::http::HttpClient::new().get(&format!("http://{addr}/metrics"), &[]).await;
                answer.expect("the runner's /metrics answers").text()
            }
            Running::Envoy(envoy) => envoy.admin_get("/stats/prometheus").await.expect("Envoy's admin answers"),
        }
    }

    /// One sample of the metrics: `name` as written in the text format (e.g.
    /// `x_bucket{le="+Inf"}`; Envoy writes `x{}` where the runner writes `x`), or `None`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.metrics_text().await;
        text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
            let (sample, value) = line.rsplit_once(' ')?;
            let bare = sample.strip_suffix("{}").unwrap_or(sample);
            (bare == name).then(|| value.parse().ok()).flatten()
        })
    }

    /// The runner's metrics address, when that is the host.
    pub fn runner_metrics_addr(&self) -> Option<SocketAddr> {
        match &self.running {
            Running::Runner(handle) => handle.metrics_addr,
            Running::Envoy(_) => None,
        }
    }

    /// The Envoy process, when that is the host.
    pub fn envoy(&self) -> Option<&RunningEnvoy> {
        match &self.running {
            Running::Envoy(envoy) => Some(envoy),
            Running::Runner(_) => None,
        }
    }

    /// Resident memory of the process that runs the proxy, from /proc (Linux). For the runner
    /// that is this test process.
    pub fn resident_bytes(&self) -> usize {
        let status = match &self.running {
            Running::Runner(_) => std::fs::read_to_string("/proc/self/status"),
            Running::Envoy(envoy) => std::fs::read_to_string(format!("/proc/{}/status", envoy.pid())),
        };
        let status = status.expect("/proc is readable");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc status");
        let kib: usize = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("a number of KiB");
        kib * 1024
    }

    pub async fn stop(self) {
        match self.running {
            Running::Runner(handle) => handle.shutdown().await.unwrap(),
            Running::Envoy(envoy) => envoy.shutdown(),
        }
    }
}

/// How to start Envoy with the bootstrap for `plan` and `filter`, its VMs seeing `environment`,
/// waiting for `listen` (none for a service).
fn envoy_start(
    plan: &Plan,
    filter: Filter,
    environment: &[(String, String)],
    listen: Option<SocketAddr>,
) -> EnvoyStart {
    let admin_port = free_port();
    let options = EnvoyOptions { module_path: filter.path().display().to_string(), admin_port: Some(admin_port) };
    EnvoyStart {
        bootstrap: bootstrap_yaml(plan, &options),
        admin_port,
        listen,
        concurrency: plan.workers.map_or(ENVOY_WORKERS, |workers| workers as u32),
        env: environment.to_vec(),
        cpu_list: None,
        log_level: None,
    }
}

/// The plan `ory-proxy run --filter <filter> <args>` makes, on a free loopback port.
pub fn run_plan(filter: Filter, args: &[&str]) -> Plan {
    let (filter, port) = (filter.path().display().to_string(), free_port().to_string());
    let command = ["ory-proxy", "run", "--filter", &filter, "--port", &port, "--no-https"];
    let cli = <ory_proxy::cli::Cli as clap::Parser>::try_parse_from(command.iter().chain(args))
        .unwrap_or_else(|error| panic!("{error}"));
    let ory_proxy::cli::Command::Run(args) = cli.command else { unreachable!("a run command") };
    ory_proxy::deployment::resolve_run(&args).unwrap_or_else(|error| panic!("{error:#}"))
}

/// A root-only plugin (a wasm service) running in either host.
pub struct Service {
    running: RunningService,
}

enum RunningService {
    Runner(std::sync::Arc<ory_proxy::proxy::FilterPool>),
    Envoy(RunningEnvoy),
}

impl Service {
    pub async fn start(host: Host, plan: &Plan, filter: Filter) -> Service {
        let running = match host {
            Host::Runner => {
                RunningService::Runner(local::start_service(plan, &filter.bytes()).unwrap_or_else(|e| panic!("{e:#}")))
            }
            Host::Envoy => {
                let start = envoy_start(plan, filter, &plan.plugin.environment, None);
                RunningService::Envoy(RunningEnvoy::start(start).await.unwrap_or_else(|e| panic!("{e:#}")))
            }
        };
        Service { running }
    }

    pub fn stop(self) {
        match self.running {
            RunningService::Runner(pool) => drop(pool),
            RunningService::Envoy(envoy) => envoy.shutdown(),
        }
    }
}

/// Writes a test once and runs it against both hosts: `name::runner` and `name::envoy`.
///
/// ```ignore
/// both_hosts! {
///     async fn answers_jwks(host: Host) { ... }
/// }
/// ```
#[macro_export]
macro_rules! both_hosts {
    ($($(#[$meta:meta])* async fn $name:ident($host:ident: Host) $body:block)*) => {$(
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn scenario($host: $crate::common::host::Host) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn runner() {
                scenario($crate::common::host::Host::Runner).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn envoy() {
                scenario($crate::common::host::Host::Envoy).await
            }
        }
    )*};
}
