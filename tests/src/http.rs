//! Small HTTP plumbing over hyper 1: a server loop with clean shutdown, and a client for tests
//! and for the demo app's JWKS and logout calls.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// The response type every server here answers with.
pub type Resp = Response<Full<Bytes>>;

/// Returned by a handler to close the connection without writing any response
/// (fault injection: "connection drop").
#[derive(Debug, Clone, Copy)]
pub struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for DropConnection {}

/// Bind `127.0.0.1:<port>`; port 0 picks a free ephemeral port.
pub async fn bind_loopback(port: u16) -> Result<TcpListener> {
    TcpListener::bind(("127.0.0.1", port)).await.with_context(|| format!("cannot listen on 127.0.0.1:{port}"))
}

/// A running server: its address, and a clean shutdown.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting, close every open connection and wait until the server task ended.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Wait until the server stops (it only stops through [`ServerHandle::shutdown`] or drop).
    pub async fn wait(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serve HTTP/1.1 on `listener` with `handler` until the returned handle is shut down or dropped.
/// A handler answering `Err(DropConnection)` makes the connection close without a response.
pub fn spawn_server<H, F>(listener: TcpListener, handler: H) -> Result<ServerHandle>
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Resp, DropConnection>> + Send + 'static,
{
    let addr = listener.local_addr().context("listener has no local address")?;
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut stop_rx => break,
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(pair) => pair,
                        Err(err) => {
                            tracing::warn!(%err, "accept failed");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let handler = Arc::clone(&handler);
                    connections.spawn(async move {
                        let service = service_fn(move |req| {
                            let handler = Arc::clone(&handler);
                            async move { handler(req, peer).await }
                        });
                        if let Err(err) = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                        {
                            tracing::debug!(%err, %peer, "connection ended with an error");
                        }
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        connections.shutdown().await;
    });
    Ok(ServerHandle { addr, stop: Some(stop_tx), task: Some(task) })
}

/// Read a request body whole, refusing bodies larger than `limit` bytes.
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes> {
    Limited::new(body, limit)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|err| anyhow!("cannot read request body: {err}"))
}

/// A response with a body and content type.
pub fn response(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    resp
}

/// An empty-bodied redirect.
pub fn redirect(status: StatusCode, location: &str) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, value);
    }
    resp
}

/// Append a header, ignoring values that are not valid header values.
pub fn append_header(resp: &mut Resp, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        resp.headers_mut().append(name, value);
    }
}

/// A collected client response.
#[derive(Debug, Clone)]
pub struct ClientResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl ClientResponse {
    /// The first value of a header, if it is valid text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of a header that is valid text.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect()
    }

    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!("body is not JSON (status {}): {}", self.status, String::from_utf8_lossy(&self.body))
        })
    }

    /// The `Set-Cookie` header whose cookie has this name.
    pub fn set_cookie(&self, name: &str) -> Option<&str> {
        self.header_all("set-cookie")
            .into_iter()
            .find(|c| c.split_once('=').map(|(n, _)| n.trim() == name).unwrap_or(false))
    }
}

/// A plain-HTTP client (no TLS) with a per-request timeout. Never follows redirects.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> Self {
        Self::with_timeout(Duration::from_secs(10))
    }

    pub fn with_timeout(timeout: Duration) -> Self {
        let inner = Client::builder(TokioExecutor::new()).build_http();
        HttpClient { inner, timeout }
    }

    /// Send a request and collect the whole answer.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<ClientResponse> {
        let uri = req.uri().clone();
        let fut = async {
            let resp = self.inner.request(req).await.with_context(|| format!("request to {uri} failed"))?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.with_context(|| format!("reading the body from {uri} failed"))?.to_bytes();
            Ok(ClientResponse { status: parts.status, headers: parts.headers, body })
        };
        tokio::time::timeout(self.timeout, fut).await.map_err(|_| anyhow!("request to {uri} timed out"))?
    }

    /// Build and send a request with headers and a body.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<ClientResponse> {
        let mut builder = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let req = builder.body(Full::new(body.into())).with_context(|| format!("invalid request to {url}"))?;
        self.send(req).await
    }

    /// GET with headers.
    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<ClientResponse> {
        self.request(Method::GET, url, headers, Bytes::new()).await
    }

    /// POST an `application/x-www-form-urlencoded` form.
    pub async fn post_form(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        fields: &[(&str, &str)],
    ) -> Result<ClientResponse> {
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        let mut all = vec![("content-type", "application/x-www-form-urlencoded")];
        all.extend_from_slice(headers);
        self.request(Method::POST, url, &all, body).await
    }
}

/// Answer used when a handler itself failed: never panic, say 500.
pub fn internal_error(message: &str) -> Resp {
    response(StatusCode::INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", message.to_owned())
}
