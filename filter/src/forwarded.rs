//! Request headers a client must not be able to steer, and the ones the proxy sets itself.
//!
//! Apps and Ory trust `Forwarded`, `X-Forwarded-*` and the `Ory-*` rewrite headers to build
//! absolute URLs and to identify clients, so whatever a client sent under those names is
//! removed on every request; the proxy then sets them from what it knows.
//!
//! Apps also trust headers that, in other deployments, an authenticating proxy or a front server
//! sets: who the user is (`Remote-User`, `X-Auth-Request-Email`, …) or which path was really
//! asked for (`X-Original-URL`, …). The proxy never sets any of them, and a client that sends
//! one is lying, so they are removed too (see [`IDENTITY_HEADERS`] and
//! [`IDENTITY_HEADER_PREFIXES`]); `--pass-client-header` keeps one on purpose.
//!
//! Header names are lower case, as proxy-wasm hands them over; pseudo-headers (`:path`, …) are
//! never touched.

use crate::headers::{EditedHeaders, starts_with_ignore_case};
use crate::origin::Origin;
use crate::rewrite::ORY_PREFIX;

/// Identity and path-override headers removed from every client request, by exact name. Each is
/// what some server or proxy sets for the app behind it, so an app may trust it by mistake.
pub const IDENTITY_HEADERS: &[&str] = &[
    // Which path or host was "really" requested: IIS and ASP.NET (X-Original-URL), ISAPI_Rewrite,
    // Symfony and Zend (X-Rewrite-URL), nginx `auth_request` setups (X-Original-URI), Envoy after a
    // prefix rewrite (X-Envoy-Original-Path), Azure's gateways (X-Original-Host).
    "x-original-url",
    "x-original-uri",
    "x-original-path",
    "x-original-host",
    "x-rewrite-url",
    "x-envoy-original-path",
    // Who the user is: Oathkeeper's and many tutorials' header mutators (X-User), Kong's OIDC
    // plugin (X-Userinfo) and consumers, WSO2 (X-JWT-Assertion).
    "x-user",
    "x-user-id",
    "x-email",
    "x-userinfo",
    "x-credential-identifier",
    "x-anonymous-consumer",
    "x-jwt-assertion",
];

/// Identity headers removed from every client request, by prefix (names starting with one).
pub const IDENTITY_HEADER_PREFIXES: &[&str] = &[
    // Ory's own (X-Kratos-Authenticated-Identity-Id in Oathkeeper setups).
    "x-kratos-",
    // oauth2-proxy and nginx `auth_request` (X-Auth-Request-User, -Email, -Groups, -Access-Token).
    "x-auth-request-",
    // Authelia, Authentik, Traefik forward auth (Remote-User, Remote-Groups, Remote-Email).
    "remote-",
    // Apache, Kubernetes' front proxy (X-Remote-User, X-Remote-Group, X-Remote-Extra-*).
    "x-remote-",
    // Kong (X-Authenticated-Userid, X-Consumer-Username) and generic X-Authenticated-User.
    "x-authenticated-",
    "x-consumer-",
    // Grafana's and Gitea's auth proxy (X-WEBAUTH-USER).
    "x-webauth-",
    // Hosted identity-aware proxies: Pomerium, Cloudflare Access, Google IAP, AWS ALB, Azure App
    // Service.
    "x-pomerium-",
    "cf-access-",
    "x-goog-authenticated-user-",
    "x-goog-iap-",
    "x-amzn-oidc-",
    "x-ms-client-principal",
];

/// The forwarding family: the proxy removes these from every request and sets some itself.
// Both run for every header of every request: they compare without making lower-case copies.
fn is_forwarding_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("forwarded")
        || name.eq_ignore_ascii_case("x-real-ip")
        || starts_with_ignore_case(name, "x-forwarded-")
        // Every Ory-* header, not only the three known today (Ory-Base-URL-Rewrite,
        // Ory-Base-URL-Rewrite-Token, Ory-No-Custom-Domain-Redirect): they steer Ory, and no
        // client of the proxy has a reason to send one.
        || starts_with_ignore_case(name, "ory-")
}

/// An identity or path-override header (see [`IDENTITY_HEADERS`]).
pub fn is_identity_header(name: &str) -> bool {
    IDENTITY_HEADERS.iter().any(|header| header.eq_ignore_ascii_case(name))
        || IDENTITY_HEADER_PREFIXES.iter().any(|prefix| starts_with_ignore_case(name, prefix))
}

