//! CORS, answered by the proxy for both the app and Ory (`--allowed-cors-origins`,
//! `--additional-cors-headers`).
//!
//! Requests carry credentials (the session cookie), so an allowed origin is always echoed exactly
//! with `Access-Control-Allow-Credentials: true`, never `*`. Origins are compared by scheme, host
//! and port after normalisation (lower-case host, default port removed); anything that is not a
//! plain `scheme://host[:port]` — `null`, a path, user information, a suffix such as
//! `https://localhost:4000.evil.com` — is refused. Upstream CORS headers are removed from
//! responses ([`strip_upstream_cors`]) so they are neither duplicated nor able to widen the policy.

use crate::headers::EditedHeaders;
use crate::origin::Origin;

/// Methods a preflight may ask for.
const ALLOWED_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Request headers allowed by default: what browsers and Ory's SDKs send to the app and to Ory
/// (session token, CSRF token, JSON content type, the JWT-bearing `Authorization`).
pub const DEFAULT_ALLOWED_HEADERS: [&str; 12] = [
    "accept",
    "accept-language",
    "authorization",
    "cache-control",
    "content-language",
    "content-type",
    "cookie",
    "x-csrf-token",
    "x-request-id",
    "x-requested-with",
    "x-session-token",
    "x-xsrf-token",
];

/// How long a browser may cache a preflight answer, in seconds.
pub const PREFLIGHT_MAX_AGE: &str = "600";

/// CORS response headers an upstream (the app or Ory) may set; the proxy removes them and sets
/// its own.
pub const UPSTREAM_CORS_HEADERS: [&str; 7] = [
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
    "access-control-max-age",
    "access-control-allow-private-network",
];

/// A configured origin or header name the policy cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidCors(pub String);

/// Which origins may call the proxy with credentials, and which request headers they may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsPolicy {
    /// Normalised `scheme://host[:port]` serialisations.
    allowed_origins: Vec<String>,
    /// Lower-case header names beyond [`DEFAULT_ALLOWED_HEADERS`].
    additional_headers: Vec<String>,
}

/// `scheme://host[:port]` normalised, when `origin` is exactly that and nothing more.
fn normalise_origin(origin: &str) -> Option<String> {
    Origin::parse(origin).map(|origin| origin.to_string())
}

/// A configured origin, normalised: a plain `http(s)://host[:port]` (a trailing `/` is
/// tolerated); `*` is refused because it cannot be combined with credentials.
pub fn allowed_origin(origin: &str) -> Result<String, InvalidCors> {
    let trimmed = origin.trim();
    if trimmed == "*" {
        return Err(InvalidCors("CORS origin \"*\" cannot be used with credentials; list the origins".into()));
    }
    normalise_origin(trimmed.strip_suffix('/').unwrap_or(trimmed))
        .ok_or_else(|| InvalidCors(format!("invalid CORS origin {origin:?}: expected http(s)://host[:port]")))
}

/// A configured request header name, in lower case: a token; `*` is refused for the same reason.
pub fn allowed_header(header: &str) -> Result<String, InvalidCors> {
    let header = header.trim();
    if header == "*" {
        return Err(InvalidCors("CORS header \"*\" cannot be used with credentials; list the header names".into()));
    }
    if !crate::headers::is_token(header) {
        return Err(InvalidCors(format!("invalid CORS header name {header:?}")));
    }
    Ok(header.to_ascii_lowercase())
}

impl CorsPolicy {
    /// The proxy's own origin, plus `allowed_origins` (`--allowed-cors-origins`), with
    /// `additional_headers` (`--additional-cors-headers`) allowed beside the defaults.
    ///
    /// A configured origin must be a plain `http(s)://host[:port]` (a trailing `/` is
    /// tolerated); `*` is refused because it cannot be combined with credentials. Header names
    /// must be tokens; `*` is refused for the same reason.
    pub fn new<O, H>(proxy_origin: &str, allowed_origins: O, additional_headers: H) -> Result<Self, InvalidCors>
    where
        O: IntoIterator,
        O::Item: AsRef<str>,
        H: IntoIterator,
        H::Item: AsRef<str>,
    {
        let mut policy = CorsPolicy { allowed_origins: Vec::new(), additional_headers: Vec::new() };
        policy.allow_origin(proxy_origin)?;
        for origin in allowed_origins {
            policy.allow_origin(origin.as_ref())?;
        }
        for header in additional_headers {
            let header = allowed_header(header.as_ref())?;
            if !DEFAULT_ALLOWED_HEADERS.contains(&header.as_str()) && !policy.additional_headers.contains(&header) {
                policy.additional_headers.push(header);
            }
        }
        Ok(policy)
    }

