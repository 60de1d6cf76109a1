//! One request through the filter and out to a cluster: the I/O around an [`Exchange`].

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::LocalBoxFuture;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};

use super::client::{Body, BodyCut, Destination, UpstreamError, fill_header_map, full, header_list_from};
use super::edge::{is_websocket_handshake, names_websocket, refused_at_the_edge, request_header_list};
use super::pool::{Lease, Signal, Worker};
use super::{Route, rewrite_path, route_for};
use proxy_wasm_host::{Exchange, HeaderList, Out, Step, StreamInfo};

pub use super::edge::Connection;

/// Everything a request needs: the worker with its VM, the routes, the limits.
pub struct Shared {
    pub worker: Rc<Worker>,
    pub routes: Arc<[Route]>,
    /// The longest an upstream may stay silent: before its response headers, and between the
    /// chunks of its body.
    pub upstream_timeout: Duration,
}

enum Piece {
    Data(Bytes),
    End,
}

/// The writing end of a streamed body. Chunks queue here while the reader is slow; the
/// driver sends them as room appears, from its one loop, so that waiting for a slow reader never
/// stops it from hearing the filter or the other side. Only [`BodyOutlet::finish`] ends the body
/// cleanly: one dropped before (the upstream failed, the filter failed or reset the stream)
/// ends it with an error, so the other side sees it cut short instead of a complete, shorter
/// body.
struct BodyOutlet {
    sender: mpsc::Sender<Piece>,
    queue: std::collections::VecDeque<Piece>,
}

impl BodyOutlet {
    fn push(&mut self, data: Vec<u8>) {
        if !data.is_empty() {
            self.queue.push_back(Piece::Data(Bytes::from(data)));
        }
    }

    fn finish(&mut self) {
        self.queue.push_back(Piece::End);
    }

    fn backed_up(outlet: &Option<BodyOutlet>) -> bool {
        outlet.as_ref().is_some_and(|outlet| !outlet.queue.is_empty())
    }
}

/// Sends the next queued piece once the reader has room. The outlet is gone afterwards when
/// that piece ended the body or nobody reads it any more.
async fn drain(outlet: &mut Option<BodyOutlet>) {
    let Some(open) = outlet.as_mut() else { return std::future::pending().await };
    let Ok(permit) = open.sender.reserve().await else {
        *outlet = None;
        return;
    };
    match open.queue.pop_front() {
        Some(Piece::End) => {
            permit.send(Piece::End);
            *outlet = None;
        }
        Some(piece) => permit.send(piece),
        None => {}
    }
}

fn channel_body() -> (BodyOutlet, Body) {
    let (sender, receiver) = mpsc::channel(8);
    let stream = futures_util::stream::unfold(Some(receiver), |receiver| async move {
        let mut receiver = receiver?;
        match receiver.recv().await {
            Some(Piece::Data(data)) => Some((Ok(Frame::data(data)), Some(receiver))),
            Some(Piece::End) => None,
            None => {
                // Once more pending first, so that hyper writes out what it already holds
                // before the error makes it drop the connection.
                tokio::task::yield_now().await;
                Some((Err(BodyCut("the proxy stopped passing it on")), None))
            }
        }
    });
    (BodyOutlet { sender, queue: Default::default() }, StreamBody::new(stream).boxed_unsync())
}

/// How much request body the host holds for a filter that has not let the request headers go on
/// (it is asking Ory about the session) before it stops reading from the client: Envoy's default
/// connection buffer limit.
const HELD_BODY_WATERMARK: usize = 1024 * 1024;

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

