//! The command line: flags (and the environment variables the original `ory proxy` read)
//! parsed into typed values. Nothing here reads a file, the network or the environment beyond
//! what clap reads; [`crate::deployment::resolve`] does that.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ory_proxy_filter::config::{DEFAULT_JWT_TTL_SECONDS, DEFAULT_JWT_WARN_BYTES, SessionClaim};
use url::Url;

use crate::proxy::Limits;

const ABOUT: &str = "Put your app and Ory on one origin, and hand your app a signed JWT of every session.";

const LOCAL_HELP: &str = "\
Opens a reverse proxy in front of your app (UPSTREAM) on https://localhost:<port>. The same
port also answers plain HTTP (http://127.0.0.1:<port>/ works too); --no-https serves HTTP only.
The HTTPS certificate comes from a local certificate authority kept in $ORY_PROXY_HOME, which
is added to the system and browser trust stores on the first run (--dont-install-cert skips
that; `ory-proxy cert uninstall` undoes it).

Ory's APIs and pages are served under /.ory/ on the same origin, so Ory's cookies work in the
browser. Every request to your app is checked against Ory's /sessions/whoami; with an active
session the proxy replaces the Authorization header with

    Authorization: Bearer <JWT>

an ES256-signed JWT whose `sub` is the identity id and whose `session` claim is the whole Ory
session. Verify it with the public key published at

    https://localhost:<port>/.ory/jwks.json

The signing key is kept in $ORY_PROXY_HOME (default: your configuration directory) so that
apps' JWKS caches survive restarts.

Paths given with --protect-path-prefix/-glob/-regex require a session: browsers are sent to
the login page, API clients get 401.

Where Ory is comes from exactly one of: --sdk-url (ORY_SDK_URL), --project (ORY_PROJECT_SLUG), or
ORY_ACCESS_TOKEN (the console is asked which project the token belongs to).

Examples:
  ory-proxy local http://localhost:3000 --project happy-cat-123 --protect-path-prefix /members
  ORY_SDK_URL=https://happy-cat-123.projects.oryapis.com ory-proxy local http://localhost:3000
  ory-proxy local http://localhost:3000 --sdk-url http://127.0.0.1:4433 --port 4000";

#[derive(Debug, Parser)]
#[command(name = "ory-proxy", version = VERSION.as_str(), about = ABOUT)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log more (repeat for even more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Log only warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

/// The binary's version and the embedded filter's.
static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("{} (filter {}, proxy-wasm ABI v0.2.1)", env!("CARGO_PKG_VERSION"), ory_proxy_filter::VERSION)
});

// Parsed once per run: the size of the `local` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy in front of your app.
    #[command(long_about = LOCAL_HELP)]
    Local(LocalArgs),
    /// Run any proxy-wasm filter with the clusters, routes and configuration Envoy would give it.
    #[command(long_about = RUN_HELP)]
    Run(RunArgs),
    /// Print the Envoy configuration that runs the same filter with the same settings.
    #[command(long_about = ENVOY_HELP)]
    EnvoyConfig(EnvoyArgs),
    /// The local certificate authority that HTTPS uses.
    #[command(subcommand)]
    Cert(CertCommand),
    /// The JWT signing keys kept in $ORY_PROXY_HOME.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Check what `ory-proxy local` needs: the local CA and its trust stores, the signing key, the
    /// port, Ory and the clock. One line each, with what to do; exits non-zero when something
    /// must be fixed.
    Doctor(DoctorArgs),
}

/// `ory-proxy doctor`: the flags of `local` that say where things are.
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub listen: ListenArgs,

    #[command(flatten)]
    pub ory: OryArgs,

    /// The signing key to check instead of the one kept in $ORY_PROXY_HOME.
    #[arg(long, value_name = "FILE")]
    pub jwt_key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a new signing key and keep the current one as the previous: the JWKS publishes both
    /// until the tokens the old key signed and the JWKS caches holding it have run out
    /// (--jwt-ttl plus the JWKS max-age, 6 minutes by default), then only the new one. Restart
    /// ory-proxy (and make Envoy's configuration again) to sign with it.
    Rotate,
    /// Show the kept keys with their key ids and ages.
    List,
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Print the path of the local CA certificate (to trust it somewhere ory-proxy does not reach).
    Path,
    /// Remove the local CA from every trust store it was installed in (the CA itself stays).
    Uninstall,
}

const ENVOY_HELP: &str = "\
Prints an Envoy v3 bootstrap (YAML) that runs the ory-proxy filter exactly as `ory-proxy local`
would with the same flags: the same filter configuration, routes and clusters.

