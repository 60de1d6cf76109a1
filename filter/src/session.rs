//! The session check: which request headers go to Ory's `GET /sessions/whoami`, and what its
//! answer means (REFERENCE §1.4, §2).

use serde::Deserialize;

/// The identity-bearing headers of one inbound request, read once from the header map.
///
/// Repeated headers: `cookie` values are joined with `"; "` (HTTP/2 may split one Cookie header
/// into several fields, RFC 9113 §8.2.3); for the others only the first value counts, which is
/// also what Ory reads (Go's `Header.Get`). The cache key is computed from exactly these values,
/// so Ory and the cache never see different credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub cookie: Option<String>,
    pub authorization: Option<String>,
    pub session_token: Option<String>,
    /// Not a credential: forwarded for tracing, never part of the cache key.
    pub request_id: Option<String>,
}

impl Credentials {
    /// Reads the credentials from request headers (names in any case; proxy-wasm gives lower case).
    pub fn from_headers<K: AsRef<str>, V: AsRef<str>>(headers: &[(K, V)]) -> Credentials {
        let mut creds = Credentials::default();
        for (name, value) in headers {
            let (name, value) = (name.as_ref(), value.as_ref());
            if name.eq_ignore_ascii_case("cookie") {
                match &mut creds.cookie {
                    Some(joined) => {
                        joined.push_str("; ");
                        joined.push_str(value);
                    }
                    None => creds.cookie = Some(value.to_string()),
                }
            } else if name.eq_ignore_ascii_case("authorization") {
                creds.authorization.get_or_insert_with(|| value.to_string());
            } else if name.eq_ignore_ascii_case("x-session-token") {
                creds.session_token.get_or_insert_with(|| value.to_string());
            } else if name.eq_ignore_ascii_case("x-request-id") {
                creds.request_id.get_or_insert_with(|| value.to_string());
            }
        }
        creds
    }

    /// True when the request carries nothing Ory could recognise a session by; Ory would answer
    /// 401, so the glue may skip the call.
    pub fn is_empty(&self) -> bool {
        let blank = |v: &Option<String>| v.as_deref().is_none_or(|v| v.trim().is_empty());
        blank(&self.cookie) && blank(&self.authorization) && blank(&self.session_token)
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

    /// The 401 body Kratos sends for a missing or invalid session (REFERENCE §2).
    const UNAUTHORIZED: &str = r#"{"error":{"code":401,"status":"Unauthorized","reason":"No valid session credentials found in the request.","message":"The request could not be authorized"}}"#;

    fn example() -> Vec<u8> {
        std::fs::read(SESSION_EXAMPLE).expect("the shared whoami example")
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn forwards_the_credentials_and_asks_for_json() {
        let inbound = headers(&[
            (":path", "/members"),
            ("cookie", "ory_session_x=abc; theme=dark"),
            ("authorization", "Bearer t"),
            ("x-session-token", "st"),
            ("x-request-id", "rid"),
            ("user-agent", "curl"),
            ("x-forwarded-host", "evil"),
        ]);
        let creds = Credentials::from_headers(&inbound);
        let out = whoami_request_headers("example.projects.oryapis.com", "", &creds);
        assert_eq!(
            out,
            headers(&[
                (":method", "GET"),
                (":path", "/sessions/whoami"),
                (":authority", "example.projects.oryapis.com"),
                ("accept", "application/json"),
                ("cookie", "ory_session_x=abc; theme=dark"),
                ("authorization", "Bearer t"),
                ("x-session-token", "st"),
                ("x-request-id", "rid"),
            ])
        );
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
        let creds = Credentials::from_headers(&headers(&[
            ("Cookie", "a=1"),
            ("cookie", "ory_kratos_session=s"),
            ("authorization", "Bearer first"),
            ("Authorization", "Bearer second"),
        ]));
        assert_eq!(creds.cookie.as_deref(), Some("a=1; ory_kratos_session=s"));
        assert_eq!(creds.authorization.as_deref(), Some("Bearer first"));
        assert!(!creds.is_empty());
        assert!(Credentials::from_headers(&headers(&[("x-request-id", "r"), ("cookie", " ")])).is_empty());
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
