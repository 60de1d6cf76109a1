//! Routing to Ory and rewriting what Ory answers, so that the browser never leaves the proxy's
//! origin: `Location` headers, `Set-Cookie` attributes and URLs inside JSON and HTML bodies.
//!
//! Everything here is a plain function of its inputs; `lib.rs` calls it from the proxy-wasm
//! callbacks. "The proxy origin" is handed in by the caller (for example
//! `https://localhost:4000`): the scheme and host the browser used when that host is one of the
//! proxy's own names, otherwise the configured public URL.

use std::borrow::Cow;
use std::fmt;
use std::io::Read;

use aho_corasick::{AhoCorasick, Input, MatchKind};
use cookie::{Cookie, SameSite};
use url::Url;

/// The path prefix under which the proxy serves Ory.
pub const ORY_PREFIX: &str = "/.ory";

/// The largest body (compressed as received, or after decompression) that is rewritten. Anything
/// bigger passes through unchanged: Ory's JSON and HTML are tens of kilobytes, and a bound keeps
/// a compression bomb from exhausting the VM's memory.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Sent on every response: undoes HSTS pinning that other local development servers may have
/// left on `localhost`, so the proxy can be used over plain HTTP too.
pub const STRICT_TRANSPORT_SECURITY: (&str, &str) = ("strict-transport-security", "max-age=0");

/// The path Ory Network lands a browser on after a flow without `return_to`.
const WELCOME_PATH: &str = "/ui/welcome";

/// If `path` (the request's `:path`, already normalised, with its query) is Ory's, the path to
/// send to Ory: the `/.ory` prefix removed on a segment boundary, the query kept.
///
/// `/.ory` → `/`, `/.ory/x?y` → `/x?y`, `/.ory?y` → `/?y`; `/.oryx` and `/x/.ory` are not Ory's.
/// When Ory has a base path, prepend it with [`OryTarget::upstream_path`].
pub fn ory_route(path: &str) -> Option<String> {
    let rest = path.strip_prefix(ORY_PREFIX)?;
    match rest.as_bytes().first() {
        None => Some("/".to_owned()),
        Some(b'/') => Some(rest.to_owned()),
        // A query (or a stray fragment) right after the prefix still names Ory's root.
        Some(b'?' | b'#') => Some(format!("/{rest}")),
        _ => None,
    }
}

/// Ory's public URL as configured (`https://<slug>.projects.oryapis.com`,
/// `http://127.0.0.1:4433`, or a self-hosted Kratos under a base path such as
/// `https://example.com/kratos`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OryTarget {
    base: Url,
    /// The base path without a trailing slash: `""` or `/kratos`.
    base_path: String,
}

/// Ory's URL could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Ory URL: {0}")]
pub struct InvalidOryUrl(pub String);

impl OryTarget {
    /// Parses Ory's public URL. Only `http` and `https` URLs with a host and without user
    /// information, query or fragment are accepted: anything else could not be the base of
    /// the URLs Ory emits.
    pub fn new(url: &str) -> Result<Self, InvalidOryUrl> {
        let base = Url::parse(url.trim()).map_err(|e| InvalidOryUrl(format!("{url}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(InvalidOryUrl(format!("{url}: scheme must be http or https")));
        }
        if base.host_str().is_none_or(str::is_empty) {
            return Err(InvalidOryUrl(format!("{url}: no host")));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(InvalidOryUrl(format!("{url}: user information is not allowed")));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(InvalidOryUrl(format!("{url}: query and fragment are not allowed")));
        }
        let base_path = base.path().trim_end_matches('/').to_owned();
        Ok(Self { base, base_path })
    }

    /// The parsed URL.
    pub fn url(&self) -> &Url {
        &self.base
    }

    /// `scheme://host[:port]`, the default port omitted.
    pub fn origin(&self) -> String {
        self.base.origin().ascii_serialization()
    }

    /// The origin followed by the base path, without a trailing slash: the prefix of every URL
    /// Ory emits, hence what bodies have replaced.
    pub fn base_url(&self) -> String {
        format!("{}{}", self.origin(), self.base_path)
    }

    /// `host[:port]` for the `Host` (`:authority`) header of Ory-bound requests.
    pub fn authority(&self) -> String {
        let host = self.base.host_str().unwrap_or_default();
        match self.base.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        }
    }

    /// Ory's base path without a trailing slash (`""` when Ory is at the root).
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// The `:path` to send to Ory for a path returned by [`ory_route`].
    pub fn upstream_path(&self, routed: &str) -> String {
        format!("{}{routed}", self.base_path)
    }
}

/// Same scheme, host and (default-aware) port.
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str().map(|h| h.trim_end_matches('.')) == b.host_str().map(|h| h.trim_end_matches('.'))
        && a.port_or_known_default() == b.port_or_known_default()
}

/// `path` below `base` on a segment boundary, the remainder starting with `/` (or empty).
fn strip_base_path<'a>(path: &'a str, base: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(base)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

fn is_welcome(path: &str) -> bool {
    path == WELCOME_PATH || path.strip_suffix('/') == Some(WELCOME_PATH)
}

/// The rewritten `Location` of an Ory response, or `None` to keep it as it is.
///
/// Relative locations are resolved against Ory's URL first (see [`rewrite_location_at`] to
/// resolve against the request's own path). A location on Ory's origin, below Ory's base path,
/// becomes the same path and query under `<proxy_origin>/.ory`. Ory's welcome page (reached
/// either on Ory's origin or, when Ory already rewrote it, as `<proxy_origin>/.ory/ui/welcome`)
/// becomes `default_redirect`. Locations on any other host are kept.
pub fn rewrite_location(location: &str, ory: &OryTarget, proxy_origin: &str, default_redirect: &str) -> Option<String> {
    rewrite_location_at(location, "", ory, proxy_origin, default_redirect)
}

