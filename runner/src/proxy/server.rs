//! The listening side: accept connections, serve HTTP/1.1 and HTTP/2, hand each request to a
//! driver task, and drain in-flight requests on shutdown.
//!
//! One port serves both HTTPS and plain HTTP: the first byte of a connection tells which (a TLS
//! connection starts with a handshake record, 0x16; no HTTP request does).

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::{TaskTracker, task_tracker::TaskTrackerToken};

use super::driver::{self, Connection, Shared};
use super::observe::{ObserveOptions, Observer};
use super::pool::{FilterPool, Worker};
use super::stats::ActiveConnection;
use super::watch::{Activity, Expired, Watched};
use super::{Limits, Route};

/// How the proxy listens.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub limits: Limits,
    /// How long shutdown waits for requests in flight.
    pub drain_timeout: Duration,
    /// Serve HTTPS (beside plain HTTP, on the same port) with this configuration; `None` serves
    /// plain HTTP only.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Serve metrics and health on an address of their own (`--metrics-addr`).
    pub observe: Option<ObserveOptions>,
    /// How long a new connection may take to send its first byte and finish a TLS handshake.
    /// Browsers open connections ahead of need and may leave them silent for a while, so this is
    /// generous; it only keeps a silent client from holding a task forever.
    pub handshake_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 4000)),
            limits: Limits::default(),
            drain_timeout: Duration::from_secs(10),
            tls: None,
            observe: None,
            handshake_timeout: Duration::from_secs(30),
        }
    }
}

/// A bound, not yet serving, proxy.
pub struct Proxy {
    listener: TcpListener,
    pool: Arc<FilterPool>,
    routes: Arc<[Route]>,
    drain_timeout: Duration,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    limits: Limits,
    /// One permit per client connection, `limits.max_connections` in all.
    connections: Arc<Semaphore>,
    observer: Option<Observer>,
}

/// A proxy serving in the background (for tests and embedding).
pub struct ProxyHandle {
    pub addr: SocketAddr,
    /// Where metrics and health are served, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl ProxyHandle {
    /// Stops accepting, drains, and waits until done.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await?
    }
}

impl Proxy {
    /// Binds the listening socket; a port in use is a clear error.
    pub async fn bind(pool: Arc<FilterPool>, routes: Vec<Route>, options: ServeOptions) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind(options.listen).await.map_err(|error| match error.kind() {
            std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
                "{} is already in use: stop what is listening there, or choose another --port",
                options.listen
            ),
            std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
                "not allowed to listen on {} (ports below 1024 need privileges): choose another --port",
                options.listen
            ),
            _ => anyhow::anyhow!("cannot listen on {}: {error}", options.listen),
        })?;
        let limits = options.limits;
        let observer = match &options.observe {
            Some(observe) => Some(Observer::bind(observe, pool.plugin().env().clone(), pool.stats().clone()).await?),
            None => None,
        };
        Ok(Proxy {
            listener,
            pool,
            routes: routes.into(),
            drain_timeout: options.drain_timeout,
            tls: options.tls.map(TlsAcceptor::from),
            handshake_timeout: options.handshake_timeout,
            limits,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            observer,
        })
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Where metrics and health are served, if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.observer.as_ref().and_then(|observer| observer.local_addr().ok())
    }

    /// Whether this proxy answers TLS connections.
    pub fn serves_https(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves in the background until [`ProxyHandle::shutdown`].
    pub fn spawn(self) -> anyhow::Result<ProxyHandle> {
        let addr = self.local_addr()?;
        let metrics_addr = self.metrics_addr();
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(self.serve(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }));
        Ok(ProxyHandle { addr, metrics_addr, stop, task })
    }

    /// Serves until `shutdown` completes, then stops accepting and drains requests in flight.
    pub async fn serve(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let connections = TaskTracker::new();
        let (stop_observing, observing) = watch::channel(false);
        if let Some(observer) = self.observer.take() {
            tokio::spawn(observer.serve(observing));
        }
        let protocols = Arc::new(Protocols::new(&self.limits));
        // Tells every connection to finish what it is doing and close.
        let (stopping, stopped) = watch::channel(false);
        let mut refused = RefusalLog::default();
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: wait a moment rather than spin.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                // Closed at once: a descriptor kept for this would be one fewer for the
                // connections being served.
                refused.note(self.limits.max_connections);
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            // Handed to a worker thread, which registers it with its own runtime.
            let stream = match stream.into_std() {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(%peer, %error, "could not hand the connection to a worker");
                    continue;
                }
            };
            let accepted = Accepted {
                stream,
                peer,
                routes: self.routes.clone(),
                protocols: protocols.clone(),
                tls: self.tls.clone(),
                handshake_timeout: self.handshake_timeout,
                limits: self.limits,
                stopped: stopped.clone(),
                _permit: permit,
                _tracked: connections.token(),
                _counted: self.pool.stats().connection(),
            };
            if !self.pool.dispatch(Box::new(move |worker| Box::pin(accepted.serve(worker)))) {
                tracing::error!(%peer, "no filter worker is running: connection closed");
            }
        }
        let _ = stopping.send(true);
        let _ = stop_observing.send(true);
        drop(self.listener);
        connections.close();
        if tokio::time::timeout(self.drain_timeout, connections.wait()).await.is_err() {
            tracing::warn!("gave up waiting for requests in flight");
        }
        Ok(())
    }
}

