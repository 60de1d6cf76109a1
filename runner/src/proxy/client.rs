//! Requests to clusters: the app, Ory, and whatever a filter calls with `proxy_http_call`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, Uri};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::Cluster;
use proxy_wasm_host::{HeaderList, HttpCallRequest, HttpCallResponse};

/// A body as the proxy passes it on. It can fail: a body cut short upstream (or by the filter)
/// must reach the other side as an error — a connection closed without the last chunk, a reset
/// stream — and never as a clean, shorter end.
pub type Body = UnsyncBoxBody<Bytes, BodyCut>;

/// Why a body ended before its end.
#[derive(Debug, thiserror::Error)]
#[error("the body was cut short: {0}")]
pub struct BodyCut(pub &'static str);

/// Why an upstream request got no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no cluster named `{0}`")]
    UnknownCluster(String),
    #[error("the request is malformed: {0}")]
    BadRequest(String),
    #[error("{0} did not answer in time")]
    Timeout(String),
    #[error("{cluster} could not be reached: {reason}")]
    Unreachable { cluster: String, reason: String },
    #[error("no route for this path")]
    NoRoute,
}

impl UpstreamError {
    /// What the client is told, as Envoy's router answers the same failure (404 without a route,
    /// 503 when the cluster cannot be reached, 504 on a timeout), in words rather than with the
    /// internal error, which is logged instead.
    pub fn client_answer(&self) -> (u16, String) {
        match self {
            UpstreamError::NoRoute => (404, "No route for this path.".to_string()),
            UpstreamError::Timeout(cluster) => (504, format!("The upstream `{cluster}` did not answer in time.")),
            UpstreamError::Unreachable { cluster, .. } => {
                (503, format!("The upstream `{cluster}` could not be reached."))
            }
            UpstreamError::UnknownCluster(cluster) => (503, format!("There is no upstream `{cluster}`.")),
            UpstreamError::BadRequest(_) => (502, "The request could not be passed on to the upstream.".to_string()),
        }
    }
}

/// Where a request goes: a cluster, the path there, and what to change on the way.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    pub cluster: &'a str,
    pub path: &'a str,
    /// Replaces the `Host` header.
    pub host: Option<&'a str>,
    /// The client opens a WebSocket: ask the upstream for the same switch.
    pub websocket: bool,
}

/// A TLS client configuration that trusts exactly the CA certificates in the PEM file at `path`.
fn tls_config_trusting(path: &Path) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let what = || format!("--upstream-ca-file {}", path.display());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).with_context(|| format!("{}: cannot read it", what()))? {
        let cert = cert.with_context(|| format!("{}: not a PEM certificate file", what()))?;
        roots.add(cert).with_context(|| format!("{}: a certificate that cannot be a CA", what()))?;
    }
    if roots.is_empty() {
        anyhow::bail!("{}: holds no certificate", what());
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1; `http2-settings`
/// belongs to the h2c upgrade, RFC 7540 §3.2, which only this hop could have accepted).
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
    "host",
];

/// The clusters and one connection pool for all of them.
#[derive(Clone)]
pub struct Clusters {
    clusters: HashMap<String, Cluster>,
    connector: hyper_rustls::HttpsConnector<HttpConnector>,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
}

