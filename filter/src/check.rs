//! The session check of an app request, as far as the cache goes: what the cache already knows
//! about the credentials, and what Ory's whoami answer means (cached for the next request). Who
//! asks Ory, and who waits for whose answer, is `coalesce`'s part.
//!
//! Pure over [`SharedStore`] and the clock the glue passes in.

use crate::cache::{self, CacheLookup, CredsHash, Negative, Positive, SharedStore};
use crate::config::OryConfig;
use crate::entry::{self, SessionResult};
use crate::session::{Session, WhoamiOutcome};
use crate::token::SigningKey;

/// What the cache says about some credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    /// The result, without asking Ory.
    Known(SessionResult),
    /// The result, without asking Ory, with a JWT signed afresh for it.
    Resigned(SessionResult),
    /// Ask Ory; `previous` may lend its JWT to the answer (see [`CacheLookup::Miss`]).
    Ask { previous: Option<Positive> },
}

/// Looks the credentials up. A session whose JWT is due for re-signing gets a new JWT here (and
/// the cache with it), without asking Ory.
pub fn cached(ory: &OryConfig, key: &SigningKey, store: &impl SharedStore, hash: &CredsHash, now_ms: u64) -> Cached {
    let result = match cache::lookup(store, &ory.cache, hash, now_ms) {
        CacheLookup::Fresh(entry) => entry::active_result(ory, &entry),
        CacheLookup::NeedsResign(entry) if !ory.jwt.enabled => entry::active_result(ory, &entry),
        CacheLookup::NeedsResign(entry) => {
            let session = Session { json: entry.session_json, identity_id: entry.identity_id };
            return match entry::active_entry(ory, key, &session, None, now_ms) {
                Ok(made) => {
                    let result = entry::active_result(ory, &made.entry);
                    // Not cached (too large, a race, a logout): this request still has its JWT.
                    let _ = cache::store_positive(store, &ory.cache, hash, made.entry, now_ms);
                    Cached::Resigned(result)
                }
                Err(why) => Cached::Known(SessionResult::Failed(why)),
            };
        }
        CacheLookup::Negative(Negative::NoSession) => SessionResult::NoSession,
        CacheLookup::Negative(Negative::Aal2Required { redirect_browser_to }) => {
            SessionResult::Aal2Required { redirect_browser_to }
        }
        CacheLookup::Miss { previous } => return Cached::Ask { previous },
    };
    Cached::Known(result)
}

/// What Ory's answer means for the requests waiting on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub result: SessionResult,
    /// A JWT was signed for the answer (not reused from the expired entry).
    pub signed: bool,
}

