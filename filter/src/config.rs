//! The filter's configuration: the JSON both hosts hand to `on_configure`.
//!
//! The runner builds it from the command line (its deployment plan); Envoy carries the same JSON in
//! the Wasm filter's `configuration`. Unknown fields are rejected so that a typo is an error at
//! start-up rather than a setting silently ignored.

use serde::Deserialize;

use crate::token::SigningKey;

/// How long apps may cache `/.ory/jwks.json` unless configured otherwise.
pub const DEFAULT_JWKS_MAX_AGE_SECONDS: u32 = 300;

/// The parsed, validated configuration.
#[derive(Debug)]
pub struct Config {
    pub signing_key: SigningKey,
    pub jwks_max_age_seconds: u32,
}

/// The configuration as written in JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// The ES256 private key: PKCS#8 PEM, SEC1 PEM, or a private JWK (as a JSON object or string).
    signing_key: serde_json::Value,
    #[serde(default = "default_jwks_max_age")]
    jwks_max_age_seconds: u32,
}

fn default_jwks_max_age() -> u32 {
    DEFAULT_JWKS_MAX_AGE_SECONDS
}

/// A configuration error; its message names the offending field.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid filter configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            if path == "." { ConfigError(inner.to_string()) } else { ConfigError(format!("{path}: {inner}")) }
        })?;
        let signing_key = SigningKey::from_config_value(&raw.signing_key)
            .map_err(|reason| ConfigError(format!("signing_key: {reason}")))?;
        Ok(Config { signing_key, jwks_max_age_seconds: raw.jwks_max_age_seconds })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::tests::TEST_KEY_PEM;

    fn json(value: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn accepts_a_pem_key_and_defaults_the_rest() {
        let config = Config::from_json(&json(serde_json::json!({ "signing_key": TEST_KEY_PEM }))).unwrap();
        assert_eq!(config.jwks_max_age_seconds, DEFAULT_JWKS_MAX_AGE_SECONDS);
    }

    #[test]
    fn a_missing_key_names_the_field() {
        let err = Config::from_json(b"{}").unwrap_err();
        assert!(err.0.contains("signing_key"), "{err}");
    }

    #[test]
    fn an_unknown_field_is_named() {
        let err = Config::from_json(&json(serde_json::json!({
            "signing_key": TEST_KEY_PEM,
            "jwks_max_age": 5
        })))
        .unwrap_err();
        assert!(err.0.contains("jwks_max_age"), "{err}");
    }

    #[test]
    fn a_wrong_type_names_the_field() {
        let err = Config::from_json(&json(serde_json::json!({
            "signing_key": TEST_KEY_PEM,
            "jwks_max_age_seconds": "soon"
        })))
        .unwrap_err();
        assert!(err.0.starts_with("jwks_max_age_seconds:"), "{err}");
    }

    #[test]
    fn a_bad_key_names_the_field() {
        let err = Config::from_json(&json(serde_json::json!({ "signing_key": "not a key" }))).unwrap_err();
        assert!(err.0.starts_with("signing_key:"), "{err}");
    }

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        assert!(Config::from_json(b"{\"signing_key\":").is_err());
        assert!(Config::from_json(b"").is_err());
        assert!(Config::from_json(&[0xff, 0xfe]).is_err());
    }
}
