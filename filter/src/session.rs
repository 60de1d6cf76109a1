//! The session check: which request headers go to Ory's `GET /sessions/whoami`, and what its
//! answer means.

use serde::Deserialize;

/// Cookies whose names start with one of these carry an Ory session: `ory_session_<slug>` (Ory
/// Network) and `ory_kratos_session` (self-hosted Kratos's default name). A Kratos configured with
/// another `session.cookie.name` needs that name in `session_cookie_prefixes`.
pub const DEFAULT_SESSION_COOKIE_PREFIXES: &[&str] = &["ory_session_", "ory_kratos_session"];

/// What of one inbound request Ory could know a session by, read once from the header map: the
/// session cookies, `X-Session-Token`, and `Authorization` when it is a bearer token (Kratos's
/// three places).
///
/// Everything else is left out: other cookies (analytics, CSRF, the app's own) and other
/// `Authorization` schemes (Basic, API keys) are neither sent to Ory nor part of the cache key, so
/// they cannot cost a whoami call or split the cache, and Ory and the cache always see the same
/// credentials. Repeated headers: session cookies from every `cookie` field are kept in order and
/// joined with `"; "` (HTTP/2 may split one Cookie header into several fields, RFC 9113 §8.2.3);
/// for the others only the first value counts, which is also what Ory reads (Go's `Header.Get`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The session cookies only, `name=value` pairs joined with `"; "`.
    pub cookie: Option<String>,
    /// The whole header value, and only when it is `Bearer <token>`.
    pub authorization: Option<String>,
    pub session_token: Option<String>,
    /// Not a credential: forwarded for tracing, never part of the cache key.
    pub request_id: Option<String>,
}

/// Whether a cookie of this name carries an Ory session.
pub fn is_session_cookie<P: AsRef<str>>(name: &str, prefixes: &[P]) -> bool {
    !name.is_empty() && prefixes.iter().any(|prefix| name.starts_with(prefix.as_ref()))
}

/// `Bearer <token>` with a token, the scheme in any case (as Kratos reads it).
fn is_bearer(value: &str) -> bool {
    value
        .trim()
        .split_once(' ')
        .is_some_and(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
}

impl Credentials {
    /// Reads the credentials from request headers (names in any case; proxy-wasm gives lower
    /// case). `cookie_prefixes` say which cookies are session cookies (see
    /// [`DEFAULT_SESSION_COOKIE_PREFIXES`]).
    pub fn from_headers<K: AsRef<str>, V: AsRef<str>, P: AsRef<str>>(
        headers: &[(K, V)],
        cookie_prefixes: &[P],
    ) -> Credentials {
        Credentials::from_pairs(headers.iter().map(|(name, value)| (name.as_ref(), value.as_ref())), cookie_prefixes)
    }

    /// [`Credentials::from_headers`] of headers as name and value pairs.
    pub fn from_pairs<'a, P: AsRef<str>>(
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        cookie_prefixes: &[P],
    ) -> Credentials {
        let mut creds = Credentials::default();
        let (mut authorization_seen, mut token_seen) = (false, false);
        for (name, value) in headers {
            if name.eq_ignore_ascii_case("cookie") {
                for pair in value.split(';').map(str::trim) {
                    let Some((cookie, cookie_value)) = pair.split_once('=') else { continue };
                    if cookie_value.trim().is_empty() || !is_session_cookie(cookie.trim(), cookie_prefixes) {
                        continue;
                    }
                    match &mut creds.cookie {
                        Some(joined) => {
                            joined.push_str("; ");
                            joined.push_str(pair);
                        }
                        None => creds.cookie = Some(pair.to_string()),
                    }
                }
            } else if name.eq_ignore_ascii_case("authorization") {
                if !std::mem::replace(&mut authorization_seen, true) && is_bearer(value) {
                    creds.authorization = Some(value.to_string());
                }
            } else if name.eq_ignore_ascii_case("x-session-token") {
                if !std::mem::replace(&mut token_seen, true) && !value.trim().is_empty() {
                    creds.session_token = Some(value.to_string());
                }
            } else if name.eq_ignore_ascii_case("x-request-id") {
                creds.request_id.get_or_insert_with(|| value.to_string());
            }
        }
        creds
    }

    /// True when the request carries nothing Ory could recognise a session by: Ory would answer
    /// 401, so the glue does not ask.
    pub fn is_empty(&self) -> bool {
        self.cookie.is_none() && self.authorization.is_none() && self.session_token.is_none()
    }
}

