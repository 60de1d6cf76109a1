//! The one place that turns what the user asked for into a deployment: [`resolve`] reads the
//! flags' files, finds Ory and resolves names into a [`Deployment`]; [`Deployment::plan`] turns
//! that into the filter's configuration, the clusters and the routes. The runner runs the plan;
//! `envoy-config` prints the same plan for Envoy, so both hosts get the same filter
//! configuration by construction.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};
use std::num::{NonZeroU32, NonZeroU64};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
pub use ory_proxy_filter::config::DEFAULT_JWT_TTL_SECONDS;
/// The types of [`Deployment::pass_client_headers`], [`Deployment::jwt_claims`] and
/// [`Deployment::jwt_session_claim`].
pub use ory_proxy_filter::config::{ClaimName, CopiedClaim, PassableHeader, SessionClaim, SessionPointer};
use ory_proxy_filter::config::{
    CookiePrefix, CorsHeaders, CorsOrigins, DEFAULT_JWT_WARN_BYTES, DEFAULT_ORY_CLUSTER, DEFAULT_PROXY_NAMES,
    FilterConfig, JwtSettings, OrySettings, PathGlobs, PathPrefixes, PathRegexes, PreviousKey, Protect,
    SessionCacheSettings,
};
use ory_proxy_filter::rewrite::ORY_PREFIX;
/// The type of [`crate::home::RetiredKey::key`].
pub use ory_proxy_filter::token::SigningKey;
use url::Url;

use crate::cli::{EnvoyArgs, LocalArgs, OryArgs, RunArgs, ServeArgs, TextOrFile, UrlOrEmpty};
use crate::proxy::{Cluster, Limits, Route};
use crate::{home, ory_url};

pub const APP_CLUSTER: &str = "app";
pub const ORY_CLUSTER: &str = DEFAULT_ORY_CLUSTER;
/// The filter's plugin name, root id and VM id, in the runner and in Envoy alike (Envoy shares
/// data between the VMs of one VM id).
pub const FILTER_NAME: &str = "ory-proxy";
/// The environment variable of the filter's VMs that holds the signing key (the filter
/// configuration names it in `signing_key_env` instead of carrying the key).
pub const SIGNING_KEY_ENV: &str = "ORY_PROXY_SIGNING_KEY";

/// Paths that need a session, as given on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Protection {
    pub prefixes: Vec<String>,
    pub globs: Vec<String>,
    pub regexes: Vec<String>,
    /// Match every rule without regard to case.
    pub ignore_case: bool,
}

impl Protection {
    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty() && self.globs.is_empty() && self.regexes.is_empty()
    }

    /// The filter's form of the rules; a bad rule is an error naming its flag.
    fn to_filter(&self) -> anyhow::Result<Protect> {
        Ok(Protect {
            prefixes: PathPrefixes::try_from(self.prefixes.clone()).map_err(anyhow::Error::msg)?,
            globs: PathGlobs::try_from(self.globs.clone()).map_err(anyhow::Error::msg)?,
            regexes: PathRegexes::try_from(self.regexes.clone()).map_err(anyhow::Error::msg)?,
            ignore_case: self.ignore_case,
        })
    }
}