The JWT signing key (--jwt-key, or the key kept in $ORY_PROXY_HOME) is not written into the
configuration: Envoy passes the environment variable ORY_PROXY_SIGNING_KEY of its own process to
the filter, so start Envoy with it set from the key file, the same key for every instance. Nobody
who can read the configuration (Envoy's admin /config_dump, say) reads the key.
--inline-signing-key writes the key into the configuration instead. Build the module with
`make filter` and put it where --module-path says. See envoy/README.md.

Examples:
  ory-proxy envoy-config http://app:3000 --sdk-url https://<slug>.projects.oryapis.com \\
      --host 0.0.0.0 --jwt-key signing-key.pem -o envoy.yaml
  ORY_PROXY_SIGNING_KEY=\"$(cat signing-key.pem)\" envoy -c envoy.yaml";

#[derive(Debug, Clone, Args)]
pub struct EnvoyArgs {
    #[command(flatten)]
    pub local: LocalArgs,

    /// Where Envoy finds the filter module (a path inside the container when Envoy runs in one).
    #[arg(long, value_name = "PATH", default_value = crate::envoy::DEFAULT_MODULE_PATH)]
    pub module_path: String,

    /// Serve Envoy's admin interface on 127.0.0.1:<PORT> (default: no admin interface).
    #[arg(long, value_name = "PORT")]
    pub admin_port: Option<u16>,

    /// Write the configuration to this file (readable by its owner only) instead of printing it.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Write the signing key into the filter configuration instead of having Envoy pass it from
    /// its environment: for proxy-wasm hosts that cannot give a VM environment variables. Anyone
    /// who can read the configuration (Envoy's admin /config_dump included) can read the key.
    #[arg(long)]
    pub inline_signing_key: bool,
}

impl EnvoyArgs {
    pub fn options(&self) -> crate::envoy::EnvoyOptions {
        crate::envoy::EnvoyOptions { module_path: self.module_path.clone(), admin_port: self.admin_port }
    }
}

#[derive(Debug, Clone, Args)]
pub struct LocalArgs {
    /// The URL of your app, e.g. http://localhost:3000.
    #[arg(value_parser = http_url)]
    pub upstream: Url,

    /// The URL browsers use for the proxy when it is not http(s)://localhost:<port>: behind a
    /// load balancer or a real domain, e.g. https://app.example.com. Redirects, `return_to` and
    /// Ory's URLs are made on it; requests naming another host fall back to it.
    #[arg(long, value_name = "URL", value_parser = public_url)]
    pub public_url: Option<Url>,

    #[command(flatten)]
    pub ory: OryArgs,

    /// Require a session for paths starting with this string (a plain string prefix: /members
    /// also covers /membership). Case-sensitive, as in `ory proxy`: /members does not cover
    /// /MEMBERS unless --protect-path-ignore-case. Repeatable.
    #[arg(long, value_name = "PREFIX")]
    pub protect_path_prefix: Vec<String>,

    /// Require a session for paths matching this glob (`*` stays within a segment, `**` does not).
    /// Repeatable.
    #[arg(long, value_name = "GLOB")]
    pub protect_path_glob: Vec<String>,

    /// Require a session for paths matching this regular expression (unanchored: write ^ and $
    /// yourself; Rust regex syntax with \d, \w, \s and (?i), but no \p{…} Unicode
    /// properties). Repeatable.
    #[arg(long, value_name = "REGEX")]
    pub protect_path_regex: Vec<String>,

    /// Match the --protect-path-prefix, -glob and -regex rules without regard to case, for apps
    /// that serve /MEMBERS like /members.
    #[arg(long)]
    pub protect_path_ignore_case: bool,

    /// Let this client header reach your app although it names a user or a path (the proxy
    /// removes such headers from every request: X-Remote-User, Remote-User, X-Auth-Request-*,
    /// X-Original-URL, …). Repeatable.
    #[arg(long, value_name = "HEADER")]
    pub pass_client_header: Vec<String>,

    /// How long a JWT is valid, e.g. 60s or 5m.
    #[arg(long, value_name = "DURATION", value_parser = parse_nonzero_duration,
          default_value_t = Duration::from_secs(DEFAULT_JWT_TTL_SECONDS).into())]
    pub jwt_ttl: humantime::Duration,

    /// How long a session answer from Ory is reused, e.g. 5s. 0s asks Ory on every request.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub session_cache_ttl: Option<humantime::Duration>,

    /// At most this many whoami calls to Ory at once, per filter VM (per worker thread): beyond
    /// that, a request with an unknown session is not asked about (protected paths answer 502,
    /// others go on without a JWT). Default 32.
    #[arg(long, value_name = "N")]
    pub max_concurrent_whoami: Option<NonZeroU32>,

    /// Cookies whose names start with this carry an Ory session (repeatable), for a Kratos with
    /// its own session cookie name. Default: ory_session_ (Ory Network) and ory_kratos_session.
    /// Only requests with such a cookie, an X-Session-Token or a bearer token are checked with Ory.
    #[arg(long, value_name = "PREFIX")]
    pub session_cookie: Vec<String>,

    /// How long a request to an unprotected path waits for Ory's answer about its session before
    /// it goes on without a JWT (the answer still fills the cache), e.g. 300ms. Default 300ms.
    #[arg(long, value_name = "DURATION", value_parser = parse_nonzero_duration)]
    pub open_path_wait: Option<humantime::Duration>,

    /// Sign JWTs with this key (PKCS#8 or SEC1 PEM, or a private JWK) instead of the kept one.
    /// Given twice, the second is the previous key: it signs nothing, and the JWKS publishes it
    /// for --jwt-ttl plus the JWKS max-age after its file was last written (when it was retired).
    #[arg(long, value_name = "FILE", num_args = 1, action = clap::ArgAction::Append)]
    pub jwt_key: Vec<PathBuf>,

    /// Put this `aud` claim into every JWT.
    #[arg(long, value_name = "AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Do not add a JWT to requests.
    #[arg(long)]
    pub no_jwt: bool,

    /// Copy a value of the session into a top-level JWT claim: a claim name and a JSON pointer
    /// into Ory's whoami answer, e.g. email=/identity/traits/email. Repeatable. The claims the
    /// proxy sets itself (sub, iss, aud, exp, …) cannot be overridden.
    #[arg(long, value_name = "NAME=/POINTER")]
    pub jwt_claim: Vec<String>,

    /// How much of the session goes into the JWT's `session` claim: all of it (as `ory proxy`
    /// does), a minimal part (its id, identity id, assurance level, expiry and authentication
    /// methods), or none. A session with many devices or large traits can outgrow the header
    /// limit of common servers (8 KiB).
    #[arg(long, value_enum, value_name = "WHAT", default_value_t = SessionClaimArg::Full)]
    pub jwt_session_claim: SessionClaimArg,

    /// Log a warning, with advice, when a JWT is longer than this many bytes (it is still sent).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_JWT_WARN_BYTES)]
    pub jwt_warn_bytes: u32,

    /// Set this Domain on the cookies Ory sends (default: none, the cookie belongs to the host).
    #[arg(long, value_name = "DOMAIN")]
    pub cookie_domain: Option<String>,

    /// Where to send users when Ory would show its welcome page (default: the proxy's URL).
    #[arg(long, value_name = "URL", value_parser = http_url)]
    pub default_redirect_url: Option<Url>,

    /// Origins allowed to call through the proxy with credentials (besides the proxy's own).
    #[arg(long, value_name = "ORIGIN", value_delimiter = ',')]
    pub allowed_cors_origins: Vec<String>,

    /// Request headers to allow in CORS besides the usual ones.
    #[arg(long, value_name = "HEADER", value_delimiter = ',')]
    pub additional_cors_headers: Vec<String>,

    /// Send your app its own host name in Host instead of the proxy's.
    #[arg(long)]
    pub rewrite_host: bool,

    /// Run this proxy-wasm filter instead of the built-in one. It is handed the Ory
    /// configuration and the JWT signing key: for other filters, use `ory-proxy run`.
    #[arg(long, value_name = "FILE.wasm")]
    pub filter: Option<PathBuf>,

    /// An Ory project API key, sent to Ory with every request through /.ory/.
    #[arg(long, env = "ORY_PROJECT_API_KEY", hide_env_values = true)]
    pub project_api_key: Option<String>,

    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Where Ory is: exactly one of these says (for `local`, `envoy-config` and `doctor`).
