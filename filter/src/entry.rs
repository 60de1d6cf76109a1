//! What the session check found, and the cache entry an active session is kept as: the session
//! Ory confirmed with the JWT the app gets, reused while it is young or signed afresh.

use crate::cache::{Positive, reusable_jwt};
use crate::config::OryConfig;
use crate::session::Session;
use crate::token::{SigningKey, random_jti, sign_jwt};

/// What the session check found, as the request's outcome is decided on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionResult {
    /// An active session; `jwt` is the token for the app (None when JWTs are off).
    Active {
        jwt: Option<String>,
    },
    NoSession,
    Aal2Required {
        redirect_browser_to: Option<String>,
    },
    /// Ory could not be asked or answered nonsense.
    Unavailable(String),
    /// The filter itself failed (e.g. the JWT could not be signed).
    Failed(String),
}

impl SessionResult {
    /// One word for the host's access log.
    pub fn label(&self) -> &'static str {
        match self {
            SessionResult::Active { .. } => "active",
            SessionResult::NoSession => "none",
            SessionResult::Aal2Required { .. } => "aal2-required",
            SessionResult::Unavailable(_) => "ory-unavailable",
            SessionResult::Failed(_) => "failed",
        }
    }
}

/// A cache entry for an active session, and whether a JWT was signed for it just now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    pub entry: Positive,
    pub signed: bool,
}

/// The cache entry for an active session Ory just confirmed: the previous JWT when it was signed
/// for this very session and is still young, otherwise a fresh one (`iat = now`). With JWTs off,
/// the entry carries no token and only records the session.
pub fn active_entry(
    config: &OryConfig,
    key: &SigningKey,
    session: &Session,
    previous: Option<&Positive>,
    now_ms: u64,
) -> Result<Made, String> {
    let now = now_ms / 1000;
    if !config.jwt.enabled {
        let entry = Positive {
            session_json: session.json.clone(),
            identity_id: session.identity_id.clone(),
            jwt: String::new(),
            jwt_iat: now,
            jwt_exp: now.saturating_add(config.jwt.ttl_seconds),
        };
        return Ok(Made { entry, signed: false });
    }
    if let Some(jwt) = reusable_jwt(&config.cache, previous, session, now_ms)
        && let Some(previous) = previous
    {
        return Ok(Made { entry: Positive { jwt: jwt.to_string(), ..previous.clone() }, signed: false });
    }
    let jti = random_jti()?;
    let jwt = &config.jwt;
    let jwt =
        sign_jwt(key, &session.json, &jwt.content, &config.issuer, jwt.audience.as_deref(), now, jwt.ttl_seconds, &jti)
            .map_err(|err| format!("could not sign the JWT: {err}"))?;
    if let Some(advice) = size_advice(config, &jwt, &session.identity_id) {
        log::warn!("{advice}");
    }
    let entry = Positive {
        session_json: session.json.clone(),
        identity_id: session.identity_id.clone(),
        jwt,
        jwt_iat: now,
        jwt_exp: now.saturating_add(config.jwt.ttl_seconds),
    };
    Ok(Made { entry, signed: true })
}

/// What to say about a token too large for the headers of common servers; the request still
/// gets it.
pub fn size_advice(config: &OryConfig, jwt: &str, identity_id: &str) -> Option<String> {
    let limit = config.jwt.warn_bytes;
    (jwt.len() > limit).then(|| {
        format!(
            "the JWT for identity {identity_id} is {} bytes, more than {limit} (jwt.warn_bytes): servers that \
             refuse header lines beyond 8 KiB (nginx, Node.js and others by default) will refuse it. Send less of \
             the session with --jwt-session-claim minimal (jwt.session_claim), and copy what the app reads \
             with --jwt-claim NAME=/json/pointer (jwt.claims)",
            jwt.len()
        )
    })
}

/// The result for a request whose session is `entry`.
pub fn active_result(config: &OryConfig, entry: &Positive) -> SessionResult {
    SessionResult::Active { jwt: config.jwt.enabled.then(|| entry.jwt.clone()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::token::tests::TEST_KEY_PEM;
    use serde_json::json;

    fn config(jwt: serde_json::Value) -> Config {
        let doc = json!({
            "signing_key": TEST_KEY_PEM,
            "ory": { "url": "http://127.0.0.1:4433" },
            "public_url": "http://localhost:4000",
            "jwt": jwt,
        });
        Config::from_json(&serde_json::to_vec(&doc).unwrap()).unwrap()
    }

    fn session(id: &str) -> Session {
        Session {
            json: format!(r#"{{"active":true,"identity":{{"id":"{id}"}}}}"#).into_bytes(),
            identity_id: id.into(),
        }
    }

    #[test]
    fn a_young_jwt_for_the_same_session_is_reused() {
        let config = config(json!({ "enabled": true, "ttl_seconds": 60 }));
        let ory = config.ory.as_ref().unwrap();
        let first = active_entry(ory, &config.signing_key, &session("a"), None, 1_000_000).unwrap().entry;
        assert_eq!((first.jwt_iat, first.jwt_exp), (1000, 1060));
        assert_eq!(first.jwt.split('.').count(), 3);
        let again = active_entry(ory, &config.signing_key, &session("a"), Some(&first), 1_001_000).unwrap().entry;
        assert_eq!(again, first);
        let other = active_entry(ory, &config.signing_key, &session("b"), Some(&first), 1_001_000).unwrap().entry;
        assert_ne!(other.jwt, first.jwt);
        assert_eq!(other.identity_id, "b");
        assert_eq!(active_result(ory, &first), SessionResult::Active { jwt: Some(first.jwt.clone()) });
    }

    #[test]
    fn a_token_beyond_the_warning_size_comes_with_advice() {
        let small = config(json!({ "warn_bytes": 300 }));
        let ory = small.ory.as_ref().unwrap();
        let entry = active_entry(ory, &small.signing_key, &session("a"), None, 1_000_000).unwrap().entry;
        assert!(entry.jwt.len() > 300, "the token is still made: {}", entry.jwt.len());
        let advice = size_advice(ory, &entry.jwt, "a").expect("advice");
        assert!(advice.contains("identity a") && advice.contains("--jwt-session-claim minimal"), "{advice}");
        let roomy = config(json!({}));
        assert_eq!(size_advice(roomy.ory.as_ref().unwrap(), &entry.jwt, "a"), None, "8 KiB by default");
    }

    #[test]
    fn without_jwts_the_entry_only_records_the_session() {
        let config = config(json!({ "enabled": false, "ttl_seconds": 60 }));
        let ory = config.ory.as_ref().unwrap();
        let entry = active_entry(ory, &config.signing_key, &session("a"), None, 5_000).unwrap().entry;
        assert_eq!(entry.jwt, "");
        assert_eq!((entry.jwt_iat, entry.jwt_exp), (5, 65));
        assert_eq!(active_result(ory, &entry), SessionResult::Active { jwt: None });
    }
}