/// Everything `ory-proxy local` (and `envoy-config`) was asked for, already read and checked.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub upstream: Url,
    pub listen: SocketAddr,
    /// The URL browsers use; its host is one of the proxy's names.
    pub public_url: Url,
    pub ory_url: Option<Url>,
    pub project_api_key: Option<String>,
    pub protection: Protection,
    /// Identity headers clients may send to the app after all (checked as they are made).
    pub pass_client_headers: Vec<PassableHeader>,
    pub jwt_enabled: bool,
    pub jwt_ttl: Duration,
    pub jwt_audience: Option<String>,
    /// Claims copied from the session (checked as they are made).
    pub jwt_claims: Vec<CopiedClaim>,
    pub jwt_session_claim: SessionClaim,
    pub jwt_warn_bytes: u32,
    pub session_cache_ttl: Option<Duration>,
    pub cookie_domain: Option<String>,
    pub default_redirect_url: Option<Url>,
    pub allowed_cors_origins: Vec<String>,
    pub additional_cors_headers: Vec<String>,
    /// Send the app its own host name instead of the browser's.
    pub rewrite_host: bool,
    /// Trust only these CA certificates (PEM) for HTTPS upstreams.
    pub upstream_ca_file: Option<PathBuf>,
    /// Timeouts and sizes that bound clients and upstreams.
    pub limits: Limits,
    /// Worker threads (one per core when `None`).
    pub workers: Option<usize>,
    /// Where metrics and health are served, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// The ES256 key as PEM (or a private JWK).
    pub signing_key: String,
    /// The key that signed before it, still published for a while.
    pub previous_key: Option<home::RetiredKey>,
    /// Put the key itself into the filter configuration instead of the VMs' environment (for
    /// proxy-wasm hosts that cannot give a VM environment variables).
    pub inline_signing_key: bool,
    /// At most this many whoami calls at once per VM (the filter's default when `None`).
    pub max_concurrent_whoami: Option<u32>,
    /// How long open paths wait for a whoami answer (the filter's default when `None`).
    pub open_path_wait: Option<Duration>,
    /// Prefixes of the session cookie names (the filter's defaults when empty).
    pub session_cookie_prefixes: Vec<String>,
}

impl Deployment {
    /// A deployment of `upstream` on `listen` with every option at its default.
    pub fn new(upstream: Url, listen: SocketAddr, signing_key: String) -> Deployment {
        let public_url = Url::parse(&format!("http://localhost:{}", listen.port())).expect("a valid URL");
        Deployment {
            upstream,
            listen,
            public_url,
            ory_url: None,
            project_api_key: None,
            protection: Protection::default(),
            pass_client_headers: Vec::new(),
            jwt_enabled: true,
            jwt_ttl: Duration::from_secs(DEFAULT_JWT_TTL_SECONDS),
            jwt_audience: None,
            jwt_claims: Vec::new(),
            jwt_session_claim: SessionClaim::default(),
            jwt_warn_bytes: DEFAULT_JWT_WARN_BYTES,
            session_cache_ttl: None,
            cookie_domain: None,
            default_redirect_url: None,
            allowed_cors_origins: Vec::new(),
            additional_cors_headers: Vec::new(),
            rewrite_host: false,
            upstream_ca_file: None,
            limits: Limits::default(),
            workers: None,
            metrics_addr: None,
            signing_key,
            previous_key: None,
            inline_signing_key: false,
            max_concurrent_whoami: None,
            open_path_wait: None,
            session_cookie_prefixes: Vec::new(),
        }
    }
}

/// Finds Ory from exactly one of `--sdk-url`/`ORY_SDK_URL`/`ORY_KRATOS_URL`,
/// `--project`/`ORY_PROJECT_SLUG` and `ORY_ACCESS_TOKEN` (asking the console for the last).
pub async fn find_ory(args: &OryArgs) -> anyhow::Result<Url> {
    let sdk_url = UrlOrEmpty::url(&args.sdk_url).or_else(|| UrlOrEmpty::url(&args.kratos_url));
    let source = ory_url::choose(sdk_url, args.project.clone(), args.access_token.clone())?;
    ory_url::resolve(&source, &args.api_endpoint, &args.console_url).await
}

/// Finds Ory, resolves `--host` and reads the signing key: the deployment the flags ask for.
pub async fn resolve(args: &LocalArgs) -> anyhow::Result<Deployment> {
    let ory_url = find_ory(&args.ory).await?;
    resolve_with(args, Some(ory_url))
}

