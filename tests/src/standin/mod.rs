//! The **Ory stand-in**: a development and test tool that speaks the part of the Ory (Kratos)
//! public API ory-proxy relies on. It is not Ory and keeps everything in memory.
//!
//! What it serves: `/sessions/whoami`, the browser login, registration and logout flows with
//! their UI pages, `/ui/welcome`, `/ui/error`, `/self-service/errors`, `/schemas/{id}`,
//! `/health/{alive,ready}`, `PATCH /admin/sessions/{id}/extend`, and the console's
//! `/backoffice/token/slug`. Every URL it emits is absolute on its configured public origin,
//! as Ory's are, so a proxy in front of it has to rewrite them.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use ory_proxy_tests::standin::{Fault, IdentitySeed, Standin, StandinConfig};
//! let standin = Standin::start(StandinConfig::default()).await?; // ephemeral port
//! standin.add_identity(IdentitySeed::new("ada@example.com", "correct horse"))?;
//! let session = standin.create_session("ada@example.com")?;
//! // ... send `Cookie: {session.cookie}` through the proxy ...
//! standin.set_fault(Fault::Status(503));
//! println!("whoami was called {} times", standin.whoami_calls());
//! standin.shutdown().await;
//! # Ok(()) }
//! ```

mod handlers;
pub mod model;
mod pages;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{ArgAction, Parser};
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use url::Url;
use uuid::Uuid;

pub use handlers::WHOAMI_401;
pub use model::IdentitySeed;
use model::{AuthMethod, Flow, Identity, SeedFile, Session};

use crate::http::{ServerHandle, bind_loopback, spawn_server};
use crate::util::{ReturnToPolicy, hex, parse_duration, random_token, trim_trailing_slash};

/// The identity the stand-in knows unless told otherwise.
pub const DEMO_EMAIL: &str = "demo@example.com";
/// Its password.
pub const DEMO_PASSWORD: &str = "demo-password";
/// The self-hosted Kratos session cookie name.
pub const DEFAULT_COOKIE_NAME: &str = "ory_kratos_session";

/// A fault to inject into answers, for tests of the proxy's behaviour when Ory misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Answer normally.
    #[default]
    None,
    /// Wait this many milliseconds, then answer normally.
    Delay(u64),
    /// Answer with this status and an Ory-shaped error body.
    Status(u16),
    /// Answer 200 `application/json` with a malformed (truncated) JSON body.
    Garbage,
    /// Close the connection without answering.
    Drop,
}

impl FromStr for Fault {
    type Err = anyhow::Error;

    /// `none`, `delay:<ms>`, `status:<code>`, `garbage`, `drop`.
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (s.as_str(), None),
        };
        Ok(match (kind, arg) {
            ("none", None) => Fault::None,
            ("garbage", None) => Fault::Garbage,
            ("drop", None) => Fault::Drop,
            ("delay", Some(ms)) => Fault::Delay(ms.parse().context("delay:<milliseconds>")?),
            ("status", Some(code)) => {
                let code: u16 = code.parse().context("status:<code>")?;
                if !(100..=599).contains(&code) {
                    bail!("status code {code} out of range");
                }
                Fault::Status(code)
            }
            _ => bail!("unknown fault {s:?}: use none, delay:<ms>, status:<code>, garbage or drop"),
        })
    }
}

/// A fault, the requests it applies to, and how often.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FaultRule {
    pub fault: Fault,
    /// Only requests whose path starts with this (e.g. `/sessions/whoami`); all when `None`.
    pub path_prefix: Option<String>,
    /// Apply to this many matching requests, then stop; forever when `None`.
    pub times: Option<u32>,
}

impl FaultRule {
    pub fn new(fault: Fault) -> Self {
        FaultRule { fault, path_prefix: None, times: None }
    }

    pub fn on_path(mut self, prefix: impl Into<String>) -> Self {
        self.path_prefix = Some(prefix.into());
        self
    }

    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }
}

