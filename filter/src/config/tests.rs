use super::*;
use crate::token::tests::TEST_KEY_PEM;
use serde_json::json;

fn json(value: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&value).unwrap()
}

/// A configuration with Ory, plus `extra` merged in at the top level.
fn with_ory(extra: serde_json::Value) -> Result<Config, ConfigError> {
    let mut base = json!({
        "signing_key": TEST_KEY_PEM,
        "ory": { "url": "http://127.0.0.1:4433/" },
        "public_url": "http://localhost:4000",
    });
    if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            base.insert(key.clone(), value.clone());
        }
    }
    Config::from_json(&json(base))
}

fn err_of(extra: serde_json::Value) -> String {
    match with_ory(extra) {
        Ok(_) => panic!("accepted"),
        Err(err) => err.0,
    }
}

#[test]
fn accepts_a_pem_key_and_defaults_the_rest() {
    let config = Config::from_json(&json(json!({ "signing_key": TEST_KEY_PEM }))).unwrap();
    assert_eq!(config.jwks_max_age_seconds, DEFAULT_JWKS_MAX_AGE_SECONDS);
    assert!(config.ory.is_none());
}

#[test]
fn a_missing_key_names_the_field() {
    let err = Config::from_json(b"{}").unwrap_err();
    assert!(err.0.contains("signing_key"), "{err}");
}

#[test]
fn an_unknown_field_is_named() {
    let err = Config::from_json(&json(json!({
        "signing_key": TEST_KEY_PEM,
        "jwks_max_age": 5
    })))
    .unwrap_err();
    assert!(err.0.contains("jwks_max_age"), "{err}");
}

#[test]
fn unknown_fields_in_nested_objects_are_named() {
    for (extra, field) in [
        (json!({ "ory": { "url": "http://x", "clster": "o" } }), "clster"),
        (json!({ "protect": { "prefix": [] } }), "prefix"),
        (json!({ "jwt": { "ttl": 5 } }), "ttl"),
        (json!({ "session_cache": { "ttl": 5 } }), "ttl"),
        (json!({ "cors": { "origins": [] } }), "origins"),
    ] {
        let err = err_of(extra);
        assert!(err.contains(field), "{err}");
    }
}

#[test]
fn a_wrong_type_names_the_field() {
    let err = Config::from_json(&json(json!({
        "signing_key": TEST_KEY_PEM,
        "jwks_max_age_seconds": "soon"
    })))
    .unwrap_err();
    assert!(err.0.starts_with("jwks_max_age_seconds:"), "{err}");
    assert!(err_of(json!({ "jwt": { "ttl_seconds": "a minute" } })).starts_with("jwt.ttl_seconds:"));
    assert!(err_of(json!({ "session_cache": { "slots": -1 } })).starts_with("session_cache.slots:"));
    assert!(err_of(json!({ "proxy_names": "localhost" })).starts_with("proxy_names:"));
}

#[test]
fn a_bad_key_names_the_field() {
    let err = Config::from_json(&json(json!({ "signing_key": "not a key" }))).unwrap_err();
    assert!(err.0.starts_with("signing_key:"), "{err}");
}

#[test]
fn malformed_json_is_an_error_not_a_panic() {
    assert!(Config::from_json(b"{\"signing_key\":").is_err());
    assert!(Config::from_json(b"").is_err());
    assert!(Config::from_json(&[0xff, 0xfe]).is_err());
}

