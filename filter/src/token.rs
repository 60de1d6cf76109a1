//! The ES256 signing key, the JWKS document that publishes its public half, and the JWTs the
//! filter hands to the app.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::DecodePrivateKey as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A P-256 private key with its key id (the RFC 7638 thumbprint of its public JWK, so the id is
/// stable for a kept key and different for every other key).
#[derive(Clone)]
pub struct SigningKey {
    secret: p256::SecretKey,
    // Kept ready so that signing does not rebuild it from the scalar every time.
    signer: p256::ecdsa::SigningKey,
    public: PublicKey,
}

/// The public half of a signing key, as the JWKS publishes it: coordinates and key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    kid: String,
    x: String,
    y: String,
}

impl PublicKey {
    /// The key of a public EC JWK (`kty` EC, `crv` P-256, `x`, `y` a point on the curve); its key
    /// id is the thumbprint, whatever `kid` the JWK says.
    pub fn from_jwk(jwk: &serde_json::Value) -> Result<PublicKey, String> {
        let text = |name: &str| jwk.get(name).and_then(serde_json::Value::as_str);
        if text("kty") != Some("EC") || text("crv") != Some("P-256") {
            return Err("expected a public JWK with kty EC and crv P-256".to_string());
        }
        let coordinate = |name: &str| -> Result<Vec<u8>, String> {
            let value = text(name).ok_or_else(|| format!("the JWK has no {name}"))?;
            let bytes = B64URL.decode(value).map_err(|_| format!("{name} is not base64url"))?;
            if bytes.len() != 32 {
                return Err(format!("{name} is not 32 bytes"));
            }
            Ok(bytes)
        };
        let mut point = vec![0x04];
        point.extend(coordinate("x")?);
        point.extend(coordinate("y")?);
        p256::PublicKey::from_sec1_bytes(&point).map_err(|_| "x and y are not a point on P-256".to_string())?;
        Ok(PublicKey::from_point(&point))
    }

    /// From uncompressed SEC1: 0x04 || X (32 bytes) || Y (32 bytes).
    fn from_point(point: &[u8]) -> PublicKey {
        let x = B64URL.encode(&point[1..33]);
        let y = B64URL.encode(&point[33..65]);
        // RFC 7638: the required members in lexicographic order, no whitespace.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = B64URL.encode(Sha256::digest(canonical.as_bytes()));
        PublicKey { kid, x, y }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWK, as published in the JWKS.
    pub fn jwk(&self) -> serde_json::Value {
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
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private half.
        f.debug_struct("SigningKey").field("kid", &self.public.kid).finish_non_exhaustive()
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
        if jwk.x.as_deref().is_some_and(|x| x != key.public.x) || jwk.y.as_deref().is_some_and(|y| y != key.public.y) {
            return Err("x and y do not belong to d".to_string());
        }
        Ok(key)
    }

    fn from_secret(secret: p256::SecretKey) -> SigningKey {
        let public = PublicKey::from_point(&secret.public_key().to_sec1_bytes());
        let signer = p256::ecdsa::SigningKey::from(&secret);
        SigningKey { secret, signer, public }
    }

    pub fn kid(&self) -> &str {
        &self.public.kid
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The public JWK, as published in the JWKS.
    pub fn public_jwk(&self) -> serde_json::Value {
        self.public.jwk()
    }

    /// The private scalar, for signing.
    pub fn secret(&self) -> &p256::SecretKey {
        &self.secret
    }
}

/// The JWKS document: `{"keys":[…]}` with every key that may have signed a live token.
pub fn jwks_document(keys: &[&PublicKey]) -> Vec<u8> {
    let keys: Vec<_> = keys.iter().map(|key| key.jwk()).collect();
    serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap_or_default()
}

/// Why a JWT could not be made. None of these should happen with a session that
/// `session::classify_whoami` accepted; they guard against misuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the session is not a JSON object")]
    SessionNotJson,
    /// `sub` is the identity id.
    #[error("the session has no identity.id")]
    NoIdentityId,
    /// A token that is already expired when made is useless.
    #[error("the token lifetime must be at least one second")]
    ZeroLifetime,
    /// `now + ttl` does not fit in a u64.
    #[error("the token expiry overflows")]
    TimeOverflow,
    /// The signer refused (it never does for a valid P-256 key).
    #[error("ES256 signing failed")]
    Signing,
}

/// The claims this proxy sets itself, which `--jwt-claim` cannot override.
pub const RESERVED_CLAIMS: [&str; 8] = ["sub", "session", "iss", "aud", "iat", "nbf", "exp", "jti"];

/// How much of the session goes into the `session` claim.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionClaim {
    /// The whole whoami answer, as `ory proxy` sends it.
    #[default]
    Full,
    /// Its id, identity id, assurance level, expiry and authentication methods: what fits in a
    /// header however many devices and traits a session has.
    Minimal,
    /// No `session` claim.
    None,
}

