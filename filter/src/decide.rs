//! What to do with one request and its response, decided from headers alone.
//!
//! `lib.rs` reads the header map once, hands it here, and carries out the decision: answer locally,
//! or edit the headers and let the request go on (to Ory under `/.ory/`, to the app otherwise).
//! The host routes on the `:path` the filter leaves, so the decision always writes the normalised
//! path back. Each step is built from the pure modules beside this one.

use crate::config::OryConfig;
use crate::cors::{RequestCors, is_preflight, strip_upstream_cors};
use crate::entry::SessionResult;
use crate::forwarded::{app_forwarding_headers, ory_request_headers, sanitize_request_headers};
use crate::headers::{EditedHeaders, HeaderEdit, header};
use crate::negotiate::{ClientKind, client_kind, ory_accept_encoding};
#[cfg(doc)]
use crate::origin::proxy_origin;
use crate::origin::{Origin, aal2_redirect, login_redirect};
use crate::paths::{NormalizedPath, normalize};
use crate::reply::{
    LocalResponse, aal2_required, bad_request, error_reply, html_reply, internal_error, redirect, unauthorized,
};
use crate::rewrite::{
    self, BodyRewrite, STRICT_TRANSPORT_SECURITY, needs_body_rewrite, ory_route, rewrite_location_at,
    rewrite_set_cookie,
};
use crate::session::Credentials;
use crate::token::claims_to_be_ours;

/// Ory's paths that end a session: the browser flow's final step (`/self-service/logout?token=`),
/// the API flow, and `/self-service/logout/browser` (which only makes a logout URL; forgetting
/// the cached session there too costs one whoami call).
const LOGOUT_PATH: &str = "/self-service/logout";

/// The decision about a request, made in the request-headers callback.
#[derive(Debug)]
pub enum RequestDecision {
    /// Answer with this response; the request goes nowhere.
    Reply(LocalResponse),
    /// A CORS preflight answered by the proxy (its headers must not be stripped on the way out).
    Preflight(LocalResponse),
    /// Under `/.ory/`: the host's route sends it to Ory.
    Ory(OryRequest),
    /// Everything else: the app, after the session check.
    App(AppRequest),
}

#[derive(Debug)]
pub struct OryRequest {
    /// What to change in the request headers (pseudo-headers included) before they go on.
    pub edits: Vec<HeaderEdit>,
    pub origin: Origin,
    /// The path Ory is asked for, below its base path (after [`ory_route`]), with the query.
    pub routed: String,
    /// The request ends a session: forget its cache entry.
    pub logout: bool,
}

#[derive(Debug)]
pub struct AppRequest {
    /// What to change in the request headers before they go on, without the JWT (added after
    /// the session check).
    pub edits: Vec<HeaderEdit>,
    /// What of the request Ory could know its session by, read from the headers the app will
    /// get (so a client token that claims to be ours, already removed, is never sent to Ory
    /// either). Empty credentials mean no session, without asking.
    pub credentials: Credentials,
    pub origin: Origin,
    pub target: NormalizedPath,
    pub protected: bool,
    pub kind: ClientKind,
}

/// The CORS policy for a request: the configured origins plus the proxy origin the browser used.
pub fn cors_policy<'a>(config: &'a OryConfig, origin: &'a Origin) -> RequestCors<'a> {
    config.cors.with_proxy_origin(origin)
}