#[test]
fn ory_defaults() {
    let config = with_ory(json!({})).unwrap();
    let ory = config.ory.as_ref().expect("ory configured");
    assert_eq!(ory.issuer, "http://127.0.0.1:4433");
    assert_eq!(ory.cluster, "ory");
    assert_eq!(ory.project_api_key, None);
    assert_eq!(ory.whoami_timeout, Duration::from_millis(5000));
    assert_eq!(ory.public_origin.to_string(), "http://localhost:4000");
    assert_eq!(ory.proxy_names, ProxyNames::new(&FilterConfig::default().proxy_names).unwrap());
    assert!(ory.rules.is_empty());
    assert!(ory.passed_client_headers.is_empty());
    assert_eq!(ory.signing_kid, config.signing_key.kid());
    assert_eq!(
        ory.jwt,
        JwtConfig {
            enabled: true,
            ttl_seconds: 60,
            audience: None,
            content: TokenContent::default(),
            warn_bytes: 8192
        }
    );
    assert_eq!(ory.jwt.content.session, SessionClaim::Full);
    assert_eq!(ory.cache.session_ttl_ms, 5000);
    assert_eq!(ory.cache.negative_ttl_ms, 1000);
    assert_eq!(ory.cache.slots, 4096);
    assert_eq!(ory.cache.max_entry_bytes, 65536);
    assert_eq!(ory.session_cookie_prefixes, ["ory_session_", "ory_kratos_session"]);
    assert_eq!(ory.load, LoadPolicy::default());
    assert_eq!(ory.load.max_concurrent_whoami, 32);
    assert_eq!(ory.load.open_path_wait, Duration::from_millis(300));
    assert_eq!(config.signing_key_env, None);
    assert_eq!(ory.cookie_domain, None);
    assert_eq!(ory.default_redirect_url, None);
    assert_eq!(ory.cors.allowed_origins(), ["http://localhost:4000"]);
}

#[test]
fn every_field_is_read() {
    let config = with_ory(json!({
        "ory": { "url": "https://x.projects.oryapis.com", "cluster": "ory-net", "project_api_key": "k",
                 "whoami_timeout_ms": 250, "max_concurrent_whoami": 4, "open_path_wait_ms": 120 },
        "proxy_names": ["proxy.test"],
        "protect": { "prefixes": ["/members"], "globs": ["/admin/**"], "regexes": ["^/api/v[0-9]+/"],
                     "ignore_case": true },
        "pass_client_headers": ["X-Remote-User"],
        "jwt": { "enabled": false, "ttl_seconds": 120, "audience": "my-app", "session_claim": "minimal",
                 "claims": [{ "name": "email", "pointer": "/identity/traits/email" }], "warn_bytes": 4096 },
        "session_cache": { "ttl_ms": 100, "negative_ttl_ms": 50, "slots": 8, "max_entry_bytes": 4096 },
        "session_cookie_prefixes": ["ory_", "my_session"],
        "cookie_domain": "example.test",
        "default_redirect_url": "http://localhost:4000/home",
        "cors": { "allowed_origins": ["http://app.test:3000"], "additional_headers": ["x-tenant"] },
        "jwks_max_age_seconds": 10,
    }))
    .unwrap();
    assert_eq!(config.jwks_max_age_seconds, 10);
    let ory = config.ory.unwrap();
    assert_eq!(ory.issuer, "https://x.projects.oryapis.com");
    assert_eq!(ory.cluster, "ory-net");
    assert_eq!(ory.project_api_key.as_deref(), Some("k"));
    assert_eq!(ory.whoami_timeout, Duration::from_millis(250));
    assert_eq!(ory.load, LoadPolicy { max_concurrent_whoami: 4, open_path_wait: Duration::from_millis(120) });
    let normalized = |p| crate::paths::normalize(p).unwrap();
    assert!(ory.rules.protects(&normalized("/members/1")));
    assert!(ory.rules.protects(&normalized("/admin/a/b")));
    assert!(ory.rules.protects(&normalized("/api/v2/x")));
    assert!(!ory.rules.protects(&normalized("/public")));
    assert!(ory.rules.protects(&normalized("/MEMBERS/1")), "ignore_case is read");
    assert!(ory.rules.protects(&normalized("/API/V2/x")));
    assert_eq!(ory.passed_client_headers, ["x-remote-user"]);
    let content = TokenContent {
        session: SessionClaim::Minimal,
        copied: vec![("email".into(), "/identity/traits/email".into())],
    };
    assert_eq!(
        ory.jwt,
        JwtConfig { enabled: false, ttl_seconds: 120, audience: Some("my-app".into()), content, warn_bytes: 4096 }
    );
    assert_eq!((ory.cache.session_ttl_ms, ory.cache.negative_ttl_ms), (100, 50));
    assert_eq!((ory.cache.slots, ory.cache.max_entry_bytes), (8, 4096));
    assert_eq!(ory.session_cookie_prefixes, ["ory_", "my_session"]);
    assert_eq!(ory.cookie_domain.as_deref(), Some("example.test"));
    assert_eq!(ory.default_redirect_url.as_deref(), Some("http://localhost:4000/home"));
    assert!(ory.cors.allows_origin("http://app.test:3000"));
    assert!(ory.cors.allows_origin("http://localhost:4000"));
}