/// The members of a session that [`SessionClaim::Minimal`] keeps, by JSON pointer.
const MINIMAL_SESSION: [&str; 5] =
    ["/id", "/identity/id", "/authenticator_assurance_level", "/expires_at", "/authentication_methods"];

/// What a token carries of the session besides `sub`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenContent {
    pub session: SessionClaim,
    /// Top-level claims copied from the session: the claim's name and an RFC 6901 JSON pointer
    /// into the whoami answer. A pointer that finds nothing adds no claim.
    pub copied: Vec<(String, String)>,
}

/// The claims of the JWT the app receives (the claims `ory proxy` sends, plus `aud` when
/// configured and the claims copied from the session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims<'a> {
    /// The identity id.
    pub sub: &'a str,
    /// The whoami body exactly as Ory sent it (embedded as JSON, not re-encoded, so no field is
    /// lost or reordered), a part of it, or none.
    pub session: Option<std::borrow::Cow<'a, [u8]>>,
    /// The Ory URL.
    pub iss: &'a str,
    pub aud: Option<&'a str>,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: &'a str,
    /// Claims copied from the session, after the registered ones.
    pub copied: Vec<(&'a str, serde_json::Value)>,
}

/// The part of a session we need to name the subject; everything else is carried untouched.
#[derive(Deserialize)]
struct SubjectProbe {
    identity: Option<IdentityProbe>,
}

#[derive(Deserialize)]
struct IdentityProbe {
    id: Option<String>,
}

impl<'a> Claims<'a> {
    /// Claims for a session issued at `now_unix` and valid for `ttl_secs`; `sub` must come from the
    /// same session (see `sign_jwt`, which reads it).
    pub fn new(
        sub: &'a str,
        session: &'a [u8],
        iss: &'a str,
        aud: Option<&'a str>,
        now_unix: u64,
        ttl_secs: u64,
        jti: &'a str,
    ) -> Result<Claims<'a>, TokenError> {
        if ttl_secs == 0 {
            return Err(TokenError::ZeroLifetime);
        }
        let exp = now_unix.checked_add(ttl_secs).ok_or(TokenError::TimeOverflow)?;
        let session = Some(std::borrow::Cow::Borrowed(session));
        Ok(Claims { sub, session, iss, aud, iat: now_unix, nbf: now_unix, exp, jti, copied: Vec::new() })
    }

    /// The claims as compact JSON. The session is checked to be a JSON object first, because it is
    /// spliced in as raw text.
    pub fn to_json(&self) -> Result<Vec<u8>, TokenError> {
        let session = self.session.as_deref().map(compact_json_object).transpose()?;
        let string = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let mut out = Vec::with_capacity(session.as_ref().map_or(0, Vec::len) + 256);
        out.extend_from_slice(b"{\"sub\":");
        out.extend_from_slice(string(self.sub).as_bytes());
        if let Some(session) = &session {
            out.extend_from_slice(b",\"session\":");
            out.extend_from_slice(session);
        }
        out.extend_from_slice(b",\"iss\":");
        out.extend_from_slice(string(self.iss).as_bytes());
        if let Some(aud) = self.aud {
            out.extend_from_slice(b",\"aud\":");
            out.extend_from_slice(string(aud).as_bytes());
        }
        out.extend_from_slice(
            format!(",\"iat\":{},\"nbf\":{},\"exp\":{},\"jti\":", self.iat, self.nbf, self.exp).as_bytes(),
        );
        out.extend_from_slice(string(self.jti).as_bytes());
        for (name, value) in &self.copied {
            out.push(b',');
            out.extend_from_slice(string(name).as_bytes());
            out.push(b':');
            out.extend_from_slice(&serde_json::to_vec(value).map_err(|_| TokenError::SessionNotJson)?);
        }
        out.push(b'}');
        Ok(out)
    }
}