/// Decides what to do with a request. `origin` is the proxy origin the client used
/// ([`proxy_origin`] of its `:scheme` and `:authority`, which the glue computes once per request);
/// `client_address` is the peer (`ip:port`), for `X-Forwarded-For`.
pub fn decide_request(
    config: &OryConfig,
    origin: Origin,
    headers: &[(String, String)],
    client_address: Option<&str>,
) -> RequestDecision {
    // Two `Host` headers are a smuggling device (RFC 9112 §3.2: answer 400). Envoy joins them
    // into one `:authority` with a comma, which no host name has.
    if header(headers, ":authority").is_some_and(|authority| authority.contains(',')) {
        let reason = "the request names more than one host";
        return RequestDecision::Reply(error_reply(400, reason, "The request was refused"));
    }
    let raw_path = header(headers, ":path").unwrap_or_default();
    let target = match normalize(raw_path) {
        Ok(target) => target,
        Err(err) => return RequestDecision::Reply(bad_request(&err.to_string())),
    };
    let method = header(headers, ":method").unwrap_or_default();
    let request_origin = header(headers, "origin");
    if is_preflight(method, request_origin, header(headers, "access-control-request-method")) {
        let policy = cors_policy(config, &origin);
        let answer = policy.preflight(
            request_origin.unwrap_or_default(),
            header(headers, "access-control-request-method").unwrap_or_default(),
            header(headers, "access-control-request-headers"),
        );
        return RequestDecision::Preflight(match answer {
            Some(headers) => LocalResponse { status: 204, headers, body: Vec::new() },
            None => LocalResponse { status: 403, headers: vec![("vary".into(), "Origin".into())], body: Vec::new() },
        });
    }

    let mut out = EditedHeaders::new(headers);
    sanitize_request_headers(&mut out, &config.passed_client_headers);
    let request_target = target.to_request_target();
    out.set(":path", request_target.as_str());
    if let Some(routed) = ory_route(&request_target) {
        for (name, value) in ory_request_headers(&origin, config.project_api_key.as_deref()) {
            out.set(&name, value);
        }
        // Ory's bodies are rewritten on the way back: it may only answer in a coding that can be.
        let offered: Vec<&str> = headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("accept-encoding"))
            .map(|(_, value)| value.as_str())
            .collect();
        out.set("accept-encoding", ory_accept_encoding(&offered.join(",")));
        let routed_path = routed.split('?').next().unwrap_or_default();
        let logout = routed_path == LOGOUT_PATH || routed_path.starts_with(&format!("{LOGOUT_PATH}/"));
        return RequestDecision::Ory(OryRequest { edits: out.into_edits(), origin, routed, logout });
    }

    let forwarded =
        app_forwarding_headers(client_address.unwrap_or_default(), origin.scheme().as_str(), &origin.authority());
    for (name, value) in forwarded {
        out.set(&name, value);
    }
    // Only the proxy hands the app tokens of its own; a client's is forged or replayed. Other
    // credentials (API keys, other issuers' JWTs) pass, and a session replaces them anyway.
    out.retain(|name, value| {
        !(name.eq_ignore_ascii_case("authorization") && claims_to_be_ours(value, &config.signing_kid, &config.issuer))
    });
    let protected = config.rules.protects(&target);
    let kind = client_kind(header(headers, "accept"), header(headers, "x-requested-with"));
    let credentials = Credentials::from_pairs(out.iter(), &config.session_cookie_prefixes);
    RequestDecision::App(AppRequest { edits: out.into_edits(), credentials, origin, target, protected, kind })
}

/// What to do with an app request once its session is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionAction {
    /// Send it to the app; with `Some`, `Authorization` is replaced by this value.
    Continue {
        authorization: Option<String>,
    },
    Reply(LocalResponse),
}

/// Decides an app request's fate from its session. Unprotected paths always go on (without a JWT
/// unless the session is active); protected ones need an active session.
pub fn session_action(config: &OryConfig, request: &AppRequest, result: &SessionResult) -> SessionAction {
    if let SessionResult::Active { jwt } = result {
        return SessionAction::Continue { authorization: jwt.as_ref().map(|jwt| format!("Bearer {jwt}")) };
    }
    if !request.protected {
        return SessionAction::Continue { authorization: None };
    }
    let browser = request.kind == ClientKind::Browser;
    SessionAction::Reply(match result {
        SessionResult::Active { .. } => unreachable_active(),
        SessionResult::NoSession if browser => redirect(login_redirect(&request.origin, &request.target)),
        SessionResult::NoSession => unauthorized(),
        SessionResult::Aal2Required { redirect_browser_to } => {
            let location = aal2_location(config, request, redirect_browser_to.as_deref());
            if browser { redirect(location) } else { aal2_required(&location) }
        }
        SessionResult::Unavailable(_) if browser => html_reply(
            502,
            "Identity service unavailable",
            "The identity service could not be asked whether you are signed in. Please try again in a moment.",
        ),
        SessionResult::Unavailable(_) => error_reply(
            502,
            "The identity service could not be asked whether the request has a session.",
            "The identity service could not be asked",
        ),
        SessionResult::Failed(_) if browser => {
            html_reply(500, "Proxy error", "The proxy could not check your session. Please try again.")
        }
        SessionResult::Failed(_) => internal_error("The proxy failed while checking the session."),
    })
}

/// `Active` returns early above; kept total without a panic.
fn unreachable_active() -> LocalResponse {
    internal_error("unexpected session state")
}

/// Where a browser that needs a second factor goes: Ory's `redirect_browser_to` moved onto the
/// proxy's origin when it can be, else the proxy's own second-factor login.
fn aal2_location(config: &OryConfig, request: &AppRequest, redirect_browser_to: Option<&str>) -> String {
    let origin = request.origin.to_string();
    let default_redirect = default_redirect(config, &request.origin);
    let moved =
        redirect_browser_to.and_then(|to| rewrite::rewrite_location(to, &config.target, &origin, &default_redirect));
    aal2_redirect(&request.origin, &request.target, moved)
}

/// Where Ory's welcome page sends the browser: the configured URL, or the proxy's own origin.
pub fn default_redirect(config: &OryConfig, origin: &Origin) -> String {
    config.default_redirect_url.clone().unwrap_or_else(|| format!("{origin}/"))
}