#[test]
fn bad_values_name_their_field() {
    let cases = [
        (json!({ "ory": { "url": "ftp://x" } }), "ory.url:"),
        (json!({ "ory": { "url": "not a url" } }), "ory.url:"),
        (json!({ "ory": { "url": "http://x", "cluster": " " } }), "ory.cluster:"),
        (json!({ "ory": { "url": "http://x", "project_api_key": "a\nb" } }), "ory.project_api_key:"),
        (json!({ "ory": { "url": "http://x", "whoami_timeout_ms": 0 } }), "ory.whoami_timeout_ms:"),
        (json!({ "ory": { "url": "http://x", "whoami_timeout_ms": 99999999999u64 } }), "ory.whoami_timeout_ms:"),
        (json!({ "ory": { "url": "http://x", "max_concurrent_whoami": 0 } }), "ory.max_concurrent_whoami:"),
        (json!({ "ory": { "url": "http://x", "max_concurrent_whoami": -1 } }), "ory.max_concurrent_whoami:"),
        (json!({ "ory": { "url": "http://x", "open_path_wait_ms": 0 } }), "ory.open_path_wait_ms:"),
        (json!({ "public_url": "localhost:4000" }), "public_url:"),
        (json!({ "public_url": "http://localhost:4000/app" }), "public_url:"),
        (json!({ "proxy_names": ["localhost:4000"] }), "proxy_names:"),
        (json!({ "protect": { "prefixes": ["members"] } }), "protect.prefixes:"),
        (json!({ "protect": { "globs": ["/a/[b"] } }), "protect.globs:"),
        (json!({ "protect": { "regexes": ["(unclosed"] } }), "protect.regexes:"),
        (json!({ "protect": { "ignore_case": "yes" } }), "protect.ignore_case:"),
        (json!({ "pass_client_headers": ["x-user", "x-forwarded-user"] }), "pass_client_headers[1]:"),
        (json!({ "pass_client_headers": ["x-tenant"] }), "pass_client_headers[0]:"),
        (json!({ "pass_client_headers": "x-user" }), "pass_client_headers:"),
        (json!({ "jwt": { "ttl_seconds": 0 } }), "jwt.ttl_seconds:"),
        (json!({ "jwt": { "audience": "" } }), "jwt.audience:"),
        (json!({ "jwt": { "session_claim": "some" } }), "jwt.session_claim:"),
        (json!({ "jwt": { "claims": [{ "name": "sub", "pointer": "/id" }] } }), "jwt.claims[0].name:"),
        (json!({ "jwt": { "claims": [{ "name": "email", "pointer": "identity" }] } }), "jwt.claims[0].pointer:"),
        (json!({ "jwt": { "claims": [{ "name": "e", "pointer": "/a~2" }] } }), "jwt.claims[0].pointer:"),
        (
            json!({ "jwt": { "claims": [{ "name": "e", "pointer": "/a" }, { "name": "e", "pointer": "/b" }] } }),
            "jwt.claims:",
        ),
        (json!({ "jwt": { "warn_bytes": 0 } }), "jwt.warn_bytes:"),
        (json!({ "session_cache": { "slots": 0 } }), "session_cache.slots:"),
        (json!({ "session_cache": { "max_entry_bytes": 10 } }), "session_cache.max_entry_bytes:"),
        (json!({ "session_cookie_prefixes": ["ory_", ""] }), "session_cookie_prefixes[1]:"),
        (json!({ "cookie_domain": "evil.com; path=/" }), "cookie_domain:"),
        (json!({ "default_redirect_url": "/relative" }), "default_redirect_url:"),
        (json!({ "default_redirect_url": "javascript:alert(1)" }), "default_redirect_url:"),
        (json!({ "cors": { "allowed_origins": ["*"] } }), "cors.allowed_origins:"),
        (json!({ "cors": { "allowed_origins": ["http://a.test/path"] } }), "cors.allowed_origins:"),
        (json!({ "cors": { "additional_headers": ["bad header"] } }), "cors.additional_headers:"),
    ];
    for (extra, field) in cases {
        let err = err_of(extra.clone());
        assert!(err.starts_with(field), "{extra}: {err}");
    }
}

