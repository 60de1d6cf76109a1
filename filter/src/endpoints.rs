//! Requests the filter answers itself instead of passing them on.

use crate::config::Config;
use crate::reply::{LocalResponse, error_json};
use crate::token::jwks_document;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use sha2::{Digest as _, Sha256};

/// Where apps fetch the public key; the second path is the one later `ory proxy` versions used.
pub const JWKS_PATHS: [&str; 2] = ["/.ory/jwks.json", "/.ory/proxy/jwks.json"];

/// The request's parts the endpoints look at.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub if_none_match: Option<&'a str>,
    pub now_unix: u64,
}

/// Answers the request when it is for one of the filter's own endpoints.
pub fn answer(config: &Config, asked: Asked<'_>) -> Option<LocalResponse> {
    let path_only = asked.path.split(['?', '#']).next().unwrap_or_default();
    if !JWKS_PATHS.contains(&path_only) {
        return None;
    }
    if asked.method != "GET" && asked.method != "HEAD" {
        return Some(LocalResponse {
            status: 405,
            headers: vec![("allow".into(), "GET, HEAD".into()), ("content-type".into(), "application/json".into())],
            body: error_json(405, None, "The JWKS is read with GET."),
        });
    }
    let body = jwks_document(&config.published_keys(asked.now_unix));
    let etag = entity_tag(&body);
    let mut headers = vec![
        ("cache-control".into(), format!("public, max-age={}", config.jwks_max_age_seconds)),
        ("etag".into(), etag.clone()),
    ];
    if asked.if_none_match.is_some_and(|tags| matches_tag(tags, &etag)) {
        return Some(LocalResponse { status: 304, headers, body: Vec::new() });
    }
    headers.insert(0, ("content-type".into(), "application/json".into()));
    Some(LocalResponse { status: 200, headers, body: if asked.method == "HEAD" { Vec::new() } else { body } })
}

/// A strong entity tag of the document: it changes exactly when the published keys do.
fn entity_tag(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    format!("\"{}\"", B64URL.encode(&digest[..16]))
}

/// Whether `If-None-Match` names `etag` (or is `*`); a weak tag matches its strong form, as
/// RFC 9110's weak comparison for `If-None-Match` says.
fn matches_tag(if_none_match: &str, etag: &str) -> bool {
    if_none_match.split(',').map(str::trim).any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::tests::TEST_KEY_PEM;

    fn config() -> Config {
        Config::from_json(&serde_json::to_vec(&serde_json::json!({ "signing_key": TEST_KEY_PEM })).unwrap()).unwrap()
    }

    fn asked<'a>(method: &'a str, path: &'a str) -> Asked<'a> {
        Asked { method, path, if_none_match: None, now_unix: 1_700_000_000 }
    }

    /// A key retired at some point, and a configuration that publishes it until `until`.
    fn with_previous(until: u64) -> (Config, serde_json::Value) {
        let retired = crate::token::tests::other_test_key();
        let jwk = retired.public_jwk();
        let doc = serde_json::json!({
            "signing_key": TEST_KEY_PEM,
            "previous_keys": [{ "jwk": jwk, "until_unix": until }],
        });
        (Config::from_json(&serde_json::to_vec(&doc).unwrap()).unwrap(), jwk)
    }

    #[test]
    fn a_retired_key_is_published_until_its_time_is_up() {
        let (config, retired) = with_previous(1_700_000_100);
        let kids = |now_unix| {
            let response = answer(&config, Asked { now_unix, ..asked("GET", "/.ory/jwks.json") }).unwrap();
            let doc: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
            doc["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|key| key["kid"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        let current = config.signing_key.kid().to_string();
        assert_eq!(kids(1_700_000_099), [current.clone(), retired["kid"].as_str().unwrap().to_string()]);
        assert_eq!(kids(1_700_000_100), [current], "then only the current key");
    }

    #[test]
    fn a_matching_if_none_match_is_answered_304_and_a_changed_set_is_not() {
        let (config, _) = with_previous(1_700_000_100);
        let first = answer(&config, asked("GET", "/.ory/jwks.json")).unwrap();
        let etag = first.headers.iter().find(|(name, _)| name == "etag").map(|(_, v)| v.clone()).expect("an ETag");
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
        for tags in [etag.clone(), format!("W/{etag}"), format!("\"other\", {etag}"), "*".to_string()] {
            let again =
                answer(&config, Asked { if_none_match: Some(&tags), ..asked("GET", "/.ory/jwks.json") }).unwrap();
            assert_eq!(again.status, 304, "{tags}");
            assert!(again.body.is_empty());
            assert!(again.headers.contains(&("etag".into(), etag.clone())));
        }
        // Once the retired key is dropped, the old tag names an old document.
        let later = Asked { if_none_match: Some(&etag), now_unix: 1_700_000_200, ..asked("GET", "/.ory/jwks.json") };
        let changed = answer(&config, later).unwrap();
        assert_eq!(changed.status, 200);
        assert!(!changed.headers.contains(&("etag".into(), etag)));
    }

    #[test]
    fn the_current_key_cannot_be_a_previous_one_too() {
        let jwk = crate::token::SigningKey::from_pem(TEST_KEY_PEM).unwrap().public_jwk();
        let doc =
            serde_json::json!({ "signing_key": TEST_KEY_PEM, "previous_keys": [{ "jwk": jwk, "until_unix": 1 }] });
        let error = Config::from_json(&serde_json::to_vec(&doc).unwrap()).unwrap_err().to_string();
        assert!(error.contains("previous_keys[0].jwk"), "{error}");
    }

    #[test]
    fn serves_the_jwks_on_both_paths_with_a_short_cache() {
        let config = config();
        for path in JWKS_PATHS {
            let response = answer(&config, asked("GET", path)).expect("answered");
            assert_eq!(response.status, 200);
            assert!(response.headers.contains(&("content-type".into(), "application/json".into())));
            assert!(response.headers.contains(&("cache-control".into(), "public, max-age=300".into())));
            let doc: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
            assert_eq!(doc["keys"][0]["kid"], config.signing_key.kid());
        }
    }

    #[test]
    fn query_does_not_hide_the_endpoint() {
        assert!(answer(&config(), asked("GET", "/.ory/jwks.json?v=2")).is_some());
    }

    #[test]
    fn other_paths_pass_through() {
        let config = config();
        for path in ["/", "/.ory/jwks.jsonx", "/jwks.json", "/.ory/sessions/whoami", "/.ory/jwks.json/x"] {
            assert_eq!(answer(&config, asked("GET", path)), None, "{path}");
        }
    }

    #[test]
    fn writes_are_refused() {
        let response = answer(&config(), asked("POST", "/.ory/jwks.json")).unwrap();
        assert_eq!(response.status, 405);
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(body["error"]["code"], 405);
        assert_eq!(body["error"]["message"], "The JWKS is read with GET.");
    }

    #[test]
    fn head_has_headers_but_no_body() {
        let response = answer(&config(), asked("HEAD", "/.ory/jwks.json")).unwrap();
        assert_eq!(response.status, 200);
        assert!(response.body.is_empty());
    }
}