/// What the response-headers callback needs to know about its request.
#[derive(Debug, Clone, Copy)]
pub struct ResponseContext<'a> {
    pub origin: &'a Origin,
    /// The request's `Origin` header.
    pub request_origin: Option<&'a str>,
    pub method: &'a str,
    /// The proxy answered a preflight: its CORS headers stay.
    pub preflight: bool,
    /// The filter made this response itself (no Ory rewriting then).
    pub local: bool,
    /// For requests that went to Ory: the path after [`ory_route`].
    pub ory_routed: Option<&'a str>,
    /// `Set-Cookie` values from the whoami answer (a session refresh) for the browser.
    pub refresh_cookies: &'a [String],
}

/// What to change in the response headers, and whether the body must be buffered and rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseDecision {
    pub edits: Vec<HeaderEdit>,
    /// The body is to be rewritten, in this coding.
    pub rewrite_body: Option<BodyCoding>,
    /// An Ory answer's `Location` or `Set-Cookie` was moved onto the proxy's origin.
    pub moved_ory_headers: bool,
}

/// Response headers for the browser: CORS by the proxy's policy, HSTS undone, and for Ory's
/// answers `Location` and `Set-Cookie` moved onto the proxy's origin.
pub fn decide_response(
    config: &OryConfig,
    ctx: &ResponseContext<'_>,
    headers: &[(String, String)],
) -> ResponseDecision {
    let mut out = EditedHeaders::new(headers);
    if !ctx.preflight {
        strip_upstream_cors(&mut out);
        for (name, value) in cors_policy(config, ctx.origin).response_headers(ctx.request_origin) {
            out.add(&name, value);
        }
    }
    out.set(STRICT_TRANSPORT_SECURITY.0, STRICT_TRANSPORT_SECURITY.1);
    let browser_https = ctx.origin.scheme() == crate::origin::Scheme::Https;
    let mut rewrite_body = None;
    let mut moved_ory_headers = false;
    if let (Some(routed), false) = (ctx.ory_routed, ctx.local) {
        let origin = ctx.origin.to_string();
        if let Some(location) = out.get("location").map(str::to_string) {
            let default_redirect = default_redirect(config, ctx.origin);
            if let Some(moved) = rewrite_location_at(&location, routed, &config.target, &origin, &default_redirect) {
                moved_ory_headers |= moved != location;
                out.set("location", moved);
            }
        }
        out.edit_values("set-cookie", |value| {
            let rewritten = rewrite_set_cookie(value, config.cookie_domain.as_deref(), browser_https);
            moved_ory_headers |= rewritten != value;
            Some(rewritten)
        });
        let status = out.get(":status").unwrap_or_default();
        let bodiless = ctx.method.eq_ignore_ascii_case("HEAD") || matches!(status, "204" | "304" | "206");
        let (content_type, content_encoding) = (out.get("content-type"), out.get("content-encoding"));
        if !bodiless && needs_body_rewrite(content_type, content_encoding) {
            rewrite_body = Some(BodyCoding {
                content_type: content_type.map(str::to_string),
                content_encoding: content_encoding.map(str::to_string),
            });
            out.remove("content-length");
        }
    }
    for cookie in ctx.refresh_cookies {
        out.add("set-cookie", rewrite_set_cookie(cookie, config.cookie_domain.as_deref(), browser_https));
    }
    ResponseDecision { edits: out.into_edits(), rewrite_body, moved_ory_headers }
}

/// How an Ory body to rewrite is encoded, as its (edited) response headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyCoding {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
}

