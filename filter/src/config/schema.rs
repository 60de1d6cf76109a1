//! [`FilterConfig`]: the filter's configuration as JSON, the one type both sides use. The runner
//! fills it in and serialises it (for its own VMs and for `envoy-config`); the filter reads it
//! back. Every default is defined here, once, in the `Default` impls; a field at its default is
//! not written, so a configuration says only what differs.
//!
//! Values that can be wrong on their own are checked as they are read, by their types (lists of
//! rules, header names, cookie prefixes, non-zero numbers), so the error names the field; checks
//! that need several fields together are made by [`Config::from_settings`](super::Config).

use std::num::{NonZeroU32, NonZeroU64};

use serde::{Deserialize, Serialize};

pub use crate::token::SessionClaim;
use crate::{cache, cors, forwarded, load, paths, session, token};

pub const DEFAULT_ORY_CLUSTER: &str = "ory";
/// How long apps may cache `/.ory/jwks.json` unless configured otherwise.
pub const DEFAULT_JWKS_MAX_AGE_SECONDS: u32 = 300;
pub const DEFAULT_WHOAMI_TIMEOUT_MS: u32 = 5_000;
pub const DEFAULT_JWT_TTL_SECONDS: u64 = 60;
/// Tokens longer than this are logged with advice: 8 KiB is the header limit of many servers.
pub const DEFAULT_JWT_WARN_BYTES: u32 = 8 * 1024;
pub const DEFAULT_PROXY_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The whole configuration, as `on_configure` receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    /// The ES256 private key itself: PKCS#8 PEM, SEC1 PEM, or a private JWK (an object or a
    /// string). Whoever reads the configuration reads the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<serde_json::Value>,
    /// The environment variable of the VM that holds the key instead (in any of those forms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_key_env: Option<String>,
    #[serde(skip_serializing_if = "is_default_jwks_max_age")]
    pub jwks_max_age_seconds: u32,
    /// Keys that signed before the current one: published in the JWKS until their time is up,
    /// so that the tokens they signed and the JWKS caches that hold them run out first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub previous_keys: Vec<PreviousKey>,
    /// Absent: the filter only serves the JWKS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ory: Option<OrySettings>,
    /// The origin browsers use (required with `ory`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Host names under which the proxy answers; a request naming another is treated as spoofed.
    #[serde(skip_serializing_if = "is_default_proxy_names")]
    pub proxy_names: Vec<String>,
    #[serde(skip_serializing_if = "is_default")]
    pub protect: Protect,
    /// Identity headers a client may send to the app after all.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pass_client_headers: Vec<PassableHeader>,
    #[serde(skip_serializing_if = "is_default")]
    pub jwt: JwtSettings,
    #[serde(skip_serializing_if = "is_default")]
    pub session_cache: SessionCacheSettings,
    /// Cookies whose names start with one of these carry a session.
    #[serde(skip_serializing_if = "is_default_cookie_prefixes")]
    pub session_cookie_prefixes: Vec<CookiePrefix>,
    /// The Domain set on Ory's cookies; none: they belong to the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie_domain: Option<String>,
    /// Where Ory's welcome page goes; none: the proxy's origin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_redirect_url: Option<String>,
    #[serde(skip_serializing_if = "is_default")]
    pub cors: CorsSettings,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            signing_key: None,
            signing_key_env: None,
            jwks_max_age_seconds: DEFAULT_JWKS_MAX_AGE_SECONDS,
            ory: None,
            previous_keys: Vec::new(),
            public_url: None,
            proxy_names: DEFAULT_PROXY_NAMES.map(String::from).to_vec(),
            protect: Protect::default(),
            pass_client_headers: Vec::new(),
            jwt: JwtSettings::default(),
            session_cache: SessionCacheSettings::default(),
            session_cookie_prefixes: session::DEFAULT_SESSION_COOKIE_PREFIXES
                .iter()
                .map(|prefix| CookiePrefix(prefix.to_string()))
                .collect(),
            cookie_domain: None,
            default_redirect_url: None,
            cors: CorsSettings::default(),
        }
    }
}

/// Where Ory is and how it is asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrySettings {
    /// Ory's public URL (required).
    pub url: String,
    /// The cluster (upstream) name for `dispatch_http_call` and the `/.ory/` route.
    #[serde(skip_serializing_if = "is_default_cluster")]
    pub cluster: String,
    /// Sent to Ory with every request through `/.ory/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_api_key: Option<String>,
    #[serde(skip_serializing_if = "is_default_whoami_timeout")]
    pub whoami_timeout_ms: NonZeroU32,
    /// How many whoami calls a VM makes at once.
    #[serde(skip_serializing_if = "is_default_max_concurrent_whoami")]
    pub max_concurrent_whoami: NonZeroU32,
    /// How long a request to an open path waits for a whoami answer.
    #[serde(skip_serializing_if = "is_default_open_path_wait")]
    pub open_path_wait_ms: NonZeroU64,
}

