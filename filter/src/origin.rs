//! Origins: the proxy's as the browser sees it, the ones CORS allows, and the redirects to
//! Ory's login built on them (with `return_to`, the one encoding of it).
//!
//! The `Host` a request carries is chosen by the client, so it is trusted only when it names the
//! proxy itself: one of its configured names (`localhost`, `127.0.0.1`, `[::1]`, the listen host…)
//! or the host of the configured public URL. Then the browser keeps the scheme, host and port it
//! used, so that a browser on `127.0.0.1` is not moved to `localhost` and its cookies still apply.
//! Any other `Host` (`evil.com`, `localhost.evil.com`, `localhost@evil.com`, garbage) gives the
//! configured public URL's origin, so a spoofed `Host` cannot send a user off-site after login.
//!
//! Any port is accepted on a trusted name: the proxy may be reached through a forwarded port, and
//! a different port on the same loopback or configured host is still the proxy's side.

//!
//! Origins are parsed here by hand rather than with `url`: the `Host` a client sends decides which
//! origin is trusted, and `url` would widen that (it percent-decodes hosts, reads `0x7f.1` and
//! `2130706433` as `127.0.0.1`, and maps Unicode names through IDNA). Browsers send `Origin` and
//! `Host` already in the plain form accepted here.

use std::fmt;
use std::net::Ipv6Addr;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use url::Url;

use crate::paths::NormalizedPath;

/// Where browsers start Ory's login flow through the proxy.
pub const LOGIN_BROWSER_PATH: &str = "/.ory/self-service/login/browser";