#[test]
fn invalid_rules_name_the_rule() {
    let err = err_of(json!({ "protect": { "globs": ["/a/[b"] } }));
    assert!(err.contains("\"/a/[b\""), "{err}");
    let err = err_of(json!({ "protect": { "regexes": ["(unclosed"] } }));
    assert!(err.contains("\"(unclosed\""), "{err}");
}

#[test]
fn public_url_is_required_with_ory() {
    let err = Config::from_json(&json(json!({
        "signing_key": TEST_KEY_PEM,
        "ory": { "url": "http://127.0.0.1:4433" },
    })))
    .unwrap_err();
    assert!(err.0.starts_with("public_url:"), "{err}");
}

#[test]
fn rules_and_cors_without_ory_are_refused() {
    for (extra, field) in [
        (json!({ "protect": { "prefixes": ["/members"] } }), "protect.prefixes:"),
        (json!({ "protect": { "globs": ["/a/*"] } }), "protect.globs:"),
        (json!({ "protect": { "regexes": ["^/a"] } }), "protect.regexes:"),
        (json!({ "protect": { "ignore_case": true } }), "protect.ignore_case:"),
        (json!({ "pass_client_headers": ["x-user"] }), "pass_client_headers:"),
        (json!({ "cors": { "allowed_origins": ["http://a.test"] } }), "cors.allowed_origins:"),
        (json!({ "cors": { "additional_headers": ["x-a"] } }), "cors.additional_headers:"),
    ] {
        let mut value = extra.clone();
        value["signing_key"] = json!(TEST_KEY_PEM);
        let err = Config::from_json(&json(value)).unwrap_err();
        assert!(err.0.starts_with(field), "{extra}: {err}");
    }
    // Empty lists (as a deployment plan may always write them) are fine.
    let config = Config::from_json(&json(json!({
        "signing_key": TEST_KEY_PEM,
        "protect": { "prefixes": [], "globs": [], "regexes": [], "ignore_case": false },
        "pass_client_headers": [],
        "cors": { "allowed_origins": [], "additional_headers": [] },
    })))
    .unwrap();
    assert!(config.ory.is_none());
}

#[test]
fn the_full_documented_example_parses() {
    let doc = json!({
      "signing_key_env": "ORY_PROXY_SIGNING_KEY",
      "jwks_max_age_seconds": 300,
      "ory": { "url": "http://127.0.0.1:4433", "cluster": "ory", "project_api_key": null, "whoami_timeout_ms": 5000,
               "max_concurrent_whoami": 32, "open_path_wait_ms": 300 },
      "public_url": "http://localhost:4000",
      "proxy_names": ["localhost", "127.0.0.1", "::1"],
      "protect": { "prefixes": [], "globs": [], "regexes": [], "ignore_case": false },
      "pass_client_headers": [],
      "jwt": { "enabled": true, "ttl_seconds": 60, "audience": null },
      "session_cache": { "ttl_ms": 5000, "negative_ttl_ms": 1000, "slots": 4096, "max_entry_bytes": 65536 },
      "session_cookie_prefixes": ["ory_session_", "ory_kratos_session"],
      "cookie_domain": null,
      "default_redirect_url": null,
      "cors": { "allowed_origins": [], "additional_headers": [] }
    });
    let env = |name: &str| (name == "ORY_PROXY_SIGNING_KEY").then(|| TEST_KEY_PEM.to_string());
    assert!(Config::from_json_with_env(&json(doc), &env).unwrap().ory.is_some());
}