#[derive(Debug, Clone, Args)]
pub struct OryArgs {
    /// Your Ory (Network or self-hosted Kratos) public URL. ORY_KRATOS_URL is read too.
    #[arg(long, env = "ORY_SDK_URL", value_parser = http_url_or_empty)]
    pub sdk_url: Option<UrlOrEmpty>,

    /// The older name of ORY_SDK_URL, read as the original `ory proxy` did.
    #[arg(long, env = "ORY_KRATOS_URL", value_parser = http_url_or_empty, hide = true)]
    pub kratos_url: Option<UrlOrEmpty>,

    /// An Ory access token: the console is asked which project it belongs to.
    #[arg(long, env = "ORY_ACCESS_TOKEN", hide = true, hide_env_values = true)]
    pub access_token: Option<String>,

    /// Your Ory Network project slug; the project URL is https://<slug>.projects.<api endpoint>.
    #[arg(long, env = "ORY_PROJECT_SLUG")]
    pub project: Option<String>,

    /// The Ory API endpoint that project URLs are made from.
    #[arg(long, env = "ORY_API_ENDPOINT", default_value = "https://oryapis.com", value_parser = http_url)]
    pub api_endpoint: Url,

    /// The Ory console API, asked for the project of ORY_ACCESS_TOKEN.
    #[arg(long, env = "ORY_CONSOLE_URL", default_value = "https://api.console.ory.sh", value_parser = http_url)]
    pub console_url: Url,
}