    /// Allows one more origin (for example another name the proxy answers to).
    pub fn allow_origin(&mut self, origin: &str) -> Result<(), InvalidCors> {
        let normalised = allowed_origin(origin)?;
        if !self.allowed_origins.contains(&normalised) {
            self.allowed_origins.push(normalised);
        }
        Ok(())
    }

    /// This policy as a request that came in through `proxy_origin` sees it: that origin is
    /// allowed too. Nothing is copied (this runs on every request).
    pub fn with_proxy_origin<'a>(&'a self, proxy_origin: &'a Origin) -> RequestCors<'a> {
        RequestCors { policy: self, proxy_origin }
    }

    /// The allowed origins, normalised.
    pub fn allowed_origins(&self) -> &[String] {
        &self.allowed_origins
    }

    /// Whether a request's `Origin` header is allowed.
    pub fn allows_origin(&self, origin: &str) -> bool {
        normalise_origin(origin).is_some_and(|o| self.allows_normalised(&o))
    }

    fn allows_normalised(&self, origin: &str) -> bool {
        self.allowed_origins.iter().any(|allowed| allowed == origin)
    }

    fn allows_header(&self, name: &str) -> bool {
        DEFAULT_ALLOWED_HEADERS.contains(&name) || self.additional_headers.iter().any(|h| h == name)
    }
}

/// The CORS policy for one request: the configured origins plus the proxy origin the request came
/// in through (see [`CorsPolicy::with_proxy_origin`]).
#[derive(Debug, Clone, Copy)]
pub struct RequestCors<'a> {
    policy: &'a CorsPolicy,
    proxy_origin: &'a Origin,
}

impl RequestCors<'_> {
    /// Whether a request's `Origin` header is allowed.
    pub fn allows_origin(&self, origin: &str) -> bool {
        normalise_origin(origin)
            .is_some_and(|o| o == self.proxy_origin.to_string() || self.policy.allows_normalised(&o))
    }

    /// The answer to a preflight (see [`is_preflight`]): the headers of a `204`, or `None` when
    /// the origin or the requested method is not allowed (answer `403` without CORS headers, so
    /// the browser blocks the request; do not forward the preflight upstream).
    ///
    /// `method` is `Access-Control-Request-Method`; `request_headers` is
    /// `Access-Control-Request-Headers`. Of the requested headers, those allowed are echoed;
    /// if one is missing, the browser refuses the actual request.
    pub fn preflight(
        &self,
        origin: &str,
        method: &str,
        request_headers: Option<&str>,
    ) -> Option<Vec<(String, String)>> {
        if !self.allows_origin(origin) {
            return None;
        }
        let method = method.trim();
        if !ALLOWED_METHODS.contains(&method) {
            return None;
        }
        let mut headers = self.allowed_response_headers(origin);
        headers.push(("access-control-allow-methods".into(), ALLOWED_METHODS.join(", ")));
        let requested: Vec<String> = request_headers
            .unwrap_or_default()
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty() && self.policy.allows_header(h))
            .collect();
        if !requested.is_empty() {
            headers.push(("access-control-allow-headers".into(), requested.join(", ")));
        }
        headers.push(("access-control-max-age".into(), PREFLIGHT_MAX_AGE.into()));
        headers.push(("vary".into(), "Origin, Access-Control-Request-Method, Access-Control-Request-Headers".into()));
        Some(headers)
    }

    /// Headers to add to an actual (non-preflight) response, after [`strip_upstream_cors`]:
    /// the allow-origin and allow-credentials pair when `origin` is allowed, and always
    /// `Vary: Origin` (appended to any upstream `Vary`, not replacing it) so that a cache never
    /// serves one origin's answer to another.
    pub fn response_headers(&self, origin: Option<&str>) -> Vec<(String, String)> {
        let mut headers = match origin {
            Some(origin) if self.allows_origin(origin) => self.allowed_response_headers(origin),
            _ => Vec::new(),
        };
        headers.push(("vary".into(), "Origin".into()));
        headers
    }

    fn allowed_response_headers(&self, origin: &str) -> Vec<(String, String)> {
        vec![
            // The browser compares this byte for byte with the Origin it sent: echo it.
            ("access-control-allow-origin".into(), origin.trim().to_owned()),
            ("access-control-allow-credentials".into(), "true".into()),
        ]
    }
}

