//! The one place that turns what the user asked for into a deployment: the filter's
//! configuration, the clusters and the routes. The runner runs this plan; `envoy-config` prints
//! the same plan for Envoy, so both hosts get the same filter configuration by construction.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use url::Url;

use crate::proxy::{Cluster, Limits, Route};

pub const APP_CLUSTER: &str = "app";
pub const ORY_CLUSTER: &str = "ory";
pub const ORY_PREFIX: &str = "/.ory/";
/// The filter's plugin name, root id and VM id, in the runner and in Envoy alike (Envoy shares
/// data between the VMs of one VM id).
pub const FILTER_NAME: &str = "ory-proxy";
/// The environment variable of the filter's VMs that holds the signing key (the filter
/// configuration names it in `signing_key_env` instead of carrying the key).
pub const SIGNING_KEY_ENV: &str = "ORY_PROXY_SIGNING_KEY";

/// Paths that need a session.
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
    /// Identity headers clients may send to the app after all (lower case, checked).
    pub pass_client_headers: Vec<String>,
    pub jwt_enabled: bool,
    pub jwt_ttl: Duration,
    pub jwt_audience: Option<String>,
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
    /// The ES256 key as PEM (or a private JWK).
    pub signing_key: String,
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
            jwt_ttl: Duration::from_secs(60),
            jwt_audience: None,
            session_cache_ttl: None,
            cookie_domain: None,
            default_redirect_url: None,
            allowed_cors_origins: Vec::new(),
            additional_cors_headers: Vec::new(),
            rewrite_host: false,
            upstream_ca_file: None,
            limits: Limits::default(),
            signing_key,
            inline_signing_key: false,
            max_concurrent_whoami: None,
            open_path_wait: None,
            session_cookie_prefixes: Vec::new(),
        }
    }
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
    /// The filter's configuration; [`Plan::filter_configuration`] is its exact bytes.
    pub filter: Value,
    /// Environment variables of the filter's VMs (Envoy's `vm_config.environment_variables`):
    /// the signing key, unless it is inlined. The runner hands them to its VMs itself; the Envoy
    /// bootstrap names them in `host_env_keys`, so Envoy passes the values of its own process
    /// environment and they never appear in its configuration.
    pub vm_environment: Vec<(String, String)>,
}

impl Plan {
    /// The filter configuration exactly as both hosts hand it to `on_configure`.
    pub fn filter_configuration(&self) -> String {
        self.filter.to_string()
    }

    pub fn cluster_names(&self) -> Vec<String> {
        self.clusters.iter().map(|c| c.name.clone()).collect()
    }

    /// The signing key, wherever the plan puts it.
    pub fn signing_key(&self) -> Option<&str> {
        let inline = self.filter.get("signing_key").and_then(Value::as_str);
        let from_env =
            self.vm_environment.iter().find(|(name, _)| name == SIGNING_KEY_ENV).map(|(_, key)| key.as_str());
        inline.or(from_env)
    }
}

fn origin(url: &Url) -> Url {
    let mut origin = url.clone();
    origin.set_path("/");
    origin.set_query(None);
    origin.set_fragment(None);
    origin
}

/// The host names under which this proxy answers: a request naming one of them keeps its own
/// scheme and host in redirects; any other host is treated as spoofed.
pub fn proxy_names(listen: &SocketAddr, public_url: &Url) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let listen_ip = listen.ip();
    if !listen_ip.is_unspecified() {
        names.push(listen_ip.to_string());
    }
    if let Some(host) = public_url.host_str() {
        names.push(host.trim_start_matches('[').trim_end_matches(']').to_string());
    }
    names.dedup();
    let mut unique = Vec::new();
    for name in names {
        if !unique.contains(&name) {
            unique.push(name);
        }
    }
    unique
}

