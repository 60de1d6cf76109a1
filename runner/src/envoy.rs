//! `ory-proxy envoy-config`: the deployment [`Plan`] as an Envoy v3 bootstrap.
//!
//! The runner runs a plan; this module prints the same plan for Envoy: a static listener with an
//! HTTP connection manager, the `envoy.filters.http.wasm` filter carrying exactly the filter
//! configuration the runner hands to `on_configure` ([`Plan::filter_configuration`]), the routes
//! (`/.ory/` to the `ory` cluster with prefix and host rewrite, everything else to `app`) and
//! the clusters, with verified TLS and SNI for `https` upstreams.
//!
//! The JWT signing key is not in the bootstrap: the filter configuration names the environment
//! variable that holds it (`signing_key_env`), and `vm_config.environment_variables.host_env_keys`
//! has Envoy pass that variable from its own process environment to every VM. Anyone who can read
//! the configuration (the admin interface's `/config_dump`, a ConfigMap, a WasmPlugin object)
//! therefore never reads the key; whoever starts Envoy sets the variable from the key file or a
//! secret, the same for every instance so that tokens signed by any of them verify against the one
//! JWKS. With `--inline-signing-key` the key is in the configuration instead, and the bootstrap is
//! as secret as the key.

use std::time::Duration;

use serde::ser::{Serialize, SerializeMap as _, SerializeSeq as _, Serializer};
use url::{Host, Url};

use crate::deployment::{Configuration, Placement, Plan, SIGNING_KEY_ENV};
use crate::proxy::{Cluster, Limits, Route};

/// Where the official Envoy image (and most installs) find the module unless told otherwise.
pub const DEFAULT_MODULE_PATH: &str = "/etc/envoy/ory_proxy_filter.wasm";
/// The CA bundle Envoy verifies HTTPS upstreams against unless `--upstream-ca-file` names
/// another: Debian's and Ubuntu's path, which the `envoyproxy/envoy` image has.
pub const DEFAULT_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The key that signs the checked-in example (`envoy/demo-signing-key.pem`). It is public, so a
/// configuration signed with it is labelled as a demo in the YAML itself.
pub const DEMO_SIGNING_KEY: &str = include_str!("../../envoy/demo-signing-key.pem");

/// `@type` URLs of the extensions the bootstrap uses.
pub mod type_url {
    pub const HTTP_CONNECTION_MANAGER: &str =
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
    pub const WASM: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
    pub const WASM_SERVICE: &str = "type.googleapis.com/envoy.extensions.wasm.v3.WasmService";
    pub const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
    pub const UPSTREAM_TLS_CONTEXT: &str =
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
    pub const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";
    pub const DOWNSTREAM_CONNECTIONS: &str =
        "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig";
}

/// The Wasm runtime every Envoy build ships.
pub const WASM_RUNTIME: &str = "envoy.wasm.runtime.v8";

/// What the plan does not say but Envoy needs to know.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// The filter `.wasm` as Envoy sees it (a path inside the container, for docker).
    pub module_path: String,
    /// Serve Envoy's admin interface on `127.0.0.1:<port>`; none when `None`.
    pub admin_port: Option<u16>,
}

impl Default for EnvoyOptions {
    fn default() -> EnvoyOptions {
        EnvoyOptions { module_path: DEFAULT_MODULE_PATH.into(), admin_port: None }
    }
}

const HEADER: &str = "\
# Envoy v3 bootstrap for the ory-proxy filter, made by `ory-proxy envoy-config`.
";

/// Says where the key is when it is in the environment.
const KEY_FROM_ENVIRONMENT: &str = "\
# The JWT signing key is not in this file: Envoy hands the filter the environment variable
# ORY_PROXY_SIGNING_KEY (vm_config.environment_variables below). Start Envoy with it holding the
# key, the same key for every Envoy instance:
#   ORY_PROXY_SIGNING_KEY=\"$(cat <key file>)\" envoy -c <this file>
# See envoy/README.md.
";