/// [`resolve`] with Ory already found (or not used).
pub fn resolve_with(args: &LocalArgs, ory_url: Option<Url>) -> anyhow::Result<Deployment> {
    let (listen, local_url) = listen_and_public_url(&args.serve)?;
    let public_url = args.public_url.clone().unwrap_or(local_url);
    let pass_client_headers = args
        .pass_client_header
        .iter()
        .map(|name| PassableHeader::try_from(name.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| anyhow::anyhow!("--pass-client-header: {err}"))?;
    let (signing_key, previous_key) = match args.jwt_key.as_slice() {
        [] => {
            let home = home::dir()?;
            (home::kept_signing_key(&home)?.0, home::kept_previous_key(&home)?)
        }
        [current] => (home::read_signing_key(current)?.0, None),
        [current, previous] => {
            let retired = home::read_retired_key(previous).map_err(|error| anyhow::anyhow!("--jwt-key {error:#}"))?;
            (home::read_signing_key(current)?.0, Some(retired))
        }
        _ => bail!("--jwt-key: at most twice, the current key and the previous one"),
    };
    Ok(Deployment {
        upstream: args.upstream.clone(),
        listen,
        public_url,
        ory_url,
        project_api_key: args.project_api_key.clone().filter(|key| !key.is_empty()),
        protection: Protection {
            prefixes: args.protect_path_prefix.clone(),
            globs: args.protect_path_glob.clone(),
            regexes: args.protect_path_regex.clone(),
            ignore_case: args.protect_path_ignore_case,
        },
        pass_client_headers,
        jwt_enabled: !args.no_jwt,
        jwt_ttl: args.jwt_ttl.into(),
        jwt_audience: args.jwt_audience.clone(),
        jwt_claims: copied_claims(&args.jwt_claim)?,
        jwt_session_claim: args.jwt_session_claim.into(),
        jwt_warn_bytes: args.jwt_warn_bytes,
        session_cache_ttl: args.session_cache_ttl.map(Into::into),
        cookie_domain: args.cookie_domain.clone(),
        default_redirect_url: args.default_redirect_url.clone(),
        allowed_cors_origins: args.allowed_cors_origins.clone(),
        additional_cors_headers: args.additional_cors_headers.clone(),
        rewrite_host: args.rewrite_host,
        upstream_ca_file: args.serve.upstream_ca_file.clone(),
        limits: args.serve.limits(),
        workers: args.serve.workers(),
        metrics_addr: args.serve.metrics_addr,
        signing_key,
        previous_key,
        inline_signing_key: false,
        max_concurrent_whoami: args.max_concurrent_whoami.map(std::num::NonZeroU32::get),
        open_path_wait: args.open_path_wait.map(Into::into),
        session_cookie_prefixes: args.session_cookie.clone(),
    })
}

/// `--jwt-claim NAME=/POINTER`s, checked as the filter checks them.
fn copied_claims(given: &[String]) -> anyhow::Result<Vec<CopiedClaim>> {
    let mut claims: Vec<CopiedClaim> = Vec::with_capacity(given.len());
    for text in given {
        let (name, pointer) =
            text.split_once('=').with_context(|| format!("--jwt-claim: `{text}` is not NAME=/json/pointer"))?;
        let name = ClaimName::try_from(name).map_err(|err| anyhow::anyhow!("--jwt-claim: {err}"))?;
        let pointer = SessionPointer::try_from(pointer).map_err(|err| anyhow::anyhow!("--jwt-claim: {err}"))?;
        if claims.iter().any(|claim| claim.name == name) {
            bail!("--jwt-claim: {} is given twice", name.as_str());
        }
        claims.push(CopiedClaim { name, pointer });
    }
    Ok(claims)
}

/// The plan `ory-proxy local` would run with the same flags, for Envoy.
pub async fn resolve_for_envoy(args: &EnvoyArgs) -> anyhow::Result<Plan> {
    if let Some(filter) = &args.local.filter {
        bail!("--filter {}: Envoy loads the module from --module-path instead", filter.display());
    }
    // The Envoy listener this prints is plain HTTP (TLS is the runner's, or a load balancer's
    // in front of Envoy): plan it as `local --no-https` would.
    let mut local = args.local.clone();
    local.serve.no_https = true;
    let mut deployment = resolve(&local).await?;
    deployment.inline_signing_key = args.inline_signing_key;
    deployment.plan()
}

/// How long a retired key stays in the JWKS: until the last token it signed (`jwt_ttl`) and the
/// last JWKS cache without the new key (the JWKS max-age) have run out.
pub fn previous_key_window(jwt_ttl: Duration) -> Duration {
    jwt_ttl + Duration::from_secs(u64::from(FilterConfig::default().jwks_max_age_seconds))
}

/// The cluster `--upstream` makes for `ory-proxy run`.
pub const UPSTREAM_CLUSTER: &str = "upstream";

/// The plan `ory-proxy run` asks for: anybody's filter with the clusters, routes and
/// configuration given, and nothing of ours (no Ory, no signing key).
pub fn resolve_run(args: &RunArgs) -> anyhow::Result<Plan> {
    let (listen, public_url) = listen_and_public_url(&args.serve)?;
    let mut clusters = Vec::new();
    let mut routes = Vec::new();
    if let Some(upstream) = &args.upstream {
        let (cluster, route) = upstream_route(UPSTREAM_CLUSTER, upstream).context("--upstream")?;
        clusters.push(cluster);
        routes.push(route);
    }
    for given in &args.clusters {
        if clusters.iter().any(|cluster: &Cluster| cluster.name == given.name) {
            let why = if given.name == UPSTREAM_CLUSTER { " (--upstream makes it)" } else { "" };
            bail!("--cluster {}: a second cluster of that name{why}", given.name);
        }
        clusters.push(Cluster::new(&given.name, given.url.as_str()).context("--cluster")?);
    }
    for given in &args.routes {
        if routes.iter().any(|route: &Route| route.prefix == given.prefix) {
            let why = if given.prefix == "/" && args.upstream.is_some() { " (--upstream routes /)" } else { "" };
            bail!("--route {}={}: a second route for {}{why}", given.prefix, given.cluster, given.prefix);
        }
        if !clusters.iter().any(|cluster| cluster.name == given.cluster) {
            bail!(
                "--route {}={}: no cluster {} (make one with --cluster {}=URL)",
                given.prefix,
                given.cluster,
                given.cluster,
                given.cluster
            );
        }
        routes.push(Route::to(&given.prefix, &given.cluster));
    }
    let placement = if args.service { Placement::Service } else { Placement::HttpFilter };
    if placement == Placement::HttpFilter && routes.is_empty() {
        bail!(
            "nowhere to send requests: give --upstream URL or --route PREFIX=CLUSTER (or --service for a plugin without HTTP)"
        );
    }
    let plugin = PluginPlan {
        name: args.plugin_name.clone(),
        root_id: args.root_id.clone(),
        vm_id: args.vm_id.clone(),
        configuration: Configuration::Given(read_text_flag("--filter-config", args.filter_config.as_ref())?),
        vm_configuration: read_text_flag("--vm-config", args.vm_config.as_ref())?,
        environment: args.vm_env.clone(),
        placement,
    };
    Ok(Plan {
        listen,
        public_url,
        clusters,
        routes,
        upstream_ca_file: args.serve.upstream_ca_file.clone(),
        limits: args.serve.limits(),
        workers: args.serve.workers(),
        metrics_addr: args.serve.metrics_addr,
        ready_clusters: Vec::new(),
        plugin,
    })
}

/// A `TEXT|@FILE` flag's text (empty when not given).
fn read_text_flag(flag: &str, given: Option<&TextOrFile>) -> anyhow::Result<String> {
    match given {
        None => Ok(String::new()),
        Some(TextOrFile::Text(text)) => Ok(text.clone()),
        Some(TextOrFile::File(path)) => {
            std::fs::read_to_string(path).with_context(|| format!("{flag} @{}: cannot read it", path.display()))
        }
    }
}

/// The file the signing key is read from: --jwt-key, or the one kept in $ORY_PROXY_HOME.
pub fn signing_key_file(args: &LocalArgs) -> anyhow::Result<PathBuf> {
    match args.jwt_key.first() {
        Some(path) => Ok(path.clone()),
        None => Ok(home::dir()?.join(home::SIGNING_KEY_FILE)),
    }
}

/// Where to listen, and the URL browsers use for it.
fn listen_and_public_url(serve: &ServeArgs) -> anyhow::Result<(SocketAddr, Url)> {
    let listen = listen_address(&serve.listen.host, serve.listen.port)?;
    let public_host = if listen.ip().is_loopback() || listen.ip().is_unspecified() {
        "localhost".to_string()
    } else {
        serve.listen.host.clone()
    };
    let scheme = if serve.no_https { "http" } else { "https" };
    let public_url = Url::parse(&format!("{scheme}://{public_host}:{}", serve.listen.port))
        .with_context(|| format!("--host: `{}` cannot be a URL's host", serve.listen.host))?;
    Ok((listen, public_url))
}

/// The address `--host` names: an IP address, or a name that resolves.
fn listen_address(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    let trimmed = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = trimmed.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port)
        .to_socket_addrs()
        .with_context(|| format!("--host: cannot resolve `{host}`"))?
        .next()
        .with_context(|| format!("--host: `{host}` has no address"))
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub listen: SocketAddr,
    pub public_url: Url,
    pub clusters: Vec<Cluster>,
    pub routes: Vec<Route>,
    /// The CA certificates (PEM) HTTPS upstreams are verified against, instead of the usual roots.
    pub upstream_ca_file: Option<PathBuf>,
    pub limits: Limits,
    /// Worker threads, each with a VM of the plugin (a service has one); one per core when
    /// `None`.
    pub workers: Option<usize>,
    /// Where metrics and health are served (`--metrics-addr`), if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Clusters that must accept connections for the proxy to be ready (`/readyz`).
    pub ready_clusters: Vec<String>,
    pub plugin: PluginPlan,
}