/// Where the proxy listens.
#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    /// The port to listen on.
    #[arg(long, env = "PORT", default_value_t = 4000)]
    pub port: u16,

    /// The address to listen on. Anything but a loopback address makes the proxy reachable from
    /// other machines.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
}

/// Where and how the proxy listens, and the limits on clients and upstreams: the same for
/// `local` and `run`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub listen: ListenArgs,

    /// Worker threads, each serving its connections with a filter VM of its own (Envoy's
    /// --concurrency). Default: one per CPU core.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<NonZeroU32>,

    /// Serve metrics (Prometheus text at /metrics) and health (/healthz, /readyz) on this
    /// address, e.g. 127.0.0.1:9901. Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Serve plain HTTP only (by default the port answers HTTPS and HTTP alike).
    #[arg(long)]
    pub no_https: bool,

    /// Do not add the local HTTPS certificate authority to the OS and browser trust stores.
    #[arg(long)]
    pub dont_install_cert: bool,

    /// Do not open the browser at start.
    #[arg(long)]
    pub no_open: bool,

    /// Verify HTTPS upstreams (Ory, an https app or cluster) against the CA certificates in this
    /// PEM file only, instead of the usual public roots (the runner: Mozilla's, built in; Envoy:
    /// /etc/ssl/certs/ca-certificates.crt). For a self-hosted Kratos with a private CA.
    #[arg(long, value_name = "FILE")]
    pub upstream_ca_file: Option<PathBuf>,

    /// How long a client may take from the first byte of an HTTP/1.1 request to the end of its
    /// headers before the connection is closed.
    #[arg(long, value_name = "DURATION", value_parser = parse_nonzero_duration, help_heading = "Limits",
          default_value_t = Limits::default().request_headers_timeout.into())]
    pub request_headers_timeout: humantime::Duration,

    /// How long a client connection may stay open with no request on it.
    #[arg(long, value_name = "DURATION", value_parser = parse_nonzero_duration, help_heading = "Limits",
          default_value_t = Limits::default().idle_timeout.into())]
    pub idle_timeout: humantime::Duration,

    /// The most client connections served at once; more are closed as they arrive.
    #[arg(long, value_name = "N", help_heading = "Limits",
          default_value_t = NonZeroU32::try_from(Limits::default().max_connections as u32).unwrap_or(NonZeroU32::MIN))]
    pub max_connections: NonZeroU32,

    /// The most a request's headers may take, in KiB; more is answered 431.
    #[arg(long, value_name = "KIB", value_parser = clap::value_parser!(u32).range(1..=8192), help_heading = "Limits",
          default_value_t = (Limits::default().max_request_headers_bytes / 1024) as u32)]
    pub max_request_headers_kb: u32,

    /// The longest an upstream (your app, Ory, a cluster) may stay silent: waiting for response
    /// headers (then 504), and between chunks of a response body (then the response is cut short).
    #[arg(long, value_name = "DURATION", value_parser = parse_nonzero_duration, help_heading = "Limits",
          default_value_t = Limits::default().upstream_timeout.into())]
    pub upstream_timeout: humantime::Duration,
}

impl ServeArgs {
    pub fn workers(&self) -> Option<usize> {
        self.concurrency.map(|n| n.get() as usize)
    }

    pub fn limits(&self) -> Limits {
        Limits {
            request_headers_timeout: self.request_headers_timeout.into(),
            idle_timeout: self.idle_timeout.into(),
            max_connections: self.max_connections.get() as usize,
            max_request_headers_bytes: self.max_request_headers_kb as usize * 1024,
            upstream_timeout: self.upstream_timeout.into(),
        }
    }
}

const RUN_HELP: &str = "\
Runs any proxy-wasm filter (ABI v0.2.1) as Envoy would run it: give it clusters to call, routes
to send requests on, its plugin and VM configuration, and its name, root id and VM id, as an
Envoy configuration would. Nothing of Ory is involved: the filter gets only what these flags say
(the signing key of `ory-proxy local` never reaches it).