/// Checks a `--pass-client-header` name and returns it in lower case. Only identity headers can be
/// passed: the forwarding family is the proxy's own, and a name the proxy does not remove
/// passes anyway (most likely a typo, in a setting about security).
pub fn passable_header(name: &str) -> Result<String, String> {
    let lower = name.trim().to_ascii_lowercase();
    if !crate::headers::is_token(&lower) {
        return Err(format!("{name:?} is not a header name"));
    }
    if is_forwarding_header(&lower) {
        return Err(format!(
            "{name:?} cannot be passed: the proxy always removes Forwarded, X-Forwarded-*, X-Real-IP and Ory-* from clients"
        ));
    }
    if !is_identity_header(&lower) {
        return Err(format!("{name:?} is not a header the proxy removes, so it passes already"));
    }
    Ok(lower)
}

/// Headers the proxy sets or relies on downstream. A client's `Connection` header must not
/// name them, or a later hop (which removes the headers `Connection` names) would drop what the
/// proxy injected: the JWT in `Authorization`, the forwarding headers, or the framing.
fn is_proxy_managed(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    is_forwarding_header(&name)
        || matches!(
            name.as_str(),
            "authorization" | "host" | "content-length" | "transfer-encoding" | "cookie" | "x-session-token"
        )
}

/// Removes client-sent `Forwarded`, `X-Forwarded-*`, `X-Real-IP` and `Ory-*` headers and the
/// identity and path-override headers except those named in `passed` (lower case, from
/// [`passable_header`]), every occurrence in any case; and strips from `Connection` the tokens
/// naming headers the proxy manages (see above); a `Connection` header left without tokens is
/// removed.
///
/// Call it on every request before adding [`app_forwarding_headers`] or
/// [`ory_request_headers`], and *set* those afterwards (never append to a client's copy).
pub fn sanitize_request_headers(headers: &mut EditedHeaders<'_>, passed: &[String]) {
    headers.retain(|name, _| {
        name.starts_with(':')
            || !(is_forwarding_header(name)
                || (is_identity_header(name) && !passed.iter().any(|kept| kept.eq_ignore_ascii_case(name))))
    });
    headers.edit_values("connection", |value| {
        let kept: Vec<&str> =
            value.split(',').map(str::trim).filter(|token| !token.is_empty() && !is_proxy_managed(token)).collect();
        (!kept.is_empty()).then(|| kept.join(", "))
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
pub fn ory_request_headers(proxy_origin: &Origin, api_key: Option<&str>) -> Vec<(String, String)> {
    let mut headers = vec![
        ("x-forwarded-proto".to_owned(), proxy_origin.scheme().as_str().to_owned()),
        ("ory-no-custom-domain-redirect".to_owned(), "true".to_owned()),
        ("ory-base-url-rewrite".to_owned(), format!("{proxy_origin}{ORY_PREFIX}")),
    ];
    if let Some(key) = api_key.map(str::trim).filter(|k| valid_value(k)) {
        headers.push(("ory-base-url-rewrite-token".to_owned(), key.to_owned()));
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::tests::{h, sent};
    use crate::headers::{EditedHeaders, Headers};

    fn sanitized(headers: &Headers, passed: &[String]) -> Headers {
        let mut edited = EditedHeaders::new(headers);
        sanitize_request_headers(&mut edited, passed);
        sent(edited)
    }

    fn origin(url: &str) -> Origin {
        Origin::from_public_url(url).expect("valid origin")
    }

    #[test]
    fn spoofed_headers_are_removed() {
        let headers = h(&[
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
        assert_eq!(
            sanitized(&headers, &[]),
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
        let headers = h(&[
            ("connection", "X-Forwarded-For, authorization, keep-alive"),
            ("connection", "Ory-Base-URL-Rewrite"),
            ("connection", "close,, x-custom , Content-Length,transfer-encoding,host,x-forwarded-host"),
            ("Connection", "upgrade"),
        ]);
        assert_eq!(
            sanitized(&headers, &[]),
            h(&[("connection", "keep-alive"), ("connection", "close, x-custom"), ("connection", "upgrade")])
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
            ory_request_headers(&origin("https://localhost:4000/"), Some("ory_pat_abc")),
            h(&[
                ("x-forwarded-proto", "https"),
                ("ory-no-custom-domain-redirect", "true"),
                ("ory-base-url-rewrite", "https://localhost:4000/.ory"),
                ("ory-base-url-rewrite-token", "ory_pat_abc"),
            ])
        );
        assert_eq!(
            ory_request_headers(&origin("http://localhost:4000"), None)[0],
            ("x-forwarded-proto".into(), "http".into())
        );
        assert_eq!(ory_request_headers(&origin("http://localhost:4000"), None).len(), 3);
        assert_eq!(ory_request_headers(&origin("http://localhost:4000"), Some("")).len(), 3);
        assert_eq!(ory_request_headers(&origin("http://localhost:4000"), Some("a\nb")).len(), 3);
    }

    #[test]
    fn no_ory_header_reaches_the_app() {
        // A request that arrives with every Ory header, sanitized and given the app's headers.
        let headers = h(&[(":path", "/"), ("ory-base-url-rewrite", "x"), ("ORY-NO-CUSTOM-DOMAIN-REDIRECT", "x")]);
        let mut edited = EditedHeaders::new(&headers);
        for (name, value) in ory_request_headers(&origin("https://evil"), Some("k")) {
            edited.add(&name, value);
        }
        sanitize_request_headers(&mut edited, &[]);
        for (name, value) in app_forwarding_headers("1.1.1.1", "https", "localhost:4000") {
            edited.set(&name, value);
        }
        let headers = sent(edited);
        assert!(headers.iter().all(|(k, _)| !k.to_ascii_lowercase().starts_with("ory-")), "{headers:?}");
    }
    #[test]
    fn identity_and_path_override_headers_are_removed() {
        let headers = h(&[
            (":path", "/public"),
            ("x-kratos-authenticated-identity-id", "victim"),
            ("X-Original-URL", "/members"),
            ("x-original-uri", "/members"),
            ("x-rewrite-url", "/members"),
            ("x-envoy-original-path", "/members"),
            ("x-user", "admin"),
            ("x-email", "admin@example.com"),
            ("x-auth-request-user", "admin"),
            ("X-Auth-Request-Email", "admin@example.com"),
            ("remote-user", "admin"),
            ("Remote-Groups", "admins"),
            ("x-remote-user", "admin"),
            ("x-webauth-user", "admin"),
            ("cf-access-authenticated-user-email", "admin@example.com"),
            ("x-goog-authenticated-user-email", "accounts.google.com:admin@example.com"),
            ("x-amzn-oidc-identity", "admin"),
            ("x-ms-client-principal-name", "admin"),
            ("x-forwarded-user", "admin"),
            ("accept", "*/*"),
            ("x-user-agent", "kept: not an identity header"),
            ("x-users-page", "kept"),
            ("authorization", "Bearer api-key"),
        ]);
        assert_eq!(
            sanitized(&headers, &[]),
            h(&[
                (":path", "/public"),
                ("accept", "*/*"),
                ("x-user-agent", "kept: not an identity header"),
                ("x-users-page", "kept"),
                ("authorization", "Bearer api-key"),
            ])
        );
    }

    #[test]
    fn a_passed_header_is_kept_and_only_that_one() {
        let passed = vec![passable_header("X-Remote-User").expect("passable")];
        let headers = h(&[("X-Remote-User", "alice"), ("x-remote-group", "admins"), ("x-user", "bob")]);
        assert_eq!(sanitized(&headers, &passed), h(&[("X-Remote-User", "alice")]));
    }

    #[test]
    fn only_identity_headers_can_be_passed() {
        assert_eq!(passable_header(" X-Auth-Request-User "), Ok("x-auth-request-user".to_string()));
        assert_eq!(passable_header("x-original-url"), Ok("x-original-url".to_string()));
        for forwarding in ["X-Forwarded-For", "forwarded", "x-real-ip", "Ory-Base-URL-Rewrite"] {
            let err = passable_header(forwarding).expect_err(forwarding);
            assert!(err.contains("always removes"), "{err}");
        }
        let err = passable_header("x-tenant").expect_err("not removed");
        assert!(err.contains("passes already"), "{err}");
        for bad in ["", " ", "x user", "x-user:", "x-us\ner"] {
            assert!(passable_header(bad).is_err(), "{bad:?}");
        }
    }
}
