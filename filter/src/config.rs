//! The filter's configuration: the JSON both hosts hand to `on_configure`.
//!
//! The runner builds it from the command line (its deployment plan); Envoy carries the same JSON in
//! the Wasm filter's `configuration`. Unknown fields are rejected so that a typo is an error at
//! start-up rather than a setting silently ignored. Every error names the offending field.
//!
//! ```json
//! {
//!   "signing_key_env": "ORY_PROXY_SIGNING_KEY",
//!   "jwks_max_age_seconds": 300,
//!   "ory": { "url": "http://127.0.0.1:4433", "cluster": "ory", "project_api_key": null, "whoami_timeout_ms": 5000,
//!            "max_concurrent_whoami": 32, "open_path_wait_ms": 300 },
//!   "public_url": "http://localhost:4000",
//!   "proxy_names": ["localhost", "127.0.0.1", "::1"],
//!   "protect": { "prefixes": [], "globs": [], "regexes": [], "ignore_case": false },
//!   "pass_client_headers": [],
//!   "jwt": { "enabled": true, "ttl_seconds": 60, "audience": null },
//!   "session_cache": { "ttl_ms": 5000, "negative_ttl_ms": 1000, "slots": 4096, "max_entry_bytes": 65536 },
//!   "session_cookie_prefixes": ["ory_session_", "ory_kratos_session"],
//!   "cookie_domain": null,
//!   "default_redirect_url": null,
//!   "cors": { "allowed_origins": [], "additional_headers": [] }
//! }
//! ```
//!
//! The ES256 signing key comes from exactly one of:
//! - `signing_key_env`: the name of an environment variable of the VM (WASI `environ_get`) that
//!   holds the key. Envoy passes its own process's variables to the VM when they are listed in
//!   `vm_config.environment_variables.host_env_keys`, so the key never appears in the plugin
//!   configuration (nor in the admin interface's `/config_dump`); the runner hands its VMs the
//!   variable the same way.
//! - `signing_key`: the key itself (PKCS#8 PEM, SEC1 PEM or a private JWK), for hosts that cannot
//!   pass environment variables. Whoever can read the configuration can then read the key.
//!
//! Without `ory` the filter only serves the JWKS; protection rules and CORS origins then make no
//! sense and are refused. With `ory`, `public_url` is required.

use std::time::Duration;

use serde::Deserialize;

use crate::cache::{self, CachePolicy};
use crate::cors::CorsPolicy;
use crate::forwarded::passable_header;
use crate::load::{self, LoadPolicy};
use crate::origin::{Origin, ProxyNames};
use crate::paths::{Case, ProtectionRules};
use crate::rewrite::OryTarget;
use crate::session::DEFAULT_SESSION_COOKIE_PREFIXES;
use crate::token::SigningKey;

/// How long apps may cache `/.ory/jwks.json` unless configured otherwise.
pub const DEFAULT_JWKS_MAX_AGE_SECONDS: u32 = 300;
pub const DEFAULT_ORY_CLUSTER: &str = "ory";
pub const DEFAULT_WHOAMI_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_JWT_TTL_SECONDS: u64 = 60;
pub const DEFAULT_PROXY_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// Entries smaller than this could not hold even an empty session; refused as a mistake.
const MIN_MAX_ENTRY_BYTES: u64 = 256;

/// The parsed, validated configuration.
#[derive(Debug)]
pub struct Config {
    pub signing_key: SigningKey,
    /// The environment variable the key was read from; `None`: it was in the configuration.
    pub signing_key_env: Option<String>,
    pub jwks_max_age_seconds: u32,
    /// Absent: the filter only serves the JWKS.
    pub ory: Option<OryConfig>,
}