/// Like [`rewrite_location`], with relative locations resolved against the URL the request was
/// sent to (`request_path`: the path given to Ory, after [`ory_route`], without the base path),
/// as RFC 9110 §10.2.2 says. An empty `request_path` means Ory's base URL.
pub fn rewrite_location_at(
    location: &str,
    request_path: &str,
    ory: &OryTarget,
    proxy_origin: &str,
    default_redirect: &str,
) -> Option<String> {
    let location = location.trim();
    if location.is_empty() {
        return None;
    }
    let proxy_origin = proxy_origin.trim_end_matches('/');
    // Resolution base: Ory's base URL with a trailing slash, so that the request path (or a
    // relative location) is joined below the base path rather than replacing its last segment.
    let mut resolve_base = ory.base.clone();
    let request_path = request_path.split(['?', '#']).next().unwrap_or_default();
    resolve_base.set_path(&format!("{}{}", ory.base_path, if request_path.is_empty() { "/" } else { request_path }));
    let target = resolve_base.join(location).ok()?;

    // Ory Network rewrites its own URLs when asked to (Ory-Base-URL-Rewrite), so a location may
    // already be on the proxy: only its welcome page still needs the default redirect.
    if let Ok(proxy) = Url::parse(proxy_origin)
        && same_origin(&target, &proxy)
    {
        let on_ory = target.path().strip_prefix(ORY_PREFIX).filter(|r| r.starts_with('/'));
        return on_ory.filter(|r| is_welcome(r)).map(|_| default_redirect.to_owned());
    }

    if !same_origin(&target, &ory.base) {
        return None;
    }
    // On Ory's host but outside its base path: not reachable under /.ory, keep it.
    let rest = strip_base_path(target.path(), &ory.base_path)?;
    let rest = if rest.is_empty() { "/" } else { rest };
    if is_welcome(rest) {
        return Some(default_redirect.to_owned());
    }
    let mut out = format!("{proxy_origin}{ORY_PREFIX}{rest}");
    if let Some(query) = target.query() {
        out.push('?');
        out.push_str(query);
    }
    if let Some(fragment) = target.fragment() {
        out.push('#');
        out.push_str(fragment);
    }
    Some(out)
}

/// Attribute names the cookie crate understands and re-emits itself.
const KNOWN_COOKIE_ATTRIBUTES: [&str; 8] =
    ["expires", "max-age", "domain", "path", "secure", "httponly", "samesite", "partitioned"];

/// A `Set-Cookie` value fit for the browser-facing side of the proxy.
///
/// - `Domain` becomes `cookie_domain`, or is removed (a host-only cookie) when none is
///   configured. `__Host-` cookies never get a `Domain`: browsers reject them if they do.
/// - Over plain HTTP (`browser_https == false`): `Secure` and `Partitioned` (which requires
///   `Secure`) are removed, and `SameSite` becomes `Lax` unless it is `Strict`. `None` is not
///   allowed without `Secure`, and keeping `Strict` never loosens what Ory asked for.
/// - Over HTTPS the `Secure`/`SameSite` attributes are kept as Ory sent them.
/// - Everything else is kept: name and value byte for byte, `Path`, `HttpOnly`, `Max-Age`,
///   `Expires` and attributes the cookie crate does not know (e.g. `Priority=High`).
///
/// A value the cookie crate cannot parse (no `name=value` pair, empty name) is returned
/// unchanged. Dropping it would silently break a flow, and it cannot harm the browser: a
/// browser applies its own checks and rejects a cookie whose `Domain` does not cover the proxy
/// or that is `Secure` over HTTP, exactly as it would the original.
pub fn rewrite_set_cookie(value: &str, cookie_domain: Option<&str>, browser_https: bool) -> String {
    let Ok(mut cookie) = Cookie::parse(value) else {
        return value.to_owned();
    };
    let host_prefixed = cookie.name().get(..7).is_some_and(|p| p.eq_ignore_ascii_case("__Host-"));
    match cookie_domain.map(str::trim).filter(|d| !d.is_empty()) {
        Some(domain) if !host_prefixed => cookie.set_domain(domain.to_owned()),
        _ => cookie.unset_domain(),
    }
    if !browser_https {
        cookie.set_secure(None);
        cookie.set_partitioned(None);
        if cookie.same_site() != Some(SameSite::Strict) {
            cookie.set_same_site(SameSite::Lax);
        }
    }
    let mut out = cookie.to_string();

    // Keep what the crate does not re-emit: unknown attributes, and an `Expires` whose date
    // format it did not recognise (browsers are more lenient).
    for attr in value.split(';').skip(1) {
        let attr = attr.trim();
        let name = attr.split('=').next().unwrap_or_default().trim().to_ascii_lowercase();
        let keep = if name == "expires" {
            cookie.expires().is_none()
        } else {
            !name.is_empty() && !KNOWN_COOKIE_ATTRIBUTES.contains(&name.as_str())
        };
        if keep {
            out.push_str("; ");
            out.push_str(attr);
        }
    }
    out
}

/// The content codings a body may be rewritten under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

