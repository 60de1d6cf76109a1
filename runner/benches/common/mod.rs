//! What `make soak` and `make bench` share: starting the proxy under test (the real `ory-proxy`
//! binary, or Envoy with a bootstrap from the same plan) in front of an app and the Ory
//! stand-in, and reading its memory.
//!
//! Both proxies get the same deployment: the app as upstream, the stand-in as Ory, `/members`
//! protected, a fresh signing key. Only the filter differs: ours, another module in its place
//! (the bench's no-op filter), or, in Envoy, none at all.

// Each bench uses part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ory_proxy::deployment::Deployment;
use ory_proxy::envoy::{EnvoyOptions, Node, bootstrap, bootstrap_yaml};
use ory_proxy_tests::envoy::{EnvoyStart, RunningEnvoy};

/// The `ory-proxy` binary cargo built for this bench.
pub const BINARY: &str = env!("CARGO_BIN_EXE_ory-proxy");

/// Which proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    Runner,
    Envoy,
}

impl Host {
    pub fn name(self) -> &'static str {
        match self {
            Host::Runner => "runner",
            Host::Envoy => "envoy",
        }
    }
}

/// Which filter the proxy runs.
#[derive(Debug, Clone)]
pub enum Filter {
    /// Ours, the module embedded in the binary.
    Ours,
    /// Another proxy-wasm module, given the same configuration as ours.
    Module(PathBuf),
    /// No filter at all: Envoy's router alone (the runner always runs a filter).
    None,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Setup {
    pub host: Host,
    pub filter: Filter,
    /// The app (every path that is not Ory's).
    pub app: SocketAddr,
    /// The Ory stand-in's URL.
    pub ory: String,
    /// Where the key, the module and the runner's home go.
    pub work: PathBuf,
    /// Run the proxy on these CPUs only (`taskset -c`); anywhere when `None`.
    pub cpu_list: Option<String>,
    /// Envoy's worker threads (one filter VM each).
    pub envoy_workers: u32,
    /// `--max-concurrent-whoami` (the filter's default when `None`).
    pub max_concurrent_whoami: Option<u32>,
}

impl Setup {
    /// Ours in `host`, unpinned, two Envoy workers, everything else at its default.
    pub fn new(host: Host, app: SocketAddr, ory: &str, work: &Path) -> Setup {
        Setup {
            host,
            filter: Filter::Ours,
            app,
            ory: ory.to_string(),
            work: work.to_path_buf(),
            cpu_list: None,
            envoy_workers: 2,
            max_concurrent_whoami: None,
        }
    }
}

/// A started proxy.
pub struct Proxy {
    pub addr: SocketAddr,
    /// Just before its process was started.
    pub spawned: Instant,
    running: Running,
}

enum Running {
    Runner(Child),
    Envoy(RunningEnvoy),
}

impl Proxy {
    pub fn pid(&self) -> u32 {
        match &self.running {
            Running::Runner(child) => child.id(),
            Running::Envoy(envoy) => envoy.pid(),
        }
    }

    pub fn stop(self) {
        match self.running {
            Running::Runner(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Running::Envoy(envoy) => envoy.shutdown(),
        }
    }
}

/// Starts the proxy and waits until it accepts connections (Envoy: until its admin interface
/// says it is ready).
pub async fn start(setup: &Setup) -> anyhow::Result<Proxy> {
    std::fs::create_dir_all(&setup.work)?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?.serialize_pem();
    let key_file = setup.work.join("signing-key.pem");
    std::fs::write(&key_file, &key)?;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    match setup.host {
        Host::Runner => {
            let mut command = match &setup.cpu_list {
                Some(cpus) => {
                    // taskset execs the binary: the child's pid is still the proxy's.
                    let mut taskset = Command::new("taskset");
                    taskset.args(["-c", cpus, BINARY]);
                    taskset
                }
                None => Command::new(BINARY),
            };
            command
                .args(["local", &format!("http://{}", setup.app), "--port", &listen.port().to_string()])
                .args(["--sdk-url", &setup.ory, "--protect-path-prefix", "/members", "--jwt-key"])
                .arg(&key_file)
                .args(["--no-https", "--no-open", "--dont-install-cert"]);
            if let Some(max) = setup.max_concurrent_whoami {
                command.args(["--max-concurrent-whoami", &max.to_string()]);
            }
            match &setup.filter {
                Filter::Ours => {}
                Filter::Module(path) => {
                    command.arg("--filter").arg(path);
                }
                Filter::None => bail!("the runner always runs a filter"),
            }
            let spawned = Instant::now();
            let child = command
                .env("ORY_PROXY_HOME", &setup.work)
                .env("ORY_PROXY_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .context("starting ory-proxy")?;
            wait_for_port(listen).await?;
            Ok(Proxy { addr: listen, spawned, running: Running::Runner(child) })
        }
        Host::Envoy => {
            let mut deployment = Deployment::new(url::Url::parse(&format!("http://{}", setup.app))?, listen, key);
            deployment.ory_url = Some(url::Url::parse(&setup.ory)?);
            deployment.protection.prefixes.push("/members".into());
            deployment.max_concurrent_whoami = setup.max_concurrent_whoami;
            let plan = deployment.plan()?;
            let module = match &setup.filter {
                Filter::Module(path) => path.clone(),
                Filter::Ours | Filter::None => {
                    let module = setup.work.join("ory_proxy_filter.wasm");
                    std::fs::write(&module, ory_proxy::local::EMBEDDED_FILTER)?;
                    module
                }
            };
            let admin_port = free_port();
            let options = EnvoyOptions { module_path: module.display().to_string(), admin_port: Some(admin_port) };
            let bootstrap = match setup.filter {
                Filter::None => {
                    let mut tree = bootstrap(&plan, &options);
                    remove_wasm_filter(&mut tree);
                    // JSON is YAML.
                    serde_json::to_string_pretty(&tree)?
                }
                _ => bootstrap_yaml(&plan, &options),
            };
            let spawned = Instant::now();
            let envoy = RunningEnvoy::start(EnvoyStart {
                bootstrap,
                admin_port,
                listen: Some(listen),
                concurrency: setup.envoy_workers,
                env: plan.plugin.environment.clone(),
                cpu_list: setup.cpu_list.clone(),
                log_level: Some("warning".into()),
            })
            .await?;
            Ok(Proxy { addr: listen, spawned, running: Running::Envoy(envoy) })
        }
    }
}

/// Drops the Wasm filter from every `http_filters` list of a bootstrap: Envoy's router alone.
fn remove_wasm_filter(node: &mut Node) {
    match node {
        Node::Map(entries) => {
            for (key, value) in entries {
                if let (true, Node::List(filters)) = (key == "http_filters", &mut *value) {
                    filters.retain(|filter| !is_named(filter, "envoy.filters.http.wasm"));
                }
                remove_wasm_filter(value);
            }
        }
        Node::List(items) => items.iter_mut().for_each(remove_wasm_filter),
        _ => {}
    }
}

fn is_named(node: &Node, name: &str) -> bool {
    matches!(node, Node::Map(entries)
        if entries.iter().any(|(key, value)| key == "name" && *value == Node::Str(name.into())))
}

/// The resident memory of a process, in MiB (0 when it cannot be read).
pub fn resident_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

pub use ory_proxy_tests::free_port;

pub async fn wait_for_port(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after 30s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}