/// Everything the session check, the `/.ory/` handling and CORS need.
#[derive(Debug)]
pub struct OryConfig {
    pub target: OryTarget,
    /// The JWT's `iss`: Ory's URL without a trailing slash.
    pub issuer: String,
    /// The cluster (upstream) name for `dispatch_http_call` and the `/.ory/` route.
    pub cluster: String,
    pub project_api_key: Option<String>,
    pub whoami_timeout: Duration,
    /// How many whoami calls a VM makes at once, and how long open paths wait for one.
    pub load: LoadPolicy,
    pub public_origin: Origin,
    pub proxy_names: ProxyNames,
    pub rules: ProtectionRules,
    /// Identity headers a client may send to the app after all (lower case; see `forwarded`).
    pub passed_client_headers: Vec<String>,
    /// The signing key's id: a client token carrying it claims to be ours and is removed.
    pub signing_kid: String,
    pub jwt: JwtConfig,
    pub cache: CachePolicy,
    /// Cookies whose names start with one of these carry a session (see `session`).
    pub session_cookie_prefixes: Vec<String>,
    pub cookie_domain: Option<String>,
    /// Where Ory's welcome page goes; `None`: the proxy's origin.
    pub default_redirect_url: Option<String>,
    /// Origins allowed besides the proxy's own (which is added per request).
    pub cors: CorsPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    pub enabled: bool,
    pub ttl_seconds: u64,
    pub audience: Option<String>,
}

/// The configuration as written in JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// The ES256 private key: PKCS#8 PEM, SEC1 PEM, or a private JWK (as a JSON object or string).
    #[serde(default)]
    signing_key: Option<serde_json::Value>,
    /// The environment variable that holds the key instead (in any of those forms).
    #[serde(default)]
    signing_key_env: Option<String>,
    #[serde(default = "default_jwks_max_age")]
    jwks_max_age_seconds: u32,
    #[serde(default)]
    ory: Option<RawOry>,
    #[serde(default)]
    public_url: Option<String>,
    #[serde(default = "default_proxy_names")]
    proxy_names: Vec<String>,
    #[serde(default)]
    protect: RawProtect,
    #[serde(default)]
    pass_client_headers: Vec<String>,
    #[serde(default)]
    jwt: RawJwt,
    #[serde(default)]
    session_cache: RawSessionCache,
    #[serde(default = "default_cookie_prefixes")]
    session_cookie_prefixes: Vec<String>,
    #[serde(default)]
    cookie_domain: Option<String>,
    #[serde(default)]
    default_redirect_url: Option<String>,
    #[serde(default)]
    cors: RawCors,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOry {
    url: String,
    #[serde(default = "default_cluster")]
    cluster: String,
    #[serde(default)]
    project_api_key: Option<String>,
    #[serde(default = "default_whoami_timeout")]
    whoami_timeout_ms: u64,
    #[serde(default = "default_max_concurrent_whoami")]
    max_concurrent_whoami: u32,
    #[serde(default = "default_open_path_wait")]
    open_path_wait_ms: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProtect {
    #[serde(default)]
    prefixes: Vec<String>,
    #[serde(default)]
    globs: Vec<String>,
    #[serde(default)]
    regexes: Vec<String>,
    /// Match every rule without regard to case (`/MEMBERS` is then covered by `/members`).
    #[serde(default)]
    ignore_case: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "default_jwt_ttl")]
    ttl_seconds: u64,
    #[serde(default)]
    audience: Option<String>,
}

