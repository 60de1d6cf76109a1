//! The listening side: accept connections, serve HTTP/1.1 and HTTP/2, hand each request to a
//! driver task, and drain in-flight requests on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

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
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 4000)),
            upstream_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// A bound, not yet serving, proxy.
pub struct Proxy {
    listener: TcpListener,
    shared: Arc<Shared>,
    drain_timeout: Duration,
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
        Ok(Proxy { listener, shared, drain_timeout: options.drain_timeout })
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
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
            let local = stream.local_addr().unwrap_or(peer);
            let connection = Connection { peer, local, tls: false };
            let shared = self.shared.clone();
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
            let serving = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
            let watched = graceful.watch(serving);
            tokio::spawn(async move {
                if let Err(error) = watched.await {
                    tracing::debug!(%error, "connection ended with an error");
                }
            });
        }
        drop(self.listener);
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(self.drain_timeout) => tracing::warn!("gave up waiting for requests in flight"),
        }
        Ok(())
    }
}