/// Whether a request is a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`. A plain `OPTIONS` goes upstream like any request.
pub fn is_preflight(method: &str, origin: Option<&str>, access_control_request_method: Option<&str>) -> bool {
    method.eq_ignore_ascii_case("OPTIONS") && origin.is_some() && access_control_request_method.is_some()
}

/// Removes the upstream's own CORS headers (any case, every occurrence) from response headers.
pub fn strip_upstream_cors(headers: &mut EditedHeaders<'_>) {
    headers.retain(|name, _| !UPSTREAM_CORS_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name)));
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROXY: &str = "https://localhost:4000";

    fn proxy() -> Origin {
        Origin::parse(PROXY).expect("the proxy origin")
    }

    fn policy() -> CorsPolicy {
        CorsPolicy::new(PROXY, ["http://app.example.com:8080/", "https://Other.Example"], ["X-Custom", "x-tenant"])
            .expect("valid policy")
    }

    fn get<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn default_allows_only_the_proxy_origin() {
        let p = CorsPolicy::new(PROXY, Vec::<String>::new(), Vec::<String>::new()).expect("valid");
        assert_eq!(p.allowed_origins(), ["https://localhost:4000"]);
        assert!(p.allows_origin("https://localhost:4000"));
        assert!(!p.allows_origin("http://localhost:4000"));
        assert!(!p.allows_origin("https://localhost:4001"));
        assert!(!p.allows_origin("https://localhost"));

        // Other names of the proxy can be added, IPv6 literals included.
        let mut p = p;
        p.allow_origin("http://[::1]:4000").expect("valid");
        assert!(p.allows_origin("http://[::1]:4000"));
        assert!(!p.allows_origin("http://[::2]:4000"));
    }

    #[test]
    fn origins_are_normalised_and_compared_exactly() {
        let p = policy();
        assert!(p.allows_origin("https://LOCALHOST:4000"));
        assert!(p.allows_origin("http://app.example.com:8080"));
        assert!(p.allows_origin("https://other.example"));
        assert!(p.allows_origin("https://other.example:443")); // default port
        assert!(!p.allows_origin("http://other.example"));
        for evil in [
            "null",
            "",
            "*",
            "https://localhost:4000.evil.com",
            "https://localhost:4000@evil.com",
            "https://evil.com@localhost:4000",
            "https://localhost:4000/",
            "https://localhost:4000/path",
            "https://localhost:4000?x",
            "https://localhost:4000#x",
            "https://localhost:4000\\.evil.com",
            "https://evil-localhost:4000",
            "https://other.example.evil.com",
            "https://sub.other.example",
            "file://localhost:4000",
            "https:/localhost:4000",
            " https://localhost:4000",
            "https://localhost:4000\r\n",
        ] {
            assert!(!p.allows_origin(evil), "{evil:?} allowed");
        }
    }

    #[test]
    fn bad_configuration_is_refused() {
        let none = Vec::<String>::new();
        assert!(CorsPolicy::new(PROXY, ["*"], none.clone()).is_err());
        assert!(CorsPolicy::new(PROXY, ["example.com"], none.clone()).is_err());
        assert!(CorsPolicy::new(PROXY, ["https://example.com/app"], none.clone()).is_err());
        assert!(CorsPolicy::new(PROXY, ["null"], none.clone()).is_err());
        assert!(CorsPolicy::new("not a url", none.clone(), none.clone()).is_err());
        assert!(CorsPolicy::new(PROXY, none.clone(), ["*"]).is_err());
        assert!(CorsPolicy::new(PROXY, none.clone(), ["bad header"]).is_err());
        assert!(CorsPolicy::new(PROXY, none.clone(), ["x:y"]).is_err());
    }

    #[test]
    fn the_origin_a_request_came_in_through_is_allowed_for_it() {
        let p = policy();
        let other_name = Origin::parse("http://127.0.0.1:4000").expect("origin");
        assert!(!p.allows_origin("http://127.0.0.1:4000"));
        let cors = p.with_proxy_origin(&other_name);
        assert!(cors.allows_origin("http://127.0.0.1:4000"));
        assert!(cors.allows_origin("http://app.example.com:8080"), "the configured ones still are");
        assert!(!cors.allows_origin("http://127.0.0.1:4001"));
        let headers = cors.response_headers(Some("http://127.0.0.1:4000"));
        assert_eq!(get(&headers, "access-control-allow-origin"), Some("http://127.0.0.1:4000"));
    }

    #[test]
    fn preflight_answers_allowed_origins() {
        let p = policy();
        let h = p
            .with_proxy_origin(&proxy())
            .preflight("http://app.example.com:8080", "POST", Some("Content-Type, X-Session-Token,x-custom, X-Evil"))
            .expect("allowed");
        assert_eq!(get(&h, "access-control-allow-origin"), Some("http://app.example.com:8080"));
        assert_eq!(get(&h, "access-control-allow-credentials"), Some("true"));
        assert_eq!(get(&h, "access-control-allow-headers"), Some("content-type, x-session-token, x-custom"));
        assert!(get(&h, "access-control-allow-methods").is_some_and(|m| m.contains("POST") && m.contains("DELETE")));
        assert_eq!(get(&h, "access-control-max-age"), Some(PREFLIGHT_MAX_AGE));
        assert!(get(&h, "vary").is_some_and(|v| v.starts_with("Origin")));

        let h = p.with_proxy_origin(&proxy()).preflight(PROXY, "GET", None).expect("allowed");
        assert_eq!(get(&h, "access-control-allow-headers"), None);

        assert_eq!(p.with_proxy_origin(&proxy()).preflight("https://evil.com", "GET", None), None);
        assert_eq!(p.with_proxy_origin(&proxy()).preflight("null", "GET", None), None);
        assert_eq!(p.with_proxy_origin(&proxy()).preflight(PROXY, "PROPFIND", None), None);
        assert_eq!(p.with_proxy_origin(&proxy()).preflight(PROXY, "get", None), None); // methods are case-sensitive
    }

    #[test]
    fn actual_responses() {
        let p = policy();
        let h = p.with_proxy_origin(&proxy()).response_headers(Some("https://other.example"));
        assert_eq!(
            h,
            vec![
                ("access-control-allow-origin".to_string(), "https://other.example".to_string()),
                ("access-control-allow-credentials".to_string(), "true".to_string()),
                ("vary".to_string(), "Origin".to_string()),
            ]
        );
        assert_eq!(
            p.with_proxy_origin(&proxy()).response_headers(Some("https://evil.com")),
            vec![("vary".to_string(), "Origin".to_string())]
        );
        assert_eq!(
            p.with_proxy_origin(&proxy()).response_headers(None),
            vec![("vary".to_string(), "Origin".to_string())]
        );
    }

    #[test]
    fn upstream_cors_headers_are_removed() {
        let headers: Vec<(String, String)> = [
            (":status", "200"),
            ("access-control-allow-origin", "*"),
            ("Access-Control-Allow-Credentials", "true"),
            ("access-control-allow-headers", "*"),
            ("access-control-expose-headers", "x"),
            ("access-control-max-age", "1"),
            ("access-control-allow-methods", "GET"),
            ("vary", "Accept-Encoding"),
            ("content-type", "text/html"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut edited = EditedHeaders::new(&headers);
        strip_upstream_cors(&mut edited);
        let names: Vec<&str> = edited.iter().map(|(k, _)| k).collect();
        assert_eq!(names, [":status", "vary", "content-type"]);
    }

    #[test]
    fn preflight_detection() {
        assert!(is_preflight("OPTIONS", Some(PROXY), Some("POST")));
        assert!(!is_preflight("OPTIONS", Some(PROXY), None));
        assert!(!is_preflight("OPTIONS", None, Some("POST")));
        assert!(!is_preflight("POST", Some(PROXY), Some("POST")));
    }
}