impl Default for RawJwt {
    fn default() -> Self {
        RawJwt { enabled: true, ttl_seconds: DEFAULT_JWT_TTL_SECONDS, audience: None }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSessionCache {
    #[serde(default = "default_session_ttl")]
    ttl_ms: u64,
    #[serde(default = "default_negative_ttl")]
    negative_ttl_ms: u64,
    #[serde(default = "default_slots")]
    slots: u32,
    #[serde(default = "default_max_entry_bytes")]
    max_entry_bytes: u64,
}

impl Default for RawSessionCache {
    fn default() -> Self {
        RawSessionCache {
            ttl_ms: cache::DEFAULT_SESSION_TTL_MS,
            negative_ttl_ms: cache::DEFAULT_NEGATIVE_TTL_MS,
            slots: cache::DEFAULT_SLOTS,
            max_entry_bytes: cache::DEFAULT_MAX_ENTRY_BYTES as u64,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCors {
    #[serde(default)]
    allowed_origins: Vec<String>,
    #[serde(default)]
    additional_headers: Vec<String>,
}

fn default_jwks_max_age() -> u32 {
    DEFAULT_JWKS_MAX_AGE_SECONDS
}
fn default_cluster() -> String {
    DEFAULT_ORY_CLUSTER.to_string()
}
fn default_whoami_timeout() -> u64 {
    DEFAULT_WHOAMI_TIMEOUT_MS
}
fn default_max_concurrent_whoami() -> u32 {
    load::DEFAULT_MAX_CONCURRENT_WHOAMI
}
fn default_open_path_wait() -> u64 {
    load::DEFAULT_OPEN_PATH_WAIT_MS
}
fn default_proxy_names() -> Vec<String> {
    DEFAULT_PROXY_NAMES.iter().map(|name| name.to_string()).collect()
}
fn default_cookie_prefixes() -> Vec<String> {
    DEFAULT_SESSION_COOKIE_PREFIXES.iter().map(|prefix| prefix.to_string()).collect()
}
fn yes() -> bool {
    true
}
fn default_jwt_ttl() -> u64 {
    DEFAULT_JWT_TTL_SECONDS
}
fn default_session_ttl() -> u64 {
    cache::DEFAULT_SESSION_TTL_MS
}
fn default_negative_ttl() -> u64 {
    cache::DEFAULT_NEGATIVE_TTL_MS
}
fn default_slots() -> u32 {
    cache::DEFAULT_SLOTS
}
fn default_max_entry_bytes() -> u64 {
    cache::DEFAULT_MAX_ENTRY_BYTES as u64
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

fn field_error(field: &str, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("{field}: {reason}"))
}

/// A header value we will send must not be empty or carry control characters.
fn is_header_safe(value: &str) -> bool {
    !value.trim().is_empty() && value.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// An environment variable's name as POSIX shells and Envoy's `host_env_keys` take it.
fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|first| first == b'_' || first.is_ascii_alphabetic())
        && bytes.all(|b| b == b'_' || b.is_ascii_alphanumeric())
}

/// The signing key from `signing_key` or from the variable `signing_key_env` names. The errors
/// say which variable and why, never what it holds.
fn signing_key(
    raw: &RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(SigningKey, Option<String>), ConfigError> {
    match (&raw.signing_key, &raw.signing_key_env) {
        (Some(_), Some(_)) => {
            Err(field_error("signing_key_env", "give the key in `signing_key` or name its variable here, not both"))
        }
        (None, None) => Err(field_error(
            "signing_key",
            "missing: give the key, or name the environment variable that holds it in `signing_key_env`",
        )),
        (Some(value), None) => {
            let key = SigningKey::from_config_value(value).map_err(|reason| field_error("signing_key", reason))?;
            Ok((key, None))
        }
        (None, Some(name)) => {
            let name = name.trim();
            if !is_env_name(name) {
                return Err(field_error("signing_key_env", format!("{name:?} is not an environment variable name")));
            }
            let value = env(name).filter(|value| !value.trim().is_empty()).ok_or_else(|| {
                field_error(
                    "signing_key_env",
                    format!(
                        "the environment variable {name} is not set (or empty) in the filter's VM: start the \
                         host with {name} holding the signing key (Envoy passes it to the VM when \
                         vm_config.environment_variables.host_env_keys lists {name})"
                    ),
                )
            })?;
            let key = SigningKey::from_config_value(&serde_json::Value::String(value)).map_err(|reason| {
                field_error("signing_key_env", format!("the environment variable {name} does not hold a key: {reason}"))
            })?;
            Ok((key, Some(name.to_string())))
        }
    }
}

/// A variable of the VM's environment (WASI `environ_get` inside a host; the process's natively).
fn process_env(name: &str) -> Option<String> {
    std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
}

impl Config {
    /// Parses the configuration; `signing_key_env` is read from the VM's environment.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        Config::from_json_with_env(bytes, &process_env)
    }

    /// Parses the configuration, reading environment variables through `env`.
    pub fn from_json_with_env(bytes: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            if path == "." { ConfigError(inner.to_string()) } else { ConfigError(format!("{path}: {inner}")) }
        })?;
        let (signing_key, signing_key_env) = signing_key(&raw, env)?;
        let ory = match raw.ory {
            Some(ref ory) => Some(ory_config(ory, &raw, &signing_key)?),
            None => {
                refuse_without_ory(&raw)?;
                None
            }
        };
        Ok(Config { signing_key, signing_key_env, jwks_max_age_seconds: raw.jwks_max_age_seconds, ory })
    }
}

/// Settings that only mean something with Ory are refused without it, rather than ignored.
fn refuse_without_ory(raw: &RawConfig) -> Result<(), ConfigError> {
    let why = "needs `ory` (there is no session check without it)";
    let protect = &raw.protect;
    for (field, rules) in [
        ("protect.prefixes", &protect.prefixes),
        ("protect.globs", &protect.globs),
        ("protect.regexes", &protect.regexes),
    ] {
        if !rules.is_empty() {
            return Err(field_error(field, why));
        }
    }
    if protect.ignore_case {
        return Err(field_error("protect.ignore_case", why));
    }
    if !raw.pass_client_headers.is_empty() {
        return Err(field_error("pass_client_headers", why));
    }
    if !raw.cors.allowed_origins.is_empty() {
        return Err(field_error("cors.allowed_origins", why));
    }
    if !raw.cors.additional_headers.is_empty() {
        return Err(field_error("cors.additional_headers", why));
    }
    Ok(())
}

fn ory_config(ory: &RawOry, raw: &RawConfig, key: &SigningKey) -> Result<OryConfig, ConfigError> {
    let target = OryTarget::new(&ory.url).map_err(|err| field_error("ory.url", err))?;
    let issuer = ory.url.trim().trim_end_matches('/').to_string();
    if ory.cluster.trim().is_empty() {
        return Err(field_error("ory.cluster", "must not be empty"));
    }
    let project_api_key = match ory.project_api_key.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(key) if is_header_safe(key) => Some(key.to_string()),
        Some(_) => return Err(field_error("ory.project_api_key", "contains characters a header cannot carry")),
    };
    if ory.whoami_timeout_ms == 0 {
        return Err(field_error("ory.whoami_timeout_ms", "must be at least 1"));
    }
    let whoami_timeout_ms = u32::try_from(ory.whoami_timeout_ms)
        .map_err(|_| field_error("ory.whoami_timeout_ms", "is too large (at most 4294967295)"))?;
    if ory.max_concurrent_whoami == 0 {
        return Err(field_error("ory.max_concurrent_whoami", "must be at least 1"));
    }
    if ory.open_path_wait_ms == 0 {
        return Err(field_error("ory.open_path_wait_ms", "must be at least 1"));
    }
    let load = LoadPolicy {
        max_concurrent_whoami: ory.max_concurrent_whoami,
        open_path_wait: Duration::from_millis(ory.open_path_wait_ms),
    };

    let public_url = raw.public_url.as_deref().ok_or_else(|| field_error("public_url", "is required with `ory`"))?;
    let public_origin = Origin::from_public_url(public_url).map_err(|err| field_error("public_url", err))?;
    let proxy_names = ProxyNames::new(&raw.proxy_names).map_err(|err| field_error("proxy_names", err))?;

    let protect = &raw.protect;
    // Checked list by list first, so that the error names the field the bad rule is in.
    ProtectionRules::new(&protect.prefixes, &[], &[]).map_err(|err| field_error("protect.prefixes", err))?;
    ProtectionRules::new(&[], &protect.globs, &[]).map_err(|err| field_error("protect.globs", err))?;
    ProtectionRules::new(&[], &[], &protect.regexes).map_err(|err| field_error("protect.regexes", err))?;
    let case = if protect.ignore_case { Case::Insensitive } else { Case::Sensitive };
    let rules = ProtectionRules::with_case(&protect.prefixes, &protect.globs, &protect.regexes, case)
        .map_err(|err| field_error("protect", err))?;

    let passed_client_headers = raw
        .pass_client_headers
        .iter()
        .enumerate()
        .map(|(index, name)| {
            passable_header(name).map_err(|err| field_error(&format!("pass_client_headers[{index}]"), err))
        })
        .collect::<Result<Vec<String>, ConfigError>>()?;

    if raw.jwt.ttl_seconds == 0 {
        return Err(field_error("jwt.ttl_seconds", "must be at least 1"));
    }
    let audience = match raw.jwt.audience.as_deref() {
        None => None,
        Some(aud) if aud.trim().is_empty() => return Err(field_error("jwt.audience", "must not be empty")),
        Some(aud) => Some(aud.to_string()),
    };
    let jwt = JwtConfig { enabled: raw.jwt.enabled, ttl_seconds: raw.jwt.ttl_seconds, audience };

    let sc = &raw.session_cache;
    if sc.slots == 0 {
        return Err(field_error("session_cache.slots", "must be at least 1"));
    }
    if sc.max_entry_bytes < MIN_MAX_ENTRY_BYTES {
        return Err(field_error("session_cache.max_entry_bytes", format!("must be at least {MIN_MAX_ENTRY_BYTES}")));
    }
    let ttl_text = jwt.ttl_seconds.to_string();
    let namespace = cache::namespace_for(&[
        &issuer,
        jwt.audience.as_deref().unwrap_or(""),
        key.kid(),
        &ttl_text,
        if jwt.enabled { "jwt" } else { "no-jwt" },
    ]);
    let cache = CachePolicy {
        namespace,
        slots: sc.slots,
        max_entry_bytes: usize::try_from(sc.max_entry_bytes).unwrap_or(usize::MAX),
        session_ttl_ms: sc.ttl_ms,
        negative_ttl_ms: sc.negative_ttl_ms,
        ..CachePolicy::default()
    };

    for (index, prefix) in raw.session_cookie_prefixes.iter().enumerate() {
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_graphic() && !b"=;,".contains(&b)) {
            return Err(field_error(
                &format!("session_cookie_prefixes[{index}]"),
                format!("{prefix:?} is not a cookie name prefix"),
            ));
        }
    }

