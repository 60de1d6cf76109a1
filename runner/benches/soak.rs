//! `make soak`: load the proxy for a while and watch it. Not a test and not a benchmark: it
//! reports, every 5 seconds, what the clients saw (answers, errors by kind) and the proxy's
//! resident memory, for the runner (the real `ory-proxy` binary) and for Envoy with the same
//! filter, and exits non-zero when any request failed.
//!
//! Each of `--connections` clients keeps one HTTP/1.1 connection and alternates an open page and
//! a protected one with a session (cached after the first whoami call), against the Ory
//! stand-in and a tiny app, all on this machine.
//!
//! `cargo bench -p ory-proxy --bench soak -- [--seconds 60] [--connections 256] [--host runner|envoy|both]`

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use ory_proxy::envoy::{EnvoyOptions, bootstrap_yaml};
use ory_proxy::plan::{self, Deployment};
use ory_proxy_tests::envoy::{EnvoyStart, RunningEnvoy};
use ory_proxy_tests::http::{bind_loopback, response, spawn_server};
use ory_proxy_tests::standin::{DEMO_EMAIL, Standin, StandinConfig};

const BINARY: &str = env!("CARGO_BIN_EXE_ory-proxy");
const REPORT_EVERY: Duration = Duration::from_secs(5);

struct Options {
    seconds: u64,
    connections: usize,
    hosts: Vec<&'static str>,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options { seconds: 60, connections: 256, hosts: vec!["runner", "envoy"] };
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => options.seconds = value()?.parse().context("--seconds")?,
            "--connections" => options.connections = value()?.parse().context("--connections")?,
            "--host" => {
                options.hosts = match value()?.as_str() {
                    "runner" => vec!["runner"],
                    "envoy" => vec!["envoy"],
                    "both" => vec!["runner", "envoy"],
                    other => bail!("--host {other}: runner, envoy or both"),
                }
            }
            other => bail!("unknown argument {other} (--seconds N, --connections N, --host runner|envoy|both)"),
        }
    }
    Ok(options)
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    answered: AtomicU64,
    wrong_status: AtomicU64,
    failed: AtomicU64,
}

impl Tally {
    fn errors(&self) -> u64 {
        self.wrong_status.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }
}

/// The proxy being soaked.
enum Proxy {
    Runner(Child),
    Envoy(RunningEnvoy),
}

impl Proxy {
    fn pid(&self) -> u32 {
        match self {
            Proxy::Runner(child) => child.id(),
            Proxy::Envoy(envoy) => envoy.pid(),
        }
    }