/// How to run the stand-in. `Default` listens on an ephemeral port with the demo identity.
#[derive(Debug, Clone)]
pub struct StandinConfig {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// The origin put in every emitted URL; `http://127.0.0.1:<port>` when `None`.
    pub public_url: Option<String>,
    /// Session cookie name; wins over `project_slug`.
    pub cookie_name: Option<String>,
    /// Ory Network project mode: the cookie becomes `ory_session_<slug>`.
    pub project_slug: Option<String>,
    /// Allowed `return_to` URLs (scheme, host:port, path prefix). Empty: any loopback URL.
    pub allowed_return_urls: Vec<String>,
    /// Identities to create at start.
    pub identities: Vec<IdentitySeed>,
    /// Create `demo@example.com` / `demo-password` too.
    pub demo_identity: bool,
    /// Added to every answer.
    pub latency: Duration,
    /// How long a new session lives.
    pub session_lifespan: Duration,
    /// How long a login or registration flow lives.
    pub flow_lifespan: Duration,
    /// Kratos dev mode: cookies without `Secure` (the stand-in speaks plain HTTP).
    pub dev: bool,
    /// Access token accepted by `/backoffice/token/slug`.
    pub access_token: Option<String>,
    /// Slug answered by `/backoffice/token/slug` (defaults to `project_slug`).
    pub slug: Option<String>,
    /// Fault in force from the start.
    pub fault: FaultRule,
}

impl Default for StandinConfig {
    fn default() -> Self {
        StandinConfig {
            port: 0,
            public_url: None,
            cookie_name: None,
            project_slug: None,
            allowed_return_urls: Vec::new(),
            identities: Vec::new(),
            demo_identity: true,
            latency: Duration::ZERO,
            session_lifespan: Duration::from_secs(24 * 3600),
            flow_lifespan: Duration::from_secs(3600),
            dev: true,
            access_token: None,
            slug: None,
            fault: FaultRule::default(),
        }
    }
}

/// Command line of `ory-standin`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ory-standin",
    version,
    about = "Ory stand-in: a development and test tool that imitates the parts of the Ory \
             (Kratos) public API that ory-proxy uses. It is NOT Ory: identities and sessions \
             live in memory and vanish on exit. Do not use it in production.",
    after_help = "Default identity: demo@example.com / demo-password (disable with --no-demo-identity).\n\
                  Faults: none, delay:<ms>, status:<code>, garbage, drop."
)]
pub struct StandinCli {
    /// Port to listen on (127.0.0.1 only); Kratos's public port by default.
    #[arg(long, env = "ORY_STANDIN_PORT", default_value_t = 4433)]
    pub port: u16,
    /// Origin used in every URL the stand-in emits [default: http://127.0.0.1:<port>].
    #[arg(long, env = "ORY_STANDIN_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Session cookie name [default: ory_kratos_session, or ory_session_<slug> with --project-slug].
    #[arg(long, env = "ORY_STANDIN_COOKIE_NAME")]
    pub cookie_name: Option<String>,
    /// Behave like an Ory Network project with this slug (cookie ory_session_<slug>).
    #[arg(long, env = "ORY_STANDIN_PROJECT_SLUG")]
    pub project_slug: Option<String>,
    /// Allowed return_to URL (scheme, host:port, path prefix); repeatable. Without any, every
    /// URL on localhost, 127.0.0.1 or [::1] (any port) is allowed, plus the public URL.
    #[arg(long = "allowed-return-url", env = "ORY_STANDIN_ALLOWED_RETURN_URLS", value_delimiter = ',')]
    pub allowed_return_urls: Vec<String>,
    /// JSON file of identities: [{"email","password","needs_aal2"?,"second_factor_code"?,"id"?,"traits"?,"verified"?}].
    #[arg(long, env = "ORY_STANDIN_IDENTITIES")]
    pub identities: Option<PathBuf>,
    /// Do not create the demo identity (demo@example.com / demo-password).
    #[arg(long, env = "ORY_STANDIN_NO_DEMO_IDENTITY")]
    pub no_demo_identity: bool,
    /// Delay added to every answer, in milliseconds.
    #[arg(long, env = "ORY_STANDIN_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Session lifespan (e.g. 24h, 30m, 90s).
    #[arg(long, env = "ORY_STANDIN_SESSION_LIFESPAN", default_value = "24h")]
    pub session_lifespan: String,
    /// Kratos dev mode: cookies without the Secure attribute. `--dev false` adds Secure.
    #[arg(long, env = "ORY_STANDIN_DEV", default_value_t = true, action = ArgAction::Set)]
    pub dev: bool,
    /// Access token that /backoffice/token/slug accepts (as the console API's bearer token).
    #[arg(long, env = "ORY_STANDIN_ACCESS_TOKEN")]
    pub access_token: Option<String>,
    /// Slug that /backoffice/token/slug answers [default: --project-slug].
    #[arg(long, env = "ORY_STANDIN_SLUG")]
    pub slug: Option<String>,
    /// Inject a fault: none, delay:<ms>, status:<code>, garbage, drop.
    #[arg(long, env = "ORY_STANDIN_FAULT", default_value = "none")]
    pub fault: String,
    /// Apply --fault only to paths starting with this prefix (e.g. /sessions/whoami).
    #[arg(long, env = "ORY_STANDIN_FAULT_PATH")]
    pub fault_path: Option<String>,
}