    let cookie_domain = match raw.cookie_domain.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(domain) if domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_') => {
            Some(domain.to_string())
        }
        Some(domain) => return Err(field_error("cookie_domain", format!("{domain:?} is not a domain name"))),
    };

    let default_redirect_url = match raw.default_redirect_url.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(url) => match url::Url::parse(url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.host_str().is_some() => {
                Some(url.to_string())
            }
            _ => return Err(field_error("default_redirect_url", format!("{url:?} is not an absolute http(s) URL"))),
        },
    };

    let public = public_origin.to_string();
    let no_headers: [&str; 0] = [];
    let no_origins: [&str; 0] = [];
    CorsPolicy::new(&public, &raw.cors.allowed_origins, no_headers)
        .map_err(|err| field_error("cors.allowed_origins", err))?;
    CorsPolicy::new(&public, no_origins, &raw.cors.additional_headers)
        .map_err(|err| field_error("cors.additional_headers", err))?;
    let cors = CorsPolicy::new(&public, &raw.cors.allowed_origins, &raw.cors.additional_headers)
        .map_err(|err| field_error("cors", err))?;

    Ok(OryConfig {
        target,
        issuer,
        cluster: ory.cluster.trim().to_string(),
        project_api_key,
        whoami_timeout: Duration::from_millis(whoami_timeout_ms.into()),
        load,
        public_origin,
        proxy_names,
        rules,
        passed_client_headers,
        signing_kid: key.kid().to_string(),
        jwt,
        cache,
        session_cookie_prefixes: raw.session_cookie_prefixes.clone(),
        cookie_domain,
        default_redirect_url,
        cors,
    })
}

#[cfg(test)]
mod tests {
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
        assert_eq!(ory.proxy_names, ProxyNames::new(&default_proxy_names()).unwrap());
        assert!(ory.rules.is_empty());
        assert!(ory.passed_client_headers.is_empty());
        assert_eq!(ory.signing_kid, config.signing_key.kid());
        assert_eq!(ory.jwt, JwtConfig { enabled: true, ttl_seconds: 60, audience: None });
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
            "jwt": { "enabled": false, "ttl_seconds": 120, "audience": "my-app" },
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
        assert_eq!(ory.jwt, JwtConfig { enabled: false, ttl_seconds: 120, audience: Some("my-app".into()) });
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