/// The result of Ory's answer about `hash` (for every request waiting on it), cached unless Ory
/// could not be asked. A logout since the call began keeps the answer out of the cache (see
/// [`cache::evict`]); the requests waiting still get it.
pub fn answered(
    ory: &OryConfig,
    key: &SigningKey,
    store: &impl SharedStore,
    hash: &CredsHash,
    outcome: WhoamiOutcome,
    previous: Option<&Positive>,
    now_ms: u64,
) -> Answered {
    let unsigned = |result| Answered { result, signed: false };
    match outcome {
        WhoamiOutcome::Active(session) => match entry::active_entry(ory, key, &session, previous, now_ms) {
            Ok(made) => {
                let result = entry::active_result(ory, &made.entry);
                let _ = cache::store_positive(store, &ory.cache, hash, made.entry, now_ms);
                Answered { result, signed: made.signed }
            }
            Err(why) => unsigned(SessionResult::Failed(why)),
        },
        WhoamiOutcome::NoSession => {
            let _ = cache::store_negative(store, &ory.cache, hash, Negative::NoSession, now_ms);
            unsigned(SessionResult::NoSession)
        }
        WhoamiOutcome::Aal2Required { redirect_browser_to } => {
            let negative = Negative::Aal2Required { redirect_browser_to: redirect_browser_to.clone() };
            let _ = cache::store_negative(store, &ory.cache, hash, negative, now_ms);
            unsigned(SessionResult::Aal2Required { redirect_browser_to })
        }
        WhoamiOutcome::Unavailable(why) => {
            log::warn!("Ory could not be asked about a session: {why}");
            unsigned(SessionResult::Unavailable(why))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cache::tests::MemoryStore;
    use crate::config::Config;
    use crate::session::{Credentials, DEFAULT_SESSION_COOKIE_PREFIXES};
    use crate::token::tests::TEST_KEY_PEM;

    const NOW: u64 = 1_700_000_000_000;

    fn config() -> Config {
        let doc = json!({
            "signing_key": TEST_KEY_PEM,
            "ory": { "url": "http://127.0.0.1:4433" },
            "public_url": "http://localhost:4000",
        });
        Config::from_json(&serde_json::to_vec(&doc).unwrap()).unwrap()
    }

    fn hash(cookie: &str) -> CredsHash {
        CredsHash::of(&Credentials::from_headers(&[("cookie", cookie)], DEFAULT_SESSION_COOKIE_PREFIXES))
    }

    fn session() -> Session {
        Session { json: br#"{"active":true,"identity":{"id":"u1"}}"#.to_vec(), identity_id: "u1".to_string() }
    }

    fn jwt(result: &SessionResult) -> String {
        match result {
            SessionResult::Active { jwt: Some(jwt) } => jwt.clone(),
            other => panic!("not an active session with a JWT: {other:?}"),
        }
    }

    #[test]
    fn an_answer_is_cached_for_the_next_request() {
        let config = config();
        let (ory, key, store) = (config.ory.as_ref().unwrap(), &config.signing_key, MemoryStore::default());
        let h = hash("ory_kratos_session=a");
        assert_eq!(cached(ory, key, &store, &h, NOW), Cached::Ask { previous: None });
        let result = answered(ory, key, &store, &h, WhoamiOutcome::Active(session()), None, NOW).result;
        assert_eq!(cached(ory, key, &store, &h, NOW + 1), Cached::Known(result.clone()), "the same JWT");
        assert_eq!(jwt(&result).split('.').count(), 3);

        let other = hash("ory_kratos_session=b");
        assert_eq!(
            answered(ory, key, &store, &other, WhoamiOutcome::NoSession, None, NOW).result,
            SessionResult::NoSession
        );
        assert_eq!(cached(ory, key, &store, &other, NOW + 1), Cached::Known(SessionResult::NoSession));
        let aal2 = WhoamiOutcome::Aal2Required { redirect_browser_to: Some("https://ory/aal2".to_string()) };
        let expected = SessionResult::Aal2Required { redirect_browser_to: Some("https://ory/aal2".to_string()) };
        assert_eq!(answered(ory, key, &store, &other, aal2, None, NOW).result, expected);
        assert_eq!(cached(ory, key, &store, &other, NOW + 1), Cached::Known(expected));
    }

    #[test]
    fn ory_unavailable_is_not_cached() {
        let config = config();
        let (ory, key, store) = (config.ory.as_ref().unwrap(), &config.signing_key, MemoryStore::default());
        let h = hash("ory_kratos_session=a");
        let outcome = WhoamiOutcome::Unavailable("timeout".to_string());
        assert_eq!(
            answered(ory, key, &store, &h, outcome, None, NOW).result,
            SessionResult::Unavailable("timeout".to_string())
        );
        assert_eq!(cached(ory, key, &store, &h, NOW + 1), Cached::Ask { previous: None });
    }

    #[test]
    fn an_answer_racing_a_logout_reaches_its_waiters_but_not_the_cache() {
        let config = config();
        let (ory, key, store) = (config.ory.as_ref().unwrap(), &config.signing_key, MemoryStore::default());
        let h = hash("ory_kratos_session=a");
        answered(ory, key, &store, &h, WhoamiOutcome::Active(session()), None, NOW);
        // A logout goes through while the next round's call is out.
        cache::evict(&store, &ory.cache, &h, NOW + 10).unwrap();
        assert_eq!(cached(ory, key, &store, &h, NOW + 11), Cached::Ask { previous: None }, "asks Ory again");
        let result = answered(ory, key, &store, &h, WhoamiOutcome::Active(session()), None, NOW + 20).result;
        assert!(matches!(result, SessionResult::Active { jwt: Some(_) }), "the waiters get Ory's answer");
        assert_eq!(cached(ory, key, &store, &h, NOW + 21), Cached::Ask { previous: None }, "the next one asks again");
    }

    #[test]
    fn an_expired_session_lends_its_young_jwt_to_the_confirming_answer() {
        let config = config();
        let (ory, key, store) = (config.ory.as_ref().unwrap(), &config.signing_key, MemoryStore::default());
        let h = hash("ory_kratos_session=a");
        let first = jwt(&answered(ory, key, &store, &h, WhoamiOutcome::Active(session()), None, NOW).result);
        let later = NOW + ory.cache.session_ttl_ms;
        let Cached::Ask { previous } = cached(ory, key, &store, &h, later) else { panic!("the entry expired") };
        assert!(previous.is_some());
        let answer = answered(ory, key, &store, &h, WhoamiOutcome::Active(session()), previous.as_ref(), later);
        assert_eq!(jwt(&answer.result), first, "Ory confirmed the same session: same JWT");
        assert!(!answer.signed, "nothing was signed");
    }

    #[test]
    fn what_was_signed_is_said() {
        let doc = json!({
            "signing_key": TEST_KEY_PEM,
            "ory": { "url": "http://127.0.0.1:4433" },
            "public_url": "http://localhost:4000",
            "session_cache": { "ttl_ms": 120_000 },
        });
        let config = Config::from_json(&serde_json::to_vec(&doc).unwrap()).unwrap();
        let (ory, key, store) = (config.ory.as_ref().unwrap(), &config.signing_key, MemoryStore::default());
        let h = hash("ory_kratos_session=a");
        let first = answered(ory, key, &store, &h, WhoamiOutcome::Active(session()), None, NOW);
        assert!(first.signed);
        assert!(!answered(ory, key, &store, &hash("x=1"), WhoamiOutcome::NoSession, None, NOW).signed);
        assert!(matches!(cached(ory, key, &store, &h, NOW + 1_000), Cached::Known(_)), "a cache hit never signs");
        // Past the JWT's re-sign point, the session still trusted: a new JWT, without asking Ory.
        let Cached::Resigned(result) = cached(ory, key, &store, &h, NOW + 50_000) else { panic!("re-signed") };
        assert_ne!(jwt(&result), jwt(&first.result));
    }
}
