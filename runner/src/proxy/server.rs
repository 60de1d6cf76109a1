//! The listening side: accept connections, serve HTTP/1.1 and HTTP/2, hand each request to a
//! driver task, and drain in-flight requests on shutdown.
//!
//! One port serves both HTTPS and plain HTTP: the first byte of a connection tells which (a TLS
//! connection starts with a handshake record, 0x16; no HTTP request does).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio_rustls::TlsAcceptor;

use super::Route;
use super::driver::{self, Connection, Shared};
use super::pool::FilterPool;

/// How the proxy listens.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// How long to wait for an upstream's response headers before answering 504.
    pub upstream_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub drain_timeout: Duration,
    /// Serve HTTPS (beside plain HTTP, on the same port) with this configuration; `None` serves
    /// plain HTTP only.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How long a new connection may take to send its first byte and finish a TLS handshake.
    /// Browsers open connections ahead of need and may leave them silent for a while, so this is
    /// generous; it only keeps a silent client from holding a task forever.
    pub handshake_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 4000)),
            upstream_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
            tls: None,
            handshake_timeout: Duration::from_secs(30),
        }
    }
}

/// A bound, not yet serving, proxy.
pub struct Proxy {
    listener: TcpListener,
    shared: Arc<Shared>,
    drain_timeout: Duration,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
}

/// A proxy serving in the background (for tests and embedding).
pub struct ProxyHandle {
    pub addr: SocketAddr,
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
        let shared = Arc::new(Shared { pool, routes, upstream_timeout: options.upstream_timeout });
        Ok(Proxy {
            listener,
            shared,
            drain_timeout: options.drain_timeout,
            tls: options.tls.map(TlsAcceptor::from),
            handshake_timeout: options.handshake_timeout,
        })
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Whether this proxy answers TLS connections.
    pub fn serves_https(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves in the background until [`ProxyHandle::shutdown`].
    pub fn spawn(self) -> anyhow::Result<ProxyHandle> {
        let addr = self.local_addr()?;
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(self.serve(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }));
        Ok(ProxyHandle { addr, stop, task })
    }

    /// Serves until `shutdown` completes, then stops accepting and drains requests in flight.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let builder = auto::Builder::new(TokioExecutor::new());
        // Tells connections still sniffing or shaking hands to give up.
        let (stopping, stopped) = watch::channel(false);
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
            let _ = stream.set_nodelay(true);
            let accepted = Accepted {
                stream,
                peer,
                shared: self.shared.clone(),
                builder: builder.clone(),
                tls: self.tls.clone(),
                handshake_timeout: self.handshake_timeout,
                watcher: graceful.watcher(),
                stopped: stopped.clone(),
            };
            tokio::spawn(accepted.serve());
        }
        let _ = stopping.send(true);
        drop(self.listener);
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(self.drain_timeout) => tracing::warn!("gave up waiting for requests in flight"),
        }
        Ok(())
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

/// One accepted connection, before we know what it speaks.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    watcher: Watcher,
    stopped: watch::Receiver<bool>,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Accepted {
    async fn serve(self) {
        let Accepted { stream, peer, shared, builder, tls, handshake_timeout, watcher, mut stopped } = self;
        let local = stream.local_addr().unwrap_or(peer);
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
        match stream {
            Stream::Plain(stream) => {
                serve_connection(TokioIo::new(stream), Connection { peer, local, tls: false }, shared, builder, watcher)
                    .await
            }
            Stream::Tls(stream) => {
                serve_connection(TokioIo::new(stream), Connection { peer, local, tls: true }, shared, builder, watcher)
                    .await
            }
        }
    }
}

/// Serves HTTP/1.1 or HTTP/2 (whichever the client speaks) on an open connection until it ends
/// or shutdown drains it.
async fn serve_connection<I>(
    io: I,
    connection: Connection,
    shared: Arc<Shared>,
    builder: auto::Builder<TokioExecutor>,
    watcher: Watcher,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let shared = shared.clone();
        async move {
            let (respond, response) = oneshot::channel();
            tokio::spawn(driver::drive(shared, request, connection, respond));
            match response.await {
                Ok(response) => Ok(response),
                // The driver ended without a response: the filter reset the stream.
                Err(_) => Err(std::io::Error::other("stream reset by the filter")),
            }
        }
    });
    let serving = builder.serve_connection_with_upgrades(io, service);
    if let Err(error) = watcher.watch(serving).await {
        tracing::debug!(%error, "connection ended with an error");
    }
}