/// An Ory body with Ory's URL replaced by `<proxy origin>/.ory`; None to leave it as it is.
pub fn rewrite_ory_body(
    config: &OryConfig,
    origin: &Origin,
    body: &[u8],
    content_type: Option<&str>,
    content_encoding: Option<&str>,
) -> Option<Vec<u8>> {
    let replacement = format!("{origin}{}", rewrite::ORY_PREFIX);
    match rewrite::rewrite_body(body, content_type, content_encoding, &config.target.base_url(), &replacement) {
        BodyRewrite::Replaced(bytes) => Some(bytes),
        BodyRewrite::Unchanged(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::headers::Headers;
    use crate::headers::tests::{apply, h};
    use crate::token::tests::TEST_KEY_PEM;
    use serde_json::json;
    use url::Url;

    fn config_with(extra: serde_json::Value) -> OryConfig {
        let mut doc = json!({
            "signing_key": TEST_KEY_PEM,
            "ory": { "url": "http://127.0.0.1:4433", "project_api_key": "secret-key" },
            "public_url": "http://localhost:4000",
            "protect": { "prefixes": ["/members"] },
        });
        if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                doc.insert(k.clone(), v.clone());
            }
        }
        match Config::from_json(&serde_json::to_vec(&doc).unwrap()) {
            Ok(Config { ory: Some(ory), .. }) => ory,
            other => panic!("{other:?}"),
        }
    }

    fn config() -> OryConfig {
        config_with(json!({}))
    }

    /// The decision, with the proxy origin computed from the headers as the glue does.
    fn decide_request(config: &OryConfig, headers: &[(String, String)], client: Option<&str>) -> RequestDecision {
        let origin = crate::origin::proxy_origin(
            header(headers, ":scheme"),
            header(headers, ":authority"),
            &config.public_origin,
            &config.proxy_names,
        );
        super::decide_request(config, origin, headers, client)
    }

    fn get(pairs: &[(String, String)], name: &str) -> Option<String> {
        header(pairs, name).map(str::to_string)
    }

    fn request(path: &str, extra: &[(&str, &str)]) -> Headers {
        let mut headers =
            h(&[(":method", "GET"), (":path", path), (":authority", "localhost:4000"), (":scheme", "http")]);
        headers.extend(h(extra));
        headers
    }

    fn app(decision: RequestDecision) -> AppRequest {
        match decision {
            RequestDecision::App(app) => app,
            other => panic!("not an app request: {other:?}"),
        }
    }

    /// An app request's decision, and its headers as the host holds them after the edits.
    fn app_sent(config: &OryConfig, headers: &Headers, client: Option<&str>) -> (AppRequest, Headers) {
        let app = app(decide_request(config, headers, client));
        let sent = apply(headers.clone(), &app.edits);
        (app, sent)
    }

    /// An Ory request's decision, and its headers as the host holds them after the edits.
    fn ory_sent(config: &OryConfig, headers: &Headers) -> (OryRequest, Headers) {
        let decision = decide_request(config, headers, None);
        let RequestDecision::Ory(ory) = decision else { panic!("not an Ory request: {decision:?}") };
        let sent = apply(headers.clone(), &ory.edits);
        (ory, sent)
    }

    /// A response decision, and the headers as the host holds them after the edits.
    fn response_sent(config: &OryConfig, ctx: &ResponseContext<'_>, headers: &Headers) -> (ResponseDecision, Headers) {
        let decision = decide_response(config, ctx, headers);
        let sent = apply(headers.clone(), &decision.edits);
        (decision, sent)
    }

    #[test]
    fn app_requests_are_normalised_sanitised_and_forwarded() {
        let headers = request(
            "/public/../members/%61?x=1",
            &[
                ("x-forwarded-host", "evil.com"),
                ("ory-base-url-rewrite", "http://evil"),
                ("accept", "application/json"),
            ],
        );
        let (app, sent) = app_sent(&config(), &headers, Some("10.1.2.3:5555"));
        assert_eq!(get(&sent, ":path").as_deref(), Some("/members/a?x=1"));
        assert_eq!(get(&sent, "x-forwarded-host").as_deref(), Some("localhost:4000"));
        assert_eq!(get(&sent, "x-forwarded-proto").as_deref(), Some("http"));
        assert_eq!(get(&sent, "x-forwarded-for").as_deref(), Some("10.1.2.3"));
        assert!(sent.iter().all(|(k, _)| !k.starts_with("ory-")));
        assert!(app.protected);
        assert_eq!(app.kind, ClientKind::Api);
    }

    #[test]
    fn spoofed_host_gives_the_public_origin() {
        let headers: Headers = request("/", &[])
            .into_iter()
            .map(|(k, v)| if k == ":authority" { (k, "evil.com".to_string()) } else { (k, v) })
            .collect();
        let (app, sent) = app_sent(&config(), &headers, None);
        assert_eq!(app.origin.to_string(), "http://localhost:4000");
        assert_eq!(get(&sent, "x-forwarded-host").as_deref(), Some("localhost:4000"));
    }

    #[test]
    fn a_request_naming_two_hosts_gets_400() {
        let headers: Headers = request("/", &[])
            .into_iter()
            .map(|(k, v)| if k == ":authority" { (k, "localhost:4000,evil.com".to_string()) } else { (k, v) })
            .collect();
        match decide_request(&config(), &headers, None) {
            RequestDecision::Reply(reply) => {
                assert_eq!(reply.status, 400);
                assert!(String::from_utf8_lossy(&reply.body).contains("more than one host"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refused_paths_get_400_json() {
        for path in ["/members%2Fx", "/a%00", "/public/..;/members", "*", "/%256dembers", "/x/%252e%252e/members"] {
            match decide_request(&config(), &request(path, &[]), None) {
                RequestDecision::Reply(reply) => {
                    assert_eq!(reply.status, 400, "{path}");
                    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
                    assert_eq!(body["error"]["code"], 400);
                }
                other => panic!("{path}: {other:?}"),
            }
        }
    }

    #[test]
    fn ory_requests_get_the_rewrite_headers_and_keep_the_prefix() {
        let headers = request("/.ory//self-service/login/browser?a=b", &[("ory-no-custom-domain-redirect", "false")]);
        let (ory, sent) = ory_sent(&config(), &headers);
        assert_eq!(get(&sent, ":path").as_deref(), Some("/.ory/self-service/login/browser?a=b"));
        assert_eq!(ory.routed, "/self-service/login/browser?a=b");
        assert_eq!(get(&sent, "ory-no-custom-domain-redirect").as_deref(), Some("true"));
        assert_eq!(get(&sent, "ory-base-url-rewrite").as_deref(), Some("http://localhost:4000/.ory"));
        assert_eq!(get(&sent, "ory-base-url-rewrite-token").as_deref(), Some("secret-key"));
        assert!(!ory.logout);
        assert!(get(&sent, "x-forwarded-for").is_none());
        // Envoy routes on it: an Ory-bound request always carries the browser's scheme.
        assert_eq!(get(&sent, "x-forwarded-proto").as_deref(), Some("http"));
    }

    #[test]
    fn ory_is_asked_for_no_coding_its_bodies_could_not_be_rewritten_in() {
        let ory_headers =
            |extra: &[(&str, &str)]| ory_sent(&config(), &request("/.ory/self-service/login/browser", extra)).1;
        let sent = ory_headers(&[("accept-encoding", "gzip, deflate, br, zstd")]);
        assert_eq!(get(&sent, "accept-encoding").as_deref(), Some("gzip"));
        let sent = ory_headers(&[("accept-encoding", "br"), ("accept-encoding", "identity;q=0.5, gzip;q=0.9")]);
        assert_eq!(sent.iter().filter(|(name, _)| name == "accept-encoding").count(), 1);
        assert_eq!(get(&sent, "accept-encoding").as_deref(), Some("identity;q=0.5, gzip;q=0.9"));
        assert_eq!(get(&ory_headers(&[("accept-encoding", "br")]), "accept-encoding").as_deref(), Some("identity"));
        assert_eq!(get(&ory_headers(&[]), "accept-encoding").as_deref(), Some("identity"));
        // The app is asked as the client asked.
        let (_, sent) = app_sent(&config(), &request("/page", &[("accept-encoding", "br")]), None);
        assert_eq!(get(&sent, "accept-encoding").as_deref(), Some("br"));
    }

    #[test]
    fn logout_paths_are_recognised() {
        for (path, logout) in [
            ("/.ory/self-service/logout?token=x", true),
            ("/.ory/self-service/logout/browser", true),
            ("/.ory/self-service/logout/api", true),
            ("/.ory/self-service/logoutx", false),
            ("/.ory/self-service/login", false),
        ] {
            let RequestDecision::Ory(ory) = decide_request(&config(), &request(path, &[]), None) else {
                panic!("{path}")
            };
            assert_eq!(ory.logout, logout, "{path}");
        }
    }

    #[test]
    fn ory_prefix_needs_a_segment_boundary() {
        assert!(matches!(decide_request(&config(), &request("/.oryx/a", &[]), None), RequestDecision::App(_)));
    }

    #[test]
    fn preflights_are_answered() {
        let config = config_with(json!({ "cors": { "allowed_origins": ["http://app.test:3000"] } }));
        let preflight = |origin: &str| {
            let headers = h(&[
                (":method", "OPTIONS"),
                (":path", "/api"),
                (":authority", "localhost:4000"),
                (":scheme", "http"),
                ("origin", origin),
                ("access-control-request-method", "POST"),
            ]);
            decide_request(&config, &headers, None)
        };
        let ok = preflight("http://app.test:3000");
        let RequestDecision::Preflight(reply) = ok else { panic!("{ok:?}") };
        assert_eq!(reply.status, 204);
        assert_eq!(get(&reply.headers, "access-control-allow-origin").as_deref(), Some("http://app.test:3000"));
        let refused = preflight("http://evil.test");
        let RequestDecision::Preflight(reply) = refused else { panic!("{refused:?}") };
        assert_eq!(reply.status, 403);
        assert!(get(&reply.headers, "access-control-allow-origin").is_none());
    }

    fn app_request(path: &str, kind: ClientKind, protected: bool) -> AppRequest {
        AppRequest {
            edits: Vec::new(),
            credentials: Credentials::default(),
            origin: Origin::from_public_url("http://127.0.0.1:4000").unwrap(),
            target: normalize(path).unwrap(),
            protected,
            kind,
        }
    }

    fn reply(action: SessionAction) -> LocalResponse {
        match action {
            SessionAction::Reply(reply) => reply,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn active_sessions_carry_the_jwt() {
        for protected in [true, false] {
            let action = session_action(
                &config(),
                &app_request("/members", ClientKind::Browser, protected),
                &SessionResult::Active { jwt: Some("j.w.t".into()) },
            );
            assert_eq!(action, SessionAction::Continue { authorization: Some("Bearer j.w.t".into()) });
        }
        let no_jwt = session_action(
            &config(),
            &app_request("/members", ClientKind::Browser, true),
            &SessionResult::Active { jwt: None },
        );
        assert_eq!(no_jwt, SessionAction::Continue { authorization: None });
    }

    #[test]
    fn unprotected_paths_fail_open() {
        for result in [
            SessionResult::NoSession,
            SessionResult::Aal2Required { redirect_browser_to: None },
            SessionResult::Unavailable("down".into()),
            SessionResult::Failed("oops".into()),
        ] {
            let action = session_action(&config(), &app_request("/", ClientKind::Browser, false), &result);
            assert_eq!(action, SessionAction::Continue { authorization: None }, "{result:?}");
        }
    }

    #[test]
    fn protected_paths_without_a_session() {
        let browser = reply(session_action(
            &config(),
            &app_request("/members?x=1&y=2", ClientKind::Browser, true),
            &SessionResult::NoSession,
        ));
        assert_eq!(browser.status, 303);
        assert_eq!(
            get(&browser.headers, "location").as_deref(),
            Some(
                "http://127.0.0.1:4000/.ory/self-service/login/browser?return_to=\
                 http%3A%2F%2F127.0.0.1%3A4000%2Fmembers%3Fx%3D1%26y%3D2"
            )
        );
        let api = reply(session_action(
            &config(),
            &app_request("/members", ClientKind::Api, true),
            &SessionResult::NoSession,
        ));
        assert_eq!(api.status, 401);
        assert_eq!(get(&api.headers, "content-type").as_deref(), Some("application/json"));
    }

    #[test]
    fn second_factor_goes_through_the_proxy() {
        let result = SessionResult::Aal2Required {
            redirect_browser_to: Some("http://127.0.0.1:4433/self-service/login/browser?aal=aal2".into()),
        };
        let browser =
            reply(session_action(&config(), &app_request("/members?a=b", ClientKind::Browser, true), &result));
        assert_eq!(browser.status, 303);
        let location = get(&browser.headers, "location").unwrap();
        let url = Url::parse(&location).unwrap();
        assert_eq!(url.origin().ascii_serialization(), "http://127.0.0.1:4000");
        assert_eq!(url.path(), "/.ory/self-service/login/browser");
        let pairs: Vec<(String, String)> = url.query_pairs().map(|(k, v)| (k.into(), v.into())).collect();
        assert_eq!(
            pairs,
            [("aal".into(), "aal2".into()), ("return_to".into(), "http://127.0.0.1:4000/members?a=b".into())]
        );
        let api = reply(session_action(&config(), &app_request("/members", ClientKind::Api, true), &result));
        assert_eq!(api.status, 403);
        let body: serde_json::Value = serde_json::from_slice(&api.body).unwrap();
        assert_eq!(body["error"]["id"], "session_aal2_required");
        assert!(body["redirect_browser_to"].as_str().unwrap().starts_with("http://127.0.0.1:4000/.ory/"));

        // Off-site or missing: the proxy's own aal2 login.
        for to in [Some("https://evil.test/x".to_string()), None] {
            let result = SessionResult::Aal2Required { redirect_browser_to: to };
            let browser =
                reply(session_action(&config(), &app_request("/members", ClientKind::Browser, true), &result));
            let location = get(&browser.headers, "location").unwrap();
            assert!(
                location.starts_with("http://127.0.0.1:4000/.ory/self-service/login/browser?aal=aal2&return_to="),
                "{location}"
            );
        }
    }

    #[test]
    fn ory_failures_fail_closed_on_protected_paths() {
        let result = SessionResult::Unavailable("Ory answered 500".into());
        let browser = reply(session_action(&config(), &app_request("/members", ClientKind::Browser, true), &result));
        assert_eq!(browser.status, 502);
        assert!(String::from_utf8_lossy(&browser.body).contains("identity service could not be asked"));
        let api = reply(session_action(&config(), &app_request("/members", ClientKind::Api, true), &result));
        assert_eq!(api.status, 502);
        assert_eq!(get(&api.headers, "content-type").as_deref(), Some("application/json"));
        let failed = reply(session_action(
            &config(),
            &app_request("/members", ClientKind::Api, true),
            &SessionResult::Failed("sign".into()),
        ));
        assert_eq!(failed.status, 500);
    }

    fn ctx<'a>(origin: &'a Origin, routed: Option<&'a str>, cookies: &'a [String]) -> ResponseContext<'a> {
        ResponseContext {
            origin,
            request_origin: None,
            method: "GET",
            preflight: false,
            local: false,
            ory_routed: routed,
            refresh_cookies: cookies,
        }
    }

    #[test]
    fn ory_responses_are_moved_onto_the_proxy() {
        let origin = Origin::from_public_url("http://localhost:4000").unwrap();
        let headers = h(&[
            (":status", "303"),
            ("location", "http://127.0.0.1:4433/ui/login?flow=1"),
            ("set-cookie", "csrf=1; Domain=127.0.0.1; Path=/; Secure; SameSite=None; HttpOnly"),
            ("set-cookie", "ory_kratos_session=2; Path=/; Max-Age=60"),
            ("content-type", "application/json"),
            ("content-length", "10"),
            ("access-control-allow-origin", "*"),
        ]);
        let (decision, sent) =
            response_sent(&config(), &ctx(&origin, Some("/self-service/login/browser"), &[]), &headers);
        assert_eq!(get(&sent, "location").as_deref(), Some("http://localhost:4000/.ory/ui/login?flow=1"));
        let cookies: Vec<&str> = sent.iter().filter(|(k, _)| k == "set-cookie").map(|(_, v)| v.as_str()).collect();
        assert_eq!(cookies.len(), 2);
        assert!(
            !cookies[0].contains("Domain") && !cookies[0].contains("Secure") && cookies[0].contains("SameSite=Lax")
        );
        assert!(cookies[1].contains("Max-Age=60"));
        let coding = BodyCoding { content_type: Some("application/json".into()), content_encoding: None };
        assert_eq!(decision.rewrite_body, Some(coding));
        assert!(decision.moved_ory_headers);
        assert!(get(&sent, "content-length").is_none());
        assert!(get(&sent, "access-control-allow-origin").is_none());
        assert_eq!(get(&sent, "strict-transport-security").as_deref(), Some("max-age=0"));
    }

    #[test]
    fn welcome_goes_to_the_default_redirect() {
        let origin = Origin::from_public_url("http://127.0.0.1:4000").unwrap();
        let headers = h(&[(":status", "303"), ("location", "http://127.0.0.1:4433/ui/welcome")]);
        let (_, sent) = response_sent(&config(), &ctx(&origin, Some("/self-service/login"), &[]), &headers);
        assert_eq!(get(&sent, "location").as_deref(), Some("http://127.0.0.1:4000/"));
        let configured = config_with(json!({ "default_redirect_url": "http://localhost:4000/home" }));
        let (_, sent) = response_sent(&configured, &ctx(&origin, Some("/self-service/login"), &[]), &headers);
        assert_eq!(get(&sent, "location").as_deref(), Some("http://localhost:4000/home"));
    }

    #[test]
    fn app_responses_are_left_alone_but_for_cors_hsts_and_refreshed_cookies() {
        let origin = Origin::from_public_url("http://localhost:4000").unwrap();
        let headers = h(&[
            (":status", "200"),
            ("location", "http://127.0.0.1:4433/x"),
            ("content-type", "text/html"),
            ("content-length", "5"),
        ]);
        let cookies = vec!["ory_kratos_session=new; Path=/; Secure; HttpOnly".to_string()];
        let mut context = ctx(&origin, None, &cookies);
        context.request_origin = Some("http://localhost:4000");
        let (decision, sent) = response_sent(&config(), &context, &headers);
        assert_eq!(get(&sent, "location").as_deref(), Some("http://127.0.0.1:4433/x"));
        assert_eq!(get(&sent, "content-length").as_deref(), Some("5"));
        assert_eq!(decision.rewrite_body, None);
        assert_eq!(get(&sent, "access-control-allow-origin").as_deref(), Some("http://localhost:4000"));
        assert_eq!(get(&sent, "access-control-allow-credentials").as_deref(), Some("true"));
        let cookie = get(&sent, "set-cookie").unwrap();
        assert!(cookie.starts_with("ory_kratos_session=new") && !cookie.contains("Secure"), "{cookie}");
    }

    #[test]
    fn bodies_that_cannot_be_rewritten_whole_stream() {
        let origin = Origin::from_public_url("http://localhost:4000").unwrap();
        for (method, status) in [("HEAD", "200"), ("GET", "204"), ("GET", "304"), ("GET", "206")] {
            let headers = h(&[(":status", status), ("content-type", "text/html"), ("content-length", "5")]);
            let mut context = ctx(&origin, Some("/ui/login"), &[]);
            context.method = method;
            let (decision, sent) = response_sent(&config(), &context, &headers);
            assert_eq!(decision.rewrite_body, None, "{method} {status}");
            assert_eq!(get(&sent, "content-length").as_deref(), Some("5"));
        }
        let headers = h(&[(":status", "200"), ("content-type", "image/png")]);
        assert_eq!(decide_response(&config(), &ctx(&origin, Some("/x"), &[]), &headers).rewrite_body, None);
    }

    #[test]
    fn preflight_replies_keep_their_cors_headers() {
        let origin = Origin::from_public_url("http://localhost:4000").unwrap();
        let headers = h(&[(":status", "204"), ("access-control-allow-origin", "http://localhost:4000")]);
        let mut context = ctx(&origin, None, &[]);
        context.preflight = true;
        context.local = true;
        let (_, sent) = response_sent(&config(), &context, &headers);
        assert_eq!(get(&sent, "access-control-allow-origin").as_deref(), Some("http://localhost:4000"));
    }

    #[test]
    fn ory_bodies_are_rewritten() {
        let origin = Origin::from_public_url("http://localhost:4000").unwrap();
        let body = br#"{"ui":{"action":"http://127.0.0.1:4433/self-service/login?flow=1"}}"#;
        let out = rewrite_ory_body(&config(), &origin, body, Some("application/json"), None).unwrap();
        assert_eq!(out, br#"{"ui":{"action":"http://localhost:4000/.ory/self-service/login?flow=1"}}"#);
        assert_eq!(rewrite_ory_body(&config(), &origin, b"{}", Some("application/json"), None), None);
    }
    /// A compact JWT with these header and payload objects and a made-up signature.
    fn jwt(header: serde_json::Value, payload: serde_json::Value) -> String {
        use base64::Engine as _;
        let part = |value: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&value).unwrap())
        };
        format!("{}.{}.c2lnbmF0dXJl", part(header), part(payload))
    }

    #[test]
    fn a_client_token_claiming_to_be_ours_never_reaches_the_app() {
        let config = config();
        let forged = [
            jwt(json!({ "alg": "ES256", "kid": config.signing_kid }), json!({ "sub": "admin" })),
            jwt(json!({ "alg": "ES256", "kid": "other" }), json!({ "iss": "http://127.0.0.1:4433", "sub": "admin" })),
            jwt(json!({ "alg": "none" }), json!({ "iss": "http://127.0.0.1:4433", "sub": "admin" })),
        ];
        for token in &forged {
            for path in ["/public", "/members"] {
                let bearer = format!("Bearer {token}");
                let (_, forwarded) = app_sent(&config, &request(path, &[("authorization", &bearer)]), None);
                assert_eq!(get(&forwarded, "authorization"), None, "{path}: {token}");
            }
        }
        // Every copy goes; other credentials stay.
        let bearer = format!("Bearer {}", forged[0]);
        let (_, forwarded) = app_sent(
            &config,
            &request("/public", &[("authorization", &bearer), ("Authorization", "Bearer api-key-123")]),
            None,
        );
        assert_eq!(forwarded.iter().filter(|(k, _)| k.eq_ignore_ascii_case("authorization")).count(), 1);
        assert_eq!(get(&forwarded, "authorization").as_deref(), Some("Bearer api-key-123"));
        let other = format!("Bearer {}", jwt(json!({ "alg": "RS256", "kid": "idp" }), json!({ "iss": "https://idp" })));
        let (_, forwarded) = app_sent(&config, &request("/public", &[("authorization", &other)]), None);
        assert_eq!(get(&forwarded, "authorization"), Some(other));
    }

    #[test]
    fn identity_headers_are_removed_unless_passed() {
        let spoofed = [
            ("x-kratos-authenticated-identity-id", "victim"),
            ("x-original-url", "/members"),
            ("remote-user", "admin"),
            ("x-auth-request-email", "admin@example.com"),
        ];
        let (_, forwarded) = app_sent(&config(), &request("/public", &spoofed), None);
        for (name, _) in spoofed {
            assert_eq!(get(&forwarded, name), None, "{name}");
        }

        let passing = config_with(json!({ "pass_client_headers": ["Remote-User"] }));
        let (_, forwarded) = app_sent(&passing, &request("/public", &spoofed), None);
        assert_eq!(get(&forwarded, "remote-user").as_deref(), Some("admin"));
        assert_eq!(get(&forwarded, "x-original-url"), None);
    }

    #[test]
    fn ignore_case_protects_every_spelling() {
        let config = config_with(json!({ "protect": { "prefixes": ["/members"], "ignore_case": true } }));
        assert!(app(decide_request(&config, &request("/MEMBERS", &[]), None)).protected);
        assert!(app(decide_request(&config, &request("/Members/x", &[]), None)).protected);
        assert!(!app(decide_request(&config, &request("/public", &[]), None)).protected);
        assert!(
            !app(decide_request(&self::config(), &request("/MEMBERS", &[]), None)).protected,
            "sensitive by default"
        );
    }

    #[test]
    fn only_what_ory_could_know_is_a_credential() {
        let config = config();
        let creds = |extra: &[(&str, &str)]| app(decide_request(&config, &request("/", extra), None)).credentials;
        // Nothing Ory knows: no whoami call, whatever the cookies.
        assert!(creds(&[("cookie", "_ga=GA1.2.3; theme=dark; csrf_token_abc=x")]).is_empty());
        assert!(creds(&[("authorization", "Basic dXNlcjpwYXNz")]).is_empty());
        let ours = jwt(json!({ "alg": "ES256", "kid": config.signing_kid }), json!({ "sub": "admin" }));
        assert!(creds(&[("authorization", &format!("Bearer {ours}"))]).is_empty(), "removed before the check");
        // What Ory could know, and only that.
        let mixed = creds(&[("cookie", "_ga=1; ory_kratos_session=s; theme=dark")]);
        assert_eq!(mixed.cookie.as_deref(), Some("ory_kratos_session=s"));
        assert!(!creds(&[("cookie", "ory_session_playfulpike=s")]).is_empty());
        assert!(!creds(&[("x-session-token", "t")]).is_empty());
        assert!(!creds(&[("authorization", "Bearer some-session-token")]).is_empty());
        let custom = config_with(json!({ "session_cookie_prefixes": ["sid"] }));
        let decision = decide_request(&custom, &request("/", &[("cookie", "sid=1; ory_kratos_session=s")]), None);
        assert_eq!(app(decision).credentials.cookie.as_deref(), Some("sid=1"));
    }
}