fn protocol(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

/// What follows a response head to the client.
enum Following {
    /// Nothing: the response ends with its head.
    Nothing,
    /// This, the whole body.
    Whole(Bytes),
    /// A body streamed as the filter lets it go.
    Stream,
}

/// The state of one request in flight.
struct Driver {
    shared: Rc<Shared>,
    lease: Lease,
    exchange: Option<Exchange>,
    /// Where the response head goes (the hyper service is waiting on it).
    respond: Option<oneshot::Sender<Response<Body>>>,
    request_body: Option<Incoming>,
    upstream_sink: Option<BodyOutlet>,
    upstream: Option<LocalBoxFuture<'static, Result<Response<Incoming>, UpstreamError>>>,
    /// When the request was sent upstream (for `x-envoy-upstream-service-time`).
    upstream_sent: Option<std::time::Instant>,
    upstream_body: Option<Incoming>,
    /// A response head the filter let go, not yet sent: if the whole body follows before it
    /// must go, the client gets both in one piece instead of a streamed body.
    held_head: Option<HeaderList>,
    /// Hold a head across the filter's next two steps (the upstream's whole body is here).
    holding: bool,
    downstream_sink: Option<BodyOutlet>,
    finished: bool,
    /// A client asking for a WebSocket: its side of the connection once hyper hands it over.
    client_upgrade: Option<OnUpgrade>,
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
    shared: Rc<Shared>,
    mut request: Request<Incoming>,
    connection: Connection,
    respond: oneshot::Sender<Response<Body>>,
) {
    shared.worker.stats().request();
    if let Some(refusal) = refused_at_the_edge(&request) {
        let _ = respond.send(refusal);
        return;
    }
    let info = StreamInfo {
        source: Some(connection.peer),
        destination: Some(connection.local),
        protocol: protocol(request.version()).to_string(),
        connection_id: Some(connection.id),
    };
    let (lease, exchange) = match shared.worker.open(info) {
        Ok(opened) => opened,
        Err(error) => {
            tracing::error!(%error, "the filter could not take the request");
            let _ = respond.send(plain_response(FILTER_FAILED.0, FILTER_FAILED.1));
            return;
        }
    };
    let headers = request_header_list(&request, &connection);
    let client_upgrade = is_websocket_handshake(&request).then(|| hyper::upgrade::on(&mut request));
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
        held_head: None,
        holding: false,
        downstream_sink: None,
        finished: false,
        client_upgrade,
        upstream_upgrade: None,
        method,
        path,
        status: None,
        started: std::time::Instant::now(),
    };
    let cluster = route_for(&driver.shared.routes, headers.get_str(":path").unwrap_or("/")).map(|r| r.cluster.clone());
    driver
        .step(move |exchange, vm| {
            exchange.route_to(vm, cluster.as_deref())?;
            exchange.request_headers(vm, headers, end)
        })
        .await;
    driver.run().await;
}