Envoy's configuration maps to flags like this:
  config.name                          --plugin-name NAME
  config.root_id                       --root-id ID
  config.vm_config.vm_id               --vm-id ID
  config.configuration (a string)      --filter-config TEXT, or @FILE
  config.vm_config.configuration       --vm-config TEXT, or @FILE
  vm_config.environment_variables      --vm-env NAME=VALUE (repeatable)
  a cluster with one endpoint          --cluster NAME=http://host:port (repeatable)
  a route: prefix to a cluster         --route /prefix=NAME (repeatable; the longest prefix wins)
  a wasm service (singleton)           --service (one VM, its root context only, no listener)

--upstream URL is short for `--cluster upstream=URL --route /=upstream`. Names, root and VM id
default to empty, as in Envoy.

Examples:
  ory-proxy run --filter http_headers.wasm --upstream http://localhost:3000 --root-id http_headers
  ory-proxy run --filter auth.wasm --upstream http://localhost:3000 \\
      --cluster httpbin=http://127.0.0.1:8000 --filter-config @auth.json --no-https
  ory-proxy run --filter hello_world.wasm --service --vm-config '{\"greeting\":\"hi\"}'";

/// `ory-proxy run`: a filter of anybody's, with what an Envoy configuration would give it.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The proxy-wasm module to run.
    #[arg(long, value_name = "FILE.wasm")]
    pub filter: PathBuf,

    /// Send requests to this URL: the cluster `upstream`, and the route `/` to it (an upstream
    /// with a path serves below it).
    #[arg(long, value_name = "URL", value_parser = http_url)]
    pub upstream: Option<Url>,

    /// A cluster the filter may call (and routes may send to): a name and where it is, e.g.
    /// httpbin=http://127.0.0.1:8000. Repeatable.
    #[arg(long = "cluster", value_name = "NAME=URL", value_parser = parse_cluster)]
    pub clusters: Vec<ClusterArg>,

    /// Send paths starting with PREFIX to the cluster NAME, e.g. /api=backend. Repeatable.
    #[arg(long = "route", value_name = "PREFIX=NAME", value_parser = parse_route)]
    pub routes: Vec<RouteArg>,

    /// The plugin configuration the filter reads in on_configure: text, or @FILE for a file's.
    #[arg(long, value_name = "TEXT|@FILE", value_parser = parse_text_or_file)]
    pub filter_config: Option<TextOrFile>,

    /// The VM configuration the filter reads in on_vm_start: text, or @FILE for a file's.
    #[arg(long, value_name = "TEXT|@FILE", value_parser = parse_text_or_file)]
    pub vm_config: Option<TextOrFile>,

    /// An environment variable of the filter's VMs (WASI environ), e.g. LOG_LEVEL=debug. The
    /// runner's own environment is never passed. Repeatable.
    #[arg(long = "vm-env", value_name = "NAME=VALUE", value_parser = parse_env)]
    pub vm_env: Vec<(String, String)>,

    /// The plugin's name (the property plugin_name; in log lines).
    #[arg(long, value_name = "NAME", default_value = "")]
    pub plugin_name: String,

    /// The plugin's root id (the property plugin_root_id): Go and C++ SDK filters choose their
    /// root context by it.
    #[arg(long, value_name = "ID", default_value = "")]
    pub root_id: String,

    /// The VM id (the property plugin_vm_id; the namespace of shared queues).
    #[arg(long, value_name = "ID", default_value = "")]
    pub vm_id: String,

    /// Run a root-only plugin, as Envoy's wasm service does: one VM with its root context (ticks,
    /// calls, shared data and queues), no listener and no HTTP streams.
    #[arg(long, conflicts_with_all = ["upstream", "routes", "metrics_addr"])]
    pub service: bool,

    #[command(flatten)]
    pub serve: ServeArgs,
}

/// `--cluster NAME=URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterArg {
    pub name: String,
    pub url: Url,
}

/// `--route PREFIX=NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteArg {
    pub prefix: String,
    pub cluster: String,
}

/// A flag's text, or the file (`@FILE`) to read it from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextOrFile {
    Text(String),
    File(PathBuf),
}

fn parse_text_or_file(text: &str) -> Result<TextOrFile, String> {
    match text.strip_prefix('@') {
        Some("") => Err("@ needs a file name, e.g. @config.json".into()),
        Some(path) => Ok(TextOrFile::File(PathBuf::from(path))),
        None => Ok(TextOrFile::Text(text.to_string())),
    }
}

/// Cluster names as Envoy accepts them in practice: letters, digits, `_`, `-`, `.`, `:`.
fn is_cluster_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