fn with_env(doc: serde_json::Value, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let env = move |name: &str| vars.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone());
    Config::from_json_with_env(&json(doc), &env)
}

#[test]
fn the_key_may_come_from_an_environment_variable() {
    let doc = json!({ "signing_key_env": "ORY_PROXY_SIGNING_KEY" });
    let from_env = with_env(doc.clone(), &[("ORY_PROXY_SIGNING_KEY", TEST_KEY_PEM)]).unwrap();
    let inline = Config::from_json(&json(json!({ "signing_key": TEST_KEY_PEM }))).unwrap();
    assert_eq!(from_env.signing_key.kid(), inline.signing_key.kid());
    assert_eq!(from_env.signing_key_env.as_deref(), Some("ORY_PROXY_SIGNING_KEY"));
    // A private JWK works as well as PEM.
    use base64::Engine as _;
    let d = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(inline.signing_key.secret().to_bytes());
    let jwk = json!({ "kty": "EC", "crv": "P-256", "d": d }).to_string();
    let from_jwk = with_env(doc, &[("ORY_PROXY_SIGNING_KEY", &jwk)]).unwrap();
    assert_eq!(from_jwk.signing_key.kid(), inline.signing_key.kid());
}

#[test]
fn a_missing_or_malformed_key_variable_is_a_clear_error_that_never_shows_the_value() {
    let doc = json!({ "signing_key_env": "ORY_PROXY_SIGNING_KEY" });
    for vars in [&[][..], &[("ORY_PROXY_SIGNING_KEY", "")][..], &[("OTHER", TEST_KEY_PEM)][..]] {
        let err = with_env(doc.clone(), vars).unwrap_err().0;
        assert!(err.starts_with("signing_key_env:"), "{err}");
        assert!(err.contains("ORY_PROXY_SIGNING_KEY is not set"), "{err}");
    }
    let secretish = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0IGJ1dCBicm9rZW4=\n-----END PRIVATE KEY-----\n";
    for value in ["not a key", secretish, "{\"kty\":\"EC\"}"] {
        let err = with_env(doc.clone(), &[("ORY_PROXY_SIGNING_KEY", value)]).unwrap_err().0;
        assert!(err.starts_with("signing_key_env:"), "{err}");
        assert!(err.contains("ORY_PROXY_SIGNING_KEY does not hold a key"), "{err}");
        assert!(!err.contains("c2VjcmV0"), "the value is not shown: {err}");
    }
    for name in ["", "1KEY", "MY-KEY", "A B", "KEY=x"] {
        let err = with_env(json!({ "signing_key_env": name }), &[]).unwrap_err().0;
        assert!(err.starts_with("signing_key_env:") && err.contains("not an environment variable name"), "{err}");
    }
    let both = json!({ "signing_key": TEST_KEY_PEM, "signing_key_env": "ORY_PROXY_SIGNING_KEY" });
    let err = with_env(both, &[("ORY_PROXY_SIGNING_KEY", TEST_KEY_PEM)]).unwrap_err().0;
    assert!(err.starts_with("signing_key_env:") && err.contains("not both"), "{err}");
}

#[test]
fn the_cache_namespace_depends_on_what_a_token_depends_on() {
    let a = with_ory(json!({})).unwrap().ory.unwrap().cache.namespace;
    let b = with_ory(json!({ "jwt": { "audience": "x" } })).unwrap().ory.unwrap().cache.namespace;
    let c = with_ory(json!({ "jwt": { "ttl_seconds": 30 } })).unwrap().ory.unwrap().cache.namespace;
    assert_ne!(a, b);
    assert_ne!(a, c);
}

