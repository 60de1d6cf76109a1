//! `make bench`: the proxy side by side with nginx and Envoy, on this machine, in one go.
//!
//! An nginx serves the app (a 19-byte answer, and a 100 MB file); every row goes through one
//! proxy to it: nothing, nginx as a reverse proxy, Envoy with no filter, Envoy and the runner
//! (the real `ory-proxy` binary) with a no-op SDK filter, and both with our filter. wrk loads
//! each one; the table shows req/s, p50 and p99 (and MB/s for the download), each also as a
//! ratio to nginx and to Envoy from the same run, then start-up time, resident memory and the
//! modules' sizes. Nothing is asserted: it reports.
//!
//! On two or more CPUs each proxy runs on one (`--proxy-cpu`, 0) and wrk, the app, the Ory
//! stand-in and this process on another (`--load-cpu`, 1), with `taskset`.
//!
//! `cargo bench -p ory-proxy --bench compare -- [--seconds 5] [--connections 64] [--proxy-cpu 0] [--load-cpu 1]`
//! (needs nginx, wrk and taskset on the PATH and Envoy where `make setup-envoy` puts it, or
//! `ORY_PROXY_ENVOY`; `make bench` installs them).

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use common::{Filter, Host, Proxy, Setup, free_port, resident_mib};
use ory_proxy_tests::standin::{DEMO_EMAIL, RunningStandin, Standin, StandinConfig};

/// What the app answers on every path but the download: 19 bytes.
const ANSWER: &str = "hello, from nginx!\n";
/// The download: 100 MB.
const DOWNLOAD_BYTES: usize = 100_000_000;
/// Connections held open, each after one request, for the second memory reading.
const IDLE_CONNECTIONS: usize = 1000;
/// Sessions made for the new-session rows, per second of load (wrk goes round them).
const SESSIONS_PER_SECOND: u64 = 20_000;

struct Options {
    seconds: u64,
    connections: usize,
    proxy_cpu: Option<String>,
    load_cpu: Option<String>,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options { seconds: 5, connections: 64, proxy_cpu: Some("0".into()), load_cpu: Some("1".into()) };
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => options.seconds = value()?.parse().context("--seconds")?,
            "--connections" => options.connections = value()?.parse().context("--connections")?,
            "--proxy-cpu" => options.proxy_cpu = Some(value()?),
            "--load-cpu" => options.load_cpu = Some(value()?),
            other => {
                bail!("unknown argument {other} (--seconds N, --connections N, --proxy-cpu LIST, --load-cpu LIST)")
            }
        }
    }
    if options.seconds == 0 || options.connections == 0 {
        bail!("--seconds and --connections must be at least 1");
    }
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if cpus < 2 {
        eprintln!("only {cpus} CPU: nothing is pinned, the proxy shares it with the load");
        options.proxy_cpu = None;
        options.load_cpu = None;
    }
    Ok(options)
}