impl Encoding {
    /// Reads a `content-encoding` value; `None` for codings not handled (br, deflate, zstd,
    /// several codings stacked): such bodies pass through unchanged.
    /// [`ory_accept_encoding`](crate::negotiate::ory_accept_encoding) keeps Ory from choosing one.
    pub fn from_header(value: Option<&str>) -> Option<Self> {
        let mut found = Encoding::Identity;
        for coding in value.unwrap_or_default().split(',') {
            let coding = coding.trim();
            let this = if coding.is_empty() || coding.eq_ignore_ascii_case("identity") {
                continue;
            } else if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                Encoding::Gzip
            } else {
                return None;
            };
            if found != Encoding::Identity {
                return None;
            }
            found = this;
        }
        Some(found)
    }
}

/// Whether a `content-type` names a textual body that may carry Ory's URLs: HTML, JSON
/// (including `+json` types), JavaScript and other `text/*`, but not `text/event-stream`,
/// which must stream.
pub fn is_rewritable_content_type(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    match kind {
        "text" => subtype != "event-stream",
        "application" => matches!(subtype, "json" | "javascript" | "xhtml+xml") || subtype.ends_with("+json"),
        _ => false,
    }
}

/// Whether an Ory response body has to be buffered and given to [`rewrite_body`]. When false,
/// the body can stream through untouched. The caller should also skip bodies that cannot be
/// rewritten whole: `HEAD` requests, `204`/`304`, and `206` partial content.
pub fn needs_body_rewrite(content_type: Option<&str>, content_encoding: Option<&str>) -> bool {
    is_rewritable_content_type(content_type) && Encoding::from_header(content_encoding).is_some()
}

/// Why a body was left as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unchanged {
    /// Not HTML, JSON or text.
    NotRewritable,
    /// A content coding this module does not handle.
    UnknownEncoding,
    /// Nothing in the body names Ory's URL.
    NoMatch,
    /// The body, compressed or not, exceeds [`MAX_BODY_BYTES`].
    TooLarge,
    /// The body is not valid under its content coding.
    Undecodable,
    /// Re-encoding failed.
    EncodeFailed,
}

impl fmt::Display for Unchanged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unchanged::NotRewritable => "content type is not rewritten",
            Unchanged::UnknownEncoding => "content encoding is not supported",
            Unchanged::NoMatch => "no Ory URL in the body",
            Unchanged::TooLarge => "body too large to rewrite",
            Unchanged::Undecodable => "body does not decode under its content encoding",
            Unchanged::EncodeFailed => "body could not be re-encoded",
        })
    }
}

/// The outcome of [`rewrite_body`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRewrite {
    /// Send the original body as it is.
    Unchanged(Unchanged),
    /// Send these bytes instead. They are encoded with the same `content-encoding` as the
    /// original, so that header stays; the caller must remove `content-length` (or set it to
    /// the new length).
    Replaced(Vec<u8>),
}

/// Replaces Ory's URL (`ory_origin`, normally [`OryTarget::base_url`]) with `replacement`
/// (`<proxy origin>/.ory`) in a JSON, HTML or text body, under identity or gzip coding.
///
/// Compressed bodies are decompressed (at most [`MAX_BODY_BYTES`]), rewritten and re-encoded
/// with the same coding: `content-encoding` stays true, clients that negotiated compression keep
/// it, and `Vary: Accept-Encoding` stays right. Only `content-length` changes.
///
/// A match must end on a URL boundary, so `https://x.com` is not replaced inside
/// `https://x.com.evil`, `https://x.com:8443` or `https://x.com@evil`. The JSON form with
/// escaped slashes (`https:\/\/x.com`) is replaced too, by the replacement escaped alike.
pub fn rewrite_body(
    body: &[u8],
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    ory_origin: &str,
    replacement: &str,
) -> BodyRewrite {
    if !is_rewritable_content_type(content_type) {
        return BodyRewrite::Unchanged(Unchanged::NotRewritable);
    }
    let Some(encoding) = Encoding::from_header(content_encoding) else {
        return BodyRewrite::Unchanged(Unchanged::UnknownEncoding);
    };
    let ory_origin = ory_origin.trim_end_matches('/');
    let replacement = replacement.trim_end_matches('/');
    if ory_origin.is_empty() || body.is_empty() {
        return BodyRewrite::Unchanged(Unchanged::NoMatch);
    }
    if body.len() > MAX_BODY_BYTES {
        return BodyRewrite::Unchanged(Unchanged::TooLarge);
    }
    let decoded: Cow<'_, [u8]> = match encoding {
        Encoding::Identity => Cow::Borrowed(body),
        Encoding::Gzip => match read_bounded(flate2::read::MultiGzDecoder::new(body)) {
            Ok(bytes) => Cow::Owned(bytes),
            Err(reason) => return BodyRewrite::Unchanged(reason),
        },
    };
    let Some(rewritten) = replace_origin(&decoded, ory_origin, replacement) else {
        return BodyRewrite::Unchanged(Unchanged::NoMatch);
    };
    match encode(&rewritten, encoding) {
        Ok(bytes) => BodyRewrite::Replaced(bytes),
        Err(reason) => BodyRewrite::Unchanged(reason),
    }
}

/// Reads a decoder to the end, refusing more than [`MAX_BODY_BYTES`].
fn read_bounded(reader: impl Read) -> Result<Vec<u8>, Unchanged> {
    let mut out = Vec::new();
    reader.take(MAX_BODY_BYTES as u64 + 1).read_to_end(&mut out).map_err(|_| Unchanged::Undecodable)?;
    if out.len() > MAX_BODY_BYTES {
        return Err(Unchanged::TooLarge);
    }
    Ok(out)
}

fn encode(bytes: &[u8], encoding: Encoding) -> Result<Vec<u8>, Unchanged> {
    use std::io::Write;
    match encoding {
        Encoding::Identity => Ok(bytes.to_vec()),
        Encoding::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::with_capacity(bytes.len() / 3), flate2::Compression::default());
            encoder.write_all(bytes).map_err(|_| Unchanged::EncodeFailed)?;
            encoder.finish().map_err(|_| Unchanged::EncodeFailed)
        }
    }
}