impl StandinCli {
    /// Turn the command line into a configuration (reads the identities file).
    pub fn into_config(self) -> Result<StandinConfig> {
        let mut identities = Vec::new();
        if let Some(path) = &self.identities {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read identities file {}", path.display()))?;
            let seed: SeedFile = serde_json::from_str(&text)
                .with_context(|| format!("identities file {} is not valid", path.display()))?;
            identities = seed.into_vec();
        }
        if self.access_token.is_some() && self.slug.is_none() && self.project_slug.is_none() {
            bail!("--access-token needs --slug or --project-slug");
        }
        Ok(StandinConfig {
            port: self.port,
            public_url: self.public_url,
            cookie_name: self.cookie_name,
            project_slug: self.project_slug,
            allowed_return_urls: self.allowed_return_urls,
            identities,
            demo_identity: !self.no_demo_identity,
            latency: Duration::from_millis(self.latency_ms),
            session_lifespan: parse_duration(&self.session_lifespan).context("--session-lifespan")?,
            flow_lifespan: Duration::from_secs(3600),
            dev: self.dev,
            access_token: self.access_token,
            slug: self.slug,
            fault: FaultRule {
                fault: self.fault.parse().context("--fault")?,
                path_prefix: self.fault_path,
                times: None,
            },
        })
    }
}

/// A request the stand-in received, for tests that check what the proxy sent.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query as received.
    pub path_and_query: String,
    /// Header names in lower case, in arrival order.
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    /// The first value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.path_and_query.split_once('?').map_or(self.path_and_query.as_str(), |(p, _)| p)
    }
}

/// A session made directly (without the browser flow), for tests.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    pub session_id: Uuid,
    pub identity_id: Uuid,
    /// The session token (also the session cookie's value).
    pub token: String,
    /// `<cookie name>=<token>`, ready for a `Cookie` header.
    pub cookie: String,
}

pub(crate) struct Settings {
    pub public_url: String,
    pub public: Url,
    pub cookie_name: String,
    pub csrf_cookie_name: String,
    pub policy: ReturnToPolicy,
    pub session_lifespan: Duration,
    pub flow_lifespan: Duration,
    pub dev: bool,
    pub access_token: Option<String>,
    pub slug: Option<String>,
    pub demo_identity: bool,
}

#[derive(Default)]
pub(crate) struct Store {
    pub identities: Vec<Identity>,
    pub sessions: HashMap<String, Session>,
    pub flows: HashMap<Uuid, Flow>,
    pub errors: HashMap<Uuid, (OffsetDateTime, Value)>,
    /// When [`Store::prune`] last looked at everything.
    pruned_at: Option<OffsetDateTime>,
}

impl Store {
    pub fn identity(&self, id: Uuid) -> Option<&Identity> {
        self.identities.iter().find(|i| i.id == id)
    }

    pub fn identity_by_email(&self, email: &str) -> Option<&Identity> {
        self.identities.iter().find(|i| i.email.eq_ignore_ascii_case(email.trim()))
    }

    pub fn add_identity(&mut self, seed: IdentitySeed, now: OffsetDateTime) -> Result<Uuid> {
        if seed.email.trim().is_empty() || !seed.email.contains('@') {
            bail!("identity email {:?} is not an email address", seed.email);
        }
        if self.identity_by_email(&seed.email).is_some() {
            bail!("an identity with email {} exists already", seed.email);
        }
        if let Some(id) = seed.id
            && self.identity(id).is_some()
        {
            bail!("an identity with id {id} exists already");
        }
        let identity = Identity::from_seed(seed, now);
        let id = identity.id;
        self.identities.push(identity);
        Ok(id)
    }

