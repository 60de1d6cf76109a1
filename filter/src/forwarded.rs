//! Request headers a client must not be able to steer, and the ones the proxy sets itself.
//!
//! Apps and Ory trust `Forwarded`, `X-Forwarded-*` and the `Ory-*` rewrite headers to build
//! absolute URLs and to identify clients, so whatever a client sent under those names is
//! removed on every request; the proxy then sets them from what it knows. Header names are lower
//! case, as proxy-wasm hands them over; pseudo-headers (`:path`, …) are never touched.

/// Headers the proxy removes from every request and sets only itself.
fn is_client_forbidden(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "forwarded"
        || name == "x-real-ip"
        || name.starts_with("x-forwarded-")
        // Every Ory-* header, not only the three known today (Ory-Base-URL-Rewrite,
        // Ory-Base-URL-Rewrite-Token, Ory-No-Custom-Domain-Redirect): they steer Ory, and no
        // client of the proxy has a reason to send one.
        || name.starts_with("ory-")
}

/// Headers the proxy sets or relies on downstream. A client's `Connection` header must not
/// name them, or a later hop (which removes the headers `Connection` names) would drop what the
/// proxy injected: the JWT in `Authorization`, the forwarding headers, or the framing.
fn is_proxy_managed(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    is_client_forbidden(&name)
        || matches!(
            name.as_str(),
            "authorization" | "host" | "content-length" | "transfer-encoding" | "cookie" | "x-session-token"
        )
}

/// Removes client-sent `Forwarded`, `X-Forwarded-*`, `X-Real-IP` and `Ory-*` headers (every
/// occurrence, any case), and strips from `Connection` the tokens naming headers the proxy
/// manages (see above); a `Connection` header left without tokens is removed.
///
/// Call it on every request before adding [`app_forwarding_headers`] or
/// [`ory_request_headers`], and *set* those afterwards (never append to a client's copy).
pub fn sanitize_request_headers(headers: &mut Vec<(String, String)>) {
    headers.retain(|(name, _)| name.starts_with(':') || !is_client_forbidden(name));
    headers.retain_mut(|(name, value)| {
        if !name.eq_ignore_ascii_case("connection") {
            return true;
        }
        let kept: Vec<&str> =
            value.split(',').map(str::trim).filter(|token| !token.is_empty() && !is_proxy_managed(token)).collect();
        if kept.is_empty() {
            return false;
        }
        *value = kept.join(", ");
        true
    });
}

/// A header value is safe to emit when it is non-empty visible ASCII (spaces inside allowed):
/// no CR/LF to split headers, no control characters hosts would reject.
fn valid_value(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b == b' ' || b == b'\t' || (0x21..=0x7e).contains(&b))
}

/// The address alone: `[::1]:5000` → `::1`, `10.0.0.1:5000` → `10.0.0.1`, `::1` → `::1`.
fn bare_ip(client: &str) -> String {
    let client = client.trim();
    match client.parse::<std::net::SocketAddr>() {
        Ok(addr) => addr.ip().to_string(),
        Err(_) => client.trim_start_matches('[').trim_end_matches(']').to_owned(),
    }
}