/// Whether the byte after a matched origin ends it: the origin is followed by a path, a query,
/// a fragment, the end of a string or attribute, or the end of the body. Host characters, `.`,
/// `:` (a port) and `@` (user information) continue a different authority.
fn ends_origin(next: Option<&u8>) -> bool {
    match next {
        None => true,
        Some(b) => {
            matches!(b, b'/' | b'"' | b'\'' | b'?' | b'#' | b'<' | b'>' | b'\\' | b')' | b',' | b';' | b'&' | b'`')
                || b.is_ascii_whitespace()
        }
    }
}

/// Replaces every boundary-terminated occurrence of `needle` (and of its JSON form with `\/`
/// escapes) with `replacement` (escaped alike). `None` when nothing matched.
fn replace_origin(haystack: &[u8], needle: &str, replacement: &str) -> Option<Vec<u8>> {
    let escaped_needle = needle.replace('/', "\\/");
    let escaped_replacement = replacement.replace('/', "\\/");
    let replacements = [replacement.as_bytes(), escaped_replacement.as_bytes()];
    // Fails only beyond size limits two short patterns never reach; then nothing is replaced.
    let needles =
        AhoCorasick::builder().match_kind(MatchKind::LeftmostFirst).build([needle, escaped_needle.as_str()]).ok()?;

    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0; // haystack[..copied] is already in `out`
    let mut at = 0;
    while let Some(found) = needles.find(Input::new(haystack).range(at..)) {
        if !ends_origin(haystack.get(found.end())) {
            // Another authority that starts like Ory's: look again one byte on.
            at = found.start() + 1;
            continue;
        }
        let buf = out.get_or_insert_with(|| Vec::with_capacity(haystack.len() + 256));
        buf.extend_from_slice(&haystack[copied..found.start()]);
        buf.extend_from_slice(replacements[found.pattern().as_usize()]);
        copied = found.end();
        at = found.end();
    }
    let mut out = out?;
    out.extend_from_slice(&haystack[copied..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const PROXY: &str = "https://localhost:4000";
    const ORY: &str = "https://x.projects.oryapis.com";

    fn ory() -> OryTarget {
        OryTarget::new(ORY).expect("test URL")
    }

    fn loc(location: &str) -> Option<String> {
        rewrite_location(location, &ory(), PROXY, "https://localhost:4000/")
    }

    #[test]
    fn routes_only_ory_paths_on_a_segment_boundary() {
        assert_eq!(ory_route("/.ory"), Some("/".into()));
        assert_eq!(ory_route("/.ory/"), Some("/".into()));
        assert_eq!(ory_route("/.ory?x=1"), Some("/?x=1".into()));
        assert_eq!(ory_route("/.ory/sessions/whoami"), Some("/sessions/whoami".into()));
        assert_eq!(
            ory_route("/.ory/self-service/login/browser?return_to=https%3A%2F%2Fa"),
            Some("/self-service/login/browser?return_to=https%3A%2F%2Fa".into())
        );
        assert_eq!(ory_route("/.oryx"), None);
        assert_eq!(ory_route("/.oryx/y"), None);
        assert_eq!(ory_route("/.ORY/x"), None);
        assert_eq!(ory_route("/app/.ory/x"), None);
        assert_eq!(ory_route("/"), None);
        assert_eq!(ory_route(""), None);
        assert_eq!(ory_route(".ory/x"), None);
    }

    #[test]
    fn ory_target_parts() {
        let t = OryTarget::new("http://127.0.0.1:4433/").expect("valid");
        assert_eq!(t.origin(), "http://127.0.0.1:4433");
        assert_eq!(t.base_url(), "http://127.0.0.1:4433");
        assert_eq!(t.authority(), "127.0.0.1:4433");
        assert_eq!(t.upstream_path("/sessions/whoami"), "/sessions/whoami");

        let t = OryTarget::new("https://Example.COM:443/kratos/").expect("valid");
        assert_eq!(t.origin(), "https://example.com");
        assert_eq!(t.base_url(), "https://example.com/kratos");
        assert_eq!(t.authority(), "example.com");
        assert_eq!(t.base_path(), "/kratos");
        assert_eq!(t.upstream_path("/sessions/whoami?x"), "/kratos/sessions/whoami?x");

        for bad in [
            "",
            "ftp://x.com",
            "https://u:p@x.com",
            "https://x.com/?q",
            "https://x.com/#f",
            "/relative",
            "data:text/plain,x",
        ] {
            assert!(OryTarget::new(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn absolute_location_on_ory_moves_under_the_proxy() {
        assert_eq!(
            loc("https://x.projects.oryapis.com/ui/login?flow=abc").as_deref(),
            Some("https://localhost:4000/.ory/ui/login?flow=abc")
        );
        // The query is kept as sent, percent-encoding included.
        assert_eq!(
            loc("https://x.projects.oryapis.com/self-service/login/browser?return_to=https%3A%2F%2Flocalhost%3A4000%2Fa%3Fb%3D1").as_deref(),
            Some("https://localhost:4000/.ory/self-service/login/browser?return_to=https%3A%2F%2Flocalhost%3A4000%2Fa%3Fb%3D1")
        );
        // Explicit default port and upper-case host are the same origin.
        assert_eq!(
            loc("https://X.PROJECTS.ORYAPIS.COM:443/ui/login").as_deref(),
            Some("https://localhost:4000/.ory/ui/login")
        );
        assert_eq!(loc("https://x.projects.oryapis.com").as_deref(), Some("https://localhost:4000/.ory/"));
        assert_eq!(
            loc("https://x.projects.oryapis.com/ui/settings#top").as_deref(),
            Some("https://localhost:4000/.ory/ui/settings#top")
        );
    }

    #[test]
    fn relative_location_is_resolved_on_ory_first() {
        assert_eq!(loc("/ui/login?flow=1").as_deref(), Some("https://localhost:4000/.ory/ui/login?flow=1"));
        assert_eq!(loc("ui/login").as_deref(), Some("https://localhost:4000/.ory/ui/login"));
        assert_eq!(loc("//x.projects.oryapis.com/ui/x").as_deref(), Some("https://localhost:4000/.ory/ui/x"));
        // Dot segments cannot climb out.
        assert_eq!(loc("/../../ui/login").as_deref(), Some("https://localhost:4000/.ory/ui/login"));
        // Resolved against the request's own path when known.
        assert_eq!(
            rewrite_location_at("browser?x=1", "/self-service/login/api", &ory(), PROXY, PROXY).as_deref(),
            Some("https://localhost:4000/.ory/self-service/login/browser?x=1")
        );
    }

    #[test]
    fn other_hosts_are_kept() {
        assert_eq!(loc("https://example.com/ui/login"), None);
        assert_eq!(loc("http://x.projects.oryapis.com/ui/login"), None); // other scheme
        assert_eq!(loc("https://x.projects.oryapis.com:8443/ui/login"), None); // other port
        assert_eq!(loc("https://x.projects.oryapis.com.evil.com/ui"), None);
        assert_eq!(loc("https://x.projects.oryapis.com@evil.com/ui"), None);
        assert_eq!(loc("https://localhost:4000/dashboard"), None);
        assert_eq!(loc("javascript:alert(1)"), None);
        assert_eq!(loc(""), None);
    }

    #[test]
    fn welcome_redirect_goes_to_the_default_redirect() {
        let ory = ory();
        let to = "https://app.example/home";
        for location in [
            "https://x.projects.oryapis.com/ui/welcome",
            "https://x.projects.oryapis.com/ui/welcome/",
            "https://x.projects.oryapis.com/ui/welcome?flow=1",
            "/ui/welcome",
            // Ory Network already rewrote it to the proxy.
            "https://localhost:4000/.ory/ui/welcome",
        ] {
            assert_eq!(rewrite_location(location, &ory, PROXY, to).as_deref(), Some(to), "{location}");
        }
        assert_eq!(rewrite_location("https://localhost:4000/ui/welcome", &ory, PROXY, to), None);
        assert_eq!(
            rewrite_location("/ui/welcomed", &ory, PROXY, to).as_deref(),
            Some("https://localhost:4000/.ory/ui/welcomed")
        );
    }

    #[test]
    fn location_with_a_base_path() {
        let ory = OryTarget::new("http://127.0.0.1:4433/kratos").expect("valid");
        let proxy = "http://localhost:4000/"; // a trailing slash on the proxy origin is tolerated
        assert_eq!(
            rewrite_location("http://127.0.0.1:4433/kratos/self-service/login?flow=1", &ory, proxy, proxy).as_deref(),
            Some("http://localhost:4000/.ory/self-service/login?flow=1")
        );
        assert_eq!(
            rewrite_location("ui/login", &ory, proxy, proxy).as_deref(),
            Some("http://localhost:4000/.ory/ui/login")
        );
        // Outside the base path, or merely sharing its first characters: not under /.ory.
        assert_eq!(rewrite_location("http://127.0.0.1:4433/other", &ory, proxy, proxy), None);
        assert_eq!(rewrite_location("http://127.0.0.1:4433/kratosx/a", &ory, proxy, proxy), None);
    }

    fn attrs(value: &str) -> Vec<String> {
        let mut parts: Vec<String> = value.split(';').map(|s| s.trim().to_owned()).collect();
        parts.sort();
        parts
    }

    const KRATOS_SESSION: &str = "ory_session_x=MTY5; Path=/; Domain=x.projects.oryapis.com; Expires=Wed, 21 Oct 2026 07:28:00 GMT; Max-Age=86399; HttpOnly; Secure; SameSite=None";

    #[test]
    fn cookie_over_https_keeps_secure_and_loses_ory_domain() {
        let out = rewrite_set_cookie(KRATOS_SESSION, None, true);
        assert_eq!(
            attrs(&out),
            attrs(
                "ory_session_x=MTY5; Path=/; Expires=Wed, 21 Oct 2026 07:28:00 GMT; Max-Age=86399; HttpOnly; Secure; SameSite=None"
            )
        );
        assert!(!out.to_ascii_lowercase().contains("domain"));
    }

    #[test]
    fn cookie_over_http_drops_secure_and_forces_lax() {
        let out = rewrite_set_cookie(KRATOS_SESSION, None, false);
        assert_eq!(
            attrs(&out),
            attrs(
                "ory_session_x=MTY5; Path=/; Expires=Wed, 21 Oct 2026 07:28:00 GMT; Max-Age=86399; HttpOnly; SameSite=Lax"
            )
        );
        // Missing SameSite becomes Lax too; Strict stays Strict (never loosened).
        assert_eq!(rewrite_set_cookie("a=b; Secure", None, false), "a=b; SameSite=Lax");
        assert_eq!(rewrite_set_cookie("a=b; SameSite=Lax; Secure", None, false), "a=b; SameSite=Lax");
        assert_eq!(rewrite_set_cookie("a=b; SameSite=Strict", None, false), "a=b; SameSite=Strict");
        // Partitioned requires Secure, so it goes too over HTTP.
        assert_eq!(rewrite_set_cookie("a=b; Partitioned; Secure; SameSite=None", None, false), "a=b; SameSite=Lax");
        // Over HTTPS, SameSite is left alone (even absent).
        assert_eq!(rewrite_set_cookie("a=b; Secure", None, true), "a=b; Secure");
        assert_eq!(rewrite_set_cookie("a=b; SameSite=Strict; Secure", None, true), "a=b; SameSite=Strict; Secure");
    }

    #[test]
    fn cookie_domain_is_configured_or_removed() {
        assert_eq!(
            rewrite_set_cookie("a=b; Domain=ory.sh; Path=/", Some("example.org"), true),
            "a=b; Path=/; Domain=example.org"
        );
        assert_eq!(rewrite_set_cookie("a=b; Path=/", Some(".example.org"), true), "a=b; Path=/; Domain=example.org");
        assert_eq!(rewrite_set_cookie("a=b; Domain=ory.sh", Some("  "), true), "a=b");
        assert_eq!(rewrite_set_cookie("a=b; domain=ory.sh; DOMAIN=other", None, true), "a=b");
        // __Host- cookies must stay host-only.
        assert_eq!(
            rewrite_set_cookie("__Host-a=b; Path=/; Secure", Some("example.org"), true),
            "__Host-a=b; Secure; Path=/"
        );
    }

    #[test]
    fn cookie_keeps_every_other_attribute() {
        // The CSRF cookie Kratos sets.
        let csrf = "csrf_token_0123abcd=c2VjcmV0K3ZhbHVlPQ==; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax";
        assert_eq!(attrs(&rewrite_set_cookie(csrf, None, false)), attrs(csrf));
        assert_eq!(attrs(&rewrite_set_cookie(csrf, None, true)), attrs(csrf));
        // Deletion cookies keep Max-Age=0 and the epoch Expires.
        let del = "ory_kratos_session=; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; HttpOnly";
        let out = rewrite_set_cookie(del, None, false);
        assert!(out.contains("Max-Age=0") && out.contains("Expires=Thu, 01 Jan 1970 00:00:00 GMT"), "{out}");
        // Unknown attributes and unparseable Expires dates survive verbatim.
        let out = rewrite_set_cookie("a=b; Priority=High; Expires=someday; Path=/x", None, true);
        assert_eq!(attrs(&out), attrs("a=b; Priority=High; Expires=someday; Path=/x"));
        // The value is kept byte for byte (quotes, '=' inside).
        assert_eq!(rewrite_set_cookie("a=\"q=1\"", None, true), "a=\"q=1\"");
    }

    #[test]
    fn unparseable_cookie_is_returned_unchanged() {
        for raw in ["novalue", "=x; Domain=ory.sh", ""] {
            assert_eq!(rewrite_set_cookie(raw, None, false), raw);
        }
    }

    #[test]
    fn content_types_and_encodings() {
        for ct in [
            "application/json",
            "application/json; charset=utf-8",
            "TEXT/HTML; charset=UTF-8",
            "application/problem+json",
            "text/plain",
            "text/javascript",
            "application/javascript",
        ] {
            assert!(is_rewritable_content_type(Some(ct)), "{ct}");
        }
        for ct in ["text/event-stream", "image/png", "application/octet-stream", "application/jsonx", "json", ""] {
            assert!(!is_rewritable_content_type(Some(ct)), "{ct}");
        }
        assert!(!is_rewritable_content_type(None));
        assert_eq!(Encoding::from_header(None), Some(Encoding::Identity));
        assert_eq!(Encoding::from_header(Some("identity")), Some(Encoding::Identity));
        assert_eq!(Encoding::from_header(Some("GZIP")), Some(Encoding::Gzip));
        assert_eq!(Encoding::from_header(Some("x-gzip")), Some(Encoding::Gzip));
        assert_eq!(Encoding::from_header(Some(" br ")), None);
        assert_eq!(Encoding::from_header(Some("gzip, br")), None);
        assert_eq!(Encoding::from_header(Some("deflate")), None);
        assert_eq!(Encoding::from_header(Some("zstd")), None);
        assert!(!needs_body_rewrite(Some("text/html"), Some("br")));
        assert!(!needs_body_rewrite(Some("text/html"), Some("zstd")));
        assert!(!needs_body_rewrite(Some("image/png"), None));
        assert!(!needs_body_rewrite(None, None));
    }

    const REPL: &str = "https://localhost:4000/.ory";

    fn plain(body: &str) -> BodyRewrite {
        rewrite_body(body.as_bytes(), Some("application/json"), None, ORY, REPL)
    }

    fn text(r: BodyRewrite) -> String {
        match r {
            BodyRewrite::Replaced(b) => String::from_utf8(b).expect("utf-8"),
            BodyRewrite::Unchanged(why) => panic!("unchanged: {why}"),
        }
    }

    #[test]
    fn json_body_origin_is_replaced() {
        let body = r#"{"ui":{"action":"https://x.projects.oryapis.com/self-service/login?flow=1","method":"POST"},"logout_url":"https://x.projects.oryapis.com/self-service/logout?token=t","return_to":"https://x.projects.oryapis.com"}"#;
        assert_eq!(
            text(plain(body)),
            r#"{"ui":{"action":"https://localhost:4000/.ory/self-service/login?flow=1","method":"POST"},"logout_url":"https://localhost:4000/.ory/self-service/logout?token=t","return_to":"https://localhost:4000/.ory"}"#
        );
        // Escaped slashes, as some JSON encoders write them.
        assert_eq!(
            text(plain(r#"{"a":"https:\/\/x.projects.oryapis.com\/ui"}"#)),
            r#"{"a":"https:\/\/localhost:4000\/.ory\/ui"}"#
        );
    }

    #[test]
    fn origin_must_end_on_a_boundary() {
        for body in [
            r#"{"a":"https://x.projects.oryapis.com.evil.com/x"}"#,
            r#"{"a":"https://x.projects.oryapis.com:8443/x"}"#,
            r#"{"a":"https://x.projects.oryapis.com@evil.com/x"}"#,
            r#"{"a":"https://x.projects.oryapis.comx"}"#,
            r#"{"a":"http://x.projects.oryapis.com/x"}"#,
            r#"{"a":"https://localhost:4000/.ory/x"}"#,
        ] {
            assert_eq!(plain(body), BodyRewrite::Unchanged(Unchanged::NoMatch), "{body}");
        }
        // Each boundary kind, including the very end of the body.
        assert_eq!(
            text(plain(
                "https://x.projects.oryapis.com?q 'https://x.projects.oryapis.com' <https://x.projects.oryapis.com> https://x.projects.oryapis.com#f https://x.projects.oryapis.com"
            )),
            "https://localhost:4000/.ory?q 'https://localhost:4000/.ory' <https://localhost:4000/.ory> https://localhost:4000/.ory#f https://localhost:4000/.ory"
        );
    }

    #[test]
    fn html_body_is_replaced() {
        let body = r#"<form action="https://x.projects.oryapis.com/self-service/login?flow=1" method="POST"><a href='https://x.projects.oryapis.com/ui/registration'>"#;
        let out = text(rewrite_body(body.as_bytes(), Some("text/html; charset=utf-8"), Some("identity"), ORY, REPL));
        assert_eq!(
            out,
            r#"<form action="https://localhost:4000/.ory/self-service/login?flow=1" method="POST"><a href='https://localhost:4000/.ory/ui/registration'>"#
        );
    }

    #[test]
    fn base_path_body() {
        let ory = OryTarget::new("http://127.0.0.1:4433/kratos").expect("valid");
        let body = r#"{"a":"http://127.0.0.1:4433/kratos/ui/login","b":"http://127.0.0.1:4433/other"}"#;
        let out = rewrite_body(
            body.as_bytes(),
            Some("application/json"),
            None,
            &ory.base_url(),
            "http://localhost:4000/.ory",
        );
        assert_eq!(text(out), r#"{"a":"http://localhost:4000/.ory/ui/login","b":"http://127.0.0.1:4433/other"}"#);
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).expect("gzip");
        e.finish().expect("gzip")
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out).expect("gunzip");
        out
    }

    const FLOW: &str = r#"{"ui":{"action":"https://x.projects.oryapis.com/self-service/login?flow=1"}}"#;
    const FLOW_REWRITTEN: &str = r#"{"ui":{"action":"https://localhost:4000/.ory/self-service/login?flow=1"}}"#;

    #[test]
    fn gzip_body_is_rewritten_and_stays_gzip() {
        let out = rewrite_body(&gzip(FLOW.as_bytes()), Some("application/json"), Some("gzip"), ORY, REPL);
        let BodyRewrite::Replaced(bytes) = out else { panic!("not rewritten: {out:?}") };
        assert_eq!(gunzip(&bytes), FLOW_REWRITTEN.as_bytes());
        // No match in a compressed body: the original bytes are kept, not re-encoded.
        let other = gzip(b"{\"a\":1}");
        assert_eq!(
            rewrite_body(&other, Some("application/json"), Some("gzip"), ORY, REPL),
            BodyRewrite::Unchanged(Unchanged::NoMatch)
        );
    }

    #[test]
    fn codings_the_filter_cannot_redo_pass_unrewritten() {
        // Whatever the bytes are, a br, zstd or deflate body is never decoded: it passes as sent.
        for coding in ["br", "zstd", "deflate", "BR", "gzip, br"] {
            assert!(!needs_body_rewrite(Some("application/json"), Some(coding)), "{coding}");
            assert_eq!(
                rewrite_body(FLOW.as_bytes(), Some("application/json"), Some(coding), ORY, REPL),
                BodyRewrite::Unchanged(Unchanged::UnknownEncoding),
                "{coding}"
            );
        }
    }

    #[test]
    fn bodies_left_alone() {
        let flow = FLOW.as_bytes();
        assert_eq!(
            rewrite_body(flow, Some("image/png"), None, ORY, REPL),
            BodyRewrite::Unchanged(Unchanged::NotRewritable)
        );
        assert_eq!(rewrite_body(flow, None, None, ORY, REPL), BodyRewrite::Unchanged(Unchanged::NotRewritable));
        assert_eq!(
            rewrite_body(flow, Some("application/json"), Some("zstd"), ORY, REPL),
            BodyRewrite::Unchanged(Unchanged::UnknownEncoding)
        );
        assert_eq!(
            rewrite_body(flow, Some("application/json"), Some("gzip"), ORY, REPL),
            BodyRewrite::Unchanged(Unchanged::Undecodable)
        );
        assert_eq!(
            rewrite_body(b"", Some("application/json"), None, ORY, REPL),
            BodyRewrite::Unchanged(Unchanged::NoMatch)
        );
        assert_eq!(
            rewrite_body(flow, Some("application/json"), None, "", REPL),
            BodyRewrite::Unchanged(Unchanged::NoMatch)
        );
    }

    #[test]
    fn compression_bombs_are_refused() {
        // 17 MiB of zeros compresses to a few kilobytes.
        let big = vec![b' '; MAX_BODY_BYTES + 1024 * 1024];
        let bomb = gzip(&big);
        assert!(bomb.len() < 100_000);
        assert_eq!(
            rewrite_body(&bomb, Some("text/html"), Some("gzip"), ORY, REPL),
            BodyRewrite::Unchanged(Unchanged::TooLarge)
        );
        assert_eq!(rewrite_body(&big, Some("text/html"), None, ORY, REPL), BodyRewrite::Unchanged(Unchanged::TooLarge));
    }

    #[test]
    fn many_matches_and_multibyte_text() {
        let body = format!("é{ORY}/a ü {ORY}/b {ORY} ").repeat(1000);
        let want = format!("é{REPL}/a ü {REPL}/b {REPL} ").repeat(1000);
        assert_eq!(text(rewrite_body(body.as_bytes(), Some("text/plain"), None, ORY, REPL)), want);
    }
}

/// Properties over arbitrary input (`make fuzz` runs many more cases: `PROPTEST_CASES`).
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn cases() -> ProptestConfig {
        let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(512);
        ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
    }

    const PROXY: &str = "http://localhost:4000";

    /// Locations as Ory and attackers write them: on Ory, on the proxy, elsewhere, relative,
    /// scheme-relative, with userinfo, ports, dot segments and escapes.
    fn location() -> impl Strategy<Value = String> {
        let origin = prop::sample::select(vec![
            "https://ory.example",
            "https://ory.example:443",
            "http://ory.example",
            "https://ory.example.evil",
            "https://evil.example",
            "//ory.example",
            "//evil.example",
            "http://localhost:4000",
            "https://user@ory.example",
            "",
        ]);
        (origin, "(/[a-z.%0-9@:]{0,8}){0,4}", prop::option::of("[a-z=&%]{0,8}")).prop_map(|(origin, path, query)| {
            match query {
                Some(query) => format!("{origin}{path}?{query}"),
                None => format!("{origin}{path}"),
            }
        })
    }

    proptest! {
        #![proptest_config(cases())]

        #[test]
        fn location_rewriting_never_panics(raw in any::<String>(), request in any::<String>()) {
            let ory = OryTarget::new("https://ory.example/kratos").unwrap();
            let _ = rewrite_location_at(&raw, &request, &ory, PROXY, "/");
        }

        /// A rewritten location is on the proxy (or the default redirect): the rewrite never
        /// sends a browser to a host it was not already going to.
        #[test]
        fn a_rewritten_location_stays_on_the_proxy(location in location()) {
            let ory = OryTarget::new("https://ory.example").unwrap();
            if let Some(rewritten) = rewrite_location(&location, &ory, PROXY, "http://localhost:4000/home") {
                let url = Url::parse(&rewritten).unwrap();
                prop_assert_eq!(url.origin(), Url::parse(PROXY).unwrap().origin(), "{} -> {}", location, rewritten);
                // And once on the proxy, rewriting again changes nothing.
                prop_assert_eq!(rewrite_location(&rewritten, &ory, PROXY, "http://localhost:4000/home"),
                    (url.path() == "/.ory/ui/welcome").then(|| "http://localhost:4000/home".to_string()));
            }
        }

        #[test]
        fn cookie_rewriting_never_panics_and_keeps_name_and_value(raw in any::<String>(), https in any::<bool>()) {
            let rewritten = rewrite_set_cookie(&raw, Some("example.test"), https);
            if let Ok(original) = Cookie::parse(raw.as_str()) {
                let again = Cookie::parse(rewritten.as_str()).expect("a rewritten cookie parses");
                prop_assert_eq!(again.name(), original.name());
                prop_assert_eq!(again.value(), original.value());
                if !https {
                    prop_assert_ne!(again.secure(), Some(true), "{}", rewritten);
                }
            }
        }

        /// Rewriting a cookie twice is rewriting it once.
        #[test]
        fn cookie_rewriting_is_idempotent(
            name in "[a-zA-Z_][a-zA-Z0-9_-]{0,10}",
            value in "[a-zA-Z0-9%]{0,12}",
            attributes in prop::collection::vec(prop::sample::select(vec![
                "Secure", "HttpOnly", "SameSite=None", "SameSite=Strict", "SameSite=Lax", "Path=/",
                "Domain=ory.example", "Max-Age=60", "Partitioned", "Priority=High",
            ]), 0..5),
            https in any::<bool>(),
        ) {
            let raw = std::iter::once(format!("{name}={value}")).chain(attributes.iter().map(|a| a.to_string()))
                .collect::<Vec<_>>().join("; ");
            let once = rewrite_set_cookie(&raw, None, https);
            prop_assert_eq!(rewrite_set_cookie(&once, None, https), once.clone(), "{}", raw);
        }

        #[test]
        fn body_rewriting_never_panics(
            body in prop::collection::vec(any::<u8>(), 0..512),
            content_type in prop::sample::select(vec!["text/html", "application/json", "text/plain", "image/png"]),
            encoding in prop::sample::select(vec![None, Some("gzip"), Some("br"), Some("identity"), Some("zstd")]),
        ) {
            let _ = rewrite_body(&body, Some(content_type), encoding, "https://ory.example", PROXY);
        }

        /// Without Ory's origin in it, an uncompressed body is sent as it is.
        #[test]
        fn a_body_without_ory_urls_is_unchanged(body in "[a-z<>/\"{}: .]{0,300}") {
            let rewrite = rewrite_body(body.as_bytes(), Some("text/html"), None, "https://ory.example", PROXY);
            match rewrite {
                BodyRewrite::Unchanged(_) => {}
                BodyRewrite::Replaced(bytes) => prop_assert_eq!(bytes, body.as_bytes().to_vec()),
            }
        }
    }
}