fn parse_cluster(text: &str) -> Result<ClusterArg, String> {
    let (name, url) = text.split_once('=').ok_or_else(|| format!("`{text}` is not NAME=URL"))?;
    if !is_cluster_name(name) {
        return Err(format!("`{name}` is not a cluster name (letters, digits, _ - . :)"));
    }
    let url = http_url(url)?;
    if url.path() != "/" || url.query().is_some() {
        return Err(format!("`{url}`: a cluster is a host and port, without a path (routes rewrite paths)"));
    }
    Ok(ClusterArg { name: name.to_string(), url })
}

fn parse_route(text: &str) -> Result<RouteArg, String> {
    let (prefix, cluster) = text.split_once('=').ok_or_else(|| format!("`{text}` is not PREFIX=NAME"))?;
    if !prefix.starts_with('/') {
        return Err(format!("`{prefix}`: a route's prefix starts with /"));
    }
    if !is_cluster_name(cluster) {
        return Err(format!("`{cluster}` is not a cluster name (letters, digits, _ - . :)"));
    }
    Ok(RouteArg { prefix: prefix.to_string(), cluster: cluster.to_string() })
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    let (name, value) = text.split_once('=').ok_or_else(|| format!("`{text}` is not NAME=VALUE"))?;
    if name.is_empty() || name.contains('\0') || value.contains('\0') {
        return Err(format!("`{text}`: a variable needs a name, and neither may hold NUL"));
    }
    Ok((name.to_string(), value.to_string()))
}

/// `--jwt-session-claim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SessionClaimArg {
    Full,
    Minimal,
    None,
}

impl From<SessionClaimArg> for SessionClaim {
    fn from(arg: SessionClaimArg) -> SessionClaim {
        match arg {
            SessionClaimArg::Full => SessionClaim::Full,
            SessionClaimArg::Minimal => SessionClaim::Minimal,
            SessionClaimArg::None => SessionClaim::None,
        }
    }
}

/// A duration as humans write it (`500ms`, `60s`, `5m`, `1h30m`); a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<humantime::Duration, String> {
    let text = text.trim();
    let duration = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(text)
            .map_err(|err| format!("`{text}` is not a duration like 60s, 500ms, 5m or 1h ({err})"))?,
    };
    Ok(duration.into())
}

fn parse_nonzero_duration(text: &str) -> Result<humantime::Duration, String> {
    match parse_duration(text)? {
        duration if duration.is_zero() => Err("must be longer than 0s".into()),
        duration => Ok(duration),
    }
}

/// A URL flag whose environment variable may be set but empty, which counts as not set (as
/// with `ORY_SDK_URL=` in a compose file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlOrEmpty(pub Option<Url>);

impl UrlOrEmpty {
    pub fn url(flag: &Option<UrlOrEmpty>) -> Option<Url> {
        flag.as_ref().and_then(|given| given.0.clone())
    }
}

fn http_url_or_empty(text: &str) -> Result<UrlOrEmpty, String> {
    match text.trim() {
        "" => Ok(UrlOrEmpty(None)),
        text => http_url(text).map(|url| UrlOrEmpty(Some(url))),
    }
}

/// An origin browsers use: `http(s)://host[:port]`, without a path (the proxy serves from its
/// host's root).
fn public_url(text: &str) -> Result<Url, String> {
    let url = http_url(text)?;
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!("`{text}`: only a scheme, host and port, e.g. https://app.example.com"));
    }
    Ok(url)
}