impl Driver {
    async fn run(&mut self) {
        // Once the exchange is finished, what is still queued for the client goes out.
        while !self.finished || BodyOutlet::backed_up(&self.downstream_sink) {
            tokio::select! {
                () = drain(&mut self.downstream_sink), if BodyOutlet::backed_up(&self.downstream_sink) => {
                    if self.downstream_sink.is_none() && !self.finished {
                        // The client went away, or its body is complete.
                        self.finished = true;
                    }
                },
                () = drain(&mut self.upstream_sink), if BodyOutlet::backed_up(&self.upstream_sink) => {},
                signal = self.lease.signals.recv(), if !self.finished => match signal {
                    Some(Signal::Effect(effect)) => self.step(move |exchange, vm| exchange.apply(vm, effect)).await,
                    Some(Signal::VmFailed) | None => self.fail(FILTER_FAILED.0, FILTER_FAILED.1),
                },
                frame = next_frame(&mut self.request_body),
                    if !self.finished
                        && self.request_body.is_some()
                        && !BodyOutlet::backed_up(&self.upstream_sink)
                        && self.exchange.as_ref().is_some_and(|e| e.takes_request_data(HELD_BODY_WATERMARK)) =>
                {
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
                response = pending_upstream(&mut self.upstream), if !self.finished && self.upstream.is_some() => {
                    self.upstream = None;
                    self.upstream_answered(response).await;
                },
                frame = tokio::time::timeout(self.shared.upstream_timeout, next_frame(&mut self.upstream_body)),
                    if !self.finished && self.upstream_body.is_some() && !BodyOutlet::backed_up(&self.downstream_sink) =>
                {
                    match frame {
                        Ok(frame) => self.upstream_frame(frame).await,
                        Err(_) => {
                            let silent = self.shared.upstream_timeout;
                            tracing::warn!(path = self.path, "the upstream body stalled for {silent:?}: cutting it short");
                            self.abort_downstream();
                        }
                    }
                },
            }
        }
        let annotations = match self.exchange.take() {
            Some(exchange) => self.shared.worker.close(&self.lease, exchange),
            None => Vec::new(),
        };
        self.log(&annotations);
    }

    /// One access-log line per request, at debug level: quiet on the hot path unless asked.
    fn log(&self, annotations: &[(String, String)]) {
        if !tracing::enabled!(target: "access", tracing::Level::DEBUG) {
            return;
        }
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
        step: impl FnOnce(&mut Exchange, &mut proxy_wasm_host::Vm) -> Result<Step, proxy_wasm_host::VmError>,
    ) {
        let Some(exchange) = self.exchange.as_mut() else { return };
        let result = self.shared.worker.run(&self.lease, |vm| step(exchange, vm));
        match result {
            Ok(step) => {
                for out in step.out {
                    self.carry_out(out).await;
                }
                if !self.holding {
                    self.release_head();
                }
            }
            Err(error) => {
                tracing::error!(%error, "the filter failed on a request");
                self.exchange = None;
                // A head the filter let go counts as sent: the response is cut short, as it is
                // when the body streams.
                self.release_head();
                self.fail(FILTER_FAILED.0, FILTER_FAILED.1);
            }
        }
    }

    async fn carry_out(&mut self, out: Out) {
        // Anything but the whole body after a held head sends the head on first.
        if !(self.held_head.is_some() && matches!(out, Out::ResponseData(_, true))) {
            self.release_head();
        }
        match out {
            Out::RequestHeaders(headers, end) => self.start_upstream(headers, end),
            Out::RequestData(data, end) => {
                if let Some(sink) = &mut self.upstream_sink {
                    sink.push(data);
                    if end {
                        sink.finish();
                    }
                }
            }
            Out::Replied { .. } => {
                self.upstream = None;
                self.upstream_sink = None;
                self.upstream_body = None;
                self.request_body = None;
            }
            Out::ResponseHeaders(headers, true) => self.send_response_head(headers, Following::Nothing),
            Out::ResponseHeaders(headers, false) => self.held_head = Some(headers),
            Out::ResponseData(data, end) => {
                if end && let Some(head) = self.held_head.take() {
                    self.send_response_head(head, Following::Whole(Bytes::from(data)));
                    self.finished = true;
                    return;
                }
                if let Some(sink) = &mut self.downstream_sink {
                    sink.push(data);
                    if end {
                        sink.finish();
                    }
                }
                if end {
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
        let route = route_for(&self.shared.routes, &path).cloned();
        // The filter may have changed the path: what its later callbacks see is where it went.
        if let Some(exchange) = &self.exchange {
            let cluster = route.as_ref().map(|route| route.cluster.as_str());
            if let Err(error) =
                self.shared.worker.run(&self.lease, |vm| exchange.route_to(vm, cluster).map(|()| Step::default()))
            {
                tracing::debug!(%error, "naming the stream's cluster");
            }
        }
        let Some(route) = route else {
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
        let websocket = self.client_upgrade.is_some();
        self.upstream_sent = Some(std::time::Instant::now());
        self.upstream = Some(Box::pin(async move {
            let clusters = shared.worker.clusters();
            let host = route.host_rewrite.as_deref();
            let to = Destination { cluster: &route.cluster, path: &upstream_path, host, websocket };
            clusters.send(to, &headers, body, timeout).await
        }));
    }

    /// The upstream's answer, or its failure as an error response that still goes through the
    /// filter.
    async fn upstream_answered(&mut self, response: Result<Response<Incoming>, UpstreamError>) {
        match response {
            Ok(mut response) => {
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    // A switch nobody asked for (or to anything but a WebSocket) would turn the
                    // connection into a tunnel past the filter: refuse it.
                    if self.client_upgrade.is_none() || !names_websocket(response.headers().get(http::header::UPGRADE))
                    {
                        tracing::warn!(path = self.path, "the upstream switched protocols unasked");
                        self.upstream_failed(StatusCode::BAD_GATEWAY, "The upstream switched protocols unasked.").await;
                        return;
                    }
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
                // A small body often comes with its head: then the filter sees both at once,
                // and the client gets them in one piece (see `held_head`).
                let mut ready = None;
                if !end {
                    self.upstream_body = Some(body);
                    ready = next_frame(&mut self.upstream_body).now_or_never();
                }
                self.holding = ready.is_some();
                self.step(move |exchange, vm| exchange.response_headers(vm, headers, end)).await;
                if let Some(frame) = ready
                    && !self.finished
                    && self.upstream_body.is_some()
                {
                    self.upstream_frame(frame).await;
                }
                self.holding = false;
                self.release_head();
            }
            Err(error) => {
                let (status, message) = error.client_answer();
                tracing::warn!(%error, "upstream failed");
                self.shared.worker.stats().upstream_error();
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                self.upstream_failed(status, &message).await;
            }
        }
    }

    /// An answer of the proxy's own in place of the upstream's, through the filter as an
    /// upstream answer would go.
    async fn upstream_failed(&mut self, status: StatusCode, message: &str) {
        let message = format!("{message}\n");
        self.upstream_sink = None;
        self.request_body = None;
        self.upstream_body = None;
        self.upstream_upgrade = None;
        let mut headers = HeaderList::new();
        headers.add(":status", status.as_str().as_bytes());
        headers.add("content-type", b"text/plain; charset=utf-8");
        headers.add("content-length", message.len().to_string().as_bytes());
        self.step(move |exchange, vm| exchange.response_headers(vm, headers, false)).await;
        self.step(move |exchange, vm| exchange.response_data(vm, message.as_bytes(), true)).await;
    }

    /// One frame of the upstream's body, through the filter (or the end of the stream, when it
    /// failed).
    async fn upstream_frame(&mut self, frame: Result<(Vec<u8>, bool), hyper::Error>) {
        match frame {
            Ok((data, end)) => {
                if end {
                    self.upstream_body = None;
                }
                self.step(move |exchange, vm| exchange.response_data(vm, &data, end)).await;
            }
            Err(error) => {
                tracing::warn!(%error, path = self.path, "the upstream body was cut short");
                self.abort_downstream();
            }
        }
    }

    /// Sends a held head on, its body to stream after it.
    fn release_head(&mut self) {
        if let Some(head) = self.held_head.take() {
            self.send_response_head(head, Following::Stream);
        }
    }

    fn send_response_head(&mut self, headers: HeaderList, following: Following) {
        let Some(respond) = self.respond.take() else { return };
        let status = headers
            .get_str(":status")
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::BAD_GATEWAY);
        let body = match following {
            Following::Nothing => {
                self.finished = true;
                full(Bytes::new())
            }
            Following::Whole(data) => {
                self.finished = true;
                full(data)
            }
            Following::Stream => {
                let (sink, body) = channel_body();
                self.downstream_sink = Some(sink);
                body
            }
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
        let (Some(client), Some(upstream)) = (self.client_upgrade.take(), self.upstream_upgrade.take()) else {
            return;
        };
        response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("upgrade"));
        response.headers_mut().insert(http::header::UPGRADE, http::HeaderValue::from_static("websocket"));
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
    upstream: &mut Option<LocalBoxFuture<'static, Result<Response<Incoming>, UpstreamError>>>,
) -> Result<Response<Incoming>, UpstreamError> {
    match upstream.as_mut() {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
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