fn main() -> anyhow::Result<()> {
    let options = options()?;
    for tool in ["wrk", "nginx", "taskset"] {
        if !on_path(tool) {
            bail!("{tool} is not on the PATH: `make bench` installs it (Debian packages nginx, wrk, util-linux)");
        }
    }
    ory_proxy_tests::envoy::binary()?;
    if let Some(cpu) = &options.load_cpu {
        // Before any thread starts: every thread of this process, the stand-in's too, inherits it.
        let status = Command::new("taskset")
            .args(["-p", "-c", cpu, &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("taskset could not pin this process to CPU {cpu}");
        }
    }
    raise_open_files();
    // Two threads even on one CPU: wrk is waited for on a blocking thread, and the stand-in
    // keeps answering.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(bench(&options))
}

fn on_path(tool: &str) -> bool {
    which::which(tool).is_ok()
}

/// 1,000 client sockets need more than the usual soft limit of 1024 open files; the proxies
/// inherit the raised one.
fn raise_open_files() {
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// What wrk measured for one row.
#[derive(Debug, Clone, Default)]
struct Load {
    requests: u64,
    requests_per_second: f64,
    p50_us: f64,
    p99_us: f64,
    /// Bytes per second, headers included.
    bytes_per_second: f64,
    /// Non-2xx answers and socket errors.
    errors: u64,
    /// How busy the process that answered was meanwhile, in % of one CPU: near 100, the row
    /// measured that process; well below, something else held it back.
    cpu_percent: Option<f64>,
}

/// One process under test: when it first answered and what it held.
#[derive(Debug, Clone, Default)]
struct Process {
    startup_ms: f64,
    rss_idle_mib: f64,
    rss_connections_mib: f64,
}

#[derive(Default)]
struct Results {
    /// Row name → load, in the order run.
    loads: Vec<(String, Load)>,
    downloads: Vec<(String, Load)>,
    processes: Vec<(String, Process)>,
    notes: Vec<String>,
}

impl Results {
    fn load(&self, name: &str) -> Option<&Load> {
        self.loads.iter().find(|(n, _)| n == name).map(|(_, l)| l)
    }
    fn download(&self, name: &str) -> Option<&Load> {
        self.downloads.iter().find(|(n, _)| n == name).map(|(_, l)| l)
    }
    fn process(&self, name: &str) -> Option<&Process> {
        self.processes.iter().find(|(n, _)| n == name).map(|(_, p)| p)
    }
}

const STANDIN_WHOAMI: &str = "Ory stand-in alone, whoami, a new session each time";
const NGINX: &str = "nginx reverse proxy";
const ENVOY: &str = "Envoy, no filter";
const ENVOY_NOOP: &str = "Envoy + no-op filter";
const ENVOY_OURS: &str = "Envoy + our filter";
const RUNNER_NOOP: &str = "runner + no-op filter";
const RUNNER_OURS: &str = "runner + our filter";

/// The paths of our filter's rows.
const OPEN: &str = "open path";
const CACHED: &str = "cached session";
const NEW_SESSION: &str = "new session (whoami + sign)";
const JWKS: &str = "/.ory/jwks.json";

struct Bench<'a> {
    options: &'a Options,
    work: PathBuf,
    upstream: SocketAddr,
    standin: RunningStandin,
    cookie: String,
    /// A wrk script that sends a session never seen before with each request.
    new_sessions_script: PathBuf,
    /// How many sessions that script goes round.
    sessions: u64,
    noop: PathBuf,
    /// The process the next wrk rows load (its CPU time is read around each).
    loaded: Option<u32>,
    upstream_pid: u32,
    results: Results,
}

async fn bench(options: &Options) -> anyhow::Result<()> {
    let work = std::env::temp_dir().join(format!("ory-proxy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let outcome = run(options, &work).await;
    let _ = std::fs::remove_dir_all(&work);
    let results = outcome?;
    print!("{}", report(options, &results));
    Ok(())
}

async fn run(options: &Options, work: &Path) -> anyhow::Result<Results> {
    let started = Instant::now();
    let load_before = load_average();
    let noop = ory_proxy_tests::test_filter("noop");
    if !noop.is_file() {
        bail!("the no-op filter is missing at {}", noop.display());
    }
    let site = work.join("site");
    std::fs::create_dir_all(&site)?;
    let download: Vec<u8> = (0..DOWNLOAD_BYTES).map(|i| (i % 251) as u8).collect();
    std::fs::write(site.join("big.bin"), download)?;

    let upstream_port = free_port();
    let upstream =
        Nginx::start(work, "upstream", &upstream_config(work, upstream_port, &site), options.load_cpu.as_deref())?;
    let upstream_addr = SocketAddr::from(([127, 0, 0, 1], upstream_port));
    first_answer(upstream_addr, Instant::now()).await.context("the upstream nginx")?;

    let standin = Standin::start(StandinConfig::default()).await?;
    let session = standin.create_session(DEMO_EMAIL)?;
    let sessions = SESSIONS_PER_SECOND * options.seconds;
    let mut tokens = String::new();
    for _ in 0..sessions {
        writeln!(tokens, "{}", standin.create_session(DEMO_EMAIL)?.token)?;
    }
    let tokens_file = work.join("sessions.txt");
    std::fs::write(&tokens_file, tokens)?;
    let new_sessions_script = work.join("new-sessions.lua");
    std::fs::write(&new_sessions_script, new_sessions_lua(&tokens_file, &standin.cookie_name()))?;

    let mut bench = Bench {
        options,
        work: work.to_path_buf(),
        upstream: upstream_addr,
        standin,
        cookie: session.cookie,
        new_sessions_script,
        sessions,
        noop,
        loaded: None,
        upstream_pid: upstream.pid(),
        results: Results::default(),
    };
    let outcome = bench.all().await;
    upstream.stop();
    bench.standin.shutdown().await;
    outcome?;
    bench.results.notes.push(format!(
        "whole run: {:.0} s; load average (1, 5, 15 min) {load_before} before, {} after",
        started.elapsed().as_secs_f64(),
        load_average()
    ));
    Ok(bench.results)
}

impl Bench<'_> {
    async fn all(&mut self) -> anyhow::Result<()> {
        self.loaded = Some(self.upstream_pid);
        let direct = self.wrk(self.upstream, "/page", &[]).await?;
        self.results.loads.push(("direct to the upstream".into(), direct));
        let download = self.download(self.upstream, "/big.bin", &[]).await?;
        self.results.downloads.push(("direct to the upstream".into(), download));

        // What the new-session rows ask of Ory, asked of the stand-in directly: its ceiling.
        self.loaded = Some(std::process::id());
        let script = self.new_sessions_script.display().to_string();
        let standin = self.standin.local_addr();
        let whoami = self.wrk(standin, "/sessions/whoami", &["-s", &script]).await?;
        self.results.loads.push((STANDIN_WHOAMI.into(), whoami));

        // nginx as a reverse proxy.
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let spawned = Instant::now();
        let nginx = Nginx::start(
            &self.work,
            "proxy",
            &proxy_config(&self.work, port, self.upstream),
            self.options.proxy_cpu.as_deref(),
        )?;
        self.loaded = Some(nginx.pid());
        let process = self.process(addr, nginx.pid(), spawned, "/page").await;
        let loads = match process {
            Ok(process) => {
                self.results.processes.push((NGINX.into(), process));
                self.loads(NGINX, addr, &[]).await
            }
            Err(error) => Err(error),
        };
        nginx.stop();
        loads?;

        self.proxy(ENVOY, Host::Envoy, Filter::None, false).await?;
        self.proxy(ENVOY_NOOP, Host::Envoy, Filter::Module(self.noop.clone()), false).await?;
        self.proxy(ENVOY_OURS, Host::Envoy, Filter::Ours, true).await?;
        self.proxy(RUNNER_NOOP, Host::Runner, Filter::Module(self.noop.clone()), false).await?;
        self.proxy(RUNNER_OURS, Host::Runner, Filter::Ours, true).await?;
        Ok(())
    }

    /// Starts one proxy, reads its start-up and memory, loads it, stops it.
    async fn proxy(&mut self, name: &str, host: Host, filter: Filter, ours: bool) -> anyhow::Result<()> {
        let work = self.work.join(name.replace(|c: char| !c.is_ascii_alphanumeric(), "-"));
        let setup = Setup {
            cpu_list: self.options.proxy_cpu.clone(),
            envoy_workers: 1,
            filter,
            // Each new session is a whoami call; at the filter's default bound (32 per VM) a
            // 64-connection load would be refused some of them, and measure refusals.
            max_concurrent_whoami: Some(self.options.connections.max(32) as u32),
            ..Setup::new(host, self.upstream, &self.standin.url(), &work)
        };
        if host == Host::Runner && ours {
            // The runner keeps compiled code in its home: this first start compiles (and is
            // reported on its own), the measured one below maps what it kept.
            let proxy = common::start(&setup).await.with_context(|| format!("starting {name} the first time"))?;
            let first = self.process(proxy.addr, proxy.pid(), proxy.spawned, "/page").await;
            proxy.stop();
            self.results.processes.push((format!("{name}, first start (compiles the module)"), first?));
        }
        let proxy = common::start(&setup).await.with_context(|| format!("starting {name}"))?;
        let outcome = self.measure(name, &proxy, ours).await;
        proxy.stop();
        outcome.with_context(|| name.to_string())
    }

    async fn measure(&mut self, name: &str, proxy: &Proxy, ours: bool) -> anyhow::Result<()> {
        self.loaded = Some(proxy.pid());
        let process = self.process(proxy.addr, proxy.pid(), proxy.spawned, "/page").await?;
        self.results.processes.push((name.into(), process));
        if !ours {
            return self.loads(name, proxy.addr, &[]).await;
        }
        let cookie = format!("Cookie: {}", self.cookie);
        let open = self.wrk(proxy.addr, "/page", &[]).await?;
        self.results.loads.push((format!("{name}, {OPEN}"), open));
        let cached = self.wrk(proxy.addr, "/members/page", &["-H", &cookie]).await?;
        self.results.loads.push((format!("{name}, {CACHED}"), cached));
        let whoami_before = self.standin.whoami_calls();
        let script = self.new_sessions_script.display().to_string();
        let new = self.wrk(proxy.addr, "/members/page", &["-s", &script]).await?;
        let whoami = self.standin.whoami_calls() - whoami_before;
        self.results.notes.push(format!(
            "{name}, {NEW_SESSION}: {whoami} whoami calls for {} requests ({:.2} a request)",
            new.requests,
            whoami as f64 / new.requests.max(1) as f64
        ));
        if new.requests > self.sessions {
            self.results.notes.push(format!(
                "{name}, {NEW_SESSION}: wrk went round its {} sessions, so some were cached",
                self.sessions
            ));
        }
        self.results.loads.push((format!("{name}, {NEW_SESSION}"), new));
        let jwks = self.wrk(proxy.addr, JWKS, &[]).await?;
        self.results.loads.push((format!("{name}, {JWKS}"), jwks));
        let download = self.download(proxy.addr, "/members/big.bin", &["-H", &cookie]).await?;
        self.results.downloads.push((format!("{name}, {CACHED}"), download));
        Ok(())
    }

    /// The rows of a proxy without our filter: the small answer and the download.
    async fn loads(&mut self, name: &str, addr: SocketAddr, extra: &[&str]) -> anyhow::Result<()> {
        let load = self.wrk(addr, "/page", extra).await?;
        self.results.loads.push((name.into(), load));
        let download = self.download(addr, "/big.bin", extra).await?;
        self.results.downloads.push((name.into(), download));
        Ok(())
    }

    /// Start-up (from `spawned` to the first answer), memory at rest, and memory with
    /// [`IDLE_CONNECTIONS`] kept-alive connections that each made one request (closed again
    /// before the load, so neither reading carries the load's allocations).
    async fn process(&self, addr: SocketAddr, pid: u32, spawned: Instant, path: &str) -> anyhow::Result<Process> {
        let startup = first_answer(addr, spawned).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_idle_mib = resident_mib(pid);
        let connections = idle_connections(addr, path, IDLE_CONNECTIONS).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_connections_mib = resident_mib(pid);
        drop(connections);
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(Process { startup_ms: startup.as_secs_f64() * 1000.0, rss_idle_mib, rss_connections_mib })
    }

    async fn wrk(&self, addr: SocketAddr, path: &str, extra: &[&str]) -> anyhow::Result<Load> {
        let connections = self.options.connections.to_string();
        let mut args = vec!["-t1", "-c", &connections, "--timeout", "10s"];
        args.extend_from_slice(extra);
        self.run_wrk(addr, path, &args).await
    }

    /// One connection downloading the 100 MB file over and over: MB/s.
    async fn download(&self, addr: SocketAddr, path: &str, extra: &[&str]) -> anyhow::Result<Load> {
        let mut args = vec!["-t1", "-c1", "--timeout", "60s"];
        args.extend_from_slice(extra);
        self.run_wrk(addr, path, &args).await
    }

    async fn run_wrk(&self, addr: SocketAddr, path: &str, args: &[&str]) -> anyhow::Result<Load> {
        let mut command = match &self.options.load_cpu {
            Some(cpu) => {
                let mut taskset = Command::new("taskset");
                taskset.args(["-c", cpu, "wrk"]);
                taskset
            }
            None => Command::new("wrk"),
        };
        command
            .args(args)
            .args(["--latency", "-d", &format!("{}s", self.options.seconds)])
            .arg(format!("http://{addr}{path}"));
        let (cpu_before, wall_before) = (self.loaded.and_then(cpu_seconds), Instant::now());
        let output = tokio::task::spawn_blocking(move || command.output()).await?.context("running wrk")?;
        let busy = match (cpu_before, self.loaded.and_then(cpu_seconds)) {
            (Some(before), Some(after)) => Some((after - before) / wall_before.elapsed().as_secs_f64() * 100.0),
            _ => None,
        };
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            bail!("wrk failed on {path}: {}\n{text}", String::from_utf8_lossy(&output.stderr));
        }
        let load = parse_wrk(&text).with_context(|| format!("reading wrk's output for {path}:\n{text}"))?;
        Ok(Load { cpu_percent: busy, ..load })
    }
}

/// The first answered request: polls `addr` from `spawned` on until it answers a GET with
/// anything at all; how long that took.
async fn first_answer(addr: SocketAddr, spawned: Instant) -> anyhow::Result<Duration> {
    let deadline = spawned + Duration::from_secs(60);
    loop {
        if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(2), status_of(addr, "/page")).await {
            if status != 200 {
                bail!("{addr} answered {status} to its first request");
            }
            return Ok(spawned.elapsed());
        }
        if Instant::now() > deadline {
            bail!("{addr} did not answer within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The status of a `GET path` on a connection of its own.
async fn status_of(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            bail!("closed before a status line");
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("no status code")
}

/// `count` connections, each kept alive after one answered `GET path`.
async fn idle_connections(addr: SocketAddr, path: &str, count: usize) -> anyhow::Result<Vec<Held>> {
    let mut held = Vec::with_capacity(count);
    let mut batch = tokio::task::JoinSet::new();
    for i in 0..count {
        let path = path.to_string();
        batch.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            let task = tokio::spawn(connection);
            let request =
                http::Request::get(path).header(http::header::HOST, addr.to_string()).body(Empty::<Bytes>::new())?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            response.into_body().collect().await?;
            if !status.is_success() {
                bail!("a connection's request answered {status}");
            }
            anyhow::Ok(Held { _sender: sender, task })
        });
        if batch.len() == 100 || i + 1 == count {
            while let Some(joined) = batch.join_next().await {
                held.push(joined??);
            }
        }
    }
    Ok(held)
}

/// A kept-alive connection; closed when dropped.
struct Held {
    _sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    task: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An nginx in the foreground, one process (no master), from a configuration of its own.
struct Nginx {
    child: Child,
}

impl Nginx {
    fn start(work: &Path, name: &str, config: &str, cpu: Option<&str>) -> anyhow::Result<Nginx> {
        let dir = work.join(format!("nginx-{name}"));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("nginx.conf");
        std::fs::write(&file, config)?;
        let mut command = match cpu {
            Some(cpu) => {
                let mut taskset = Command::new("taskset");
                taskset.args(["-c", cpu, "nginx"]);
                taskset
            }
            None => Command::new("nginx"),
        };
        let child = command
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&file)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        Ok(Nginx { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What both nginx configurations share: one process, in the foreground, its files in `dir`,
/// no access log, and kept-alive connections that are not closed after 1000 requests.
fn nginx_common(dir: &Path, name: &str) -> String {
    let dir = dir.join(format!("nginx-{name}"));
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 16384;\n\
         pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 120s;\n\
         \x20 client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
         \x20 uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n"
    )
}

/// The app: [`ANSWER`] on every path, the 100 MB file on paths ending in `big.bin`.
fn upstream_config(work: &Path, port: u16, site: &Path) -> String {
    let answer = ANSWER.replace('\n', "\\n");
    format!(
        "{}  server {{\n    listen 127.0.0.1:{port};\n    location / {{ default_type text/plain; return 200 \"{answer}\"; }}\n\
         \x20   location ~ big\\.bin$ {{ root {}; try_files /big.bin =404; }}\n  }}\n}}\n",
        nginx_common(work, "upstream"),
        site.display()
    )
}

/// nginx as a reverse proxy to the app, keeping its upstream connections alive (as Envoy and the
/// runner do) and streaming large answers instead of spooling them to disk.
fn proxy_config(work: &Path, port: u16, upstream: SocketAddr) -> String {
    format!(
        "{}  upstream app {{ server {upstream}; keepalive 64; }}\n  server {{\n    listen 127.0.0.1:{port};\n\
         \x20   location / {{\n      proxy_pass http://app;\n      proxy_http_version 1.1;\n\
         \x20     proxy_set_header Connection \"\";\n      proxy_max_temp_file_size 0;\n    }}\n  }}\n}}\n",
        nginx_common(work, "proxy")
    )
}

/// A wrk script: each request carries the next of the session tokens in `tokens`.
fn new_sessions_lua(tokens: &Path, cookie_name: &str) -> String {
    format!(
        "local tokens = {{}}\nfor line in io.lines(\"{}\") do tokens[#tokens + 1] = line end\n\
         local i = 0\nrequest = function()\n  i = i % #tokens + 1\n\
         \x20 return wrk.format(\"GET\", nil, {{ [\"Cookie\"] = \"{cookie_name}=\" .. tokens[i] }})\nend\n",
        tokens.display()
    )
}

/// The CPU time a process has used so far (user and system), in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which is in parentheses and may hold spaces: state is field 3,
    // utime and stime fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| ticks / per_second as f64)
}

/// The machine's load average, as /proc/loadavg says it.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(", ")
}

/// Reads what `wrk --latency` prints.
fn parse_wrk(text: &str) -> anyhow::Result<Load> {
    let mut load = Load::default();
    let mut percentiles = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [percent, value] if percent.ends_with('%') => {
                percentiles.insert(percent.to_string(), micros(value)?);
            }
            ["Requests/sec:", value] => load.requests_per_second = value.parse()?,
            ["Transfer/sec:", value] => load.bytes_per_second = bytes(value)?,
            [count, "requests", "in", ..] => load.requests = count.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", count] => load.errors += count.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                for count in rest.iter().skip(1).step_by(2) {
                    load.errors += count.trim_end_matches(',').parse::<u64>()?;
                }
            }
            _ => {}
        }
    }
    load.p50_us = *percentiles.get("50%").context("no 50% latency")?;
    load.p99_us = *percentiles.get("99%").context("no 99% latency")?;
    if load.requests_per_second == 0.0 && load.bytes_per_second == 0.0 {
        bail!("no Requests/sec or Transfer/sec");
    }
    Ok(load)
}