/// The headers of the whoami call: pseudo-headers for `dispatch_http_call`, `accept`, and the
/// inbound credentials when present. `ory_authority` is the Ory host (with port if not default);
/// `ory_base_path` is the path the Ory URL carries ("" or "/" for none).
pub fn whoami_request_headers(ory_authority: &str, ory_base_path: &str, creds: &Credentials) -> Vec<(String, String)> {
    let base = ory_base_path.trim_end_matches('/');
    let path = if base.is_empty() || base.starts_with('/') {
        format!("{base}/sessions/whoami")
    } else {
        format!("/{base}/sessions/whoami")
    };
    let mut headers = vec![
        (":method".to_string(), "GET".to_string()),
        (":path".to_string(), path),
        (":authority".to_string(), ory_authority.to_string()),
        ("accept".to_string(), "application/json".to_string()),
    ];
    let forwarded = [
        ("cookie", &creds.cookie),
        ("authorization", &creds.authorization),
        ("x-session-token", &creds.session_token),
        ("x-request-id", &creds.request_id),
    ];
    for (name, value) in forwarded {
        if let Some(value) = value {
            headers.push((name.to_string(), value.clone()));
        }
    }
    headers
}

/// An active session as whoami returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The body exactly as received; it becomes the JWT's `session` claim.
    pub json: Vec<u8>,
    /// `identity.id`, the JWT's `sub`.
    pub identity_id: String,
}

/// What a whoami answer means for the request that asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WhoamiOutcome {
    Active(Session),
    /// No usable session: the client should log in (protected paths) or pass without a JWT.
    NoSession,
    /// A session exists but needs a second factor; browsers go to `redirect_browser_to`.
    Aal2Required {
        redirect_browser_to: Option<String>,
    },
    /// Ory could not be asked or answered nonsense: protected paths fail closed. The text says
    /// why, for the log.
    Unavailable(String),
}

impl WhoamiOutcome {
    /// Whether the outcome may be cached (Ory's failures never are: the next request asks again).
    pub fn is_cacheable(&self) -> bool {
        !matches!(self, WhoamiOutcome::Unavailable(_))
    }
}

/// The fields of a 200 body we decide on; the rest is carried as raw bytes.
#[derive(Deserialize)]
struct SessionProbe {
    active: Option<bool>,
    identity: Option<IdentityProbe>,
}

#[derive(Deserialize)]
struct IdentityProbe {
    id: Option<serde_json::Value>,
}