/// Builds the plan.
pub fn plan(deployment: &Deployment) -> anyhow::Result<Plan> {
    let upstream = &deployment.upstream;
    let app = Cluster::new(APP_CLUSTER, origin(upstream).as_str()).context("the upstream URL")?;
    let mut app_route = Route::to("/", APP_CLUSTER);
    if upstream.path() != "/" {
        // An upstream with a path serves the app below it.
        let base = upstream.path().trim_end_matches('/');
        app_route.prefix_rewrite = Some(format!("{base}/"));
    }
    if deployment.rewrite_host {
        app_route.host_rewrite = Some(app.authority());
    }
    let mut clusters = vec![app];
    let mut routes = vec![app_route];

    let (mut filter, vm_environment) = if deployment.inline_signing_key {
        (json!({ "signing_key": deployment.signing_key }), Vec::new())
    } else {
        let environment = vec![(SIGNING_KEY_ENV.to_string(), deployment.signing_key.clone())];
        (json!({ "signing_key_env": SIGNING_KEY_ENV }), environment)
    };
    if let Some(ory_url) = &deployment.ory_url {
        let ory = Cluster::new(ORY_CLUSTER, origin(ory_url).as_str()).context("the Ory URL")?;
        let base = ory_url.path().trim_end_matches('/');
        routes.push(Route {
            prefix: ORY_PREFIX.into(),
            cluster: ORY_CLUSTER.into(),
            prefix_rewrite: Some(format!("{base}/")),
            host_rewrite: Some(ory.authority()),
        });
        clusters.push(ory);
        let mut ory_config = json!({
            "url": ory_url.as_str().trim_end_matches('/'),
            "cluster": ORY_CLUSTER,
            "project_api_key": deployment.project_api_key,
        });
        // Written only when set: the filter's defaults are defined once, in the filter.
        if let Some(max) = deployment.max_concurrent_whoami {
            ory_config["max_concurrent_whoami"] = json!(max);
        }
        if let Some(wait) = deployment.open_path_wait {
            ory_config["open_path_wait_ms"] = json!(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        }
        let object = filter.as_object_mut().expect("built as an object");
        object.insert("ory".into(), ory_config);
        object.insert("public_url".into(), json!(deployment.public_url.as_str().trim_end_matches('/')));
        object.insert("proxy_names".into(), json!(proxy_names(&deployment.listen, &deployment.public_url)));
        let mut protect = json!({
            "prefixes": deployment.protection.prefixes,
            "globs": deployment.protection.globs,
            "regexes": deployment.protection.regexes,
        });
        // Written only when set, so that configurations made before these settings read the same.
        if deployment.protection.ignore_case {
            protect["ignore_case"] = json!(true);
        }
        object.insert("protect".into(), protect);
        if !deployment.pass_client_headers.is_empty() {
            object.insert("pass_client_headers".into(), json!(deployment.pass_client_headers));
        }
        object.insert(
            "jwt".into(),
            json!({
                "enabled": deployment.jwt_enabled,
                "ttl_seconds": deployment.jwt_ttl.as_secs(),
                "audience": deployment.jwt_audience,
            }),
        );
        if !deployment.session_cookie_prefixes.is_empty() {
            object.insert("session_cookie_prefixes".into(), json!(deployment.session_cookie_prefixes));
        }
        if let Some(ttl) = deployment.session_cache_ttl {
            object.insert("session_cache".into(), json!({ "ttl_ms": ttl.as_millis() as u64 }));
        }
        object.insert("cookie_domain".into(), json!(deployment.cookie_domain));
        object.insert(
            "default_redirect_url".into(),
            json!(deployment.default_redirect_url.as_ref().map(|u| u.as_str().to_string())),
        );
        object.insert(
            "cors".into(),
            json!({
                "allowed_origins": deployment.allowed_cors_origins,
                "additional_headers": deployment.additional_cors_headers,
            }),
        );
    } else if !deployment.protection.is_empty() {
        bail!("protecting paths needs to know where Ory is: set --sdk-url (or ORY_SDK_URL)");
    }
    Ok(Plan {
        listen: deployment.listen,
        public_url: deployment.public_url.clone(),
        clusters,
        routes,
        upstream_ca_file: deployment.upstream_ca_file.clone(),
        limits: deployment.limits,
        filter,
        vm_environment,
    })
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

    fn deployment() -> Deployment {
        let upstream = Url::parse("http://127.0.0.1:3000").unwrap();
        Deployment::new(upstream, "127.0.0.1:4000".parse().unwrap(), "PEM".into())
    }

    #[test]
    fn without_ory_the_plan_is_app_only() {
        let plan = plan(&deployment()).unwrap();
        assert_eq!(plan.cluster_names(), ["app"]);
        assert_eq!(plan.routes, [Route::to("/", "app")]);
        assert_eq!(plan.filter_configuration(), r#"{"signing_key_env":"ORY_PROXY_SIGNING_KEY"}"#);
    }

    #[test]
    fn the_key_travels_in_the_vms_environment_unless_inlined() {
        let plan_env = plan(&deployment()).unwrap();
        assert_eq!(plan_env.vm_environment, [("ORY_PROXY_SIGNING_KEY".to_string(), "PEM".to_string())]);
        assert!(!plan_env.filter_configuration().contains("PEM"), "the configuration holds no key");
        assert_eq!(plan_env.signing_key(), Some("PEM"));

        let mut inline = deployment();
        inline.inline_signing_key = true;
        let plan_inline = plan(&inline).unwrap();
        assert!(plan_inline.vm_environment.is_empty());
        assert_eq!(plan_inline.filter_configuration(), r#"{"signing_key":"PEM"}"#);
        assert_eq!(plan_inline.signing_key(), Some("PEM"));
    }

    #[test]
    fn whoami_limits_are_written_only_when_set() {
        let mut deployment = deployment();
        deployment.ory_url = Some(Url::parse("http://127.0.0.1:4433").unwrap());
        let plain = plan(&deployment).unwrap();
        assert_eq!(plain.filter["ory"].get("max_concurrent_whoami"), None);
        assert_eq!(plain.filter["ory"].get("open_path_wait_ms"), None);
        assert_eq!(plain.filter.get("session_cookie_prefixes"), None);
        deployment.max_concurrent_whoami = Some(4);
        deployment.open_path_wait = Some(Duration::from_millis(150));
        deployment.session_cookie_prefixes = vec!["sid".into()];
        let set = plan(&deployment).unwrap();
        assert_eq!(set.filter["ory"]["max_concurrent_whoami"], 4);
        assert_eq!(set.filter["ory"]["open_path_wait_ms"], 150);
        assert_eq!(set.filter["session_cookie_prefixes"], json!(["sid"]));
    }

    #[test]
    fn ory_gets_a_cluster_and_a_rewriting_route() {
        let mut deployment = deployment();
        deployment.ory_url = Some(Url::parse("https://example.projects.oryapis.com/").unwrap());
        let plan = plan(&deployment).unwrap();
        assert_eq!(plan.cluster_names(), ["app", "ory"]);
        let ory = &plan.routes[1];
        assert_eq!(ory.prefix, "/.ory/");
        assert_eq!(ory.prefix_rewrite.as_deref(), Some("/"));
        assert_eq!(ory.host_rewrite.as_deref(), Some("example.projects.oryapis.com"));
        assert_eq!(plan.filter["ory"]["url"], "https://example.projects.oryapis.com");
        assert_eq!(plan.filter["public_url"], "http://localhost:4000");
    }

    #[test]
    fn a_kratos_below_a_path_keeps_its_path() {
        let mut deployment = deployment();
        deployment.ory_url = Some(Url::parse("http://127.0.0.1:4455/.ory/kratos/public").unwrap());
        let plan = plan(&deployment).unwrap();
        assert_eq!(plan.routes[1].prefix_rewrite.as_deref(), Some("/.ory/kratos/public/"));
    }

    #[test]
    fn case_and_passed_headers_reach_the_filter_configuration() {
        let mut deployment = deployment();
        deployment.ory_url = Some(Url::parse("http://127.0.0.1:4433").unwrap());
        let plain = plan(&deployment).unwrap();
        assert_eq!(plain.filter["protect"].get("ignore_case"), None);
        assert_eq!(plain.filter.get("pass_client_headers"), None);

        deployment.protection.ignore_case = true;
        deployment.pass_client_headers = vec!["x-remote-user".into()];
        let set = plan(&deployment).unwrap();
        assert_eq!(set.filter["protect"]["ignore_case"], true);
        assert_eq!(set.filter["pass_client_headers"], json!(["x-remote-user"]));
    }

    #[test]
    fn protection_without_ory_is_refused() {
        let mut deployment = deployment();
        deployment.protection.prefixes.push("/members".into());
        let error = plan(&deployment).unwrap_err().to_string();
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