    /// Make a new aal1 password session for an identity.
    pub fn new_session(
        &mut self,
        identity_id: Uuid,
        lifespan: Duration,
        now: OffsetDateTime,
        ip: &str,
        user_agent: &str,
    ) -> Session {
        let session = Session {
            id: Uuid::new_v4(),
            token: format!("ory_st_{}", random_token(32)),
            logout_token: format!("ory_lo_{}", random_token(32)),
            identity_id,
            active: true,
            issued_at: now,
            authenticated_at: now,
            expires_at: now + lifespan,
            aal: "aal1",
            methods: vec![AuthMethod { method: "password", aal: "aal1", completed_at: now }],
            devices: vec![model::Device {
                id: Uuid::new_v4(),
                ip_address: ip.to_owned(),
                user_agent: user_agent.to_owned(),
            }],
            // A browser session's cookie lives as long as the session, as Kratos sets Max-Age.
            cookie_expires_at: Some(now + lifespan),
        };
        self.sessions.insert(session.token.clone(), session.clone());
        session
    }

    /// Forget expired flows, error records and long-dead sessions (an hour or a day after they
    /// ended, so nobody sees the difference), at most once a second: every request asks, and
    /// walking the store each time made a stand-in with many sessions slow (`make bench` makes
    /// a hundred thousand).
    pub fn prune(&mut self, now: OffsetDateTime) {
        if self.pruned_at.is_some_and(|at| now - at < time::Duration::seconds(1)) {
            return;
        }
        self.pruned_at = Some(now);
        self.flows.retain(|_, f| f.expires_at + time::Duration::hours(1) > now);
        self.errors.retain(|_, (created, _)| *created + time::Duration::hours(1) > now);
        self.sessions.retain(|_, s| s.expires_at + time::Duration::days(1) > now);
    }
}

pub(crate) struct Inner {
    pub settings: Settings,
    pub store: Mutex<Store>,
    pub faults: Mutex<Vec<FaultRule>>,
    pub latency: Mutex<Duration>,
    pub whoami_calls: AtomicU64,
    pub requests: Mutex<VecDeque<RecordedRequest>>,
}

impl Inner {
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fault for this path, consuming one use of a counted rule.
    pub fn take_fault(&self, path: &str) -> Fault {
        let mut rules = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        let mut chosen = Fault::None;
        let mut exhausted = None;
        for (i, rule) in rules.iter_mut().enumerate() {
            if rule.fault == Fault::None {
                continue;
            }
            if let Some(prefix) = &rule.path_prefix
                && !path.starts_with(prefix.as_str())
            {
                continue;
            }
            match &mut rule.times {
                Some(0) => continue,
                Some(n) => {
                    *n -= 1;
                    if *n == 0 {
                        exhausted = Some(i);
                    }
                }
                None => {}
            }
            chosen = rule.fault;
            break;
        }
        if let Some(i) = exhausted {
            rules.remove(i);
        }
        chosen
    }

    pub fn record(&self, req: RecordedRequest) {
        let mut log = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() >= 1000 {
            log.pop_front();
        }
        log.push_back(req);
    }

    /// `Set-Cookie` value for the session cookie.
    pub fn session_cookie(&self, token: &str, expires_at: OffsetDateTime, now: OffsetDateTime) -> String {
        let max_age = (expires_at - now).whole_seconds().max(0);
        let expires = httpdate::fmt_http_date(std::time::SystemTime::from(expires_at));
        let secure = if self.settings.dev { "" } else { "; Secure" };
        format!(
            "{}={token}; Path=/; Expires={expires}; Max-Age={max_age}; HttpOnly{secure}; SameSite=Lax",
            self.settings.cookie_name
        )
    }

    /// `Set-Cookie` value that deletes the session cookie.
    pub fn expired_session_cookie(&self) -> String {
        let secure = if self.settings.dev { "" } else { "; Secure" };
        format!(
            "{}=; Path=/; Expires=Thu, 01 Jan 1970 00:00:01 GMT; Max-Age=0; HttpOnly{secure}; SameSite=Lax",
            self.settings.cookie_name
        )
    }