#[test]
fn settings_write_only_what_differs_from_the_defaults_and_read_back_the_same() {
    assert_eq!(serde_json::to_string(&FilterConfig::default()).unwrap(), "{}");
    let mut settings = FilterConfig {
        signing_key: Some(json!(TEST_KEY_PEM)),
        ory: Some(OrySettings::new("http://127.0.0.1:4433")),
        public_url: Some("http://localhost:4000".into()),
        ..FilterConfig::default()
    };
    settings.protect.prefixes = PathPrefixes::try_from(vec!["/members".to_string()]).unwrap();
    settings.pass_client_headers = vec![PassableHeader::try_from("X-Remote-User").unwrap()];
    settings.cors.allowed_origins = CorsOrigins::try_from(vec!["HTTP://App.test:3000/".to_string()]).unwrap();
    let written = serde_json::to_value(&settings).unwrap();
    assert_eq!(
        written,
        json!({
            "signing_key": TEST_KEY_PEM,
            "ory": { "url": "http://127.0.0.1:4433" },
            "public_url": "http://localhost:4000",
            "protect": { "prefixes": ["/members"], "globs": [], "regexes": [] },
            "pass_client_headers": ["x-remote-user"],
            "cors": { "allowed_origins": ["http://app.test:3000"], "additional_headers": [] },
        })
    );
    let read: FilterConfig = serde_json::from_value(written).unwrap();
    assert_eq!(read, settings);
    let ory = Config::from_settings(&read, &|_| None).unwrap().ory.unwrap();
    assert!(ory.rules.protects(&crate::paths::normalize("/members/1").unwrap()));
    assert_eq!(ory.passed_client_headers, ["x-remote-user"]);
}

#[test]
fn checked_values_are_refused_when_made_not_only_when_read() {
    let err = PathGlobs::try_from(vec!["/ok/*".to_string(), "/a/[b".to_string()]).unwrap_err();
    assert!(err.contains("\"/a/[b\""), "{err}");
    assert!(PathPrefixes::try_from(vec!["members".to_string()]).is_err());
    assert!(PathRegexes::try_from(vec!["(unclosed".to_string()]).is_err());
    assert!(CorsOrigins::try_from(vec!["*".to_string()]).is_err());
    assert!(CorsHeaders::try_from(vec!["bad header".to_string()]).is_err());
    assert!(PassableHeader::try_from("x-forwarded-user").is_err());
    assert!(CookiePrefix::try_from("a;b").is_err());
}

/// Properties over arbitrary input (`make fuzz` runs many more cases: `PROPTEST_CASES`).
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn cases() -> ProptestConfig {
        let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256);
        ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
    }

    /// JSON values of any shape, a few levels deep, with the configuration's own keys likely.
    fn json() -> impl Strategy<Value = serde_json::Value> {
        let key = prop::sample::select(vec![
            "signing_key",
            "ory",
            "url",
            "cluster",
            "public_url",
            "protect",
            "prefixes",
            "jwt",
            "ttl_ms",
            "session_cache",
            "cors",
            "allowed_origins",
            "proxy_names",
            "x",
        ]);
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            ".{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(key.clone().prop_map(str::to_string), inner, 0..5)
                    .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(cases())]

        #[test]
        fn arbitrary_bytes_are_refused_without_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Err(error) = Config::from_json(&bytes) {
                prop_assert!(!error.to_string().is_empty());
            }
        }

        /// Any JSON is either a configuration or an error that says what is wrong.
        #[test]
        fn arbitrary_json_is_refused_with_a_reason(value in json()) {
            let bytes = serde_json::to_vec(&value).unwrap();
            if let Err(error) = Config::from_json(&bytes) {
                prop_assert!(error.to_string().len() > 10, "{}", error);
            }
        }
    }
}