/// Everything but RFC 3986 unreserved characters is escaped in a query value, so `&`, `?`, `#`,
/// `=`, `+`, `/`, `:`, `%` and space in the embedded URL cannot end or change the parameter.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// A scheme, host and port; the port is `None` when it is the scheme's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: Scheme,
    /// Lower case, without a trailing dot; IPv6 addresses in brackets, in canonical form.
    host: String,
    port: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn parse(text: &str) -> Option<Scheme> {
        if text.eq_ignore_ascii_case("http") {
            Some(Scheme::Http)
        } else if text.eq_ignore_ascii_case("https") {
            Some(Scheme::Https)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A public URL, proxy name or authority that cannot be used; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OriginError(pub String);

impl Origin {
    /// Parses an origin exactly as written: `http(s)://host[:port]` and nothing else (no path,
    /// query, fragment, user information or white space). The host is lower-cased, IPv6
    /// addresses are put in canonical form and the scheme's default port is dropped; `None` when
    /// the text is not an origin.
    pub fn parse(text: &str) -> Option<Origin> {
        let (scheme, authority) = text.split_once("://")?;
        let (host, port) = parse_authority(authority)?;
        Some(Origin::new(Scheme::parse(scheme)?, host, port))
    }

    /// Parses the configured public URL, e.g. `https://localhost:4000`. Only an origin is
    /// accepted (a trailing `/` is fine): the proxy serves from the root of its host. A trailing
    /// dot on the host is dropped, as on a request's `Host`.
    pub fn from_public_url(url: &str) -> Result<Origin, OriginError> {
        let fail = |why: &str| Err(OriginError(format!("invalid public URL {url:?}: {why}")));
        let Some((scheme, rest)) = url.split_once("://") else {
            return fail("expected scheme://host[:port]");
        };
        if Scheme::parse(scheme).is_none() {
            return fail("the scheme must be http or https");
        }
        if rest.strip_suffix('/').unwrap_or(rest).contains(['/', '?', '#']) {
            return fail("it must be an origin only, without path, query or fragment");
        }
        match Origin::parse(url.strip_suffix('/').unwrap_or(url)) {
            Some(origin) => Ok(origin.without_trailing_dot()),
            None => fail("the host or port is not valid"),
        }
    }

    /// The same origin with one trailing dot dropped from the host (see [`without_trailing_dot`]).
    fn without_trailing_dot(mut self) -> Origin {
        self.host.truncate(without_trailing_dot(&self.host).len());
        self
    }

    fn new(scheme: Scheme, host: String, port: Option<u16>) -> Origin {
        let port = port.filter(|&port| port != scheme.default_port());
        Origin { scheme, host, port }
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The explicit port, `None` for the scheme's default.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// `host[:port]`, as in a `Host` header.
    pub fn authority(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.host),
            None => self.host.clone(),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// The host names under which the proxy itself is reached, in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyNames {
    hosts: Vec<String>,
}

impl ProxyNames {
    /// The names browsers use for the proxy, without ports: e.g. `localhost`, `127.0.0.1`,
    /// `[::1]` (or `::1`) and the listen host. The public URL's host is trusted in any case.
    pub fn new(names: &[String]) -> Result<ProxyNames, OriginError> {
        let mut hosts = Vec::with_capacity(names.len());
        for name in names {
            // A bare IPv6 address is accepted as a name; bracket it as it appears in `Host`.
            let bracketed;
            let candidate = if name.parse::<Ipv6Addr>().is_ok() {
                bracketed = format!("[{name}]");
                bracketed.as_str()
            } else {
                name.as_str()
            };
            match parse_authority(candidate) {
                Some((host, None)) => hosts.push(without_trailing_dot(&host).to_string()),
                Some((_, Some(_))) => {
                    return Err(OriginError(format!("invalid proxy host name {name:?}: give the host without a port")));
                }
                None => {
                    return Err(OriginError(format!("invalid proxy host name {name:?}")));
                }
            }
        }
        Ok(ProxyNames { hosts })
    }

    fn contains(&self, host: &str) -> bool {
        self.hosts.iter().any(|known| known == host)
    }
}

/// The origin the browser should be sent back to: the one it used when its `Host` names the
/// proxy, otherwise the configured public URL's origin. A request for the public URL's host that
/// is not also one of the proxy's own names came through the door that URL names (a load
/// balancer, say, that ended TLS before the proxy): it keeps the public URL's scheme.
pub fn proxy_origin(
    request_scheme: Option<&str>,
    request_authority: Option<&str>,
    public_origin: &Origin,
    names: &ProxyNames,
) -> Origin {
    let used = request_scheme
        .and_then(Scheme::parse)
        .zip(request_authority.and_then(parse_authority))
        .map(|(scheme, (host, port))| Origin::new(scheme, host, port).without_trailing_dot());
    match used {
        Some(origin) if names.contains(&origin.host) => origin,
        Some(origin) if origin.host == public_origin.host => Origin { scheme: public_origin.scheme, ..origin },
        _ => public_origin.clone(),
    }
}

/// The absolute URL of a request on the proxy: where the browser goes back after a login.
fn request_url(origin: &Origin, normalized: &NormalizedPath) -> String {
    format!("{origin}{}", normalized.to_request_target())
}

/// The `Location` that starts a browser login and brings the user back to the request:
/// absolute, on the proxy's origin, with `return_to` set to the absolute URL of the request
/// (normalised path and query), percent-encoded as one query value.
pub fn login_redirect(origin: &Origin, normalized: &NormalizedPath) -> String {
    let return_to = request_url(origin, normalized);
    format!("{origin}{LOGIN_BROWSER_PATH}?return_to={}", utf8_percent_encode(&return_to, QUERY_VALUE))
}

/// Where a browser that needs a second factor goes: `ory_location` (Ory's
/// `redirect_browser_to`, already moved onto the proxy) when it is under the proxy's `/.ory/`,
/// otherwise the proxy's login flow with `aal=aal2`; always with `return_to` set to the request.
pub fn aal2_redirect(origin: &Origin, normalized: &NormalizedPath, ory_location: Option<String>) -> String {
    let on_proxy = format!("{origin}/.ory/");
    let base = ory_location
        .filter(|location| location.starts_with(&on_proxy))
        .unwrap_or_else(|| format!("{origin}{LOGIN_BROWSER_PATH}?aal=aal2"));
    with_return_to(&base, &request_url(origin, normalized))
}

/// `url` with its `return_to` query parameter set to `return_to`, encoded as [`login_redirect`]
/// encodes it; the other parameters are kept in order. A `url` that does not parse is returned
/// as it is.
pub fn with_return_to(url: &str, return_to: &str) -> String {
    let Ok(mut parsed) = Url::parse(url) else {
        return url.to_string();
    };
    let mut kept = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in parsed.query_pairs().filter(|(name, _)| name != "return_to") {
        kept.append_pair(&name, &value);
    }
    let mut query = kept.finish();
    if !query.is_empty() {
        query.push('&');
    }
    query.push_str("return_to=");
    query.extend(utf8_percent_encode(return_to, QUERY_VALUE));
    parsed.set_query(Some(&query));
    parsed.to_string()
}

/// Splits `host[:port]` into a lower-case host (IPv6 in canonical form, a trailing dot kept) and
/// an optional port; `None` when it is not a plain authority (userinfo, path, spaces, bad port,
/// bad characters…).
fn parse_authority(authority: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (address, after) = rest.split_once(']')?;
        let address: Ipv6Addr = address.parse().ok()?;
        let port = match after {
            "" => None,
            _ => Some(parse_port(after.strip_prefix(':')?)?),
        };
        return Some((format!("[{address}]"), port));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(parse_port(port)?)),
        None => (authority, None),
    };
    let labels = without_trailing_dot(host);
    let valid =
        !labels.is_empty() && labels.split('.').all(|label| !label.is_empty() && label.bytes().all(is_host_byte));
    valid.then(|| (host.to_ascii_lowercase(), port))
}

/// One trailing dot names the same host (`localhost.` is `localhost`). Where the proxy decides
/// which host a browser is on, it uses the plain name, so the login and the return land on one
/// cookie host; an `Origin` header keeps it, as browsers tell such origins apart.
fn without_trailing_dot(host: &str) -> &str {
    host.strip_suffix('.').unwrap_or(host)
}

/// Letters, digits, `-` and `_` (seen in container and compose names).
fn is_host_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
}

fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|&port| port != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::normalize;

    fn public() -> Origin {
        Origin::from_public_url("https://localhost:4000").expect("valid public URL")
    }

    fn names(listen_host: &str) -> ProxyNames {
        let names: Vec<String> =
            ["localhost", "127.0.0.1", "[::1]", listen_host].iter().map(|name| name.to_string()).collect();
        ProxyNames::new(&names).expect("valid names")
    }

    fn origin_for(scheme: &str, authority: &str) -> String {
        proxy_origin(Some(scheme), Some(authority), &public(), &names("proxy.test")).to_string()
    }

    #[test]
    fn parses_public_urls() {
        assert_eq!(public().to_string(), "https://localhost:4000");
        let cases = [
            ("https://LocalHost:4000/", "https://localhost:4000"),
            ("HTTP://example.com:80", "http://example.com"),
            ("https://example.com:443", "https://example.com"),
            ("http://[::1]:4000", "http://[::1]:4000"),
            ("http://[0:0:0:0:0:0:0:1]", "http://[::1]"),
        ];
        for (url, expected) in cases {
            let origin = Origin::from_public_url(url).expect(url);
            assert_eq!(origin.to_string(), expected, "{url}");
        }
        for url in [
            "localhost:4000",
            "ftp://localhost",
            "https://",
            "https://localhost:0",
            "https://localhost:99999",
            "https://user@localhost",
            "https://localhost/app",
            "https://localhost?x",
            "https://local host",
        ] {
            let err = Origin::from_public_url(url).expect_err(url);
            assert!(err.0.contains(&format!("{url:?}")), "{err}");
        }
    }

    #[test]
    fn keeps_the_origin_the_browser_used_on_the_proxys_own_names() {
        let cases = [
            ("https", "localhost:4000", "https://localhost:4000"),
            ("https", "127.0.0.1:4000", "https://127.0.0.1:4000"),
            ("https", "[::1]:4000", "https://[::1]:4000"),
            ("http", "LOCALHOST:4000", "http://localhost:4000"),
            ("https", "localhost.:4000", "https://localhost:4000"),
            ("https", "localhost:443", "https://localhost"),
            ("http", "localhost", "http://localhost"),
            ("https", "proxy.test:8443", "https://proxy.test:8443"),
            ("HTTPS", "localhost:4000", "https://localhost:4000"),
        ];
        for (scheme, authority, expected) in cases {
            assert_eq!(origin_for(scheme, authority), expected, "{scheme} {authority}");
        }
    }

    #[test]
    fn the_public_urls_host_is_always_trusted() {
        let public = Origin::from_public_url("https://app.example.com").expect("valid");
        let none = ProxyNames::new(&[]).expect("no names");
        let origin = proxy_origin(Some("https"), Some("App.Example.com:8443"), &public, &none);
        assert_eq!(origin.to_string(), "https://app.example.com:8443");
    }

    #[test]
    fn the_public_host_behind_a_tls_terminating_balancer_keeps_the_public_scheme() {
        let public = Origin::from_public_url("https://app.example.com").expect("valid");
        let names = ProxyNames::new(&["localhost".to_string(), "127.0.0.1".to_string()]).expect("names");
        // The balancer speaks plain HTTP to the proxy: the browser still used https.
        let origin = proxy_origin(Some("http"), Some("app.example.com"), &public, &names);
        assert_eq!(origin.to_string(), "https://app.example.com");
        // The proxy's own names keep what the request used.
        let origin = proxy_origin(Some("http"), Some("127.0.0.1:4000"), &public, &names);
        assert_eq!(origin.to_string(), "http://127.0.0.1:4000");
        let local = Origin::from_public_url("https://localhost:4000").expect("valid");
        let origin = proxy_origin(Some("http"), Some("localhost:4000"), &local, &names);
        assert_eq!(origin.to_string(), "http://localhost:4000", "a local public URL changes nothing");
    }

    #[test]
    fn spoofed_or_broken_hosts_fall_back_to_the_public_url() {
        for authority in [
            "evil.com",
            "evil.com:4000",
            "localhost.evil.com",
            "localhost.evil.com:4000",
            "evil.com#@localhost",
            "localhost@evil.com",
            "localhost:4000@evil.com",
            "evil.com\\@localhost",
            "",
            " localhost",
            "local host",
            "localhost/evil",
            "localhost:",
            "localhost:abc",
            "localhost:99999",
            "localhost:+80",
            "localhost..",
            ".localhost",
            "[::1",
            "[::2]:4000",
            "[::1]x",
            "127.0.0.1.evil.com",
            "%6cocalhost",
        ] {
            assert_eq!(origin_for("https", authority), "https://localhost:4000", "{authority:?}");
        }
        let missing = proxy_origin(None, Some("127.0.0.1:4000"), &public(), &names("proxy.test"));
        assert_eq!(missing, public());
        let no_host = proxy_origin(Some("https"), None, &public(), &names("proxy.test"));
        assert_eq!(no_host, public());
        assert_eq!(origin_for("javascript", "localhost:4000"), "https://localhost:4000");
    }

    #[test]
    fn proxy_names_are_validated() {
        assert!(ProxyNames::new(&["::1".to_string()]).is_ok());
        let err = ProxyNames::new(&["localhost:4000".to_string()]).expect_err("port");
        assert!(err.0.contains("\"localhost:4000\""), "{err}");
        assert!(ProxyNames::new(&["evil.com/x".to_string()]).is_err());
        // A bare IPv6 name matches the bracketed `Host`.
        let ipv6 = ProxyNames::new(&["::1".to_string()]).expect("valid");
        let public = Origin::from_public_url("https://example.com").expect("valid");
        let origin = proxy_origin(Some("http"), Some("[::1]:4000"), &public, &ipv6);
        assert_eq!(origin.to_string(), "http://[::1]:4000");
    }

    #[test]
    fn login_redirect_carries_the_whole_request_percent_encoded() {
        let target = normalize("/members/a%20b/../page?x=1&y=a+b%26c#frag").expect("valid");
        let location = login_redirect(&public(), &target);
        assert_eq!(
            location,
            "https://localhost:4000/.ory/self-service/login/browser?return_to=\
             https%3A%2F%2Flocalhost%3A4000%2Fmembers%2Fpage%3Fx%3D1%26y%3Da%2Bb%2526c"
        );
        // Decoding the single parameter gives back exactly the URL of the request.
        let (_, encoded) = location.split_once("?return_to=").expect("has return_to");
        assert!(!encoded.contains(['&', '?', '#', '=', '+', ' ', '/']));
        let decoded = percent_encoding::percent_decode_str(encoded).decode_utf8().expect("utf-8");
        assert_eq!(decoded, "https://localhost:4000/members/page?x=1&y=a+b%26c");
    }

    #[test]
    fn login_redirect_stays_on_the_host_the_browser_used() {
        let origin = proxy_origin(Some("http"), Some("127.0.0.1:4000"), &public(), &names("proxy.test"));
        let target = normalize("/members").expect("valid");
        assert_eq!(
            login_redirect(&origin, &target),
            "http://127.0.0.1:4000/.ory/self-service/login/browser?return_to=http%3A%2F%2F127.0.0.1%3A4000%2Fmembers"
        );
        let spoofed = proxy_origin(Some("http"), Some("evil.com"), &public(), &names("proxy.test"));
        assert!(login_redirect(&spoofed, &target).starts_with("https://localhost:4000/.ory/"));
    }

    #[test]
    fn return_to_replaces_an_existing_one() {
        assert_eq!(
            with_return_to("http://a.test/x?return_to=evil&k=v", "http://a.test/b?c=d"),
            "http://a.test/x?k=v&return_to=http%3A%2F%2Fa.test%2Fb%3Fc%3Dd"
        );
        // One encoding for every return_to: only unreserved characters stay as they are.
        let target = normalize("/members/a%20b?x=1&y=a+b*c").expect("valid");
        let login = login_redirect(&public(), &target);
        let (_, encoded) = login.split_once("return_to=").expect("has return_to");
        let edited = with_return_to(
            "https://localhost:4000/.ory/self-service/login/browser?aal=aal2",
            &request_url(&public(), &target),
        );
        assert_eq!(
            edited,
            format!("https://localhost:4000/.ory/self-service/login/browser?aal=aal2&return_to={encoded}")
        );
        assert!(!encoded.contains(['*', '+', '&', '=']), "{encoded}");
        assert_eq!(with_return_to("not a url", "http://a.test/"), "not a url");
    }

    #[test]
    fn second_factor_redirects_stay_on_the_proxy() {
        let target = normalize("/members?a=b").expect("valid");
        let moved = Some("https://localhost:4000/.ory/self-service/login/browser?aal=aal2&flow=1".to_string());
        assert_eq!(
            aal2_redirect(&public(), &target, moved),
            "https://localhost:4000/.ory/self-service/login/browser?aal=aal2&flow=1&return_to=\
             https%3A%2F%2Flocalhost%3A4000%2Fmembers%3Fa%3Db"
        );
        for off_site in [Some("https://evil.test/.ory/x".to_string()), Some("https://localhost:4000/x".into()), None] {
            assert_eq!(
                aal2_redirect(&public(), &target, off_site),
                "https://localhost:4000/.ory/self-service/login/browser?aal=aal2&return_to=\
                 https%3A%2F%2Flocalhost%3A4000%2Fmembers%3Fa%3Db"
            );
        }
    }

    #[test]
    fn origins_parse_exactly() {
        let cases = [
            ("https://LocalHost:4000", "https://localhost:4000"),
            ("HTTP://example.com:80", "http://example.com"),
            ("http://[0:0:0:0:0:0:0:1]:4000", "http://[::1]:4000"),
            // An `Origin` keeps a trailing dot: browsers tell such origins apart.
            ("http://app.test.:3000", "http://app.test.:3000"),
        ];
        for (text, expected) in cases {
            assert_eq!(Origin::parse(text).map(|origin| origin.to_string()).as_deref(), Some(expected), "{text}");
        }
        for text in
            ["https://localhost:4000/", "null", "https://a@b", "https://%6cocalhost", "https://a:0", "https://a:"]
        {
            assert_eq!(Origin::parse(text), None, "{text}");
        }
        assert_eq!(
            Origin::parse("https://example.com:8443").map(|origin| origin.authority()).as_deref(),
            Some("example.com:8443")
        );
        assert_eq!(public().authority(), "localhost:4000");
    }
}