    /// `Set-Cookie` value for the anti-CSRF cookie.
    pub fn csrf_cookie(&self, token: &str, now: OffsetDateTime) -> String {
        let expires = httpdate::fmt_http_date(std::time::SystemTime::from(now + time::Duration::seconds(31_536_000)));
        let secure = if self.settings.dev { "" } else { "; Secure" };
        format!(
            "{}={token}; Path=/; Expires={expires}; Max-Age=31536000; HttpOnly{secure}; SameSite=Lax",
            self.settings.csrf_cookie_name
        )
    }
}

/// Entry point: `Standin::start(config)`.
pub struct Standin;

impl Standin {
    /// Bind 127.0.0.1:`config.port` and serve until the returned handle is shut down.
    pub async fn start(config: StandinConfig) -> Result<RunningStandin> {
        let listener = bind_loopback(config.port).await?;
        let addr = listener.local_addr().context("no local address")?;
        let public_url = match &config.public_url {
            Some(u) => trim_trailing_slash(u),
            None => format!("http://127.0.0.1:{}", addr.port()),
        };
        let public = Url::parse(&public_url).map_err(|err| anyhow!("public URL {public_url:?} is not a URL: {err}"))?;
        if !matches!(public.scheme(), "http" | "https") || public.host_str().is_none() {
            bail!("public URL {public_url:?} must be an http(s) URL with a host");
        }
        let cookie_name = match (&config.cookie_name, &config.project_slug) {
            (Some(name), _) => name.clone(),
            (None, Some(slug)) => format!("ory_session_{slug}"),
            (None, None) => DEFAULT_COOKIE_NAME.to_owned(),
        };
        if cookie_name.is_empty() || !cookie_name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
            bail!("cookie name {cookie_name:?} is not a valid cookie name");
        }
        let csrf_cookie_name = format!("csrf_token_{}", hex(&Sha256::digest(public_url.as_bytes())));
        let policy = ReturnToPolicy::new(&config.allowed_return_urls, &public)?;
        let now = OffsetDateTime::now_utc();
        let mut store = Store::default();
        if config.demo_identity {
            store.add_identity(IdentitySeed::new(DEMO_EMAIL, DEMO_PASSWORD), now)?;
        }
        for seed in config.identities.clone() {
            store.add_identity(seed, now)?;
        }
        let settings = Settings {
            public_url: public_url.clone(),
            public,
            cookie_name,
            csrf_cookie_name,
            policy,
            session_lifespan: config.session_lifespan,
            flow_lifespan: config.flow_lifespan,
            dev: config.dev,
            access_token: config.access_token.clone(),
            slug: config.slug.clone().or_else(|| config.project_slug.clone()),
            demo_identity: config.demo_identity,
        };
        let inner = Arc::new(Inner {
            settings,
            store: Mutex::new(store),
            faults: Mutex::new(vec![config.fault.clone()]),
            latency: Mutex::new(config.latency),
            whoami_calls: AtomicU64::new(0),
            requests: Mutex::new(VecDeque::new()),
        });
        let handler_state = Arc::clone(&inner);
        let server = spawn_server(listener, move |req, peer| {
            let state = Arc::clone(&handler_state);
            async move { handlers::handle(state, req, peer).await }
        })?;
        tracing::info!(
            listen = %addr,
            public_url = %public_url,
            cookie = %inner.settings.cookie_name,
            "Ory stand-in (development and test tool) is up"
        );
        Ok(RunningStandin { inner, server })
    }
}

/// A running stand-in. Dropping it stops the server too; [`RunningStandin::shutdown`] waits.
pub struct RunningStandin {
    inner: Arc<Inner>,
    server: ServerHandle,
}

impl RunningStandin {
    /// The public URL (no trailing slash): the base of every URL it emits, and the `iss`
    /// a proxy configured with this Ory URL puts in its JWTs.
    pub fn url(&self) -> String {
        self.inner.settings.public_url.clone()
    }