/// wrk's times: `512.00us`, `1.20ms`, `2.00s`, `1.00m`.
fn micros(value: &str) -> anyhow::Result<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic()).context("a time without a unit")?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse()?;
    Ok(number
        * match unit {
            "us" => 1.0,
            "ms" => 1e3,
            "s" => 1e6,
            "m" => 60e6,
            "h" => 3600e6,
            other => bail!("unknown time unit {other}"),
        })
}

/// wrk's sizes, binary: `512.00B`, `1.50KB`, `2.00MB`, `1.00GB`.
fn bytes(value: &str) -> anyhow::Result<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic()).context("a size without a unit")?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse()?;
    let power = match unit {
        "B" => 0,
        "KB" => 1,
        "MB" => 2,
        "GB" => 3,
        "TB" => 4,
        other => bail!("unknown size unit {other}"),
    };
    Ok(number * 1024f64.powi(power))
}

// ---------------------------------------------------------------------------------------------
// The report.

/// `value / base`, as `0.42×`; `–` without a base.
fn ratio(value: f64, base: Option<f64>) -> String {
    match base {
        Some(base) if base > 0.0 && value > 0.0 => format!("{:.2}×", value / base),
        _ => "–".into(),
    }
}

fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn percent(value: Option<f64>) -> String {
    value.map_or("–".into(), |p| format!("{p:.0} %"))
}