/// The plugin both hosts run and what they hand it, in Envoy's terms (a `PluginConfig` with its
/// `vm_config`).
#[derive(Debug, Clone)]
pub struct PluginPlan {
    /// `plugin_name`.
    pub name: String,
    /// `plugin_root_id`.
    pub root_id: String,
    /// `plugin_vm_id`: Envoy shares data between the VMs of one VM id.
    pub vm_id: String,
    /// What `on_configure` reads; [`Plan::filter_configuration`] is its exact bytes.
    pub configuration: Configuration,
    /// What `on_vm_start` reads.
    pub vm_configuration: String,
    /// Environment variables of the VMs (Envoy's `vm_config.environment_variables`): for our
    /// filter, the signing key unless it is inlined. The runner hands them to its VMs itself; the
    /// Envoy bootstrap names them in `host_env_keys`, so Envoy passes the values of its own
    /// process environment and they never appear in its configuration.
    pub environment: Vec<(String, String)>,
    pub placement: Placement,
}

/// A plugin configuration: ours, typed, or anybody's, as given.
#[derive(Debug, Clone)]
pub enum Configuration {
    Ory(Box<FilterConfig>),
    Given(String),
}

/// Where a plugin runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// An HTTP filter on the listener: every request passes through it.
    HttpFilter,
    /// A root-only plugin, Envoy's wasm service (`envoy.bootstrap.wasm`, a singleton): one VM,
    /// its root context only, no listener.
    Service,
}