    /// Where it actually listens: `http://127.0.0.1:<port>`.
    pub fn listen_url(&self) -> String {
        format!("http://{}", self.server.local_addr())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub fn port(&self) -> u16 {
        self.server.local_addr().port()
    }

    /// The session cookie's name.
    pub fn cookie_name(&self) -> String {
        self.inner.settings.cookie_name.clone()
    }

    /// The anti-CSRF cookie's name (`csrf_token_<sha256 hex of the public URL>`).
    pub fn csrf_cookie_name(&self) -> String {
        self.inner.settings.csrf_cookie_name.clone()
    }

    /// Inject `fault` into every answer from now on (`Fault::None` clears all faults).
    pub fn set_fault(&self, fault: Fault) {
        let mut rules = self.inner.faults.lock().unwrap_or_else(|e| e.into_inner());
        rules.clear();
        rules.push(FaultRule::new(fault));
    }

    /// Add a fault rule; the first matching rule wins.
    pub fn add_fault_rule(&self, rule: FaultRule) {
        let mut rules = self.inner.faults.lock().unwrap_or_else(|e| e.into_inner());
        rules.push(rule);
    }

    /// Remove every fault rule.
    pub fn clear_faults(&self) {
        self.set_fault(Fault::None);
    }

    /// Delay added to every answer.
    pub fn set_latency(&self, latency: Duration) {
        *self.inner.latency.lock().unwrap_or_else(|e| e.into_inner()) = latency;
    }

    /// Create an identity; answers its id.
    pub fn add_identity(&self, seed: IdentitySeed) -> Result<Uuid> {
        self.inner.store().add_identity(seed, OffsetDateTime::now_utc())
    }

    /// The id of the identity with this email.
    pub fn identity_id(&self, email: &str) -> Option<Uuid> {
        self.inner.store().identity_by_email(email).map(|i| i.id)
    }

    /// Log `email` in without the browser flow: a fresh aal1 session.
    pub fn create_session(&self, email: &str) -> Result<SessionHandle> {
        let now = OffsetDateTime::now_utc();
        let mut store = self.inner.store();
        let identity_id =
            store.identity_by_email(email).map(|i| i.id).ok_or_else(|| anyhow!("no identity with email {email}"))?;
        let session =
            store.new_session(identity_id, self.inner.settings.session_lifespan, now, "127.0.0.1", "ory-proxy-tests");
        Ok(SessionHandle {
            session_id: session.id,
            identity_id,
            cookie: format!("{}={}", self.inner.settings.cookie_name, session.token),
            token: session.token,
        })
    }

    /// The whoami JSON of a session, as the stand-in would answer it now.
    pub fn session_json(&self, token: &str) -> Option<Value> {
        let store = self.inner.store();
        let session = store.sessions.get(token)?;
        let identity = store.identity(session.identity_id)?;
        Some(session.to_json(identity, &self.inner.settings.public_url))
    }

    /// Extend a session to `now + lifespan` (as Kratos's session extension does): the next
    /// whoami with the session cookie answers a refreshed `Set-Cookie`.
    pub fn extend_session(&self, token: &str) -> bool {
        let now = OffsetDateTime::now_utc();
        let lifespan = self.inner.settings.session_lifespan;
        let mut store = self.inner.store();
        match store.sessions.get_mut(token) {
            Some(s) if s.is_valid(now) => {
                s.expires_at = now + lifespan + time::Duration::seconds(1);
                true
            }
            _ => false,
        }
    }

    /// Revoke a session (as logging out does).
    pub fn revoke_session(&self, token: &str) -> bool {
        let mut store = self.inner.store();
        match store.sessions.get_mut(token) {
            Some(s) => {
                s.active = false;
                true
            }
            None => false,
        }
    }

    /// Make a session expire now.
    pub fn expire_session(&self, token: &str) -> bool {
        let mut store = self.inner.store();
        match store.sessions.get_mut(token) {
            Some(s) => {
                s.expires_at = OffsetDateTime::now_utc() - time::Duration::seconds(1);
                true
            }
            None => false,
        }
    }

    /// How many requests reached `/sessions/whoami` (faulted ones included).
    pub fn whoami_calls(&self) -> u64 {
        self.inner.whoami_calls.load(Ordering::SeqCst)
    }

    pub fn reset_whoami_calls(&self) {
        self.inner.whoami_calls.store(0, Ordering::SeqCst);
    }

    /// The last (up to 1000) requests received, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.requests.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    pub fn clear_requests(&self) {
        self.inner.requests.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Stop serving and wait until every connection is closed.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }

    /// Serve until the process ends (for the binary).
    pub async fn wait(self) {
        self.server.wait().await;
    }
}
