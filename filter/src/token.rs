//! The ES256 signing key and the JWKS document that publishes its public half.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use p256::pkcs8::DecodePrivateKey as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// A P-256 private key with its key id (the RFC 7638 thumbprint of its public JWK, so the id is
/// stable for a kept key and different for every other key).
#[derive(Clone)]
pub struct SigningKey {
    secret: p256::SecretKey,
    kid: String,
    x: String,
    y: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private half.
        f.debug_struct("SigningKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// The fields of a private EC JWK that we read.
#[derive(Deserialize)]
struct PrivateJwk {
    kty: String,
    crv: String,
    d: String,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

impl SigningKey {
    /// Reads the key the way the configuration carries it: a PEM string (PKCS#8 or SEC1), a JWK
    /// as a JSON string, or a JWK as a JSON object.
    pub fn from_config_value(value: &serde_json::Value) -> Result<SigningKey, String> {
        match value {
            serde_json::Value::String(text) if text.trim_start().starts_with('{') => {
                let jwk: PrivateJwk = serde_json::from_str(text).map_err(|e| format!("not a JWK: {e}"))?;
                SigningKey::from_jwk(&jwk)
            }
            serde_json::Value::String(text) => SigningKey::from_pem(text),
            serde_json::Value::Object(_) => {
                let jwk = PrivateJwk::deserialize(value).map_err(|e| format!("not a JWK: {e}"))?;
                SigningKey::from_jwk(&jwk)
            }
            _ => Err("expected a PEM string or a private JWK".to_string()),
        }
    }

    pub fn from_pem(pem: &str) -> Result<SigningKey, String> {
        let secret = p256::SecretKey::from_pkcs8_pem(pem)
            .or_else(|_| p256::SecretKey::from_sec1_pem(pem))
            .map_err(|_| "not a P-256 private key in PKCS#8 or SEC1 PEM".to_string())?;
        Ok(SigningKey::from_secret(secret))
    }

    fn from_jwk(jwk: &PrivateJwk) -> Result<SigningKey, String> {
        if jwk.kty != "EC" || jwk.crv != "P-256" {
            return Err(format!("expected kty EC and crv P-256, got {} {}", jwk.kty, jwk.crv));
        }
        let d = B64URL.decode(&jwk.d).map_err(|_| "d is not base64url".to_string())?;
        let secret = p256::SecretKey::from_slice(&d).map_err(|_| "d is not a P-256 private scalar".to_string())?;
        let key = SigningKey::from_secret(secret);
        // A JWK whose public half does not match its private half is corrupt: refuse it.
        if jwk.x.as_deref().is_some_and(|x| x != key.x) || jwk.y.as_deref().is_some_and(|y| y != key.y) {
            return Err("x and y do not belong to d".to_string());
        }
        Ok(key)
    }

    fn from_secret(secret: p256::SecretKey) -> SigningKey {
        let point = secret.public_key().to_sec1_bytes();
        // Uncompressed SEC1: 0x04 || X (32 bytes) || Y (32 bytes).
        let x = B64URL.encode(&point[1..33]);
        let y = B64URL.encode(&point[33..65]);
        // RFC 7638: the required members in lexicographic order, no whitespace.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = B64URL.encode(Sha256::digest(canonical.as_bytes()));
        SigningKey { secret, kid, x, y }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWK, as published in the JWKS.
    pub fn public_jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": self.x,
            "y": self.y,
            "kid": self.kid,
            "alg": "ES256",
            "use": "sig",
        })
    }

    /// The private scalar, for signing.
    pub fn secret(&self) -> &p256::SecretKey {
        &self.secret
    }
}

/// The JWKS document: `{"keys":[…]}` with every key that may have signed a live token.
pub fn jwks_document(keys: &[&SigningKey]) -> Vec<u8> {
    let keys: Vec<_> = keys.iter().map(|key| key.public_jwk()).collect();
    serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Made with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`; the expected
    /// coordinates and thumbprint below were computed from it with openssl and Python, not with
    /// this code.
    pub const TEST_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgnfEJ7/G7ExQwJocQ
6fRATyerKZ7YW02BdR+DjnvGv/ShRANCAATp5SaywtVG+MRxX7vNuIp+N+ZB94u0
Dy4ZUtFjUhd63kscYys++3NFZPxjE3dIcAUgiCUo7FKdcB2wYlyONWP1
-----END PRIVATE KEY-----
";
    const TEST_X: &str = "6eUmssLVRvjEcV-7zbiKfjfmQfeLtA8uGVLRY1IXet4";
    const TEST_Y: &str = "SxxjKz77c0Vk_GMTd0hwBSCIJSjsUp1wHbBiXI41Y_U";
    const TEST_THUMBPRINT: &str = "UFGNrOBEDgHirpS3U4vuXQGhMJR8gHxTQxglbzctrzs";

    #[test]
    fn pem_key_publishes_its_coordinates_and_thumbprint() {
        let key = SigningKey::from_pem(TEST_KEY_PEM).unwrap();
        let jwk = key.public_jwk();
        assert_eq!(jwk["x"], TEST_X);
        assert_eq!(jwk["y"], TEST_Y);
        assert_eq!(jwk["kid"], TEST_THUMBPRINT);
        assert_eq!(jwk["alg"], "ES256");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["crv"], "P-256");
        assert_eq!(jwk["kty"], "EC");
        assert!(jwk.get("d").is_none(), "the private scalar must never be published");
    }

    #[test]
    fn jwk_key_as_object_or_string_is_the_same_key() {
        let pem_key = SigningKey::from_pem(TEST_KEY_PEM).unwrap();
        let d = B64URL.encode(pem_key.secret().to_bytes());
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "d": d, "x": TEST_X, "y": TEST_Y});
        let from_object = SigningKey::from_config_value(&jwk).unwrap();
        let from_string = SigningKey::from_config_value(&serde_json::Value::String(jwk.to_string())).unwrap();
        assert_eq!(from_object.kid(), TEST_THUMBPRINT);
        assert_eq!(from_string.kid(), TEST_THUMBPRINT);
    }

    #[test]
    fn jwk_with_a_foreign_public_half_is_refused() {
        let pem_key = SigningKey::from_pem(TEST_KEY_PEM).unwrap();
        let d = B64URL.encode(pem_key.secret().to_bytes());
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "d": d, "x": TEST_Y, "y": TEST_X});
        assert!(SigningKey::from_config_value(&jwk).is_err());
    }

    #[test]
    fn other_curves_and_garbage_are_refused() {
        let rsa = serde_json::json!({"kty": "RSA", "crv": "P-256", "d": "AA"});
        assert!(SigningKey::from_config_value(&rsa).is_err());
        assert!(SigningKey::from_config_value(&serde_json::json!(42)).is_err());
        assert!(SigningKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err());
    }

    #[test]
    fn debug_output_hides_the_private_key() {
        let key = SigningKey::from_pem(TEST_KEY_PEM).unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains(TEST_THUMBPRINT));
        assert!(!shown.contains("MIGH"));
    }

    #[test]
    fn jwks_document_lists_keys() {
        let key = SigningKey::from_pem(TEST_KEY_PEM).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&jwks_document(&[&key])).unwrap();
        assert_eq!(doc["keys"].as_array().unwrap().len(), 1);
        assert_eq!(doc["keys"][0]["kid"], TEST_THUMBPRINT);
    }
}
