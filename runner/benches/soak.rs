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

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use common::{Host, Setup, resident_mib};
use http::StatusCode;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use ory_proxy_tests::http::{bind_loopback, response, spawn_server};
use ory_proxy_tests::standin::{DEMO_EMAIL, Standin, StandinConfig};

const REPORT_EVERY: Duration = Duration::from_secs(5);

struct Options {
    seconds: u64,
    connections: usize,
    hosts: Vec<Host>,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options { seconds: 60, connections: 256, hosts: vec![Host::Runner, Host::Envoy] };
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => options.seconds = value()?.parse().context("--seconds")?,
            "--connections" => options.connections = value()?.parse().context("--connections")?,
            "--host" => {
                options.hosts = match value()?.as_str() {
                    "runner" => vec![Host::Runner],
                    "envoy" => vec![Host::Envoy],
                    "both" => vec![Host::Runner, Host::Envoy],
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

async fn soak(host: Host, options: &Options) -> anyhow::Result<u64> {
    let work = std::env::temp_dir().join(format!("ory-proxy-soak-{}-{}", std::process::id(), host.name()));
    let standin = Standin::start(StandinConfig::default()).await?;
    let app = spawn_server(bind_loopback(0).await?, |_, _| async {
        Ok(response(StatusCode::OK, "text/plain", "hello from the app"))
    })?;
    let proxy = common::start(&Setup::new(host, app.local_addr(), &standin.url(), &work)).await?;
    let addr = proxy.addr;
    let session = standin.create_session(DEMO_EMAIL)?;
    let pid = proxy.pid();
    println!(
        "{}: {} connections for {} s; RSS at start {:.1} MiB",
        host.name(),
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
        "{}: {} answers, {} wrong statuses, {} failures, {} whoami calls, RSS at the end {:.1} MiB\n",
        host.name(),
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
    for &host in &options.hosts {
        errors += soak(host, &options).await?;
    }
    if errors > 0 {
        bail!("{errors} requests failed");
    }
    Ok(())
}
