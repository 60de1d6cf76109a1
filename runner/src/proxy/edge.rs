//! What Envoy's connection manager does to a request before any filter sees it, done the same
//! way here: the refusals it answers itself, the header list in its order, and the headers an
//! edge Envoy manages.

use std::net::SocketAddr;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use proxy_wasm_host::HeaderList;

use super::client::{Body, full};

/// What the driver knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    /// Unique among the proxy's connections (`connection.id`).
    pub id: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
}

/// What Envoy's connection manager answers itself, before any filter sees the request: HTTP/1.0
/// is refused (Envoy's `accept_http_10` is off by default), and a request must name its host.
pub(super) fn refused_at_the_edge(request: &Request<Incoming>) -> Option<Response<Body>> {
    let (status, message) = if request.version() < http::Version::HTTP_11 {
        (StatusCode::UPGRADE_REQUIRED, "Upgrade Required")
    } else if request.uri().authority().is_none() && !request.headers().contains_key(http::header::HOST) {
        (StatusCode::BAD_REQUEST, "")
    } else {
        return None;
    };
    let mut response = Response::new(full(message));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if !message.is_empty() {
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    }
    headers.insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
    Some(response)
}

/// The request as the filter sees it: pseudo-headers first, in Envoy's order, then the headers
/// that are not about this connection alone, then the ones an edge Envoy manages itself
/// ([`edge_headers`]).
pub(super) fn request_header_list(request: &Request<Incoming>, connection: &Connection) -> HeaderList {
    let mut list = HeaderList::new();
    // Several `Host` headers become one `:authority` joined with commas, as Envoy's codec
    // joins them (the filter refuses a host name with a comma in it).
    let authority = match request.uri().authority() {
        Some(authority) => authority.as_str().as_bytes().to_vec(),
        None => {
            let hosts: Vec<&[u8]> =
                request.headers().get_all(http::header::HOST).iter().map(|h| h.as_bytes()).collect();
            hosts.join(&b","[..])
        }
    };
    list.add(":authority", &authority);
    // A CONNECT names only an authority: no `:path`, as in Envoy.
    if request.method() != http::Method::CONNECT {
        let path = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        list.add(":path", path.as_bytes());
    }
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
    // A WebSocket handshake keeps its hop-by-hop pair, as in Envoy: the filter sees what it
    // lets through.
    if is_websocket_handshake(request) {
        list.add("connection", b"upgrade");
        list.add("upgrade", b"websocket");
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

/// Whether a request opens a WebSocket (RFC 6455 §4.1): the one protocol switch the proxy
/// carries, as the bootstrap's `upgrade_configs` let Envoy carry only that one. Any other
/// `Upgrade` (h2c, TLS, anything) is left out, with `HTTP2-Settings`, and the request goes on as
/// a plain one.
pub(super) fn is_websocket_handshake(request: &Request<Incoming>) -> bool {
    let headers = request.headers();
    let connection_says_upgrade = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    request.method() == http::Method::GET
        && request.version() == http::Version::HTTP_11
        && connection_says_upgrade
        && names_websocket(headers.get(http::header::UPGRADE))
        && headers.contains_key(http::header::SEC_WEBSOCKET_KEY)
        && headers.contains_key(http::header::SEC_WEBSOCKET_VERSION)
}

pub(super) fn names_websocket(upgrade: Option<&http::HeaderValue>) -> bool {
    upgrade
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("websocket")))
}