/// Says that connections are being refused, at most once a minute.
#[derive(Default)]
struct RefusalLog {
    refused: u64,
    last_said: Option<std::time::Instant>,
}

impl RefusalLog {
    fn note(&mut self, limit: usize) {
        self.refused += 1;
        if self.last_said.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            tracing::warn!(
                "{limit} connections are open, the most allowed (--max-connections): closed {} new ones",
                self.refused
            );
            self.refused = 0;
            self.last_said = Some(std::time::Instant::now());
        }
    }
}

/// What the first byte of a connection said.
#[derive(Debug, PartialEq, Eq)]
enum Sniffed {
    Tls,
    Plain,
    /// The client closed the connection before sending anything.
    Closed,
}

/// A TLS record starts with its content type; a handshake (ClientHello) is 22.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

async fn sniff(stream: &TcpStream) -> std::io::Result<Sniffed> {
    let mut first = [0u8; 1];
    Ok(match stream.peek(&mut first).await? {
        0 => Sniffed::Closed,
        _ if first[0] == TLS_HANDSHAKE_RECORD => Sniffed::Tls,
        _ => Sniffed::Plain,
    })
}

/// Numbers the connections, across workers and proxies, from 1.
static NEXT_CONNECTION_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Runs hyper's tasks (HTTP/2 streams) on the worker thread that serves their connection.
#[derive(Clone, Copy)]
struct LocalExecutor;

impl<F: Future + 'static> hyper::rt::Executor<F> for LocalExecutor {
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}

/// One accepted connection, before we know what it speaks; made by the acceptor, served by a
/// worker.
struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    routes: Arc<[Route]>,
    protocols: Arc<Protocols>,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    limits: Limits,
    stopped: watch::Receiver<bool>,
    /// Held for as long as the connection is served.
    _permit: OwnedSemaphorePermit,
    /// Shutdown waits for the connections still holding one.
    _tracked: TaskTrackerToken,
    /// Counted as active while served.
    _counted: ActiveConnection,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Accepted {
    async fn serve(self, worker: Rc<Worker>) {
        let Accepted {
            stream,
            peer,
            routes,
            protocols,
            tls,
            handshake_timeout,
            limits,
            mut stopped,
            _permit,
            _tracked,
            _counted,
        } = self;
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%peer, %error, "a worker could not take the connection");
                return;
            }
        };
        let shared = Rc::new(Shared { worker, routes, upstream_timeout: limits.upstream_timeout });
        let local = stream.local_addr().unwrap_or(peer);
        let id = NEXT_CONNECTION_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let opening = async {
            match sniff(&stream).await? {
                Sniffed::Closed => Ok(None),
                Sniffed::Plain => Ok(Some(Stream::Plain(stream))),
                Sniffed::Tls => match &tls {
                    Some(acceptor) => Ok(Some(Stream::Tls(Box::new(acceptor.accept(stream).await?)))),
                    None => Err(std::io::Error::other("a TLS handshake, but this proxy serves plain HTTP only")),
                },
            }
        };
        let opened = tokio::select! {
            opened = tokio::time::timeout(handshake_timeout, opening) => opened,
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        let stream = match opened {
            Ok(Ok(Some(stream))) => stream,
            Ok(Ok(None)) => return,
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "connection dropped before its first request");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "connection dropped: nothing arrived within {handshake_timeout:?}");
                return;
            }
        };
        let served = Served { shared, protocols, limits, stopped };
        match stream {
            Stream::Plain(stream) => {
                let speaks = Speaks::from_first_bytes(&stream).await;
                let activity = Activity::new(speaks != Speaks::Http2);
                let io = TokioIo::new(Watched::new(stream, activity.clone()));
                served.serve(io, speaks, Connection { id, peer, local, tls: false }, activity).await
            }
            Stream::Tls(stream) => {
                let speaks = Speaks::from_alpn(stream.get_ref().1.alpn_protocol());
                let activity = Activity::new(speaks != Speaks::Http2);
                let io = TokioIo::new(Watched::new(stream, activity.clone()));
                served.serve(io, speaks, Connection { id, peer, local, tls: true }, activity).await
            }
        }
    }
}

/// Which HTTP a connection speaks, as far as its start tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaks {
    Http1,
    Http2,
    /// Too little to tell yet: hyper reads the start and decides.
    Unknown,
}

impl Speaks {
    /// A plain connection: HTTP/2 opens with its preface (prior knowledge, RFC 9113 §3.3), whose
    /// first three bytes no HTTP/1 method starts with.
    async fn from_first_bytes(stream: &TcpStream) -> Speaks {
        const PREFACE_START: &[u8; 3] = b"PRI";
        let mut start = [0u8; 3];
        match stream.peek(&mut start).await {
            Ok(3) if &start == PREFACE_START => Speaks::Http2,
            Ok(read) if read > 0 && start[..read] != PREFACE_START[..read] => Speaks::Http1,
            _ => Speaks::Unknown,
        }
    }