/// The members of `session` that [`SessionClaim::Minimal`] keeps, nested as in the session (so
/// an app reading `session.identity.id` reads the same path).
fn minimal_session(session: &serde_json::Value) -> Vec<u8> {
    let mut minimal = serde_json::Value::Object(serde_json::Map::new());
    for pointer in MINIMAL_SESSION {
        let Some(value) = session.pointer(pointer) else { continue };
        let mut at = &mut minimal;
        let segments: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
        for (index, segment) in segments.iter().enumerate() {
            let Some(object) = at.as_object_mut() else { break };
            if index + 1 == segments.len() {
                object.insert((*segment).to_string(), value.clone());
                break;
            }
            at = object.entry(*segment).or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
        }
    }
    serde_json::to_vec(&minimal).unwrap_or_default()
}

/// Validates that `raw` is one JSON object and returns it without insignificant whitespace (a
/// pretty-printed whoami body would otherwise bloat every Authorization header).
fn compact_json_object(raw: &[u8]) -> Result<Vec<u8>, TokenError> {
    // Validation first: after this, the byte scan below only has to know strings from the rest.
    match serde_json::from_slice::<serde_json::Value>(raw) {
        Ok(serde_json::Value::Object(_)) => {}
        _ => return Err(TokenError::SessionNotJson),
    }
    let mut out = Vec::with_capacity(raw.len());
    let (mut in_string, mut escaped) = (false, false);
    for &byte in raw {
        if in_string {
            out.push(byte);
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
        } else if !matches!(byte, b' ' | b'\n' | b'\r' | b'\t') {
            in_string = byte == b'"';
            out.push(byte);
        }
    }
    Ok(out)
}

/// Signs `claims` as a compact JWS: `base64url(header).base64url(claims).base64url(R || S)`.
pub fn sign_claims(key: &SigningKey, claims: &Claims<'_>) -> Result<String, TokenError> {
    let header = serde_json::json!({ "alg": "ES256", "kid": key.kid(), "typ": "JWT" });
    let header = serde_json::to_vec(&header).map_err(|_| TokenError::Signing)?;
    let payload = claims.to_json()?;
    let mut jws = String::with_capacity((header.len() + payload.len()) * 4 / 3 + 96);
    B64URL.encode_string(&header, &mut jws);
    jws.push('.');
    B64URL.encode_string(&payload, &mut jws);
    // ES256 signs the ASCII of "header.payload" with SHA-256 (RFC 7515 §5.1, RFC 7518 §3.4);
    // p256's ECDSA hashes with SHA-256 and signs deterministically (RFC 6979), so no randomness.
    let signature: p256::ecdsa::Signature = key.signer.try_sign(jws.as_bytes()).map_err(|_| TokenError::Signing)?;
    jws.push('.');
    // to_bytes is the fixed-size R || S (64 bytes), which JWS requires, never DER.
    B64URL.encode_string(signature.to_bytes(), &mut jws);
    Ok(jws)
}

/// Makes the JWT for a session: `sub` is the session's `identity.id`, `session` the whoami body
/// as received (or the part of it `content` asks for), `iat = nbf = now_unix`,
/// `exp = now_unix + ttl_secs`, then the claims `content` copies from the session.
#[allow(clippy::too_many_arguments)]
pub fn sign_jwt(
    key: &SigningKey,
    session_json: &[u8],
    content: &TokenContent,
    iss: &str,
    aud: Option<&str>,
    now_unix: u64,
    ttl_secs: u64,
    jti: &str,
) -> Result<String, TokenError> {
    let probe: SubjectProbe = serde_json::from_slice(session_json).map_err(|_| TokenError::SessionNotJson)?;
    let sub =
        probe.identity.and_then(|identity| identity.id).filter(|id| !id.is_empty()).ok_or(TokenError::NoIdentityId)?;
    let mut claims = Claims::new(&sub, session_json, iss, aud, now_unix, ttl_secs, jti)?;
    // The whole session is spliced in as received; only a part of it, or copied claims, need it
    // parsed.
    if content.session != SessionClaim::Full || !content.copied.is_empty() {
        let tree: serde_json::Value = serde_json::from_slice(session_json).map_err(|_| TokenError::SessionNotJson)?;
        claims.session = match content.session {
            SessionClaim::Full => claims.session,
            SessionClaim::Minimal => Some(std::borrow::Cow::Owned(minimal_session(&tree))),
            SessionClaim::None => None,
        };
        claims.copied = content
            .copied
            .iter()
            .filter_map(|(name, pointer)| Some((name.as_str(), tree.pointer(pointer)?.clone())))
            .collect();
    }
    sign_claims(key, &claims)
}

