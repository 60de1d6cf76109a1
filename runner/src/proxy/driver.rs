//! One request through the filter and out to a cluster: the I/O around an [`Exchange`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};

use super::client::{Body, Destination, UpstreamError, fill_header_map, full, header_list_from};
use super::pool::{FilterPool, Lease, Signal};
use super::{Route, rewrite_path, route_for};
use crate::host::{Exchange, HeaderList, Out, Step, StreamInfo};

/// What the driver knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
}

/// Everything a request needs: the filter, the routes, the limits.
pub struct Shared {
    pub pool: Arc<FilterPool>,
    pub routes: Vec<Route>,
    pub upstream_timeout: Duration,
}

type FrameSender = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

fn channel_body() -> (FrameSender, Body) {
    let (sender, receiver) = mpsc::channel(8);
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|frame| (frame, receiver))
    });
    (sender, StreamBody::new(stream).boxed_unsync())
}

/// What a request gets when the filter failed on it: 503, as in Envoy (whose body is empty; this
/// one says what failed).
const FILTER_FAILED: (StatusCode, &str) = (StatusCode::SERVICE_UNAVAILABLE, "The proxy's filter failed.");

/// A response the proxy makes without the filter (the filter itself failed).
pub fn plain_response(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(full(format!("{message}\n")));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// The request as the filter sees it: pseudo-headers first, in Envoy's order, then the headers
/// that are not about this connection alone, then the ones an edge Envoy manages itself
/// ([`edge_headers`]).
fn request_header_list(request: &Request<Incoming>, connection: &Connection) -> HeaderList {
    let mut list = HeaderList::new();
    let authority = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| request.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
        .unwrap_or_default();
    list.add(":authority", authority.as_bytes());
    let path = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    list.add(":path", path.as_bytes());
    list.add(":method", request.method().as_str().as_bytes());
    list.add(":scheme", if connection.tls { b"https" } else { b"http" });
    // Headers a client names in `Connection` are for this hop only (and must not be used to make
    // a later hop drop a header the filter adds).
    let named: Vec<String> = request
        .headers()
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in request.headers() {
        let name = name.as_str();
        if super::client::HOP_BY_HOP.contains(&name) || named.iter().any(|n| n == name) {
            continue;
        }
        list.add(name, value.as_bytes());
    }
    edge_headers(&mut list, connection);
    list
}

/// What Envoy's connection manager does to a request from outside before any filter runs, as the
/// bootstrap of `envoy-config` configures it (`use_remote_address: true`, the edge): a client's
/// `x-envoy-*` headers and `x-request-id` are not trusted; `x-forwarded-proto` is the scheme of
/// the connection; the peer is appended to `x-forwarded-for`; `x-envoy-external-address` names
/// the peer; every request gets a new `x-request-id`.
fn edge_headers(list: &mut HeaderList, connection: &Connection) {
    list.0.retain(|(name, _)| !name.starts_with("x-envoy-") && name != "x-request-id");
    list.set("x-forwarded-proto", if connection.tls { b"https" } else { b"http" });
    let peer = connection.peer.ip().to_string();
    let earlier: Vec<String> =
        list.get_all("x-forwarded-for").map(|v| String::from_utf8_lossy(v).trim().to_string()).collect();
    let forwarded_for =
        earlier.into_iter().filter(|v| !v.is_empty()).chain([peer.clone()]).collect::<Vec<_>>().join(",");
    list.set("x-forwarded-for", forwarded_for.as_bytes());
    list.add("x-envoy-external-address", peer.as_bytes());
    list.add("x-request-id", uuid::Uuid::new_v4().to_string().as_bytes());
}

fn protocol(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

/// The state of one request in flight.
struct Driver {
    shared: Arc<Shared>,
    lease: Lease,
    exchange: Option<Exchange>,
    /// Where the response head goes (the hyper service is waiting on it).
    respond: Option<oneshot::Sender<Response<Body>>>,
    request_body: Option<Incoming>,
    upstream_sink: Option<FrameSender>,
    upstream: Option<BoxFuture<'static, Result<Response<Incoming>, UpstreamError>>>,
    /// When the request was sent upstream (for `x-envoy-upstream-service-time`).
    upstream_sent: Option<std::time::Instant>,
    upstream_body: Option<Incoming>,
    downstream_sink: Option<FrameSender>,
    finished: bool,
    /// A client asking to switch protocols (WebSocket): what it asked for, and its side of the
    /// connection once hyper hands it over.
    client_upgrade: Option<(http::HeaderValue, OnUpgrade)>,
    upstream_upgrade: Option<OnUpgrade>,
    /// For the access log.
    method: String,
    path: String,
    status: Option<u16>,
    started: std::time::Instant,
}

/// Runs one request to completion. The response head is sent on `respond` as soon as it exists;
/// the body keeps streaming from this task.
pub async fn drive(
    shared: Arc<Shared>,
    mut request: Request<Incoming>,
    connection: Connection,
    respond: oneshot::Sender<Response<Body>>,
) {
    let info = StreamInfo {
        source: Some(connection.peer),
        destination: Some(connection.local),
        protocol: protocol(request.version()).to_string(),
    };
    let (lease, exchange) = match shared.pool.open(info) {
        Ok(opened) => opened,
        Err(error) => {
            tracing::error!(%error, "the filter could not take the request");
            let _ = respond.send(plain_response(FILTER_FAILED.0, FILTER_FAILED.1));
            return;
        }
    };
    let headers = request_header_list(&request, &connection);
    let client_upgrade =
        requested_upgrade(request.headers()).map(|protocol| (protocol, hyper::upgrade::on(&mut request)));
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let (_, body) = request.into_parts();
    let end = http_body::Body::is_end_stream(&body);
    let mut driver = Driver {
        shared,
        lease,
        exchange: Some(exchange),
        respond: Some(respond),
        request_body: (!end).then_some(body),
        upstream_sink: None,
        upstream: None,
        upstream_sent: None,
        upstream_body: None,
        downstream_sink: None,
        finished: false,
        client_upgrade,
        upstream_upgrade: None,
        method,
        path,
        status: None,
        started: std::time::Instant::now(),
    };
    driver.step(move |exchange, vm| exchange.request_headers(vm, headers, end)).await;
    driver.run().await;
}

impl Driver {
    async fn run(&mut self) {
        while !self.finished {
            tokio::select! {
                signal = self.lease.signals.recv() => match signal {
                    Some(Signal::Effect(effect)) => self.step(move |exchange, vm| exchange.apply(vm, effect)).await,
                    Some(Signal::VmFailed) | None => self.fail(FILTER_FAILED.0, FILTER_FAILED.1),
                },
                frame = next_frame(&mut self.request_body), if self.request_body.is_some() => {
                    let (data, end) = match frame {
                        Ok(frame) => frame,
                        Err(error) => {
                            tracing::debug!(%error, "reading the request body");
                            self.finished = true;
                            break;
                        }
                    };
                    if end {
                        self.request_body = None;
                    }
                    self.step(move |exchange, vm| exchange.request_data(vm, &data, end)).await;
                },
                response = pending_upstream(&mut self.upstream), if self.upstream.is_some() => {
                    self.upstream = None;
                    self.upstream_answered(response).await;
                },
                frame = next_frame(&mut self.upstream_body), if self.upstream_body.is_some() => {
                    let (data, end) = match frame {
                        Ok(frame) => frame,
                        Err(error) => {
                            tracing::debug!(%error, "reading the upstream body");
                            self.abort_downstream();
                            break;
                        }
                    };
                    if end {
                        self.upstream_body = None;
                    }
                    self.step(move |exchange, vm| exchange.response_data(vm, &data, end)).await;
                },
            }
        }
        let annotations = match self.exchange.take() {
            Some(exchange) => self.shared.pool.close(&self.lease, exchange),
            None => Vec::new(),
        };
        self.log(&annotations);
    }

    /// One access-log line per request, at debug level: quiet on the hot path unless asked.
    fn log(&self, annotations: &[(String, String)]) {
        let notes: Vec<String> = annotations.iter().map(|(k, v)| format!("{k}={v}")).collect();
        tracing::debug!(
            target: "access",
            "{} {} {} {}ms {}",
            self.method,
            self.path,
            self.status.map_or_else(|| "-".to_string(), |s| s.to_string()),
            self.started.elapsed().as_millis(),
            notes.join(" ")
        );
    }

    /// Runs one step of the exchange and carries out what it says.
    async fn step(
        &mut self,
        step: impl FnOnce(&mut Exchange, &mut crate::host::Vm) -> Result<Step, crate::host::VmError>,
    ) {
        let Some(exchange) = self.exchange.as_mut() else { return };
        let result = self.shared.pool.run(&self.lease, |vm| step(exchange, vm));
        match result {
            Ok(step) => {
                for out in step.out {
                    self.carry_out(out).await;
                }
            }
            Err(error) => {
                tracing::error!(%error, "the filter failed on a request");
                self.exchange = None;
                self.fail(FILTER_FAILED.0, FILTER_FAILED.1);
            }
        }
    }

    async fn carry_out(&mut self, out: Out) {
        match out {
            Out::RequestHeaders(headers, end) => self.start_upstream(headers, end),
            Out::RequestData(data, end) => {
                if let Some(sink) = &self.upstream_sink
                    && !data.is_empty()
                    && sink.send(Ok(Frame::data(Bytes::from(data)))).await.is_err()
                {
                    self.upstream_sink = None;
                }
                if end {
                    self.upstream_sink = None;
                }
            }
            Out::Replied { .. } => {
                self.upstream = None;
                self.upstream_sink = None;
                self.upstream_body = None;
                self.request_body = None;
            }
            Out::ResponseHeaders(headers, end) => self.send_response_head(headers, end),
            Out::ResponseData(data, end) => {
                if let Some(sink) = &self.downstream_sink
                    && !data.is_empty()
                    && sink.send(Ok(Frame::data(Bytes::from(data)))).await.is_err()
                {
                    // The client went away.
                    self.downstream_sink = None;
                    self.finished = true;
                }
                if end {
                    self.downstream_sink = None;
                    self.finished = true;
                }
            }
            Out::Reset => self.abort_downstream(),
            Out::Fail(status, why) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                self.fail(status, why);
            }
        }
    }

    fn start_upstream(&mut self, headers: HeaderList, end: bool) {
        let path = headers.get_str(":path").unwrap_or("/").to_string();
        let Some(route) = route_for(&self.shared.routes, &path).cloned() else {
            self.upstream = Some(Box::pin(async { Err(UpstreamError::NoRoute) }));
            return;
        };
        let body = if end {
            full(Bytes::new())
        } else {
            let (sink, body) = channel_body();
            self.upstream_sink = Some(sink);
            body
        };
        let upstream_path = rewrite_path(&route, &path);
        let shared = self.shared.clone();
        let timeout = self.shared.upstream_timeout;
        let protocol = self.client_upgrade.as_ref().map(|(protocol, _)| protocol.clone());
        self.upstream_sent = Some(std::time::Instant::now());
        self.upstream = Some(Box::pin(async move {
            let clusters = shared.pool.clusters();
            let host = route.host_rewrite.as_deref();
            let to = Destination {
                cluster: &route.cluster,
                path: &upstream_path,
                host,
                protocol_upgrade: protocol.as_ref(),
            };
            clusters.send(to, &headers, body, timeout).await
        }));
    }

    /// The upstream's answer, or its failure as an error response that still goes through the
    /// filter.
    async fn upstream_answered(&mut self, response: Result<Response<Incoming>, UpstreamError>) {
        match response {
            Ok(mut response) => {
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    self.upstream_upgrade = Some(hyper::upgrade::on(&mut response));
                }
                let (parts, body) = response.into_parts();
                let mut headers = HeaderList::new();
                headers.add(":status", parts.status.as_str().as_bytes());
                headers.0.extend(header_list_from(&parts.headers).0);
                // As Envoy's router does: how long the upstream took to answer, in milliseconds.
                if let Some(sent) = self.upstream_sent {
                    let millis = sent.elapsed().as_millis().to_string();
                    headers.set("x-envoy-upstream-service-time", millis.as_bytes());
                }
                let end = http_body::Body::is_end_stream(&body);
                if !end {
                    self.upstream_body = Some(body);
                }
                self.step(move |exchange, vm| exchange.response_headers(vm, headers, end)).await;
            }
            Err(error) => {
                let (status, message) = error.client_answer();
                let message = format!("{message}\n");
                tracing::warn!(%error, "upstream failed");
                self.upstream_sink = None;
                self.request_body = None;
                let mut headers = HeaderList::new();
                headers.add(":status", status.to_string().as_bytes());
                headers.add("content-type", b"text/plain; charset=utf-8");
                headers.add("content-length", message.len().to_string().as_bytes());
                self.step(move |exchange, vm| exchange.response_headers(vm, headers, false)).await;
                self.step(move |exchange, vm| exchange.response_data(vm, message.as_bytes(), true)).await;
            }
        }
    }

    fn send_response_head(&mut self, headers: HeaderList, end: bool) {
        let Some(respond) = self.respond.take() else { return };
        let status = headers
            .get_str(":status")
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::BAD_GATEWAY);
        let body = if end {
            self.finished = true;
            full(Bytes::new())
        } else {
            let (sink, body) = channel_body();
            self.downstream_sink = Some(sink);
            body
        };
        self.status = Some(status.as_u16());
        let mut response = Response::new(body);
        *response.status_mut() = status;
        fill_header_map(response.headers_mut(), &headers);
        if status == StatusCode::SWITCHING_PROTOCOLS {
            self.tunnel(&mut response);
        }
        if respond.send(response).is_err() {
            self.finished = true;
        }
    }

    /// The upstream agreed to switch protocols: once both sides hand over their connections,
    /// bytes flow between them untouched (the filter saw the handshake, not the frames).
    fn tunnel(&mut self, response: &mut Response<Body>) {
        let (Some((protocol, client)), Some(upstream)) = (self.client_upgrade.take(), self.upstream_upgrade.take())
        else {
            return;
        };
        response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("upgrade"));
        response.headers_mut().insert(http::header::UPGRADE, protocol);
        tokio::spawn(async move {
            match tokio::try_join!(client, upstream) {
                Ok((client, upstream)) => {
                    let mut client = TokioIo::new(client);
                    let mut upstream = TokioIo::new(upstream);
                    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                        tracing::debug!(%error, "upgraded connection ended");
                    }
                }
                Err(error) => tracing::debug!(%error, "protocol upgrade failed"),
            }
        });
    }

    /// Answers with a plain error when nothing has been sent yet, else cuts the response short.
    fn fail(&mut self, status: StatusCode, message: &str) {
        match self.respond.take() {
            Some(respond) => {
                self.status = Some(status.as_u16());
                let _ = respond.send(plain_response(status, message));
            }
            None => self.abort_downstream(),
        }
        self.finished = true;
    }

    /// Ends the stream without a (complete) response: the client sees a reset.
    fn abort_downstream(&mut self) {
        self.respond = None;
        self.downstream_sink = None;
        self.upstream = None;
        self.upstream_sink = None;
        self.finished = true;
    }
}

