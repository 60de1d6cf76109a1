//! The HTTP side of the runner: a hyper server that passes every request through the filter and
//! on to a cluster, in Envoy's terms.
//!
//! - a **cluster** is a name and a base URL (scheme, host, port);
//! - a **route** sends paths with a prefix to a cluster, optionally rewriting the prefix and the
//!   `Host` header;
//! - the filter sees the request before routing, so it can answer, rewrite or refuse it.

mod client;
mod driver;
mod edge;
mod observe;
mod pool;
mod server;
mod stats;
mod watch;

pub use client::{Clusters, UpstreamError};
pub use observe::{ObserveOptions, prometheus_text};
pub use pool::{FilterPool, PoolOptions};
pub use server::{Proxy, ProxyHandle, ServeOptions};
pub use stats::{RunnerStats, Stat};

use std::time::Duration;

use url::Url;

/// What bounds a client or an upstream, with the defaults both hosts use (the Envoy bootstrap
/// sets the same numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From the first byte of an HTTP/1.1 request to the end of its headers; then the
    /// connection is closed (a client sending its head a byte at a time holds nothing long).
    pub request_headers_timeout: Duration,
    /// How long a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// Client connections served at once; more are closed as they arrive.
    pub max_connections: usize,
    /// The most a request's headers may take (the request line and headers, or HTTP/2's header
    /// list); more is answered 431. Envoy's default, 60 KiB.
    pub max_request_headers_bytes: usize,
    /// The longest an upstream may stay silent: before its response headers (then 504), and
    /// between the chunks of its body (then the response is cut short).
    pub upstream_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_headers_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_request_headers_bytes: 60 * 1024,
            upstream_timeout: Duration::from_secs(60),
        }
    }
}

/// An upstream: where a name points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    /// Scheme, host and port; any path is refused (routes rewrite paths).
    pub url: Url,
}

impl Cluster {
    pub fn new(name: &str, url: &str) -> anyhow::Result<Cluster> {
        let url = Url::parse(url).map_err(|e| anyhow::anyhow!("cluster {name}: `{url}` is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            anyhow::bail!("cluster {name}: `{url}` must be http or https");
        }
        if url.host_str().is_none() {
            anyhow::bail!("cluster {name}: `{url}` has no host");
        }
        if url.path() != "/" || url.query().is_some() {
            anyhow::bail!("cluster {name}: `{url}` must not carry a path or query; use a route's prefix rewrite");
        }
        Ok(Cluster { name: name.to_string(), url })
    }

    /// Why the cluster does not accept a TCP connection within `timeout`; `None` when it does.
    pub async fn unreachable(&self, timeout: Duration) -> Option<String> {
        let host = self.url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        let port = self.url.port_or_known_default().unwrap_or(80);
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await {
            Ok(Ok(_)) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some(format!("no answer within {timeout:?}")),
        }
    }

    /// The cluster as messages name it: `name (url)`.
    pub fn label(&self) -> String {
        format!("{} ({})", self.name, self.url.as_str().trim_end_matches('/'))
    }

    /// `host:port` as a `Host` header names it (the port only when not the scheme's default).
    pub fn authority(&self) -> String {
        let host = self.url.host_str().unwrap_or_default();
        let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() };
        match self.url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host,
        }
    }
}

/// Paths starting with `prefix` go to `cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: String,
    pub cluster: String,
    /// Replaces the matched prefix.
    pub prefix_rewrite: Option<String>,
    /// Replaces the `Host` header.
    pub host_rewrite: Option<String>,
}

impl Route {
    pub fn to(prefix: &str, cluster: &str) -> Route {
        Route { prefix: prefix.into(), cluster: cluster.into(), prefix_rewrite: None, host_rewrite: None }
    }
}

/// The route for `path`: the longest matching prefix, as Envoy's first-match tables are usually
/// written (most specific first).
pub fn route_for<'a>(routes: &'a [Route], path: &str) -> Option<&'a Route> {
    routes.iter().filter(|route| path.starts_with(&route.prefix)).max_by_key(|route| route.prefix.len())
}

/// The path the upstream gets: the route's prefix rewritten.
pub fn rewrite_path(route: &Route, path: &str) -> String {
    match &route.prefix_rewrite {
        Some(rewrite) => format!("{rewrite}{}", &path[route.prefix.len()..]),
        None => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_and_rewrites_apply() {
        let routes = vec![
            Route::to("/", "app"),
            Route { prefix_rewrite: Some("/".into()), host_rewrite: Some("ory".into()), ..Route::to("/.ory/", "ory") },
        ];
        let ory = route_for(&routes, "/.ory/sessions/whoami?x=1").unwrap();
        assert_eq!(ory.cluster, "ory");
        assert_eq!(rewrite_path(ory, "/.ory/sessions/whoami?x=1"), "/sessions/whoami?x=1");
        assert_eq!(route_for(&routes, "/.oryx").unwrap().cluster, "app");
        assert_eq!(route_for(&routes, "/members").unwrap().cluster, "app");
        assert!(route_for(&routes[1..], "/members").is_none());
    }

    #[test]
    fn clusters_refuse_paths_and_other_schemes() {
        assert!(Cluster::new("app", "http://127.0.0.1:3000").is_ok());
        assert!(Cluster::new("app", "http://127.0.0.1:3000/app").is_err());
        assert!(Cluster::new("app", "ftp://127.0.0.1").is_err());
        assert!(Cluster::new("app", "not a url").is_err());
        assert_eq!(Cluster::new("a", "https://example.com").unwrap().authority(), "example.com");
        assert_eq!(Cluster::new("a", "http://[::1]:8080").unwrap().authority(), "[::1]:8080");
    }
}