/// The fields of a 403 body we decide on.
#[derive(Deserialize)]
struct ErrorProbe {
    error: Option<ErrorDetail>,
    redirect_browser_to: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorDetail {
    id: Option<serde_json::Value>,
    details: Option<serde_json::Value>,
}

/// Classifies a whoami answer. `status` is None when the call failed (the host reported no
/// headers). The decision is made on the status code, not on `error.id`, except that a 403 is a
/// second-factor request only when it says `session_aal2_required`.
pub fn classify_whoami(status: Option<u16>, body: &[u8]) -> WhoamiOutcome {
    let Some(status) = status else {
        return WhoamiOutcome::Unavailable("the whoami call failed".to_string());
    };
    match status {
        200 => classify_session(body),
        403 => classify_forbidden(body),
        // Rate limiting and request timeouts say nothing about the session: asking again later may
        // succeed, and sending a logged-in user to the login page would be wrong.
        408 | 429 => WhoamiOutcome::Unavailable(format!("Ory answered {status}")),
        400..=499 => WhoamiOutcome::NoSession,
        _ => WhoamiOutcome::Unavailable(format!("Ory answered {status}")),
    }
}

fn classify_session(body: &[u8]) -> WhoamiOutcome {
    let probe: SessionProbe = match serde_json::from_slice(body) {
        Ok(probe) => probe,
        Err(_) => {
            return WhoamiOutcome::Unavailable("whoami answered 200 with a body that is not a session".to_string());
        }
    };
    match probe.active {
        Some(true) => {}
        Some(false) => return WhoamiOutcome::NoSession,
        None => {
            return WhoamiOutcome::Unavailable("whoami answered 200 without `active`".to_string());
        }
    }
    match probe.identity.and_then(|identity| identity.id) {
        Some(serde_json::Value::String(id)) if !id.is_empty() => {
            WhoamiOutcome::Active(Session { json: body.to_vec(), identity_id: id })
        }
        _ => WhoamiOutcome::Unavailable("whoami answered an active session without identity.id".to_string()),
    }
}

fn classify_forbidden(body: &[u8]) -> WhoamiOutcome {
    // A 403 whose body we cannot read is still a refusal, not an outage.
    let Ok(probe) = serde_json::from_slice::<ErrorProbe>(body) else {
        return WhoamiOutcome::NoSession;
    };
    let Some(error) = probe.error else {
        return WhoamiOutcome::NoSession;
    };
    if error.id.as_ref().and_then(|id| id.as_str()) != Some("session_aal2_required") {
        return WhoamiOutcome::NoSession;
    }
    let from_details = error
        .details
        .as_ref()
        .and_then(|details| details.get("redirect_browser_to"))
        .and_then(|to| to.as_str())
        .map(str::to_string);
    let top_level = probe.redirect_browser_to.as_ref().and_then(|to| to.as_str()).map(str::to_string);
    WhoamiOutcome::Aal2Required { redirect_browser_to: top_level.or(from_details).filter(|to| !to.is_empty()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION_EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/ory/session-example.json");

    /// The 401 body Kratos sends for a missing or invalid session.
    const UNAUTHORIZED: &str = r#"{"error":{"code":401,"status":"Unauthorized","reason":"No valid session credentials found in the request.","message":"The request could not be authorized"}}"#;

    fn example() -> Vec<u8> {
        std::fs::read(SESSION_EXAMPLE).expect("the shared whoami example")
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn creds_of(pairs: &[(&str, &str)]) -> Credentials {
        Credentials::from_headers(&headers(pairs), DEFAULT_SESSION_COOKIE_PREFIXES)
    }

    #[test]
    fn forwards_the_credentials_and_asks_for_json() {
        let creds = creds_of(&[
            (":path", "/members"),
            ("cookie", "ory_session_x=abc; theme=dark"),
            ("authorization", "Bearer t"),
            ("x-session-token", "st"),
            ("x-request-id", "rid"),
            ("user-agent", "curl"),
            ("x-forwarded-host", "evil"),
        ]);
        let out = whoami_request_headers("example.projects.oryapis.com", "", &creds);
        assert_eq!(
            out,
            headers(&[
                (":method", "GET"),
                (":path", "/sessions/whoami"),
                (":authority", "example.projects.oryapis.com"),
                ("accept", "application/json"),
                ("cookie", "ory_session_x=abc"),
                ("authorization", "Bearer t"),
                ("x-session-token", "st"),
                ("x-request-id", "rid"),
            ])
        );
    }

    #[test]
    fn only_session_cookies_are_credentials() {
        // Ory Network's and Kratos's names; everything else is the app's or a browser's.
        for cookie in ["ory_session_playfulpike=s", "ory_kratos_session=s", "a=1; ory_kratos_session=s; b=2"] {
            assert!(!creds_of(&[("cookie", cookie)]).is_empty(), "{cookie}");
        }
        for cookie in [
            "_ga=GA1.1.1; theme=dark",
            "csrf_token_0123abcd=x",
            "ory_kratos_continuity=x",
            "ory_sessionx=x",
            "session=ory_kratos_session",
            "ory_kratos_session=",
            "ory_kratos_session",
            "",
        ] {
            assert!(creds_of(&[("cookie", cookie)]).is_empty(), "{cookie:?}");
        }
        let mixed = creds_of(&[("cookie", "_ga=1; ory_session_a=s1"), ("cookie", "ory_kratos_session=s2; x=y")]);
        assert_eq!(
            mixed.cookie.as_deref(),
            Some("ory_session_a=s1; ory_kratos_session=s2"),
            "in order, others left out"
        );
        // A Kratos with a custom cookie name is configured with it.
        let custom = Credentials::from_headers(&headers(&[("cookie", "sid=s; _ga=1")]), &["sid"]);
        assert_eq!(custom.cookie.as_deref(), Some("sid=s"));
    }

    #[test]
    fn only_bearer_tokens_and_session_tokens_are_credentials() {
        assert!(!creds_of(&[("authorization", "Bearer t")]).is_empty());
        assert!(!creds_of(&[("authorization", "bearer t")]).is_empty());
        assert!(!creds_of(&[("x-session-token", "st")]).is_empty());
        for (name, value) in [
            ("authorization", "Basic dXNlcjpwYXNz"),
            ("authorization", "Bearer "),
            ("authorization", "Bearer"),
            ("authorization", "ApiKey k"),
            ("x-session-token", " "),
        ] {
            assert!(creds_of(&[(name, value)]).is_empty(), "{name}: {value}");
        }
        // The first Authorization is the one Ory reads: a bearer token behind a Basic one is not.
        assert!(creds_of(&[("authorization", "Basic x"), ("authorization", "Bearer t")]).is_empty());
    }

    #[test]
    fn base_path_is_joined_with_one_slash() {
        let creds = Credentials::default();
        for (base, want) in [
            ("", "/sessions/whoami"),
            ("/", "/sessions/whoami"),
            ("/api/kratos/public", "/api/kratos/public/sessions/whoami"),
            ("/api/kratos/public/", "/api/kratos/public/sessions/whoami"),
            ("kratos", "/kratos/sessions/whoami"),
        ] {
            let out = whoami_request_headers("h:4433", base, &creds);
            assert_eq!(out[1], (":path".to_string(), want.to_string()), "{base}");
            assert_eq!(out.len(), 4, "nothing absent is forwarded");
        }
    }

    #[test]
    fn repeated_headers_join_cookies_and_keep_the_first_of_the_rest() {
        let creds = creds_of(&[
            ("Cookie", "ory_session_a=1"),
            ("cookie", "ory_kratos_session=s"),
            ("authorization", "Bearer first"),
            ("Authorization", "Bearer second"),
            ("x-session-token", "one"),
            ("x-session-token", "two"),
        ]);
        assert_eq!(creds.cookie.as_deref(), Some("ory_session_a=1; ory_kratos_session=s"));
        assert_eq!(creds.authorization.as_deref(), Some("Bearer first"));
        assert_eq!(creds.session_token.as_deref(), Some("one"));
        assert!(!creds.is_empty());
        assert!(creds_of(&[("x-request-id", "r"), ("cookie", " ")]).is_empty());
    }

    #[test]
    fn active_session_from_the_documentation_example() {
        let body = example();
        match classify_whoami(Some(200), &body) {
            WhoamiOutcome::Active(session) => {
                assert_eq!(session.identity_id, "c4d24c01-feba-4213-858b-262c8d427f8c");
                assert_eq!(session.json, body, "kept byte for byte");
            }
            other => panic!("expected an active session, got {other:?}"),
        }
    }

    #[test]
    fn inactive_session_is_no_session() {
        let mut session: serde_json::Value = serde_json::from_slice(&example()).unwrap();
        session["active"] = serde_json::json!(false);
        let body = serde_json::to_vec(&session).unwrap();
        assert_eq!(classify_whoami(Some(200), &body), WhoamiOutcome::NoSession);
    }

    #[test]
    fn unauthorized_and_other_client_errors_are_no_session() {
        assert_eq!(classify_whoami(Some(401), UNAUTHORIZED.as_bytes()), WhoamiOutcome::NoSession);
        assert_eq!(classify_whoami(Some(401), b""), WhoamiOutcome::NoSession);
        assert_eq!(classify_whoami(Some(404), b"<html>"), WhoamiOutcome::NoSession);
        assert_eq!(classify_whoami(Some(400), b"{}"), WhoamiOutcome::NoSession);
    }

    #[test]
    fn aal2_required_carries_the_redirect() {
        let top = br#"{"error":{"id":"session_aal2_required","code":403,"status":"Forbidden","details":{"redirect_browser_to":"https://d/details"}},"redirect_browser_to":"https://ory/self-service/login/browser?aal=aal2"}"#;
        assert_eq!(
            classify_whoami(Some(403), top),
            WhoamiOutcome::Aal2Required {
                redirect_browser_to: Some("https://ory/self-service/login/browser?aal=aal2".to_string())
            }
        );
        let details_only =
            br#"{"error":{"id":"session_aal2_required","details":{"redirect_browser_to":"https://d/details"}}}"#;
        assert_eq!(
            classify_whoami(Some(403), details_only),
            WhoamiOutcome::Aal2Required { redirect_browser_to: Some("https://d/details".to_string()) }
        );
        let bare = br#"{"error":{"id":"session_aal2_required"}}"#;
        assert_eq!(classify_whoami(Some(403), bare), WhoamiOutcome::Aal2Required { redirect_browser_to: None });
    }

    #[test]
    fn other_forbidden_answers_are_no_session() {
        assert_eq!(
            classify_whoami(Some(403), br#"{"error":{"id":"security_csrf_violation"}}"#),
            WhoamiOutcome::NoSession
        );
        assert_eq!(classify_whoami(Some(403), b"forbidden"), WhoamiOutcome::NoSession);
        assert_eq!(classify_whoami(Some(403), br#"{"redirect_browser_to":"x"}"#), WhoamiOutcome::NoSession);
    }

    #[test]
    fn failures_and_garbage_are_unavailable() {
        let unavailable = |status, body: &[u8]| matches!(classify_whoami(status, body), WhoamiOutcome::Unavailable(_));
        assert!(unavailable(None, b""));
        assert!(unavailable(Some(500), b"{}"));
        assert!(unavailable(Some(502), b""));
        assert!(unavailable(Some(503), b""));
        assert!(unavailable(Some(504), b"upstream request timeout"));
        assert!(unavailable(Some(429), b""));
        assert!(unavailable(Some(302), b""));
        assert!(unavailable(Some(204), b""));
        assert!(unavailable(Some(200), b"<html>hello</html>"));
        assert!(unavailable(Some(200), b""));
        assert!(unavailable(Some(200), br#"{"active":true}"#));
        assert!(unavailable(Some(200), br#"{"active":true,"identity":{"id":7}}"#));
        assert!(unavailable(Some(200), br#"{"active":true,"identity":{"id":""}}"#));
        assert!(unavailable(Some(200), br#"{"active":"yes","identity":{"id":"x"}}"#));
        assert!(unavailable(Some(200), br#"{"identity":{"id":"x"}}"#));
        assert!(unavailable(Some(200), br#"{"active":true,"identity":{"id":"x"}"#));
        assert!(!WhoamiOutcome::Unavailable(String::new()).is_cacheable());
        assert!(WhoamiOutcome::NoSession.is_cacheable());
    }
}