async fn pending_upstream(
    upstream: &mut Option<BoxFuture<'static, Result<Response<Incoming>, UpstreamError>>>,
) -> Result<Response<Incoming>, UpstreamError> {
    match upstream.as_mut() {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// The protocol a request asks to switch to (`Connection: upgrade` with `Upgrade: …`).
fn requested_upgrade(headers: &http::HeaderMap) -> Option<http::HeaderValue> {
    let connection_says_upgrade = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if connection_says_upgrade { headers.get(http::header::UPGRADE).cloned() } else { None }
}

/// The next data frame of a body, and whether it was the last. Trailers end the body (they are
/// not passed on).
async fn next_frame(body: &mut Option<Incoming>) -> Result<(Vec<u8>, bool), hyper::Error> {
    let Some(incoming) = body.as_mut() else { return Ok((Vec::new(), true)) };
    match incoming.frame().await {
        None => Ok((Vec::new(), true)),
        Some(Err(error)) => Err(error),
        Some(Ok(frame)) => match frame.into_data() {
            Ok(data) => {
                let end = http_body::Body::is_end_stream(&*incoming);
                Ok((data.to_vec(), end))
            }
            Err(_) => Ok((Vec::new(), true)),
        },
    }
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("finished", &self.finished).finish()
    }
}