/// Says where the key is when it is inlined.
const KEY_INLINE: &str = "\
# The filter configuration below carries the JWT signing key: keep this file as secret as the
# key, and give every Envoy instance the same one. See envoy/README.md.
";

/// Heads a configuration made for [`DEMO_SIGNING_KEY`].
pub const DEMO_HEADER: &str = "\
#
# DEMO ONLY: made for the published demo key (envoy/demo-signing-key.pem), which anyone can use
# to forge tokens:
#   ORY_PROXY_SIGNING_KEY=\"$(cat envoy/demo-signing-key.pem)\" envoy -c envoy/envoy.yaml
# Never use it beyond your laptop: make your own configuration with
# `ory-proxy envoy-config ... --jwt-key <your key>`.
";

/// The bootstrap as YAML, with a comment saying what it is.
pub fn bootstrap_yaml(plan: &Plan, options: &EnvoyOptions) -> String {
    let mut yaml = String::from(HEADER);
    if let Configuration::Ory(_) = plan.plugin.configuration {
        yaml.push_str(if plan.plugin.environment.is_empty() { KEY_INLINE } else { KEY_FROM_ENVIRONMENT });
    }
    if uses_demo_key(plan) {
        yaml.push_str(DEMO_HEADER);
    }
    // One line per value: long `@type` URLs and the configuration stay greppable, never folded.
    let style = serde_saphyr::ser_options! { prefer_block_scalars: false };
    let body = serde_saphyr::to_string_with_options(&bootstrap(plan, options), style);
    yaml.push_str(&body.expect("a tree of maps, lists and scalars serialises"));
    yaml
}

/// Whether the plan signs with the published demo key.
pub fn uses_demo_key(plan: &Plan) -> bool {
    plan.signing_key().is_some_and(|key| key.trim() == DEMO_SIGNING_KEY.trim())
}

/// How to start Envoy with the key when the bootstrap leaves it to the environment; `None` when
/// the bootstrap carries the key itself.
pub fn start_hint(plan: &Plan, key_file: &std::path::Path, config_file: Option<&std::path::Path>) -> Option<String> {
    if plan.signing_key().is_none() || plan.plugin.environment.is_empty() {
        return None;
    }
    let config = config_file.map_or("envoy.yaml".to_string(), |file| file.display().to_string());
    Some(format!(
        "the signing key is not in the configuration: start Envoy with {SIGNING_KEY_ENV} holding it, e.g.\n  \
         {SIGNING_KEY_ENV}=\"$(cat {})\" envoy -c {config}",
        key_file.display()
    ))
}

/// The bootstrap as a tree, in the order a person reads it.
pub fn bootstrap(plan: &Plan, options: &EnvoyOptions) -> Node {
    let mut root = Vec::new();
    if let Some(port) = options.admin_port {
        root.push(("admin", map([("address", socket_address("127.0.0.1", port))])));
    }
    let ca_file = plan.upstream_ca_file.as_ref().map_or(DEFAULT_CA_FILE.to_string(), |f| f.display().to_string());
    let clusters = plan.clusters.iter().map(|cluster| envoy_cluster(cluster, &ca_file)).collect();
    let listeners = match plan.plugin.placement {
        Placement::HttpFilter => vec![listener(plan, options)],
        Placement::Service => Vec::new(),
    };
    root.push(("static_resources", map([("listeners", Node::List(listeners)), ("clusters", Node::List(clusters))])));
    if plan.plugin.placement == Placement::Service {
        root.push(("bootstrap_extensions", Node::List(vec![wasm_service(plan, options)])));
    }
    root.push(("overload_manager", overload_manager(&plan.limits)));
    Node::map(root)
}