impl PluginPlan {
    /// Our filter with `filter`, and the VMs' environment that goes with it.
    fn ory(filter: FilterConfig, environment: Vec<(String, String)>) -> PluginPlan {
        PluginPlan {
            name: FILTER_NAME.into(),
            root_id: FILTER_NAME.into(),
            vm_id: FILTER_NAME.into(),
            configuration: Configuration::Ory(Box::new(filter)),
            vm_configuration: String::new(),
            environment,
            placement: Placement::HttpFilter,
        }
    }
}

impl Plan {
    /// The filter configuration exactly as both hosts hand it to `on_configure`.
    pub fn filter_configuration(&self) -> String {
        match &self.plugin.configuration {
            Configuration::Ory(filter) => serde_json::to_string(filter).expect("a FilterConfig serialises"),
            Configuration::Given(text) => text.clone(),
        }
    }

    pub fn cluster_names(&self) -> Vec<String> {
        self.clusters.iter().map(|c| c.name.clone()).collect()
    }

    /// Our filter's signing key, wherever the plan puts it.
    pub fn signing_key(&self) -> Option<&str> {
        let Configuration::Ory(filter) = &self.plugin.configuration else { return None };
        let inline = filter.signing_key.as_ref().and_then(serde_json::Value::as_str);
        let environment = &self.plugin.environment;
        let from_env = environment.iter().find(|(name, _)| name == SIGNING_KEY_ENV).map(|(_, key)| key.as_str());
        inline.or(from_env)
    }
}

/// The cluster for an upstream URL and the route `/` to it; an upstream with a path serves the
/// app below that path.
fn upstream_route(name: &str, upstream: &Url) -> anyhow::Result<(Cluster, Route)> {
    let cluster = Cluster::new(name, origin(upstream).as_str()).context("the upstream URL")?;
    let mut route = Route::to("/", name);
    if upstream.path() != "/" {
        let base = upstream.path().trim_end_matches('/');
        route.prefix_rewrite = Some(format!("{base}/"));
    }
    Ok((cluster, route))
}