impl OrySettings {
    /// Ory at `url`, asked with every setting at its default.
    pub fn new(url: impl Into<String>) -> OrySettings {
        OrySettings { url: url.into(), ..OrySettings::default() }
    }
}

impl Default for OrySettings {
    fn default() -> Self {
        OrySettings {
            url: String::new(),
            cluster: DEFAULT_ORY_CLUSTER.to_string(),
            project_api_key: None,
            whoami_timeout_ms: nonzero_u32(DEFAULT_WHOAMI_TIMEOUT_MS),
            max_concurrent_whoami: nonzero_u32(load::DEFAULT_MAX_CONCURRENT_WHOAMI),
            open_path_wait_ms: nonzero_u64(load::DEFAULT_OPEN_PATH_WAIT_MS),
        }
    }
}

/// Paths that need a session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Protect {
    pub prefixes: PathPrefixes,
    pub globs: PathGlobs,
    pub regexes: PathRegexes,
    /// Match every rule without regard to case (`/MEMBERS` is then covered by `/members`).
    #[serde(skip_serializing_if = "is_default")]
    pub ignore_case: bool,
}

impl Protect {
    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty() && self.globs.is_empty() && self.regexes.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtSettings {
    pub enabled: bool,
    pub ttl_seconds: NonZeroU64,
    /// The `aud` claim of every token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// How much of the session goes into the `session` claim.
    #[serde(skip_serializing_if = "is_default")]
    pub session_claim: SessionClaim,
    /// Top-level claims copied from the session, in this order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<CopiedClaim>,
    /// A token longer than this is logged with advice (and still sent): many servers refuse a
    /// header line beyond 8 KiB.
    #[serde(skip_serializing_if = "is_default_warn_bytes")]
    pub warn_bytes: NonZeroU32,
}

impl Default for JwtSettings {
    fn default() -> Self {
        JwtSettings {
            enabled: true,
            ttl_seconds: nonzero_u64(DEFAULT_JWT_TTL_SECONDS),
            audience: None,
            session_claim: SessionClaim::default(),
            claims: Vec::new(),
            warn_bytes: nonzero_u32(DEFAULT_JWT_WARN_BYTES),
        }
    }
}

/// A retired signing key, by its public half (nothing secret: it signs no more).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousKey {
    /// The public JWK (`kty` EC, `crv` P-256, `x`, `y`).
    pub jwk: serde_json::Value,
    /// Published until this time (Unix seconds), then dropped from the JWKS.
    pub until_unix: u64,
}

/// A claim copied from the session into every token (`--jwt-claim NAME=POINTER`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopiedClaim {
    pub name: ClaimName,
    /// Where the value is in the whoami answer.
    pub pointer: SessionPointer,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionCacheSettings {
    /// How long an active session's answer is reused; 0 asks Ory every time.
    #[serde(skip_serializing_if = "is_default_session_ttl")]
    pub ttl_ms: u64,
    /// How long "no session" is reused.
    #[serde(skip_serializing_if = "is_default_negative_ttl")]
    pub negative_ttl_ms: u64,
    #[serde(skip_serializing_if = "is_default_slots")]
    pub slots: NonZeroU32,
    /// Larger sessions are not cached.
    #[serde(skip_serializing_if = "is_default_max_entry_bytes")]
    pub max_entry_bytes: u64,
}