/// Formats 16 random bytes as a version 4 UUID (RFC 9562 §5.4), for `jti`. The bytes come from
/// the caller so that this stays a pure function.
pub fn uuid_v4(bytes: [u8; 16]) -> String {
    uuid::Builder::from_random_bytes(bytes).into_uuid().hyphenated().to_string()
}

/// A fresh random `jti`. Inside wasm32-wasip1 the bytes come from the host's `random_get`.
pub fn random_jti() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|err| format!("no randomness for jti: {err}"))?;
    Ok(uuid_v4(bytes))
}

/// Whether a client's `Authorization` value carries a JWT that claims to come from this proxy:
/// its header's `kid` is our signing key's id, or its payload's `iss` is our issuer (compared
/// without case or a trailing slash); or it is unsigned (`alg: none`), which no honest client
/// sends. Such a token is either forged or replayed from elsewhere, and an app that checks
/// only `iss`, or accepts `alg: none`, would take it for one of ours, so the proxy removes it.
///
/// Any scheme is looked through (`Bearer`, `JWT`, none at all), and so is base64 with padding or
/// the standard alphabet, because lenient verifiers accept those too. Anything that does not
/// parse as a JWT (API keys, Basic credentials) is not ours.
pub fn claims_to_be_ours(authorization: &str, our_kid: &str, our_issuer: &str) -> bool {
    let Some(token) = authorization.split_whitespace().last() else { return false };
    let parts: Vec<&str> = token.split('.').collect();
    if !(2..=3).contains(&parts.len()) {
        return false;
    }
    let header = decode_json_part(parts[0]);
    let text = |value: &Option<serde_json::Value>, name: &str| -> Option<String> {
        value.as_ref().and_then(|value| value.get(name)).and_then(|field| field.as_str()).map(str::to_string)
    };
    if text(&header, "kid").is_some_and(|kid| kid == our_kid)
        || text(&header, "alg").is_some_and(|alg| alg.trim().eq_ignore_ascii_case("none"))
    {
        return true;
    }
    let same_issuer =
        |iss: &str| iss.trim().trim_end_matches('/').eq_ignore_ascii_case(our_issuer.trim().trim_end_matches('/'));
    text(&decode_json_part(parts[1]), "iss").is_some_and(|iss| same_issuer(&iss))
}