/// `--max-connections`: Envoy closes client connections beyond the limit as they arrive, as the
/// runner does.
fn overload_manager(limits: &Limits) -> Node {
    let monitor = map([
        ("name", "envoy.resource_monitors.global_downstream_max_connections".into()),
        (
            "typed_config",
            map([
                ("@type", type_url::DOWNSTREAM_CONNECTIONS.into()),
                ("max_active_downstream_connections", (limits.max_connections as u64).into()),
            ]),
        ),
    ]);
    map([("resource_monitors", Node::List(vec![monitor]))])
}

/// A protobuf `Duration` as JSON and YAML write it: seconds, with a fraction when there is one.
fn duration(duration: Duration) -> Node {
    format!("{}s", duration.as_secs_f64()).into()
}

fn listener(plan: &Plan, options: &EnvoyOptions) -> Node {
    let connection_manager = map([
        ("@type", type_url::HTTP_CONNECTION_MANAGER.into()),
        ("stat_prefix", "ory_proxy".into()),
        ("codec_type", "AUTO".into()),
        // Envoy is the edge here: the client's address is the peer's, never a header's.
        ("use_remote_address", true.into()),
        // The app's own `Server` header, or none: as the runner answers (Envoy would otherwise
        // put `server: envoy` on every response).
        ("server_header_transformation", "PASS_THROUGH".into()),
        // The filter normalises paths itself; Envoy doing the same first changes nothing and
        // keeps Envoy's own routing on the normalised path.
        ("normalize_path", true.into()),
        ("merge_slashes", true.into()),
        ("upgrade_configs", Node::List(vec![map([("upgrade_type", "websocket".into())])])),
        // The runner's limits (see `proxy::Limits`): a request head, a connection with no
        // request, the size of a request's headers.
        ("request_headers_timeout", duration(plan.limits.request_headers_timeout)),
        ("common_http_protocol_options", map([("idle_timeout", duration(plan.limits.idle_timeout))])),
        ("max_request_headers_kb", ((plan.limits.max_request_headers_bytes / 1024) as u64).into()),
        // A stream with no bytes either way for `--upstream-timeout` is reset. The router's idle
        // timeout covers a silent upstream; this covers what the router does not see, such as a
        // filter that failed mid-body (Envoy 1.40 then leaves the stream hanging) or a silent
        // WebSocket.
        ("stream_idle_timeout", duration(plan.limits.upstream_timeout)),
        ("route_config", route_config(&plan.routes, &plan.limits)),
        ("http_filters", Node::List(vec![wasm_filter(plan, options), router_filter()])),
    ]);
    map([
        ("name", "ory_proxy".into()),
        ("address", socket_address(&plan.listen.ip().to_string(), plan.listen.port())),
        (
            "filter_chains",
            Node::List(vec![map([(
                "filters",
                Node::List(vec![map([
                    ("name", "envoy.filters.network.http_connection_manager".into()),
                    ("typed_config", connection_manager),
                ])]),
            )])]),
        ),
    ])
}

/// Envoy takes the first route that matches; the runner the longest prefix. Longest first makes
/// them agree.
fn route_config(routes: &[Route], limits: &Limits) -> Node {
    let mut ordered: Vec<&Route> = routes.iter().collect();
    ordered.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
    let routes = ordered.into_iter().map(|route| envoy_route(route, limits)).collect();
    map([
        ("name", "ory_proxy".into()),
        (
            "virtual_hosts",
            Node::List(vec![map([
                ("name", "ory_proxy".into()),
                ("domains", Node::List(vec!["*".into()])),
                ("routes", Node::List(routes)),
            ])]),
        ),
    ])
}

