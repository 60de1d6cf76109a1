//! The filter's configuration: the JSON both hosts hand to `on_configure` ([`FilterConfig`]), and
//! what the filter makes of it ([`Config`]).
//!
//! The runner fills in a [`FilterConfig`] from the command line; Envoy carries the same JSON in
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

use crate::cache::{self, CachePolicy};
use crate::cors::CorsPolicy;
use crate::load::LoadPolicy;
use crate::origin::{Origin, ProxyNames};
use crate::paths::{Case, ProtectionRules};
use crate::rewrite::OryTarget;
use crate::token::{PublicKey, SigningKey, TokenContent};

mod schema;
#[cfg(test)]
mod tests;

pub use schema::*;

/// Entries smaller than this could not hold even an empty session; refused as a mistake.
const MIN_MAX_ENTRY_BYTES: u64 = 256;

/// The parsed, validated configuration.
#[derive(Debug)]
pub struct Config {
    pub signing_key: SigningKey,
    /// The environment variable the key was read from; `None`: it was in the configuration.
    pub signing_key_env: Option<String>,
    pub jwks_max_age_seconds: u32,
    /// Retired keys, published until the time beside each (Unix seconds).
    pub previous_keys: Vec<(PublicKey, u64)>,
    /// Absent: the filter only serves the JWKS.
    pub ory: Option<OryConfig>,
}

impl Config {
    /// The keys the JWKS publishes at `now_unix`: the current one, then retired ones whose time
    /// is not up.
    pub fn published_keys(&self, now_unix: u64) -> Vec<&PublicKey> {
        let previous = self.previous_keys.iter().filter(|(_, until)| now_unix < *until).map(|(key, _)| key);
        std::iter::once(self.signing_key.public_key()).chain(previous).collect()
    }
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
    /// What of the session the token carries.
    pub content: TokenContent,
    /// Tokens longer than this are logged with advice.
    pub warn_bytes: usize,
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
    raw: &FilterConfig,
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
        let settings: FilterConfig = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            if path == "." { ConfigError(inner.to_string()) } else { ConfigError(format!("{path}: {inner}")) }
        })?;
        Config::from_settings(&settings, env)
    }

    /// Checks what the settings' types cannot check alone, and builds what the filter runs on.
    pub fn from_settings(settings: &FilterConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let (signing_key, signing_key_env) = signing_key(settings, env)?;
        let ory = match &settings.ory {
            Some(ory) => Some(ory_config(ory, settings, &signing_key)?),
            None => {
                refuse_without_ory(settings)?;
                None
            }
        };
        let mut previous_keys = Vec::with_capacity(settings.previous_keys.len());
        for (index, previous) in settings.previous_keys.iter().enumerate() {
            let key = PublicKey::from_jwk(&previous.jwk)
                .map_err(|reason| field_error(&format!("previous_keys[{index}].jwk"), reason))?;
            if key.kid() == signing_key.kid() {
                return Err(field_error(&format!("previous_keys[{index}].jwk"), "is the current signing key"));
            }
            previous_keys.push((key, previous.until_unix));
        }
        let jwks_max_age_seconds = settings.jwks_max_age_seconds;
        Ok(Config { signing_key, signing_key_env, jwks_max_age_seconds, previous_keys, ory })
    }
}

/// Settings that only mean something with Ory are refused without it, rather than ignored.
fn refuse_without_ory(settings: &FilterConfig) -> Result<(), ConfigError> {
    let why = "needs `ory` (there is no session check without it)";
    let protect = &settings.protect;
    let set = [
        ("protect.prefixes", !protect.prefixes.is_empty()),
        ("protect.globs", !protect.globs.is_empty()),
        ("protect.regexes", !protect.regexes.is_empty()),
        ("protect.ignore_case", protect.ignore_case),
        ("pass_client_headers", !settings.pass_client_headers.is_empty()),
        ("cors.allowed_origins", !settings.cors.allowed_origins.is_empty()),
        ("cors.additional_headers", !settings.cors.additional_headers.is_empty()),
    ];
    match set.into_iter().find(|(_, set)| *set) {
        Some((field, _)) => Err(field_error(field, why)),
        None => Ok(()),
    }
}