    fn stop(self) {
        match self {
            Proxy::Runner(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Proxy::Envoy(envoy) => envoy.shutdown(),
        }
    }
}

fn resident_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn wait_for_port(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after 30s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn start(host: &str, app: SocketAddr, ory: &str, work: &std::path::Path) -> anyhow::Result<(Proxy, SocketAddr)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?.serialize_pem();
    let key_file = work.join("signing-key.pem");
    std::fs::write(&key_file, &key)?;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    match host {
        "runner" => {
            let child = Command::new(BINARY)
                .args(["local", &format!("http://{app}"), "--port", &listen.port().to_string()])
                .args(["--sdk-url", ory, "--protect-path-prefix", "/members", "--jwt-key"])
                .arg(&key_file)
                .args(["--no-https", "--no-open", "--dont-install-cert"])
                .env("ORY_PROXY_HOME", work)
                .env("ORY_PROXY_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .context("starting ory-proxy")?;
            wait_for_port(listen).await?;
            Ok((Proxy::Runner(child), listen))
        }
        _ => {
            let mut deployment = Deployment::new(url::Url::parse(&format!("http://{app}"))?, listen, key);
            deployment.ory_url = Some(url::Url::parse(ory)?);
            deployment.protection.prefixes.push("/members".into());
            let plan = plan::plan(&deployment)?;
            let module = work.join("ory_proxy_filter.wasm");
            std::fs::write(&module, ory_proxy::local::EMBEDDED_FILTER)?;
            let admin_port = free_port()?;
            let options = EnvoyOptions { module_path: module.display().to_string(), admin_port: Some(admin_port) };
            let envoy = RunningEnvoy::start(EnvoyStart {
                bootstrap: bootstrap_yaml(&plan, &options),
                admin_port,
                listen,
                concurrency: 2,
                env: plan.vm_environment.clone(),
            })
            .await?;
            Ok((Proxy::Envoy(envoy), listen))
        }
    }
}

/// One client: one kept-alive connection (a new one after a failure), open and protected pages
/// in turn, until `until`.
async fn client(proxy: SocketAddr, cookie: String, until: Instant, tally: Arc<Tally>) {
    let mut turn = 0u64;
    while Instant::now() < until {
        let Ok(stream) = tokio::net::TcpStream::connect(proxy).await else {
            tally.failed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok((mut sender, connection)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
            tally.failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        tokio::spawn(connection);
        while Instant::now() < until {
            turn += 1;
            let path = if turn.is_multiple_of(2) { "/members/page" } else { "/page" };
            let request = http::Request::get(path)
                .header(http::header::HOST, proxy.to_string())
                .header(http::header::COOKIE, &cookie)
                .body(Empty::<Bytes>::new())
                .expect("a valid request");
            let answered = async {
                let response = sender.send_request(request).await?;
                let status = response.status();
                response.into_body().collect().await?;
                anyhow::Ok(status)
            };
            match tokio::time::timeout(Duration::from_secs(10), answered).await {
                Ok(Ok(StatusCode::OK)) => tally.answered.fetch_add(1, Ordering::Relaxed),
                Ok(Ok(_)) => tally.wrong_status.fetch_add(1, Ordering::Relaxed),
                Ok(Err(_)) | Err(_) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            };
        }
    }
}

async fn soak(host: &str, options: &Options) -> anyhow::Result<u64> {
    let work = std::env::temp_dir().join(format!("ory-proxy-soak-{}-{host}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let standin = Standin::start(StandinConfig::default()).await?;
    let app = spawn_server(bind_loopback(0).await?, |_, _| async {
        Ok(response(StatusCode::OK, "text/plain", "hello from the app"))
    })?;
    let (proxy, addr) = start(host, app.local_addr(), &standin.url(), &work).await?;
    let session = standin.create_session(DEMO_EMAIL)?;
    let pid = proxy.pid();
    println!(
        "{host}: {} connections for {} s; RSS at start {:.1} MiB",
        options.connections,
        options.seconds,
        resident_mib(pid)
    );
    println!("{:>6} {:>10} {:>8} {:>8} {:>9}", "t (s)", "answers/s", "status", "failed", "RSS MiB");

    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let until = started + Duration::from_secs(options.seconds);
    let clients: Vec<_> = (0..options.connections)
        .map(|_| tokio::spawn(client(addr, session.cookie.clone(), until, tally.clone())))
        .collect();
    let mut last = 0;
    while Instant::now() < until {
        tokio::time::sleep(REPORT_EVERY.min(until.saturating_duration_since(Instant::now()))).await;
        let answered = tally.answered.load(Ordering::Relaxed);
        println!(
            "{:>6} {:>10.0} {:>8} {:>8} {:>9.1}",
            started.elapsed().as_secs(),
            (answered - last) as f64 / REPORT_EVERY.as_secs_f64(),
            tally.wrong_status.load(Ordering::Relaxed),
            tally.failed.load(Ordering::Relaxed),
            resident_mib(pid),
        );
        last = answered;
    }
    for client in clients {
        let _ = client.await;
    }
    println!(
        "{host}: {} answers, {} wrong statuses, {} failures, {} whoami calls, RSS at the end {:.1} MiB\n",
        tally.answered.load(Ordering::Relaxed),
        tally.wrong_status.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        standin.whoami_calls(),
        resident_mib(pid),
    );
    proxy.stop();
    app.shutdown().await;
    standin.shutdown().await;
    let _ = std::fs::remove_dir_all(&work);
    Ok(tally.errors())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    let mut errors = 0;
    for host in &options.hosts {
        errors += soak(host, &options).await?;
    }
    if errors > 0 {
        bail!("{errors} requests failed");
    }
    Ok(())
}