fn origin(url: &Url) -> Url {
    let mut origin = url.clone();
    origin.set_path("/");
    origin.set_query(None);
    origin.set_fragment(None);
    origin
}

/// The host names under which this proxy answers on this machine: a request naming one of them
/// keeps its own scheme and host in redirects. The public URL's host is trusted too, but comes
/// through the door that URL names (its scheme wins), so it is not one of these; any other host
/// is treated as spoofed.
pub fn local_names(listen: &SocketAddr) -> Vec<String> {
    let mut names: Vec<String> = DEFAULT_PROXY_NAMES.map(String::from).to_vec();
    let listen_ip = listen.ip();
    if !listen_ip.is_unspecified() && !names.contains(&listen_ip.to_string()) {
        names.push(listen_ip.to_string());
    }
    names
}

/// Every host name the proxy answers for, the public URL's included: what its certificate names.
pub fn proxy_names(listen: &SocketAddr, public_url: &Url) -> Vec<String> {
    let mut names = local_names(listen);
    let public_host = public_url.host_str().map(|host| host.trim_start_matches('[').trim_end_matches(']'));
    if let Some(host) = public_host
        && !names.iter().any(|name| name == host)
    {
        names.push(host.to_string());
    }
    names
}

impl Deployment {
    /// The plan: clusters, routes and the filter's configuration. Checks the rules and lists
    /// the filter would refuse, naming their flags.
    pub fn plan(&self) -> anyhow::Result<Plan> {
        let (app, mut app_route) = upstream_route(APP_CLUSTER, &self.upstream)?;
        if self.rewrite_host {
            app_route.host_rewrite = Some(app.authority());
        }
        let mut clusters = vec![app];
        let mut routes = vec![app_route];

        let previous_keys = self.previous_key.iter().filter_map(|retired| self.still_published(retired)).collect();
        let mut filter = FilterConfig { previous_keys, ..FilterConfig::default() };
        let vm_environment = if self.inline_signing_key {
            filter.signing_key = Some(self.signing_key.clone().into());
            Vec::new()
        } else {
            filter.signing_key_env = Some(SIGNING_KEY_ENV.to_string());
            vec![(SIGNING_KEY_ENV.to_string(), self.signing_key.clone())]
        };
        if let Some(ory_url) = &self.ory_url {
            let ory = Cluster::new(ORY_CLUSTER, origin(ory_url).as_str()).context("the Ory URL")?;
            let base = ory_url.path().trim_end_matches('/');
            routes.push(Route {
                prefix: format!("{ORY_PREFIX}/"),
                cluster: ORY_CLUSTER.into(),
                prefix_rewrite: Some(format!("{base}/")),
                host_rewrite: Some(ory.authority()),
            });
            clusters.push(ory);
            self.fill_ory_settings(ory_url, &mut filter)?;
        } else if !self.protection.is_empty() {
            bail!("protecting paths needs to know where Ory is: set --sdk-url (or ORY_SDK_URL)");
        }
        Ok(Plan {
            listen: self.listen,
            public_url: self.public_url.clone(),
            clusters,
            routes,
            upstream_ca_file: self.upstream_ca_file.clone(),
            limits: self.limits,
            workers: self.workers,
            metrics_addr: self.metrics_addr,
            // Ready once Ory can be reached (the app may start later: requests to it get 503).
            ready_clusters: self.ory_url.iter().map(|_| ORY_CLUSTER.to_string()).collect(),
            plugin: PluginPlan::ory(filter, vm_environment),
        })
    }