/// `X-Forwarded-Proto`, `X-Forwarded-Host` and `X-Forwarded-For` for the app, from what the
/// proxy itself knows: the scheme and `Host` the browser used and the peer address of the
/// connection (a port, if any, is dropped). The client's own chain is not continued: it was
/// removed by [`sanitize_request_headers`] because it cannot be trusted.
///
/// A value that is empty or could not be a header value is left out rather than sent wrong.
pub fn app_forwarding_headers(client_ip: &str, scheme: &str, host: &str) -> Vec<(String, String)> {
    let scheme = scheme.trim().to_ascii_lowercase();
    let client = bare_ip(client_ip);
    let candidates = [
        ("x-forwarded-proto", scheme.as_str()),
        ("x-forwarded-host", host.trim()),
        ("x-forwarded-for", client.as_str()),
    ];
    candidates
        .into_iter()
        .filter(|(_, value)| valid_value(value))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// The headers an Ory-bound request gets (after [`sanitize_request_headers`]):
/// `Ory-No-Custom-Domain-Redirect: true`, `Ory-Base-URL-Rewrite: <proxy origin>/.ory`, and
/// `Ory-Base-URL-Rewrite-Token: <api key>` when a project API key is configured. The caller also
/// sets `:authority` to Ory's host. None of the `Ory-*` headers may ever be sent to the app.
///
/// `X-Forwarded-Proto` says which scheme the browser used. Envoy sets it on every request before
/// any filter runs and routes on it: a request the filter leaves without one matches no route
/// (Envoy answers 404), so it is set here rather than only removed.
pub fn ory_request_headers(proxy_origin: &str, api_key: Option<&str>) -> Vec<(String, String)> {
    let scheme = proxy_origin.trim().split_once("://").map_or("http", |(scheme, _)| scheme).to_ascii_lowercase();
    let mut headers = vec![
        ("x-forwarded-proto".to_owned(), scheme),
        ("ory-no-custom-domain-redirect".to_owned(), "true".to_owned()),
        (
            "ory-base-url-rewrite".to_owned(),
            format!("{}{}", proxy_origin.trim().trim_end_matches('/'), crate::rewrite::ORY_PREFIX),
        ),
    ];
    if let Some(key) = api_key.map(str::trim).filter(|k| valid_value(k)) {
        headers.push(("ory-base-url-rewrite-token".to_owned(), key.to_owned()));
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn spoofed_headers_are_removed() {
        let mut headers = h(&[
            (":method", "GET"),
            (":authority", "localhost:4000"),
            (":path", "/x"),
            ("forwarded", "for=1.2.3.4;host=evil;proto=https"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
            ("X-Forwarded-Host", "evil.com"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-uri", "/admin"),
            ("x-forwarded-prefix", "/"),
            ("x-real-ip", "1.2.3.4"),
            ("ory-base-url-rewrite", "https://evil.com"),
            ("Ory-Base-URL-Rewrite-Token", "stolen"),
            ("ory-no-custom-domain-redirect", "false"),
            ("ory-anything-new", "x"),
            ("accept", "text/html"),
            ("cookie", "ory_session_x=1"),
            ("authorization", "Bearer t"),
            ("x-forwarded", "not a prefix match, kept"),
            ("oryx", "kept"),
        ]);
        sanitize_request_headers(&mut headers);
        assert_eq!(
            headers,
            h(&[
                (":method", "GET"),
                (":authority", "localhost:4000"),
                (":path", "/x"),
                ("accept", "text/html"),
                ("cookie", "ory_session_x=1"),
                ("authorization", "Bearer t"),
                ("x-forwarded", "not a prefix match, kept"),
                ("oryx", "kept"),
            ])
        );
    }

    #[test]
    fn connection_cannot_nominate_proxy_headers() {
        let mut headers = h(&[
            ("connection", "X-Forwarded-For, authorization, keep-alive"),
            ("connection", "Ory-Base-URL-Rewrite"),
            ("connection", "close,, x-custom , Content-Length,transfer-encoding,host,x-forwarded-host"),
            ("Connection", "upgrade"),
        ]);
        sanitize_request_headers(&mut headers);
        assert_eq!(
            headers,
            h(&[("connection", "keep-alive"), ("connection", "close, x-custom"), ("Connection", "upgrade")])
        );
    }

    #[test]
    fn app_forwarding_headers_come_from_the_proxy() {
        assert_eq!(
            app_forwarding_headers("10.0.0.7:51234", "HTTPS", "localhost:4000"),
            h(&[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "localhost:4000"),
                ("x-forwarded-for", "10.0.0.7"),
            ])
        );
        assert_eq!(app_forwarding_headers("[::1]:4000", "http", "a")[2].1, "::1");
        assert_eq!(app_forwarding_headers("::1", "http", "a")[2].1, "::1");
        assert_eq!(app_forwarding_headers("[::1]", "http", "a")[2].1, "::1");
        assert_eq!(app_forwarding_headers("127.0.0.1", "http", "a")[2].1, "127.0.0.1");
        // Values that cannot be header values are left out, not sent wrong.
        assert_eq!(app_forwarding_headers("", "http", "evil\r\nx-injected: 1"), h(&[("x-forwarded-proto", "http")]));
    }

    #[test]
    fn ory_bound_headers() {
        assert_eq!(
            ory_request_headers("https://localhost:4000/", Some("ory_pat_abc")),
            h(&[
                ("x-forwarded-proto", "https"),
                ("ory-no-custom-domain-redirect", "true"),
                ("ory-base-url-rewrite", "https://localhost:4000/.ory"),
                ("ory-base-url-rewrite-token", "ory_pat_abc"),
            ])
        );
        assert_eq!(ory_request_headers("http://localhost:4000", None)[0], ("x-forwarded-proto".into(), "http".into()));
        assert_eq!(ory_request_headers("http://localhost:4000", None).len(), 3);
        assert_eq!(ory_request_headers("http://localhost:4000", Some("")).len(), 3);
        assert_eq!(ory_request_headers("http://localhost:4000", Some("a\nb")).len(), 3);
    }

    #[test]
    fn no_ory_header_reaches_the_app() {
        // A request that arrives with every Ory header, sanitized and given the app's headers.
        let mut headers = h(&[(":path", "/"), ("ory-base-url-rewrite", "x"), ("ORY-NO-CUSTOM-DOMAIN-REDIRECT", "x")]);
        headers.extend(ory_request_headers("https://evil", Some("k")));
        sanitize_request_headers(&mut headers);
        headers.extend(app_forwarding_headers("1.1.1.1", "https", "localhost:4000"));
        assert!(headers.iter().all(|(k, _)| !k.to_ascii_lowercase().starts_with("ory-")), "{headers:?}");
    }
}