fn envoy_route(route: &Route, limits: &Limits) -> Node {
    let mut action = vec![("cluster", Node::from(route.cluster.as_str()))];
    if let Some(rewrite) = &route.prefix_rewrite {
        action.push(("prefix_rewrite", rewrite.as_str().into()));
    }
    if let Some(host) = &route.host_rewrite {
        action.push(("host_rewrite_literal", host.as_str().into()));
    }
    // `--upstream-timeout` bounds silence, not length: downloads and server-sent events may run
    // as long as data keeps coming. No overall limit, then, and the router's idle timeout, which
    // runs from the request's end (504 before response headers, a reset after), as the runner's.
    action.push(("timeout", "0s".into()));
    action.push((
        "retry_policy",
        map([("num_retries", 0u64.into()), ("per_try_idle_timeout", duration(limits.upstream_timeout))]),
    ));
    map([("match", map([("prefix", route.prefix.as_str().into())])), ("route", Node::map(action))])
}

fn wasm_filter(plan: &Plan, options: &EnvoyOptions) -> Node {
    // A VM that traps is replaced, as the runner does, instead of failing every later request
    // with 503 (FAIL_CLOSED). Envoy reloads only once a random interval below the backoff has
    // passed since the VM was loaded; requests before that still get 503. (A base interval of
    // 1ms crashed Envoy 1.40 with SIGFPE on the second trap.)
    let backoff = map([("base_interval", "0.1s".into()), ("max_interval", "0.1s".into())]);
    let failure = [("failure_policy", "FAIL_RELOAD".into()), ("reload_config", map([("backoff", backoff)]))];
    let config = plugin_config(plan, options, failure);
    map([
        ("name", "envoy.filters.http.wasm".into()),
        ("typed_config", map([("@type", type_url::WASM.into()), ("config", config)])),
    ])
}

/// A root-only plugin: one VM on Envoy's main thread (`singleton`), as the runner runs it.
fn wasm_service(plan: &Plan, options: &EnvoyOptions) -> Node {
    let service = map([
        ("@type", type_url::WASM_SERVICE.into()),
        ("singleton", true.into()),
        ("config", plugin_config(plan, options, [])),
    ]);
    map([("name", "envoy.bootstrap.wasm".into()), ("typed_config", service)])
}