    /// A retired key as the JWKS publishes it: until the tokens it signed (`--jwt-ttl`) and the
    /// JWKS caches that hold it (the JWKS max-age) have run out; `None` once they have.
    fn still_published(&self, retired: &home::RetiredKey) -> Option<PreviousKey> {
        let retired_at = retired.retired.duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs());
        let until_unix = retired_at.saturating_add(previous_key_window(self.jwt_ttl).as_secs());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs());
        (until_unix > now).then(|| PreviousKey { jwk: retired.key.public_jwk(), until_unix })
    }

    /// Everything the filter needs to know about Ory and the paths it guards; what was not asked
    /// for stays at the filter's default (and so is not written).
    fn fill_ory_settings(&self, ory_url: &Url, filter: &mut FilterConfig) -> anyhow::Result<()> {
        let mut ory = OrySettings::new(ory_url.as_str().trim_end_matches('/'));
        ory.cluster = ORY_CLUSTER.to_string();
        ory.project_api_key = self.project_api_key.clone();
        if let Some(max) = self.max_concurrent_whoami {
            ory.max_concurrent_whoami = max.try_into().context("--max-concurrent-whoami must be at least 1")?;
        }
        if let Some(wait) = self.open_path_wait {
            let millis = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            ory.open_path_wait_ms = NonZeroU64::new(millis).context("--open-path-wait must be at least 1ms")?;
        }
        filter.ory = Some(ory);
        filter.public_url = Some(self.public_url.as_str().trim_end_matches('/').to_string());
        filter.proxy_names = local_names(&self.listen);
        filter.protect = self.protection.to_filter()?;
        filter.pass_client_headers = self.pass_client_headers.clone();
        filter.jwt = JwtSettings {
            enabled: self.jwt_enabled,
            ttl_seconds: NonZeroU64::new(self.jwt_ttl.as_secs()).context("--jwt-ttl must be at least 1s")?,
            audience: self.jwt_audience.clone(),
            session_claim: self.jwt_session_claim,
            claims: self.jwt_claims.clone(),
            warn_bytes: NonZeroU32::new(self.jwt_warn_bytes).context("--jwt-warn-bytes must be at least 1")?,
        };
        if !self.session_cookie_prefixes.is_empty() {
            filter.session_cookie_prefixes = self
                .session_cookie_prefixes
                .iter()
                .map(|prefix| CookiePrefix::try_from(prefix.as_str()))
                .collect::<Result<_, _>>()
                .map_err(|err| anyhow::anyhow!("--session-cookie: {err}"))?;
        }
        if let Some(ttl) = self.session_cache_ttl {
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            filter.session_cache = SessionCacheSettings { ttl_ms, ..SessionCacheSettings::default() };
        }
        filter.cookie_domain = self.cookie_domain.clone();
        filter.default_redirect_url = self.default_redirect_url.as_ref().map(|url| url.as_str().to_string());
        filter.cors.allowed_origins = CorsOrigins::try_from(self.allowed_cors_origins.clone())
            .map_err(|err| anyhow::anyhow!("--allowed-cors-origins: {err}"))?;
        filter.cors.additional_headers = CorsHeaders::try_from(self.additional_cors_headers.clone())
            .map_err(|err| anyhow::anyhow!("--additional-cors-headers: {err}"))?;
        Ok(())
    }
}