    /// A TLS connection: what ALPN agreed on.
    fn from_alpn(protocol: Option<&[u8]>) -> Speaks {
        match protocol {
            Some(b"h2") => Speaks::Http2,
            Some(b"http/1.1") => Speaks::Http1,
            _ => Speaks::Unknown,
        }
    }
}

/// How connections are served, set once from the limits: each protocol's own engine when the
/// start of a connection tells which it speaks, hyper's detection when it does not. (Detection
/// reads the first bytes on its own and hands them back, which makes the HTTP/1 read buffer of
/// every connection grow to twice its size: 8 KiB more per kept-alive connection.)
struct Protocols {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<LocalExecutor>,
    detected: auto::Builder<LocalExecutor>,
}

impl Protocols {
    fn new(limits: &Limits) -> Protocols {
        // hyper answers 431 to a request head over `max_header_size`, however it arrives; its read
        // buffer's bound (`max_buf_size`) is only checked while a head is incomplete, and one read
        // may fill a grown buffer past it. hyper-util's detection offers only the latter.
        let max_head = limits.max_request_headers_bytes.max(8192);
        let max_header_list = u32::try_from(limits.max_request_headers_bytes).unwrap_or(u32::MAX);
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1.max_header_size(limits.max_request_headers_bytes).max_buf_size(max_head);
        let mut http2 = hyper::server::conn::http2::Builder::new(LocalExecutor);
        http2.max_header_list_size(max_header_list);
        let mut detected = auto::Builder::new(LocalExecutor);
        detected.http1().max_buf_size(max_head);
        detected.http2().max_header_list_size(max_header_list);
        Protocols { http1, http2, detected }
    }
}

/// An open connection and what serving it needs.
struct Served {
    shared: Rc<Shared>,
    protocols: Arc<Protocols>,
    limits: Limits,
    stopped: watch::Receiver<bool>,
}

impl Served {
    /// Serves HTTP/1.1 or HTTP/2 (whichever the client speaks) until the connection ends, sits
    /// longer than the limits allow, or shutdown drains it.
    async fn serve<I>(self, io: I, speaks: Speaks, connection: Connection, activity: Arc<Activity>)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let Served { shared, protocols, limits, stopped } = self;
        let requests = activity.clone();
        let service = service_fn(move |request| {
            let shared = shared.clone();
            let in_flight = requests.request_started();
            async move {
                let (respond, response) = oneshot::channel();
                tokio::task::spawn_local(async move {
                    driver::drive(shared, request, connection, respond).await;
                    drop(in_flight);
                });
                match response.await {
                    Ok(response) => Ok(response),
                    // The driver ended without a response: the filter reset the stream.
                    Err(_) => Err(std::io::Error::other("stream reset by the filter")),
                }
            }
        });
        let watching = Watching { activity: &activity, limits: &limits, stopped, peer: connection.peer };
        match speaks {
            Speaks::Http1 => {
                let serving = protocols.http1.serve_connection(io, service).with_upgrades();
                watching.serve(serving, |serving| serving.graceful_shutdown()).await
            }
            Speaks::Http2 => {
                let serving = protocols.http2.serve_connection(io, service);
                watching.serve(serving, |serving| serving.graceful_shutdown()).await
            }
            Speaks::Unknown => {
                let serving = protocols.detected.serve_connection_with_upgrades(io, service);
                watching.serve(serving, |serving| serving.graceful_shutdown()).await
            }
        }
    }
}

/// What ends a served connection besides the connection itself: its limits and shutdown.
struct Watching<'a> {
    activity: &'a Activity,
    limits: &'a Limits,
    stopped: watch::Receiver<bool>,
    peer: SocketAddr,
}

impl Watching<'_> {
    /// Runs `serving` (hyper's connection, whichever protocol) until it ends; asks it to finish
    /// what it is doing and close (`finish`) when it idles too long or shutdown drains it.
    async fn serve<C, E>(mut self, serving: C, finish: impl Fn(std::pin::Pin<&mut C>))
    where
        C: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        tokio::pin!(serving);
        let mut closing = false;
        loop {
            tokio::select! {
                ended = serving.as_mut() => {
                    if let Err(error) = ended {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                    return;
                }
                expired = self.activity.expired(self.limits), if !closing => match expired {
                    Expired::RequestHeaders => {
                        tracing::debug!(peer = %self.peer, "closing a connection: its request head took over {:?}", self.limits.request_headers_timeout);
                        return;
                    }
                    Expired::Idle => {
                        finish(serving.as_mut());
                        closing = true;
                    }
                },
                _ = self.stopped.wait_for(|stop| *stop), if !closing => {
                    finish(serving.as_mut());
                    closing = true;
                }
            }
        }
    }
}
