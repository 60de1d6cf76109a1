//! Requests the filter answers itself instead of passing them on.

use crate::config::Config;
use crate::reply::{LocalResponse, error_json};
use crate::token::jwks_document;

/// Where apps fetch the public key; the second path is the one later `ory proxy` versions used.
pub const JWKS_PATHS: [&str; 2] = ["/.ory/jwks.json", "/.ory/proxy/jwks.json"];

/// Answers the request when it is for one of the filter's own endpoints.
pub fn answer(config: &Config, method: &str, path: &str) -> Option<LocalResponse> {
    let path_only = path.split(['?', '#']).next().unwrap_or_default();
    if !JWKS_PATHS.contains(&path_only) {
        return None;
    }
    if method != "GET" && method != "HEAD" {
        return Some(LocalResponse {
            status: 405,
            headers: vec![("allow".into(), "GET, HEAD".into()), ("content-type".into(), "application/json".into())],
            body: error_json(405, None, "The JWKS is read with GET."),
        });
    }
    let body = jwks_document(&[&config.signing_key]);
    Some(LocalResponse {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("cache-control".into(), format!("public, max-age={}", config.jwks_max_age_seconds)),
        ],
        body: if method == "HEAD" { Vec::new() } else { body },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::tests::TEST_KEY_PEM;

    fn config() -> Config {
        Config::from_json(&serde_json::to_vec(&serde_json::json!({ "signing_key": TEST_KEY_PEM })).unwrap()).unwrap()
    }

    #[test]
    fn serves_the_jwks_on_both_paths_with_a_short_cache() {
        let config = config();
        for path in JWKS_PATHS {
            let response = answer(&config, "GET", path).expect("answered");
            assert_eq!(response.status, 200);
            assert!(response.headers.contains(&("content-type".into(), "application/json".into())));
            assert!(response.headers.contains(&("cache-control".into(), "public, max-age=300".into())));
            let doc: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
            assert_eq!(doc["keys"][0]["kid"], config.signing_key.kid());
        }
    }

    #[test]
    fn query_does_not_hide_the_endpoint() {
        assert!(answer(&config(), "GET", "/.ory/jwks.json?v=2").is_some());
    }

    #[test]
    fn other_paths_pass_through() {
        let config = config();
        for path in ["/", "/.ory/jwks.jsonx", "/jwks.json", "/.ory/sessions/whoami", "/.ory/jwks.json/x"] {
            assert_eq!(answer(&config, "GET", path), None, "{path}");
        }
    }

    #[test]
    fn writes_are_refused() {
        let response = answer(&config(), "POST", "/.ory/jwks.json").unwrap();
        assert_eq!(response.status, 405);
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(body["error"]["code"], 405);
        assert_eq!(body["error"]["message"], "The JWKS is read with GET.");
    }

    #[test]
    fn head_has_headers_but_no_body() {
        let response = answer(&config(), "HEAD", "/.ory/jwks.json").unwrap();
        assert_eq!(response.status, 200);
        assert!(response.body.is_empty());
    }
}