fn latency(us: f64) -> String {
    if us >= 1000.0 { format!("{:.2} ms", us / 1000.0) } else { format!("{us:.0} µs") }
}

fn report(options: &Options, results: &Results) -> String {
    let mut out = String::new();
    let nginx = results.load(NGINX);
    let envoy = results.load(ENVOY);
    let pinned = match (&options.proxy_cpu, &options.load_cpu) {
        (Some(proxy), Some(load)) => format!("proxy on CPU {proxy}, wrk, the app and Ory on CPU {load}"),
        _ => "nothing pinned".into(),
    };
    let _ = writeln!(
        out,
        "\nwrk, {} connections, {} s a row; {pinned}; the app answers {} bytes.\n\
         Ratios are to nginx as a reverse proxy and to Envoy with no filter, from this run \
         (for latency and memory, above 1 is worse). CPU: how busy the process that answered \
         (the upstream nginx for the direct rows, this process for the stand-in's, else the proxy) was, in % of one CPU; well \
         below 100 %, something else held the row back.\n",
        options.connections,
        options.seconds,
        ANSWER.len()
    );
    let _ = writeln!(
        out,
        "| path | req/s | ×nginx | ×Envoy | p50 | ×nginx | ×Envoy | p99 | ×nginx | ×Envoy | errors | CPU |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, load) in &results.loads {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            thousands(load.requests_per_second),
            ratio(load.requests_per_second, nginx.map(|l| l.requests_per_second)),
            ratio(load.requests_per_second, envoy.map(|l| l.requests_per_second)),
            latency(load.p50_us),
            ratio(load.p50_us, nginx.map(|l| l.p50_us)),
            ratio(load.p50_us, envoy.map(|l| l.p50_us)),
            latency(load.p99_us),
            ratio(load.p99_us, nginx.map(|l| l.p99_us)),
            ratio(load.p99_us, envoy.map(|l| l.p99_us)),
            load.errors,
            percent(load.cpu_percent),
        );
    }

    let nginx = results.download(NGINX);
    let envoy = results.download(ENVOY);
    let _ = writeln!(out, "\nThe 100 MB download, one connection, again and again for {} s:\n", options.seconds);
    let _ = writeln!(out, "| through | MB/s | ×nginx | ×Envoy | errors | CPU |");
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, load) in &results.downloads {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} |",
            thousands(load.bytes_per_second / 1e6),
            ratio(load.bytes_per_second, nginx.map(|l| l.bytes_per_second)),
            ratio(load.bytes_per_second, envoy.map(|l| l.bytes_per_second)),
            load.errors,
            percent(load.cpu_percent),
        );
    }

    let nginx = results.process(NGINX);
    let envoy = results.process(ENVOY);
    let _ = writeln!(
        out,
        "\nStart-up is from starting the process to its first answered request; memory is the \
         process's RSS after that, then with {IDLE_CONNECTIONS} kept-alive connections that each \
         made one request:\n"
    );
    let _ = writeln!(
        out,
        "| process | start-up | ×nginx | ×Envoy | RSS idle | ×nginx | ×Envoy | RSS, {IDLE_CONNECTIONS} connections | ×nginx | ×Envoy |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, process) in &results.processes {
        let _ = writeln!(
            out,
            "| {name} | {:.0} ms | {} | {} | {:.1} MiB | {} | {} | {:.1} MiB | {} | {} |",
            process.startup_ms,
            ratio(process.startup_ms, nginx.map(|p| p.startup_ms)),
            ratio(process.startup_ms, envoy.map(|p| p.startup_ms)),
            process.rss_idle_mib,
            ratio(process.rss_idle_mib, nginx.map(|p| p.rss_idle_mib)),
            ratio(process.rss_idle_mib, envoy.map(|p| p.rss_idle_mib)),
            process.rss_connections_mib,
            ratio(process.rss_connections_mib, nginx.map(|p| p.rss_connections_mib)),
            ratio(process.rss_connections_mib, envoy.map(|p| p.rss_connections_mib)),
        );
    }

    let ours = ory_proxy::local::EMBEDDED_FILTER.len();
    let noop = std::fs::metadata(ory_proxy_tests::test_filter("noop")).map(|m| m.len()).unwrap_or(0);
    let _ = writeln!(
        out,
        "\nModules: our filter {:.2} MB ({} bytes), the no-op filter {:.2} MB.",
        ours as f64 / 1e6,
        thousands(ours as f64),
        noop as f64 / 1e6
    );
    let _ = writeln!(out, "\n{}", goals(results, ours));
    for note in &results.notes {
        let _ = writeln!(out, "- {note}");
    }
    out
}