impl Clusters {
    /// `trusted_ca`: verify HTTPS upstreams against the CA certificates in this PEM file only,
    /// instead of Mozilla's roots.
    pub fn new(clusters: Vec<Cluster>, trusted_ca: Option<&Path>) -> anyhow::Result<Clusters> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        http.set_nodelay(true);
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match trusted_ca {
            None => builder.with_webpki_roots(),
            Some(path) => builder.with_tls_config(tls_config_trusting(path)?),
        };
        let tls = builder.https_or_http().enable_http1().enable_http2().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(tls.clone());
        let clusters = clusters.into_iter().map(|c| (c.name.clone(), c)).collect();
        Ok(Clusters { clusters, connector: tls, client })
    }

    /// The same clusters with a connection pool of their own: for a worker thread, whose
    /// upstream connections then live on its own runtime.
    pub fn with_own_pool(&self) -> Clusters {
        let client = Client::builder(TokioExecutor::new()).build(self.connector.clone());
        Clusters { clusters: self.clusters.clone(), connector: self.connector.clone(), client }
    }

    pub fn get(&self, name: &str) -> Option<&Cluster> {
        self.clusters.get(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.clusters.keys().cloned().collect()
    }

    /// Sends a request built from a proxy-wasm header list to `to.cluster`; `timeout` bounds the
    /// wait for the response headers.
    pub async fn send(
        &self,
        to: Destination<'_>,
        headers: &HeaderList,
        body: Body,
        timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let cluster = to.cluster;
        let target = self.clusters.get(cluster).ok_or_else(|| UpstreamError::UnknownCluster(cluster.into()))?;
        let mut request = build_request(target, headers, to.path, to.host, body)?;
        if to.websocket {
            // Hop-by-hop headers are this hop's to set: ask the upstream for the same switch.
            request.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
            request.headers_mut().insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Err(_) => Err(UpstreamError::Timeout(cluster.into())),
            Ok(Err(error)) => {
                let mut reason = error.to_string();
                let mut source = std::error::Error::source(&error);
                while let Some(cause) = source {
                    reason = format!("{reason}: {cause}");
                    source = cause.source();
                }
                Err(UpstreamError::Unreachable { cluster: cluster.into(), reason })
            }
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// Carries out a filter's `proxy_http_call`: the whole answer, or `None` when it failed, or
    /// Envoy's 504 when it timed out.
    pub async fn call(&self, call: HttpCallRequest) -> Option<HttpCallResponse> {
        let path = call.headers.get_str(":path").unwrap_or("/").to_string();
        let body = full(call.body);
        let timeout = if call.timeout.is_zero() { Duration::from_secs(60) } else { call.timeout };
        let started = tokio::time::Instant::now();
        let mut headers = call.headers;
        // As Envoy's client marks a filter's call: internal, with the time it is given.
        headers.set("x-envoy-internal", b"true");
        if !call.timeout.is_zero() {
            headers.set("x-envoy-expected-rq-timeout-ms", call.timeout.as_millis().to_string().as_bytes());
        }
        let to = Destination { cluster: &call.cluster, path: &path, host: None, websocket: false };
        let response = match self.send(to, &headers, body, timeout).await {
            Ok(response) => response,
            Err(UpstreamError::Timeout(_)) => return Some(HttpCallResponse::timeout()),
            Err(UpstreamError::Unreachable { reason, .. }) => {
                tracing::debug!(cluster = call.cluster, %reason, "filter call failed");
                return Some(HttpCallResponse::unreachable(&reason));
            }
            Err(error) => {
                tracing::debug!(cluster = call.cluster, %error, "filter call failed");
                return None;
            }
        };
        let (parts, body) = response.into_parts();
        let remaining = timeout.saturating_sub(started.elapsed());
        let collected = match tokio::time::timeout(remaining, body.collect()).await {
            Err(_) => return Some(HttpCallResponse::timeout()),
            Ok(Err(_)) => return None,
            Ok(Ok(collected)) => collected,
        };
        let trailers = collected.trailers().map(header_list_from).unwrap_or_default();
        let mut headers = HeaderList::new();
        headers.add(":status", parts.status.as_str().as_bytes());
        headers.0.extend(header_list_from(&parts.headers).0);
        // As Envoy's router stamps the answers of filter calls too.
        headers.set("x-envoy-upstream-service-time", started.elapsed().as_millis().to_string().as_bytes());
        Some(HttpCallResponse { headers, body: collected.to_bytes().to_vec(), trailers })
    }
}

/// A complete body.
pub fn full(data: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(data.into()).map_err(|never| match never {}).boxed_unsync()
}

/// An HTTP header map as a proxy-wasm list (names are already lower case in `http`).
pub fn header_list_from(map: &http::HeaderMap) -> HeaderList {
    HeaderList(map.iter().map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec())).collect())
}

/// Copies a proxy-wasm list into an HTTP header map, leaving out pseudo-headers and hop-by-hop
/// headers. Names or values HTTP cannot carry are dropped with a warning: a filter's mistake
/// must not become a malformed request.
pub fn fill_header_map(map: &mut http::HeaderMap, list: &HeaderList) {
    for (name, value) in &list.0 {
        if name.starts_with(':') || HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value)) {
            (Ok(name), Ok(value)) => {
                map.append(name, value);
            }
            _ => tracing::warn!(header = name, "dropping a header HTTP cannot carry"),
        }
    }
}

fn build_request(
    cluster: &Cluster,
    headers: &HeaderList,
    path: &str,
    host: Option<&str>,
    body: Body,
) -> Result<Request<Body>, UpstreamError> {
    let method = headers.get_str(":method").unwrap_or("GET");
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|_| UpstreamError::BadRequest(format!("`{method}` is not a method")))?;
    let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
    let uri: Uri = format!("{}://{}{}", cluster.url.scheme(), cluster.authority(), path)
        .parse()
        .map_err(|_| UpstreamError::BadRequest(format!("`{path}` is not a valid path")))?;
    let mut request =
        Request::builder().method(method).uri(uri).body(body).map_err(|e| UpstreamError::BadRequest(e.to_string()))?;
    fill_header_map(request.headers_mut(), headers);
    let authority = host.map(str::to_string).or_else(|| headers.get_str(":authority").map(str::to_string));
    let authority = authority.unwrap_or_else(|| cluster.authority());
    let value = HeaderValue::from_str(&authority)
        .map_err(|_| UpstreamError::BadRequest(format!("`{authority}` is not a valid host")))?;
    request.headers_mut().insert(http::header::HOST, value);
    Ok(request)
}