/// One base64(url) part of a JWT as a JSON object, if it is one.
fn decode_json_part(part: &str) -> Option<serde_json::Value> {
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    let part = part.trim_end_matches('=');
    let bytes = B64URL.decode(part).or_else(|_| STANDARD_NO_PAD.decode(part)).ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).ok().filter(serde_json::Value::is_object)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Made with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`; the expected
    /// coordinates and thumbprint below were computed from it with openssl and Python, not with
    /// this code.
    /// A second key, for tests that need one besides [`TEST_KEY_PEM`]'s.
    pub fn other_test_key() -> SigningKey {
        SigningKey::from_secret(p256::SecretKey::from_slice(&[7; 32]).expect("a valid scalar"))
    }

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
        let doc: serde_json::Value = serde_json::from_slice(&jwks_document(&[key.public_key()])).unwrap();
        assert_eq!(doc["keys"].as_array().unwrap().len(), 1);
        assert_eq!(doc["keys"][0]["kid"], TEST_THUMBPRINT);
    }

    #[test]
    fn a_public_jwk_reads_back_as_the_same_key_and_garbage_is_refused() {
        let key = SigningKey::from_pem(TEST_KEY_PEM).unwrap();
        let mut jwk = key.public_jwk();
        jwk["kid"] = "whatever it says".into();
        let public = PublicKey::from_jwk(&jwk).unwrap();
        assert_eq!(&public, key.public_key(), "the id is the thumbprint, not what the JWK says");
        let mut off_curve = key.public_jwk();
        off_curve["y"] = off_curve["x"].clone();
        for bad in [serde_json::json!({"kty": "RSA"}), serde_json::json!({"kty": "EC", "crv": "P-256"}), off_curve] {
            assert!(PublicKey::from_jwk(&bad).is_err(), "{bad}");
        }
    }

    const SESSION_EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/ory/session-example.json");

    fn session_example() -> Vec<u8> {
        std::fs::read(SESSION_EXAMPLE).expect("the shared whoami example")
    }

    /// The verifying key an app would build from the published JWK.
    fn verifying_key_from_jwks(key: &SigningKey) -> p256::ecdsa::VerifyingKey {
        let doc: serde_json::Value = serde_json::from_slice(&jwks_document(&[key.public_key()])).unwrap();
        let jwk = &doc["keys"][0];
        let mut point = vec![0x04];
        point.extend(B64URL.decode(jwk["x"].as_str().unwrap()).unwrap());
        point.extend(B64URL.decode(jwk["y"].as_str().unwrap()).unwrap());
        p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap()
    }

    fn verify(jwt: &str, verifying: &p256::ecdsa::VerifyingKey) -> bool {
        use p256::ecdsa::signature::Verifier as _;
        let (signed, signature) = jwt.rsplit_once('.').unwrap();
        let signature = B64URL.decode(signature).unwrap();
        let Ok(signature) = p256::ecdsa::Signature::from_slice(&signature) else {
            return false;
        };
        verifying.verify(signed.as_bytes(), &signature).is_ok()
    }

    fn decode_part(part: &str) -> serde_json::Value {
        serde_json::from_slice(&B64URL.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn jwt_verifies_against_the_published_key_and_carries_the_claims() {
        let key = SigningKey::from_pem(TEST_KEY_PEM).unwrap();
        let session = session_example();
        let jti = uuid_v4([7; 16]);
        let jwt = sign_jwt(
            &key,
            &session,
            &TokenContent::default(),
            "https://example.projects.oryapis.com",
            None,
            1_700_000_000,
            60,
            &jti,
        )
        .unwrap();

        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert!(!jwt.contains('='), "base64url without padding");

        let header = decode_part(parts[0]);
        assert_eq!(header, serde_json::json!({"alg": "ES256", "kid": TEST_THUMBPRINT, "typ": "JWT"}));

        let claims = decode_part(parts[1]);
        let original: serde_json::Value = serde_json::from_slice(&session).unwrap();
        assert_eq!(claims["sub"], "c4d24c01-feba-4213-858b-262c8d427f8c");
        assert_eq!(claims["session"], original, "the whole whoami body, nothing lost");
        assert_eq!(claims["iss"], "https://example.projects.oryapis.com");
        assert_eq!(claims["iat"], 1_700_000_000u64);
        assert_eq!(claims["nbf"], 1_700_000_000u64);
        assert_eq!(claims["exp"], 1_700_000_060u64);
        assert_eq!(claims["jti"], jti.as_str());
        assert!(claims.get("aud").is_none(), "no aud unless configured");
        assert_eq!(claims.as_object().unwrap().len(), 7);

        assert_eq!(B64URL.decode(parts[2]).unwrap().len(), 64, "raw R || S, not DER");
        assert!(verify(&jwt, &verifying_key_from_jwks(&key)));
    }

    fn claims_of(jwt: &str) -> serde_json::Value {
        decode_part(jwt.split('.').nth(1).unwrap())
    }

    #[test]
    fn copied_claims_come_after_the_registered_ones_and_missing_values_add_none() {
        let key = SigningKey::from_pem(TEST_KEY_PEM).unwrap();
        let copied = [("email", "/identity/traits/email"), ("aal", "/authenticator_assurance_level"), ("x", "/nope")];
        let content = TokenContent {
            session: SessionClaim::Full,
            copied: copied.iter().map(|(name, pointer)| (name.to_string(), pointer.to_string())).collect(),
        };
        let jwt = sign_jwt(&key, &session_example(), &content, "https://ory", None, 10, 60, "j").unwrap();
        let claims = claims_of(&jwt);
        let original: serde_json::Value = serde_json::from_slice(&session_example()).unwrap();
        assert_eq!(claims["email"], original["identity"]["traits"]["email"]);
        assert!(claims["email"].is_string());
        assert_eq!(claims["aal"], "aal1");
        assert!(claims.get("x").is_none(), "a pointer that finds nothing adds no claim");
        assert_eq!(claims["session"], original, "the whole session is still there");
        assert!(verify(&jwt, &verifying_key_from_jwks(&key)));
    }

    #[test]
    fn a_minimal_session_keeps_what_identifies_it_and_none_drops_it() {
        let key = SigningKey::from_pem(TEST_KEY_PEM).unwrap();
        let original: serde_json::Value = serde_json::from_slice(&session_example()).unwrap();
        let minimal = TokenContent { session: SessionClaim::Minimal, copied: Vec::new() };
        let claims = claims_of(&sign_jwt(&key, &session_example(), &minimal, "i", None, 1, 60, "j").unwrap());
        let expected = serde_json::json!({
            "id": original["id"],
            "identity": { "id": original["identity"]["id"] },
            "authenticator_assurance_level": original["authenticator_assurance_level"],
            "expires_at": original["expires_at"],
            "authentication_methods": original["authentication_methods"],
        });
        assert_eq!(claims["session"], expected);
        assert_eq!(claims["sub"], original["identity"]["id"]);

        let none = TokenContent {
            session: SessionClaim::None,
            copied: vec![("email".into(), "/identity/traits/email".into())],
        };
        let claims = claims_of(&sign_jwt(&key, &session_example(), &none, "i", None, 1, 60, "j").unwrap());
        assert!(claims.get("session").is_none());
        assert_eq!(claims["email"], original["identity"]["traits"]["email"]);
        assert_eq!(claims.as_object().unwrap().len(), 7, "sub, iss, iat, nbf, exp, jti and the copied claim");
    }

    /// A session as Ory answers it for someone signed in on `devices` devices.
    fn session_with_devices(devices: usize) -> Vec<u8> {
        let mut session: serde_json::Value = serde_json::from_slice(&session_example()).unwrap();
        let device = session["devices"][0].clone();
        session["devices"] = (0..devices)
            .map(|n| {
                let mut device = device.clone();
                device["id"] = uuid_v4([n as u8; 16]).into();
                device["user_agent"] =
                    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15".into();
                device
            })
            .collect();
        serde_json::to_vec(&session).unwrap()
    }

    #[test]
    fn the_whole_session_outgrows_a_header_with_many_devices_and_the_minimal_one_does_not() {
        let key = SigningKey::from_pem(TEST_KEY_PEM).unwrap();
        let size = |session: &[u8], claim| {
            let content = TokenContent { session: claim, copied: Vec::new() };
            let jti = uuid_v4([1; 16]);
            sign_jwt(&key, session, &content, "https://example.projects.oryapis.com", None, 1_700_000_000, 60, &jti)
                .unwrap()
                .len()
        };
        // The measured sizes (README, "Claims that fit in a header") come from here.
        let one = size(&session_example(), SessionClaim::Full);
        let fifty = size(&session_with_devices(50), SessionClaim::Full);
        let minimal = size(&session_with_devices(50), SessionClaim::Minimal);
        assert!(one < 4096, "one device: {one} bytes");
        assert!(fifty > 8192, "50 devices: {fifty} bytes");
        assert!(minimal < 1024, "minimal with 50 devices: {minimal} bytes");
        eprintln!("JWT sizes: whole session, 1 device {one} B; 50 devices {fifty} B; minimal {minimal} B");
    }

    #[test]
    fn aud_is_set_when_configured() {
        let key = SigningKey::from_pem(TEST_KEY_PEM).unwrap();
        let jwt =
            sign_jwt(&key, &session_example(), &TokenContent::default(), "https://ory", Some("my-app"), 10, 5, "j")
                .unwrap();
        let claims = decode_part(jwt.split('.').nth(1).unwrap());
        assert_eq!(claims["aud"], "my-app");
        assert_eq!(claims["exp"], 15);
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let key = SigningKey::from_pem(TEST_KEY_PEM).unwrap();
        let verifying = verifying_key_from_jwks(&key);
        let jwt =
            sign_jwt(&key, &session_example(), &TokenContent::default(), "https://ory", None, 10, 60, "j").unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();

        let mut claims = decode_part(parts[1]);
        claims["sub"] = serde_json::json!("someone-else");
        let forged_payload = B64URL.encode(serde_json::to_vec(&claims).unwrap());
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert!(!verify(&forged, &verifying));

        // A signature by another key does not verify under ours.
        let other = SigningKey::from_secret(p256::SecretKey::from_slice(&[1; 32]).unwrap());
        let by_other =
            sign_jwt(&other, &session_example(), &TokenContent::default(), "https://ory", None, 10, 60, "j").unwrap();
        assert!(verify(&by_other, &verifying_key_from_jwks(&other)));
        assert!(!verify(&by_other, &verifying));
    }

    #[test]
    fn pretty_printed_session_is_compacted_but_strings_are_untouched() {
        let key = SigningKey::from_pem(TEST_KEY_PEM).unwrap();
        let session = br#"{ "identity" : { "id" : "a b" },
            "traits": { "note": "tab\t and \"quoted\" and space " } , "n": [1, 2.5e3] }"#;
        let jwt = sign_jwt(&key, session, &TokenContent::default(), "i", None, 1, 1, "j").unwrap();
        let payload = B64URL.decode(jwt.split('.').nth(1).unwrap()).unwrap();
        let text = String::from_utf8(payload).unwrap();
        assert!(text.contains(r#""session":{"identity":{"id":"a b"},"traits":{"note":"tab\t and \"quoted\" and space "},"n":[1,2.5e3]}"#), "{text}");
        let claims: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(claims["sub"], "a b");
    }

    #[test]
    fn sessions_without_an_identity_or_not_json_are_refused() {
        let key = SigningKey::from_pem(TEST_KEY_PEM).unwrap();
        assert_eq!(
            sign_jwt(&key, b"{\"active\":true}", &TokenContent::default(), "i", None, 1, 60, "j"),
            Err(TokenError::NoIdentityId)
        );
        assert_eq!(
            sign_jwt(&key, b"{\"identity\":{\"id\":\"\"}}", &TokenContent::default(), "i", None, 1, 60, "j"),
            Err(TokenError::NoIdentityId)
        );
        assert_eq!(
            sign_jwt(&key, b"not json", &TokenContent::default(), "i", None, 1, 60, "j"),
            Err(TokenError::SessionNotJson)
        );
        assert_eq!(
            sign_jwt(&key, b"{\"identity\":{\"id\":\"x\"}} trailing", &TokenContent::default(), "i", None, 1, 60, "j"),
            Err(TokenError::SessionNotJson)
        );
        assert_eq!(
            sign_jwt(&key, b"{\"identity\":{\"id\":\"x\"}}", &TokenContent::default(), "i", None, 1, 0, "j"),
            Err(TokenError::ZeroLifetime)
        );
        assert_eq!(
            sign_jwt(&key, b"{\"identity\":{\"id\":\"x\"}}", &TokenContent::default(), "i", None, u64::MAX, 1, "j"),
            Err(TokenError::TimeOverflow)
        );
        // Claims built by hand still refuse a session that is not one JSON object.
        let claims = Claims::new("x", b"[1]", "i", None, 1, 1, "j").unwrap();
        assert_eq!(sign_claims(&key, &claims), Err(TokenError::SessionNotJson));
    }

    #[test]
    fn claims_escape_their_strings() {
        let claims = Claims::new("a\"b", b"{}", "https://x/\"", Some("\\"), 1, 2, "j").unwrap();
        let json: serde_json::Value = serde_json::from_slice(&claims.to_json().unwrap()).unwrap();
        assert_eq!(json["sub"], "a\"b");
        assert_eq!(json["iss"], "https://x/\"");
        assert_eq!(json["aud"], "\\");
        assert_eq!(json["exp"], 3);
    }

    #[test]
    fn uuid_v4_sets_version_and_variant() {
        assert_eq!(uuid_v4([0; 16]), "00000000-0000-4000-8000-000000000000");
        assert_eq!(uuid_v4([0xff; 16]), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let random = random_jti().unwrap();
        assert_eq!(random.len(), 36);
        assert_eq!(&random[14..15], "4");
        assert!(matches!(&random[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(random, random_jti().unwrap());
    }
    fn part(value: serde_json::Value) -> String {
        B64URL.encode(serde_json::to_vec(&value).unwrap())
    }

    #[test]
    fn tokens_claiming_to_be_ours_are_recognised() {
        let key = SigningKey::from_pem(TEST_KEY_PEM).unwrap();
        let issuer = "http://127.0.0.1:4433";
        let ours =
            sign_jwt(&key, br#"{"identity":{"id":"u"}}"#, &TokenContent::default(), issuer, None, 1, 60, "j").unwrap();
        let ours_at = |value: &str| claims_to_be_ours(value, key.kid(), issuer);
        assert!(ours_at(&format!("Bearer {ours}")), "a token we signed, replayed");
        assert!(ours_at(&format!("bearer   {ours}")));
        assert!(ours_at(&ours), "without a scheme");

        let other_claims = part(serde_json::json!({ "iss": "https://other.example", "sub": "admin" }));
        let forged_kid =
            format!("{}.{other_claims}.c2ln", part(serde_json::json!({ "alg": "ES256", "kid": key.kid() })));
        assert!(ours_at(&format!("Bearer {forged_kid}")));

        let our_claims = part(serde_json::json!({ "iss": issuer, "sub": "admin" }));
        let forged_iss = format!("{}.{our_claims}.c2ln", part(serde_json::json!({ "alg": "ES256", "kid": "other" })));
        assert!(ours_at(&format!("Bearer {forged_iss}")));
        let iss_variant = part(serde_json::json!({ "iss": "HTTP://127.0.0.1:4433/" }));
        assert!(ours_at(&format!("Bearer {}.{iss_variant}.c2ln", part(serde_json::json!({ "alg": "ES256" })))));
        // Padded standard base64, as lenient verifiers accept it.
        let padded = base64::engine::general_purpose::STANDARD.encode(br#"{"alg":"ES256","kid":"x","typ":"JWT"}"#);
        assert!(padded.ends_with('='));
        assert!(ours_at(&format!("Bearer {padded}.{our_claims}.c2ln")));

        // Unsigned tokens, whoever they name, with or without the empty signature part.
        let none = part(serde_json::json!({ "alg": "none", "typ": "JWT" }));
        assert!(ours_at(&format!("Bearer {none}.{other_claims}.")));
        assert!(ours_at(&format!("Bearer {none}.{other_claims}")));
        assert!(ours_at(&format!("Bearer {}.{other_claims}.", part(serde_json::json!({ "alg": "None" })))));
    }

    #[test]
    fn other_credentials_are_not_ours() {
        let key = SigningKey::from_pem(TEST_KEY_PEM).unwrap();
        let issuer = "http://127.0.0.1:4433";
        let not_ours = |value: &str| !claims_to_be_ours(value, key.kid(), issuer);
        let jwk = serde_json::json!({ "kty": "EC", "crv": "P-256", "d": B64URL.encode([7u8; 32]) });
        let other_key = SigningKey::from_config_value(&jwk).unwrap();
        let other = sign_jwt(
            &other_key,
            br#"{"identity":{"id":"u"}}"#,
            &TokenContent::default(),
            "https://idp.example",
            None,
            1,
            60,
            "j",
        )
        .unwrap();
        assert!(not_ours(&format!("Bearer {other}")), "another issuer's JWT");
        for value in [
            "",
            "Bearer",
            "Bearer api-key-123",
            "Basic dXNlcjpwYXNz",
            "Bearer ory_st_abcdef",
            "Bearer a.b",
            "Bearer a.b.c.d.e",
            "Bearer !!!.???.x",
            "Bearer W10.W10.x", // `[]`: JSON, but not an object
        ] {
            assert!(not_ours(value), "{value:?}");
        }
        // An issuer that merely starts like ours is someone else's.
        let longer = part(serde_json::json!({ "iss": "http://127.0.0.1:44330" }));
        assert!(not_ours(&format!("Bearer {}.{longer}.c2ln", part(serde_json::json!({ "alg": "ES256" })))));
    }
}