impl Default for SessionCacheSettings {
    fn default() -> Self {
        SessionCacheSettings {
            ttl_ms: cache::DEFAULT_SESSION_TTL_MS,
            negative_ttl_ms: cache::DEFAULT_NEGATIVE_TTL_MS,
            slots: nonzero_u32(cache::DEFAULT_SLOTS),
            max_entry_bytes: cache::DEFAULT_MAX_ENTRY_BYTES as u64,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsSettings {
    /// Origins allowed besides the proxy's own.
    pub allowed_origins: CorsOrigins,
    /// Request headers allowed besides the usual ones.
    pub additional_headers: CorsHeaders,
}

/// A list of strings, each checked (and normalised) by `$check` as the list is made or read, so
/// that an error names the list's field and the bad item.
macro_rules! checked_list {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(try_from = "Vec<String>", into = "Vec<String>")]
        pub struct $name(Vec<String>);

        impl TryFrom<Vec<String>> for $name {
            type Error = String;
            fn try_from(items: Vec<String>) -> Result<Self, String> {
                let check: fn(&str) -> Result<String, String> = $check;
                items.iter().map(|item| check(item)).collect::<Result<_, _>>().map($name)
            }
        }

        impl From<$name> for Vec<String> {
            fn from(list: $name) -> Vec<String> {
                list.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = [String];
            fn deref(&self) -> &[String] {
                &self.0
            }
        }
    };
}

/// One checked string, as [`checked_list`] but naming the item's index in errors.
macro_rules! checked_item {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(item: String) -> Result<Self, String> {
                let check: fn(&str) -> Result<String, String> = $check;
                check(&item).map($name)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = String;
            fn try_from(item: &str) -> Result<Self, String> {
                $name::try_from(item.to_string())
            }
        }

        impl From<$name> for String {
            fn from(item: $name) -> String {
                item.0
            }
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}

checked_list!(
    /// `--protect-path-prefix` rules: plain string prefixes of the path.
    PathPrefixes,
    |rule| paths::check_prefix(rule).map(|()| rule.to_string()).map_err(|err| err.to_string())
);
checked_list!(
    /// `--protect-path-glob` rules.
    PathGlobs,
    |rule| paths::check_glob(rule).map(|()| rule.to_string()).map_err(|err| err.to_string())
);
checked_list!(
    /// `--protect-path-regex` rules.
    PathRegexes,
    |rule| paths::check_regex(rule).map(|()| rule.to_string()).map_err(|err| err.to_string())
);
checked_list!(
    /// CORS origins, normalised to `scheme://host[:port]`.
    CorsOrigins,
    |origin| cors::allowed_origin(origin).map_err(|err| err.to_string())
);
checked_list!(
    /// CORS request header names, in lower case.
    CorsHeaders,
    |header| cors::allowed_header(header).map_err(|err| err.to_string())
);
checked_item!(
    /// An identity header a client may send to the app after all, in lower case.
    PassableHeader,
    forwarded::passable_header
);
checked_item!(
    /// The name of a claim copied from the session: not one the proxy sets itself.
    ClaimName,
    |name| {
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(format!("{name:?} is not a claim name"));
        }
        if token::RESERVED_CLAIMS.contains(&name) {
            return Err(format!("{name:?} is set by the proxy itself and cannot be copied from the session"));
        }
        Ok(name.to_string())
    }
);
checked_item!(
    /// An RFC 6901 JSON pointer into the whoami answer, e.g. `/identity/traits/email`.
    SessionPointer,
    |pointer| {
        let escapes_are_whole = pointer.split('~').skip(1).all(|after| after.starts_with(['0', '1']));
        if !pointer.starts_with('/') || !escapes_are_whole {
            return Err(format!("{pointer:?} is not a JSON pointer like /identity/traits/email"));
        }
        Ok(pointer.to_string())
    }
);
checked_item!(
    /// The start of a session cookie's name.
    CookiePrefix,
    |prefix| {
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_graphic() && !b"=;,".contains(&b)) {
            return Err(format!("{prefix:?} is not a cookie name prefix"));
        }
        Ok(prefix.to_string())
    }
);

const fn nonzero_u32(value: u32) -> NonZeroU32 {
    match NonZeroU32::new(value) {
        Some(value) => value,
        None => panic!("a default of 0"),
    }
}

const fn nonzero_u64(value: u64) -> NonZeroU64 {
    match NonZeroU64::new(value) {
        Some(value) => value,
        None => panic!("a default of 0"),
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Whether a field holds the default of its struct, for `skip_serializing_if`.
macro_rules! is_default_of {
    ($($name:ident: $struct:ident.$field:ident: $type:ty),* $(,)?) => {
        $(fn $name(value: &$type) -> bool {
            *value == $struct::default().$field
        })*
    };
}

is_default_of!(
    is_default_jwks_max_age: FilterConfig.jwks_max_age_seconds: u32,
    is_default_proxy_names: FilterConfig.proxy_names: Vec<String>,
    is_default_cookie_prefixes: FilterConfig.session_cookie_prefixes: Vec<CookiePrefix>,
    is_default_cluster: OrySettings.cluster: String,
    is_default_whoami_timeout: OrySettings.whoami_timeout_ms: NonZeroU32,
    is_default_max_concurrent_whoami: OrySettings.max_concurrent_whoami: NonZeroU32,
    is_default_open_path_wait: OrySettings.open_path_wait_ms: NonZeroU64,
    is_default_session_ttl: SessionCacheSettings.ttl_ms: u64,
    is_default_negative_ttl: SessionCacheSettings.negative_ttl_ms: u64,
    is_default_slots: SessionCacheSettings.slots: NonZeroU32,
    is_default_max_entry_bytes: SessionCacheSettings.max_entry_bytes: u64,
    is_default_warn_bytes: JwtSettings.warn_bytes: NonZeroU32,
);