/// The performance goals against this run: figures only, nothing asserted.
fn goals(results: &Results, module_bytes: usize) -> String {
    let rps = |name: &str| results.load(name).map(|l| l.requests_per_second);
    let p50 = |name: &str| results.load(name).map(|l| l.p50_us);
    let p99 = |name: &str| results.load(name).map(|l| l.p99_us);
    let divide = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    };
    let runner_cached = format!("{RUNNER_OURS}, {CACHED}");
    let envoy_cached = format!("{ENVOY_OURS}, {CACHED}");
    let runner_new = format!("{RUNNER_OURS}, {NEW_SESSION}");
    let mut out = String::from("The speed goals, as this run measured them:\n\n| goal | measured |\n| --- | ---: |\n");
    let mut row = |goal: &str, measured: String| {
        let _ = writeln!(out, "| {goal} | {measured} |");
    };
    row("runner + our filter, cached session ≥ 0.6× nginx", divide(rps(&runner_cached), rps(NGINX)));
    row("runner + no-op filter ≥ 0.8× nginx", divide(rps(RUNNER_NOOP), rps(NGINX)));
    row("Envoy: our filter (cached session) ≥ 0.85× the no-op filter", divide(rps(&envoy_cached), rps(ENVOY_NOOP)));
    row("runner: our filter (cached session) ≥ 0.85× the no-op filter", divide(rps(&runner_cached), rps(RUNNER_NOOP)));
    let over = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:+.2} ms", (a - b) / 1000.0),
        _ => "–".into(),
    };
    row("p99, runner + our filter (cached session), within 1 ms of nginx", over(p99(&runner_cached), p99(NGINX)));
    // Per request: the proxy's time for one, 1 / (req/s) on its one CPU, as in the issue; p50
    // at 64 connections is mostly queueing.
    let per_request = |name: &str| rps(name).filter(|r| *r > 0.0).map(|r| 1e6 / r);
    row(
        "a new session adds ≤ 1 ms over a cached one (runner, per request = 1 / req/s; p50)",
        format!(
            "{}; {}",
            over(per_request(&runner_new), per_request(&runner_cached)),
            over(p50(&runner_new), p50(&runner_cached))
        ),
    );
    let process = results.process(RUNNER_OURS);
    let first = results.process(&format!("{RUNNER_OURS}, first start (compiles the module)"));
    row(
        "start to the first answered request ≤ 300 ms (later starts; the first)",
        format!(
            "{}; {}",
            process.map_or("–".into(), |p| format!("{:.0} ms", p.startup_ms)),
            first.map_or("–".into(), |p| format!("{:.0} ms", p.startup_ms))
        ),
    );
    row("RSS ≤ 48 MiB idle", process.map_or("–".into(), |p| format!("{:.1} MiB", p.rss_idle_mib)));
    row(
        &format!("RSS ≤ 64 MiB with {IDLE_CONNECTIONS} idle connections"),
        process.map_or("–".into(), |p| format!("{:.1} MiB", p.rss_connections_mib)),
    );
    row("filter .wasm ≤ 1 MB", format!("{:.2} MB", module_bytes as f64 / 1e6));
    out
}