/// The `PluginConfig` both placements share: names, `settings` of the placement's own, the VM
/// and the configuration.
fn plugin_config<const N: usize>(plan: &Plan, options: &EnvoyOptions, settings: [(&'static str, Node); N]) -> Node {
    let plugin = &plan.plugin;
    let names = [("name", plugin.name.as_str().into()), ("root_id", plugin.root_id.as_str().into())];
    let configuration = map([("@type", type_url::STRING_VALUE.into()), ("value", plan.filter_configuration().into())]);
    let rest = [("vm_config", vm_config(plan, options)), ("configuration", configuration)];
    Node::map(names.into_iter().chain(settings).chain(rest))
}

fn vm_config(plan: &Plan, options: &EnvoyOptions) -> Node {
    let plugin = &plan.plugin;
    let mut fields = vec![
        // One vm_id for every worker's VM: Envoy's shared data is per vm_id, and that is where
        // our filter keeps its process-wide state.
        ("vm_id", Node::from(plugin.vm_id.as_str())),
        ("runtime", WASM_RUNTIME.into()),
        ("code", map([("local", map([("filename", options.module_path.as_str().into())]))])),
    ];
    if !plugin.vm_configuration.is_empty() {
        let value = plugin.vm_configuration.as_str().into();
        fields.push(("configuration", map([("@type", type_url::STRING_VALUE.into()), ("value", value)])));
    }
    if !plugin.environment.is_empty() {
        // Names only: Envoy reads the values from its own environment at start. (`key_values`
        // would put them into the configuration, and into /config_dump.)
        let names = plugin.environment.iter().map(|(name, _)| Node::from(name.as_str())).collect();
        fields.push(("environment_variables", map([("host_env_keys", Node::List(names))])));
    }
    Node::map(fields)
}

fn router_filter() -> Node {
    map([("name", "envoy.filters.http.router".into()), ("typed_config", map([("@type", type_url::ROUTER.into())]))])
}

fn envoy_cluster(cluster: &Cluster, ca_file: &str) -> Node {
    let url = &cluster.url;
    let host = url.host().expect("clusters have a host");
    let port = url.port_or_known_default().expect("http and https have default ports");
    let address = match &host {
        Host::Domain(name) => name.to_string(),
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => ip.to_string(),
    };
    let mut fields = vec![("name", Node::from(cluster.name.as_str()))];
    if let Host::Domain(_) = host {
        // One logical host, re-resolved as DNS changes: what the runner's client does, and what
        // Envoy recommends for large web services such as Ory Network.
        fields.push(("type", "LOGICAL_DNS".into()));
        fields.push(("dns_lookup_family", "V4_PREFERRED".into()));
    } else {
        fields.push(("type", "STATIC".into()));
    }
    fields.push(("connect_timeout", "10s".into()));
    fields.push((
        "load_assignment",
        map([
            ("cluster_name", cluster.name.as_str().into()),
            (
                "endpoints",
                Node::List(vec![map([(
                    "lb_endpoints",
                    Node::List(vec![map([("endpoint", map([("address", socket_address(&address, port))]))])]),
                )])]),
            ),
        ]),
    ));
    if url.scheme() == "https" {
        fields.push(("transport_socket", upstream_tls(url, &address, ca_file)));
    }
    Node::map(fields)
}

/// TLS to an upstream, verified: the certificate must chain to the CA bundle and name the host.
/// Without a validation context Envoy would accept any certificate.
fn upstream_tls(url: &Url, address: &str, ca_file: &str) -> Node {
    let is_name = matches!(url.host(), Some(Host::Domain(_)));
    let san_type = if is_name { "DNS" } else { "IP_ADDRESS" };
    let validation = map([
        ("trusted_ca", map([("filename", ca_file.into())])),
        (
            "match_typed_subject_alt_names",
            Node::List(vec![map([("san_type", san_type.into()), ("matcher", map([("exact", address.into())]))])]),
        ),
    ]);
    let mut context = vec![("@type", Node::from(type_url::UPSTREAM_TLS_CONTEXT))];
    if is_name {
        // SNI names a host; an IP address is never sent as SNI.
        context.push(("sni", address.into()));
    }
    context.push(("common_tls_context", map([("validation_context", validation)])));
    map([("name", "envoy.transport_sockets.tls".into()), ("typed_config", Node::map(context))])
}

fn socket_address(address: &str, port: u16) -> Node {
    map([("socket_address", map([("address", address.into()), ("port_value", port.into())]))])
}

/// A YAML tree whose maps keep the order they were built in.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Map(Vec<(String, Node)>),
    List(Vec<Node>),
    Str(String),
    Int(u64),
    Bool(bool),
}

impl Node {
    fn map<'a>(pairs: impl IntoIterator<Item = (&'a str, Node)>) -> Node {
        Node::Map(pairs.into_iter().map(|(key, value)| (key.to_string(), value)).collect())
    }
}

fn map<const N: usize>(pairs: [(&str, Node); N]) -> Node {
    Node::map(pairs)
}

impl From<&str> for Node {
    fn from(value: &str) -> Node {
        Node::Str(value.to_string())
    }
}

impl From<String> for Node {
    fn from(value: String) -> Node {
        Node::Str(value)
    }
}

impl From<u16> for Node {
    fn from(value: u16) -> Node {
        Node::Int(value.into())
    }
}

impl From<u64> for Node {
    fn from(value: u64) -> Node {
        Node::Int(value)
    }
}

impl From<bool> for Node {
    fn from(value: bool) -> Node {
        Node::Bool(value)
    }
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Map(pairs) => {
                let mut map = serializer.serialize_map(Some(pairs.len()))?;
                for (key, value) in pairs {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
            Node::List(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Node::Str(text) => serializer.serialize_str(text),
            Node::Int(number) => serializer.serialize_u64(*number),
            Node::Bool(flag) => serializer.serialize_bool(*flag),
        }
    }
}