/// An `http` or `https` URL with a host.
pub fn http_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|err| format!("`{text}` is not a URL, e.g. http://localhost:3000 ({err})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("`{text}` must be an http or https URL with a host"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::resolve_with;

    fn new_key_pem() -> String {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap().serialize_pem()
    }

    /// A fresh signing key in a file of this test's own (`name` keeps tests apart).
    fn key_file(name: &str) -> std::path::PathBuf {
        let key = std::env::temp_dir().join(format!("ory-proxy-cli-{name}-{}.pem", std::process::id()));
        std::fs::write(&key, new_key_pem()).unwrap();
        key
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ory-proxy").chain(args.iter().copied()))
    }

    #[test]
    fn durations() {
        let parsed = |text| parse_duration(text).map(Duration::from);
        assert_eq!(parsed("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parsed("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parsed("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parsed("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parsed("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 fortnights").is_err());
    }

    #[test]
    fn local_defaults_follow_the_seed() {
        let Command::Local(args) = parse(&["local", "http://localhost:3000"]).unwrap().command else { unreachable!() };
        assert_eq!(args.serve.listen.host, "127.0.0.1");
        assert_eq!(Duration::from(args.jwt_ttl), Duration::from_secs(60));
        assert_eq!(args.serve.limits(), Limits::default());
        assert!(args.protect_path_prefix.is_empty());
        // PORT may be set in the environment of whoever runs the tests; only check it parsed.
        let _ = args.serve.listen.port;
    }

    #[test]
    fn rules_repeat_and_cors_lists_split() {
        let cli = parse(&[
            "local",
            "http://localhost:3000",
            "--protect-path-prefix",
            "/members",
            "--protect-path-prefix",
            "/admin",
            "--allowed-cors-origins",
            "https://a.example,https://b.example",
        ])
        .unwrap();
        let Command::Local(args) = cli.command else { unreachable!() };
        assert_eq!(args.protect_path_prefix, ["/members", "/admin"]);
        assert_eq!(args.allowed_cors_origins, ["https://a.example", "https://b.example"]);
    }

    #[test]
    fn https_is_the_default_and_can_be_turned_off() {
        let key = key_file("key");
        let key_arg = key.to_str().unwrap();
        let base = ["local", "http://localhost:3000", "--port", "4000", "--jwt-key", key_arg];
        let Command::Local(args) = parse(&base).unwrap().command else { unreachable!() };
        assert!(!args.serve.no_https && !args.serve.dont_install_cert && !args.serve.no_open);
        assert_eq!(resolve_with(&args, None).unwrap().public_url.as_str(), "https://localhost:4000/");

        let flags = [&base[..], &["--no-https", "--dont-install-cert", "--no-open"]].concat();
        let Command::Local(args) = parse(&flags).unwrap().command else { unreachable!() };
        assert!(args.serve.no_https && args.serve.dont_install_cert && args.serve.no_open);
        assert_eq!(resolve_with(&args, None).unwrap().public_url.as_str(), "http://localhost:4000/");
        std::fs::remove_file(&key).unwrap();
    }

    #[test]
    fn cert_has_path_and_uninstall() {
        assert!(matches!(parse(&["cert", "path"]).unwrap().command, Command::Cert(CertCommand::Path)));
        assert!(matches!(parse(&["cert", "uninstall"]).unwrap().command, Command::Cert(CertCommand::Uninstall)));
        assert!(parse(&["cert"]).is_err());
    }

    #[test]
    fn bad_values_are_named() {
        let error = parse(&["local", "http://x", "--jwt-ttl", "soon"]).unwrap_err().to_string();
        assert!(error.contains("--jwt-ttl"), "{error}");
        let error = parse(&["local", "http://x", "--port", "99999"]).unwrap_err().to_string();
        assert!(error.contains("--port"), "{error}");
    }

    #[test]
    fn case_and_passed_headers_reach_the_deployment() {
        let key = key_file("pass");
        let key_arg = key.to_str().unwrap();
        let base = ["local", "http://localhost:3000", "--jwt-key", key_arg];
        let Command::Local(args) = parse(&base).unwrap().command else { unreachable!() };
        let deployment = resolve_with(&args, None).unwrap();
        assert!(!deployment.protection.ignore_case, "case-sensitive by default");
        assert!(deployment.pass_client_headers.is_empty());

        let flags = [
            &base[..],
            &[
                "--protect-path-ignore-case",
                "--pass-client-header",
                "X-Remote-User",
                "--pass-client-header",
                "remote-user",
            ],
        ]
        .concat();
        let Command::Local(args) = parse(&flags).unwrap().command else { unreachable!() };
        let deployment = resolve_with(&args, None).unwrap();
        assert!(deployment.protection.ignore_case);
        let passed: Vec<&str> = deployment.pass_client_headers.iter().map(|name| name.as_str()).collect();
        assert_eq!(passed, ["x-remote-user", "remote-user"]);

        for bad in ["X-Forwarded-User", "x-tenant", "not a name"] {
            let flags = [&base[..], &["--pass-client-header", bad]].concat();
            let Command::Local(args) = parse(&flags).unwrap().command else { unreachable!() };
            let error = resolve_with(&args, None).unwrap_err().to_string();
            assert!(error.starts_with("--pass-client-header: "), "{error}");
        }
        std::fs::remove_file(&key).unwrap();
    }

    #[test]
    fn jwt_claims_reach_the_deployment_and_bad_ones_name_their_flag() {
        let key = key_file("claims");
        let base = ["local", "http://localhost:3000", "--jwt-key", key.to_str().unwrap()];
        let deployment = |extra: &[&str]| {
            let Command::Local(args) = parse(&[&base[..], extra].concat()).unwrap().command else { unreachable!() };
            resolve_with(&args, None).map_err(|error| error.to_string())
        };
        let plain = deployment(&[]).unwrap();
        assert_eq!(plain.jwt_session_claim, SessionClaim::Full, "the whole session, as ory proxy");
        assert!(plain.jwt_claims.is_empty());
        let set = deployment(&[
            "--jwt-claim",
            "email=/identity/traits/email",
            "--jwt-claim",
            "aal=/authenticator_assurance_level",
            "--jwt-session-claim",
            "minimal",
            "--jwt-warn-bytes",
            "4096",
        ])
        .unwrap();
        let names: Vec<&str> = set.jwt_claims.iter().map(|claim| claim.name.as_str()).collect();
        assert_eq!(names, ["email", "aal"]);
        assert_eq!(set.jwt_claims[0].pointer.as_str(), "/identity/traits/email");
        assert_eq!((set.jwt_session_claim, set.jwt_warn_bytes), (SessionClaim::Minimal, 4096));
        let twice = ["--jwt-claim", "e=/a", "--jwt-claim", "e=/b"];
        assert_eq!(deployment(&twice).unwrap_err(), "--jwt-claim: e is given twice");
        for bad in ["sub=/identity/id", "email", "email=identity/traits/email", "=/id"] {
            let error = deployment(&["--jwt-claim", bad]).unwrap_err();
            assert!(error.starts_with("--jwt-claim: "), "{bad}: {error}");
        }
        assert!(parse(&[&base[..], &["--jwt-session-claim", "some"]].concat()).is_err());
        std::fs::remove_file(&key).unwrap();
    }

    #[test]
    fn a_public_url_is_an_origin_and_becomes_the_deployments() {
        let key = key_file("public");
        let base = ["local", "http://localhost:3000", "--jwt-key", key.to_str().unwrap()];
        let flags = [&base[..], &["--public-url", "https://app.example.com"]].concat();
        let Command::Local(args) = parse(&flags).unwrap().command else { unreachable!() };
        let deployment = resolve_with(&args, None).unwrap();
        assert_eq!(deployment.public_url.as_str(), "https://app.example.com/");
        assert_eq!(
            deployment.listen.to_string(),
            format!("127.0.0.1:{}", args.serve.listen.port),
            "still listening locally"
        );
        for bad in ["https://app.example.com/app", "app.example.com", "https://app.example.com/?x=1"] {
            let error = parse(&[&base[..], &["--public-url", bad]].concat()).unwrap_err().to_string();
            assert!(error.contains("--public-url"), "{bad}: {error}");
        }
        std::fs::remove_file(&key).unwrap();
    }

    #[test]
    fn a_second_jwt_key_is_the_previous_one_published_for_a_while() {
        let dir = std::env::temp_dir().join(format!("ory-proxy-cli-two-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str| {
            let path = dir.join(name);
            std::fs::write(&path, new_key_pem()).unwrap();
            path.to_str().unwrap().to_string()
        };
        let (current, previous) = (write("current.pem"), write("previous.pem"));
        let args = ["local", "http://localhost:3000", "--sdk-url", "http://127.0.0.1:4433", "--jwt-key", &current];
        let two = [&args[..], &["--jwt-key", &previous]].concat();
        let Command::Local(parsed) = parse(&two).unwrap().command else { unreachable!() };
        let deployment = resolve_with(&parsed, UrlOrEmpty::url(&parsed.ory.sdk_url)).unwrap();
        let retired = deployment.previous_key.as_ref().expect("the second key is the previous one");
        let written: serde_json::Value =
            serde_json::from_str(&deployment.plan().unwrap().filter_configuration()).unwrap();
        let published = &written["previous_keys"][0];
        assert_eq!(published["jwk"]["kid"], retired.key.kid());
        assert!(published["jwk"].get("d").is_none(), "only the public half");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let until = published["until_unix"].as_u64().unwrap();
        assert!(until.abs_diff(now + 360) < 30, "the JWT TTL and the JWKS max-age after the file was written: {until}");
        let three = [&two[..], &["--jwt-key", &current]].concat();
        let Command::Local(parsed) = parse(&three).unwrap().command else { unreachable!() };
        assert!(resolve_with(&parsed, None).unwrap_err().to_string().contains("at most twice"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_upstream_is_a_clear_error() {
        let error = parse(&["local", "localhost:3000"]).unwrap_err().to_string();
        assert!(error.contains("UPSTREAM") && error.contains("http or https URL"), "{error}");
        let Command::Local(args) = parse(&["local", "http://x", "--sdk-url", ""]).unwrap().command else {
            unreachable!()
        };
        assert_eq!(UrlOrEmpty::url(&args.ory.sdk_url), None, "empty is not set");
        let error = parse(&["local", "http://x", "--sdk-url", "not a url"]).unwrap_err().to_string();
        assert!(error.contains("--sdk-url") && error.contains("not a URL"), "{error}");
    }
}