fn ory_config(ory: &OrySettings, settings: &FilterConfig, key: &SigningKey) -> Result<OryConfig, ConfigError> {
    if ory.url.trim().is_empty() {
        return Err(field_error("ory.url", "missing: Ory's public URL"));
    }
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
    let load = LoadPolicy {
        max_concurrent_whoami: ory.max_concurrent_whoami.get(),
        open_path_wait: Duration::from_millis(ory.open_path_wait_ms.get()),
    };

    let public_url =
        settings.public_url.as_deref().ok_or_else(|| field_error("public_url", "is required with `ory`"))?;
    let public_origin = Origin::from_public_url(public_url).map_err(|err| field_error("public_url", err))?;
    let proxy_names = ProxyNames::new(&settings.proxy_names).map_err(|err| field_error("proxy_names", err))?;

    // Each rule was checked as it was read; together they only need compiling.
    let protect = &settings.protect;
    let case = if protect.ignore_case { Case::Insensitive } else { Case::Sensitive };
    let rules = ProtectionRules::with_case(&protect.prefixes, &protect.globs, &protect.regexes, case)
        .map_err(|err| field_error("protect", err))?;

    let jwt = &settings.jwt;
    let audience = match jwt.audience.as_deref() {
        None => None,
        Some(aud) if aud.trim().is_empty() => return Err(field_error("jwt.audience", "must not be empty")),
        Some(aud) => Some(aud.to_string()),
    };
    let mut copied: Vec<(String, String)> = Vec::with_capacity(jwt.claims.len());
    for claim in &jwt.claims {
        if copied.iter().any(|(name, _)| name == claim.name.as_str()) {
            return Err(field_error("jwt.claims", format!("{:?} is copied twice", claim.name.as_str())));
        }
        copied.push((claim.name.as_str().to_string(), claim.pointer.as_str().to_string()));
    }
    let content = TokenContent { session: jwt.session_claim, copied };
    let warn_bytes = usize::try_from(jwt.warn_bytes.get()).unwrap_or(usize::MAX);
    let jwt = JwtConfig { enabled: jwt.enabled, ttl_seconds: jwt.ttl_seconds.get(), audience, content, warn_bytes };

    let sc = &settings.session_cache;
    if sc.max_entry_bytes < MIN_MAX_ENTRY_BYTES {
        return Err(field_error("session_cache.max_entry_bytes", format!("must be at least {MIN_MAX_ENTRY_BYTES}")));
    }
    let ttl_text = jwt.ttl_seconds.to_string();
    // Cached tokens are shared by every VM of one VM id: a configuration that makes other tokens
    // must not reuse them.
    let content_text = format!("{:?}", jwt.content);
    let namespace = cache::namespace_for(&[
        &issuer,
        jwt.audience.as_deref().unwrap_or(""),
        key.kid(),
        &ttl_text,
        if jwt.enabled { "jwt" } else { "no-jwt" },
        &content_text,
    ]);
    let cache = CachePolicy {
        namespace,
        slots: sc.slots.get(),
        max_entry_bytes: usize::try_from(sc.max_entry_bytes).unwrap_or(usize::MAX),
        session_ttl_ms: sc.ttl_ms,
        negative_ttl_ms: sc.negative_ttl_ms,
        ..CachePolicy::default()
    };

    let cookie_domain = match settings.cookie_domain.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(domain) if domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_') => {
            Some(domain.to_string())
        }
        Some(domain) => return Err(field_error("cookie_domain", format!("{domain:?} is not a domain name"))),
    };

    let default_redirect_url = match settings.default_redirect_url.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(url) => match url::Url::parse(url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.host_str().is_some() => {
                Some(url.to_string())
            }
            _ => return Err(field_error("default_redirect_url", format!("{url:?} is not an absolute http(s) URL"))),
        },
    };

    // The origins and headers were checked as they were read.
    let cors_settings = &settings.cors;
    let cors = CorsPolicy::new(
        &public_origin.to_string(),
        cors_settings.allowed_origins.iter(),
        cors_settings.additional_headers.iter(),
    )
    .map_err(|err| field_error("cors", err))?;

    Ok(OryConfig {
        target,
        issuer,
        cluster: ory.cluster.trim().to_string(),
        project_api_key,
        whoami_timeout: Duration::from_millis(ory.whoami_timeout_ms.get().into()),
        load,
        public_origin,
        proxy_names,
        rules,
        passed_client_headers: settings.pass_client_headers.iter().map(|name| name.as_str().to_string()).collect(),
        signing_kid: key.kid().to_string(),
        jwt,
        cache,
        session_cookie_prefixes: settings
            .session_cookie_prefixes
            .iter()
            .map(|prefix| prefix.as_str().to_string())
            .collect(),
        cookie_domain,
        default_redirect_url,
        cors,
    })
}
