//! Checking the proxy's JWTs the way an app does: against the keys published at
//! `/.ory/jwks.json`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use serde_json::Value;

/// The P-256 public key of one JWK.
pub fn public_key(jwk: &Value) -> VerifyingKey {
    assert_eq!(jwk["kty"], "EC", "{jwk}");
    assert_eq!(jwk["crv"], "P-256", "{jwk}");
    let mut point = vec![4u8];
    point.extend(B64URL.decode(jwk["x"].as_str().expect("x")).expect("x is base64url"));
    point.extend(B64URL.decode(jwk["y"].as_str().expect("y")).expect("y is base64url"));
    VerifyingKey::from_sec1_bytes(&point).expect("a point on P-256")
}

/// Verifies `jwt` (ES256, raw R||S signature) with the key of `jwks` its `kid` names, and
/// returns its header and claims. Panics, saying why, when it does not verify.
pub fn verify(jwks: &Value, jwt: &str) -> (Value, Value) {
    let (signed, signature) = jwt.rsplit_once('.').expect("a JWS");
    let (header, payload) = signed.split_once('.').expect("header and payload");
    let header: Value = serde_json::from_slice(&B64URL.decode(header).unwrap()).unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    let keys = jwks["keys"].as_array().expect("a JWKS");
    let jwk = keys.iter().find(|k| k["kid"] == header["kid"]).expect("kid in JWKS");
    let signature = B64URL.decode(signature).unwrap();
    assert_eq!(signature.len(), 64, "raw R||S");
    let signature = Signature::from_slice(&signature).unwrap();
    public_key(jwk).verify(signed.as_bytes(), &signature).expect("the JWT verifies with the published key");
    (header, serde_json::from_slice(&B64URL.decode(payload).unwrap()).unwrap())
}