/// Whether binding to this address makes the proxy reachable from other machines.
pub fn is_public(listen: &SocketAddr) -> bool {
    match listen.ip() {
        IpAddr::V4(ip) => !ip.is_loopback(),
        IpAddr::V6(ip) => !ip.is_loopback(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The filter configuration as the hosts receive it.
    fn written(plan: &Plan) -> serde_json::Value {
        serde_json::from_str(&plan.filter_configuration()).unwrap()
    }

    fn deployment() -> Deployment {
        let upstream = Url::parse("http://127.0.0.1:3000").unwrap();
        Deployment::new(upstream, "127.0.0.1:4000".parse().unwrap(), "PEM".into())
    }

    #[test]
    fn without_ory_the_plan_is_app_only() {
        let plan = deployment().plan().unwrap();
        assert_eq!(plan.cluster_names(), ["app"]);
        assert_eq!(plan.routes, [Route::to("/", "app")]);
        assert_eq!(plan.filter_configuration(), r#"{"signing_key_env":"ORY_PROXY_SIGNING_KEY"}"#);
    }

    #[test]
    fn the_key_travels_in_the_vms_environment_unless_inlined() {
        let plan_env = deployment().plan().unwrap();
        assert_eq!(plan_env.plugin.environment, [("ORY_PROXY_SIGNING_KEY".to_string(), "PEM".to_string())]);
        assert!(!plan_env.filter_configuration().contains("PEM"), "the configuration holds no key");
        assert_eq!(plan_env.signing_key(), Some("PEM"));

        let mut inline = deployment();
        inline.inline_signing_key = true;
        let plan_inline = inline.plan().unwrap();
        assert!(plan_inline.plugin.environment.is_empty());
        assert_eq!(plan_inline.filter_configuration(), r#"{"signing_key":"PEM"}"#);
        assert_eq!(plan_inline.signing_key(), Some("PEM"));
    }

    #[test]
    fn whoami_limits_are_written_only_when_set() {
        let mut deployment = deployment();
        deployment.ory_url = Some(Url::parse("http://127.0.0.1:4433").unwrap());
        let plain = deployment.plan().unwrap();
        assert_eq!(written(&plain)["ory"].get("max_concurrent_whoami"), None);
        assert_eq!(written(&plain)["ory"].get("open_path_wait_ms"), None);
        assert_eq!(written(&plain).get("session_cookie_prefixes"), None);
        deployment.max_concurrent_whoami = Some(4);
        deployment.open_path_wait = Some(Duration::from_millis(150));
        deployment.session_cookie_prefixes = vec!["sid".into()];
        let set = deployment.plan().unwrap();
        assert_eq!(written(&set)["ory"]["max_concurrent_whoami"], 4);
        assert_eq!(written(&set)["ory"]["open_path_wait_ms"], 150);
        assert_eq!(written(&set)["session_cookie_prefixes"], json!(["sid"]));
    }

    #[test]
    fn ory_gets_a_cluster_and_a_rewriting_route() {
        let mut deployment = deployment();
        deployment.ory_url = Some(Url::parse("https://example.projects.oryapis.com/").unwrap());
        let plan = deployment.plan().unwrap();
        assert_eq!(plan.cluster_names(), ["app", "ory"]);
        let ory = &plan.routes[1];
        assert_eq!(ory.prefix, "/.ory/");
        assert_eq!(ory.prefix_rewrite.as_deref(), Some("/"));
        assert_eq!(ory.host_rewrite.as_deref(), Some("example.projects.oryapis.com"));
        assert_eq!(written(&plan)["ory"]["url"], "https://example.projects.oryapis.com");
        assert_eq!(written(&plan)["public_url"], "http://localhost:4000");
    }

    #[test]
    fn a_kratos_below_a_path_keeps_its_path() {
        let mut deployment = deployment();
        deployment.ory_url = Some(Url::parse("http://127.0.0.1:4455/.ory/kratos/public").unwrap());
        let plan = deployment.plan().unwrap();
        assert_eq!(plan.routes[1].prefix_rewrite.as_deref(), Some("/.ory/kratos/public/"));
    }

    #[test]
    fn case_and_passed_headers_reach_the_filter_configuration() {
        let mut deployment = deployment();
        deployment.ory_url = Some(Url::parse("http://127.0.0.1:4433").unwrap());
        let plain = deployment.plan().unwrap();
        assert_eq!(written(&plain)["protect"].get("ignore_case"), None);
        assert_eq!(written(&plain).get("pass_client_headers"), None);

        deployment.protection.ignore_case = true;
        deployment.pass_client_headers = vec![PassableHeader::try_from("x-remote-user").unwrap()];
        let set = deployment.plan().unwrap();
        assert_eq!(written(&set)["protect"]["ignore_case"], true);
        assert_eq!(written(&set)["pass_client_headers"], json!(["x-remote-user"]));
    }

    #[test]
    fn protection_without_ory_is_refused() {
        let mut deployment = deployment();
        deployment.protection.prefixes.push("/members".into());
        let error = deployment.plan().unwrap_err().to_string();
        assert!(error.contains("--sdk-url"), "{error}");
    }

    #[test]
    fn names_include_the_listen_address_and_public_host() {
        let names = proxy_names(&"192.168.1.5:4000".parse().unwrap(), &Url::parse("https://dev.example:4000").unwrap());
        assert_eq!(names, ["localhost", "127.0.0.1", "::1", "192.168.1.5", "dev.example"]);
        assert!(is_public(&"0.0.0.0:4000".parse().unwrap()));
        assert!(!is_public(&"127.0.0.1:4000".parse().unwrap()));
    }
}
