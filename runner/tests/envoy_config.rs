//! `ory-proxy envoy-config`: what it prints is a valid Envoy v3 bootstrap (checked against
//! Envoy's own protobuf definitions, field names, types and `@type` URLs included), it hands the
//! filter the runner's configuration byte for byte, and `envoy/envoy.yaml` is what
//! `make envoy-config` makes today.

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::LazyLock;

use clap::Parser as _;
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier, http_filter,
};
use envoy_types::pb::google::protobuf::{Any, StringValue};
use ory_proxy::cli::{Cli, Command, EnvoyArgs, LocalArgs};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, Kind, MapKey, ReflectMessage as _, Value};

const BOOTSTRAP: &str = "envoy.config.bootstrap.v3.Bootstrap";

/// The flags `make envoy-config` passes for `envoy/envoy.yaml` (keep the two in step), run from
/// the workspace.
const DEMO_FLAGS: &[&str] = &[
    "http://127.0.0.1:3000",
    "--port",
    "4000",
    "--sdk-url",
    "http://127.0.0.1:4433",
    "--protect-path-prefix",
    "/members",
    "--jwt-key",
    "envoy/demo-signing-key.pem",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the runner is in the workspace").to_path_buf()
}

fn demo_key() -> String {
    workspace().join("envoy/demo-signing-key.pem").display().to_string()
}

/// Flags as the command line has them, independent of the environment the tests run in: the
/// settings clap would otherwise take from ORY_SDK_URL or ORY_PROJECT_API_KEY are the flags'.
fn flags_with_absolute_key(flags: &[&str]) -> Vec<String> {
    let key = demo_key();
    flags
        .iter()
        .map(|flag| if *flag == "envoy/demo-signing-key.pem" { key.clone() } else { flag.to_string() })
        .collect()
}

fn without_environment(local: &mut LocalArgs, flags: &[String]) {
    if !flags.iter().any(|flag| flag == "--sdk-url") {
        local.ory.sdk_url = None;
    }
    local.ory.kratos_url = None;
    local.ory.access_token = None;
    local.project_api_key = None;
    local.ory.project = None;
}

fn envoy_args(flags: &[&str]) -> EnvoyArgs {
    let flags = flags_with_absolute_key(flags);
    let argv = ["ory-proxy", "envoy-config"].into_iter().map(String::from).chain(flags.iter().cloned());
    let Command::EnvoyConfig(mut args) = Cli::try_parse_from(argv).expect("valid flags").command else {
        panic!("not envoy-config");
    };
    without_environment(&mut args.local, &flags);
    args
}

fn local_args(flags: &[&str]) -> LocalArgs {
    let flags = flags_with_absolute_key(flags);
    let argv = ["ory-proxy", "local"].into_iter().map(String::from).chain(flags.iter().cloned());
    let Command::Local(mut args) = Cli::try_parse_from(argv).expect("valid flags").command else {
        panic!("not local");
    };
    without_environment(&mut args, &flags);
    args
}

fn envoy_yaml(flags: &[&str]) -> String {
    let args = envoy_args(flags);
    let plan = block_on(ory_proxy::deployment::resolve_for_envoy(&args)).expect("a plan");
    ory_proxy::envoy::bootstrap_yaml(&plan, &args.options())
}

/// Finding Ory may need the network (an access token's console lookup), so it is async.
fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime").block_on(future)
}

/// Envoy's API as a descriptor pool: the `FileDescriptorSet` that envoy-types compiled from
/// Envoy's data-plane-api protos (and their imports), shipped in the crate's sources.
static ENVOY_API: LazyLock<DescriptorPool> = LazyLock::new(|| {
    let path = envoy_types_dir().join("src/generated/types.bin");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    DescriptorPool::decode(bytes.as_slice()).expect("envoy-types' descriptor set decodes")
});

/// Where cargo unpacked the envoy-types dev-dependency.
fn envoy_types_dir() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Process::new(cargo)
        .current_dir(workspace())
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .expect("running cargo metadata");
    assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("cargo metadata's JSON");
    let package = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|package| package["name"] == "envoy-types")
        .expect("envoy-types is a dev-dependency");
    let manifest = PathBuf::from(package["manifest_path"].as_str().expect("a manifest path"));
    manifest.parent().expect("a package directory").to_path_buf()
}

/// Parses the YAML and reads it as an Envoy `Bootstrap` the way Envoy's own JSON/YAML loader
/// does: unknown fields, wrong types and unknown `@type` URLs are errors. Deprecated fields are
/// refused too (Envoy warns about them today and drops them later).
fn validate(yaml: &str) -> Result<DynamicMessage, String> {
    let json: serde_json::Value = serde_saphyr::from_str(yaml).map_err(|e| format!("not YAML: {e}"))?;
    let descriptor = ENVOY_API.get_message_by_name(BOOTSTRAP).expect("Envoy's Bootstrap message");
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let bootstrap = DynamicMessage::deserialize_with_options(descriptor, json, &options)
        .map_err(|e| format!("not Envoy's API: {e}"))?;
    let mut deprecated = Vec::new();
    find_deprecated(&bootstrap, "bootstrap", &mut deprecated);
    if !deprecated.is_empty() {
        return Err(format!("deprecated fields or values: {}", deprecated.join(", ")));
    }
    Ok(bootstrap)
}

fn find_deprecated(message: &DynamicMessage, path: &str, found: &mut Vec<String>) {
    if message.descriptor().full_name() == "google.protobuf.Any" {
        let type_url = message.get_field_by_name("type_url").and_then(|v| v.as_str().map(str::to_string)).unwrap();
        let bytes = message.get_field_by_name("value").and_then(|v| v.as_bytes().cloned()).unwrap_or_default();
        let name = type_url.rsplit('/').next().unwrap();
        let descriptor = ENVOY_API.get_message_by_name(name).expect("deserialisation resolved this @type");
        let inner = DynamicMessage::decode(descriptor, bytes).expect("an Any made from JSON decodes");
        return find_deprecated(&inner, &format!("{path}<{name}>"), found);
    }
    for (field, value) in message.fields() {
        let here = format!("{path}.{}", field.name());
        if field.field_descriptor_proto().options.as_ref().is_some_and(|options| options.deprecated()) {
            found.push(here.clone());
        }
        find_deprecated_in_value(value, &field.kind(), &here, found);
    }
}

fn find_deprecated_in_value(value: &Value, kind: &Kind, path: &str, found: &mut Vec<String>) {
    match value {
        Value::Message(message) => find_deprecated(message, path, found),
        Value::List(items) => {
            for (index, item) in items.iter().enumerate() {
                find_deprecated_in_value(item, kind, &format!("{path}[{index}]"), found);
            }
        }
        Value::Map(entries) => {
            let value_kind = kind.as_message().map(|entry| entry.map_entry_value_field().kind());
            for (key, item) in entries {
                let key = match key {
                    MapKey::String(key) => key.clone(),
                    other => format!("{other:?}"),
                };
                find_deprecated_in_value(item, value_kind.as_ref().unwrap_or(kind), &format!("{path}[{key}]"), found);
            }
        }
        Value::EnumNumber(number) => {
            let deprecated = kind.as_enum().and_then(|descriptor| descriptor.get_value(*number)).is_some_and(|value| {
                value.enum_value_descriptor_proto().options.as_ref().is_some_and(|o| o.deprecated())
            });
            if deprecated {
                found.push(format!("{path}={number}"));
            }
        }
        _ => {}
    }
}

/// The same bootstrap through envoy-types' compiled prost types: the HTTP connection manager and
/// the Wasm filter's configuration, unpacked from their `Any`s.
fn typed(bootstrap: &DynamicMessage) -> (Bootstrap, HttpConnectionManager, String) {
    let bootstrap = Bootstrap::decode(bootstrap.encode_to_vec().as_slice()).expect("envoy-types reads it");
    let listener = &bootstrap.static_resources.as_ref().unwrap().listeners[0];
    let Some(ConfigType::TypedConfig(any)) = &listener.filter_chains[0].filters[0].config_type else {
        panic!("the listener's filter has a typed config");
    };
    let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    let wasm = hcm.http_filters.iter().find(|f| f.name == "envoy.filters.http.wasm").expect("the Wasm filter");
    let Some(http_filter::ConfigType::TypedConfig(any)) = &wasm.config_type else { panic!("a typed config") };
    let wasm = envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm::decode(any.value.as_slice()).unwrap();
    let configuration: &Any = wasm.config.as_ref().unwrap().configuration.as_ref().unwrap();
    assert_eq!(configuration.type_url, "type.googleapis.com/google.protobuf.StringValue");
    let value = StringValue::decode(configuration.value.as_slice()).unwrap().value;
    (bootstrap, hcm, value)
}

/// Flag sets that cover every shape the bootstrap takes.
const CASES: &[&[&str]] = &[
    DEMO_FLAGS,
    &[
        "http://localhost:3000",
        "--port",
        "4000",
        "--sdk-url",
        "http://localhost:4433",
        "--jwt-key",
        "envoy/demo-signing-key.pem",
    ],
    &[
        "https://app.example:8443/base",
        "--host",
        "0.0.0.0",
        "--port",
        "8080",
        "--sdk-url",
        "https://example.projects.oryapis.com",
        "--protect-path-glob",
        "/admin/**",
        "--session-cache-ttl",
        "5s",
        "--jwt-audience",
        "my-app",
        "--rewrite-host",
        "--jwt-key",
        "envoy/demo-signing-key.pem",
        "--module-path",
        "/opt/filters/ory.wasm",
        "--admin-port",
        "9901",
    ],
    &[
        "http://[::1]:3000",
        "--host",
        "::1",
        "--port",
        "4000",
        "--sdk-url",
        "https://10.0.0.7:4433/.ory/kratos/public",
        "--jwt-key",
        "envoy/demo-signing-key.pem",
    ],
];

#[test]
fn every_bootstrap_is_valid_against_envoys_v3_api() {
    for flags in CASES {
        let yaml = envoy_yaml(flags);
        let bootstrap = validate(&yaml).unwrap_or_else(|e| panic!("{flags:?}: {e}\n{yaml}"));
        typed(&bootstrap);
    }
}

#[test]
fn the_filter_configuration_is_the_runners_byte_for_byte() {
    for flags in CASES {
        let envoy_flags: Vec<&str> = flags.iter().copied().take_while(|flag| *flag != "--module-path").collect();
        // Envoy's listener is plain HTTP: the runner's equal is `local --no-https`.
        let mut local = local_args(&envoy_flags);
        local.serve.no_https = true;
        let deployment = block_on(ory_proxy::deployment::resolve(&local)).unwrap();
        let runner = deployment.plan().unwrap().filter_configuration();

        let yaml = envoy_yaml(flags);
        // Straight from the YAML, as Envoy's loader reads the StringValue ...
        let tree: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        let wasm = &tree["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
            [0]["typed_config"];
        assert_eq!(wasm["@type"], "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm");
        assert_eq!(wasm["config"]["configuration"]["value"].as_str(), Some(runner.as_str()), "{flags:?}");
        // ... and through Envoy's own types.
        let (_, _, configuration) = typed(&validate(&yaml).unwrap());
        assert_eq!(configuration, runner, "{flags:?}");
    }
}

#[test]
fn routes_clusters_and_tls_follow_the_plan() {
    let yaml = envoy_yaml(CASES[2]);
    let (bootstrap, hcm, _) = typed(&validate(&yaml).unwrap());
    let Some(RouteSpecifier::RouteConfig(routes)) = &hcm.route_specifier else { panic!("a static route config") };
    let routes = &routes.virtual_hosts[0].routes;
    let describe: Vec<String> =
        routes.iter().map(|route| format!("{:?} -> {:?}", route.r#match, route.action)).collect();
    assert_eq!(routes.len(), 2, "{describe:#?}");
    let text = format!("{describe:?}");
    // First match wins in Envoy: /.ory/ must come before /.
    assert!(describe[0].contains("\"/.ory/\"") && describe[0].contains("Cluster(\"ory\")"), "{text}");
    assert!(describe[0].contains("prefix_rewrite: \"/\""), "{text}");
    assert!(describe[0].contains("example.projects.oryapis.com"), "{text}");
    assert!(describe[1].contains("Cluster(\"app\")") && describe[1].contains("prefix_rewrite: \"/base/\""), "{text}");
    assert!(describe[1].contains("HostRewriteLiteral(\"app.example:8443\")"), "{text}");

    let resources = bootstrap.static_resources.unwrap();
    let admin = bootstrap.admin.expect("--admin-port asks for the admin interface");
    assert!(format!("{admin:?}").contains("127.0.0.1"));
    let clusters: Vec<String> = resources.clusters.iter().map(|c| format!("{c:?}")).collect();
    assert_eq!(resources.clusters.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["app", "ory"]);
    for cluster in &clusters {
        assert!(cluster.contains("envoy.transport_sockets.tls"), "https needs TLS: {cluster}");
    }
    let tls = |index: usize| {
        let socket = resources.clusters[index].transport_socket.as_ref().expect("TLS");
        let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any)) =
            &socket.config_type
        else {
            panic!("typed TLS config")
        };
        envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext::decode(any.value.as_slice())
            .unwrap()
    };
    let ory_tls = tls(1);
    assert_eq!(ory_tls.sni, "example.projects.oryapis.com");
    let validation = format!("{:?}", ory_tls.common_tls_context.unwrap().validation_context_type);
    assert!(validation.contains("/etc/ssl/certs/ca-certificates.crt"), "{validation}");
    assert!(validation.contains("example.projects.oryapis.com"), "the certificate must name the host: {validation}");
    assert_eq!(tls(0).sni, "app.example");

    // An IP address is verified as an IP SAN and never sent as SNI; IP clusters need no DNS.
    let yaml = envoy_yaml(CASES[3]);
    let (bootstrap, _, _) = typed(&validate(&yaml).unwrap());
    let ory = &bootstrap.static_resources.unwrap().clusters[1];
    let text = format!("{ory:?}");
    assert!(text.contains("Static"), "{text}");
    let tree: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
    let tls = &tree["static_resources"]["clusters"][1]["transport_socket"]["typed_config"];
    let san = &tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"][0];
    assert_eq!(san["san_type"], "IP_ADDRESS", "{yaml}");
    assert_eq!(san["matcher"]["exact"], "10.0.0.7", "{yaml}");
    assert!(tls.get("sni").is_none(), "{yaml}");
    assert_eq!(tree["static_resources"]["listeners"][0]["address"]["socket_address"]["address"], "::1");
}

#[test]
fn the_validation_catches_misspelled_fields_wrong_types_and_unknown_type_urls() {
    let good = envoy_yaml(DEMO_FLAGS);
    validate(&good).expect("the real thing is valid");
    let broken = [
        ("a misspelled field", good.replacen("prefix_rewrite:", "prefix_rewite:", 1), "prefix_rewite"),
        ("a field in the wrong message", good.replacen("stat_prefix:", "sni:", 1), "'sni'"),
        ("a string where a number goes", good.replacen("port_value: 4000", "port_value: four-thousand", 1), "digit"),
        ("an unknown enum value", good.replacen("type: STATIC", "type: STATIK", 1), "STATIK"),
        (
            "an unknown @type",
            good.replacen(
                "envoy.extensions.filters.http.wasm.v3.Wasm",
                "envoy.extensions.filters.http.wasm.v3.Wsam",
                1,
            ),
            "v3.Wsam' not found",
        ),
        (
            "a real @type with the wrong fields for it",
            good.replacen(
                "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "envoy.extensions.filters.http.router.v3.Router",
                1,
            ),
            "codec_type",
        ),
        (
            "a deprecated field",
            good.replacen(
                "    connect_timeout: 10s\n",
                "    connect_timeout: 10s\n    max_requests_per_connection: 100\n",
                1,
            ),
            "clusters[0].max_requests_per_connection",
        ),
    ];
    for (what, yaml, reason) in broken {
        assert_ne!(yaml, good, "{what}: the replacement must change something");
        let error = validate(&yaml).expect_err(&format!("{what} passed validation:\n{yaml}"));
        assert!(error.contains(reason), "{what}: refused for another reason: {error}");
    }
}

#[test]
fn the_checked_in_example_is_what_make_envoy_config_makes() {
    let path = workspace().join("envoy/envoy.yaml");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let fresh = envoy_yaml(DEMO_FLAGS);
    assert!(
        checked_in == fresh,
        "envoy/envoy.yaml is stale: regenerate it with `make envoy-config` (ory-proxy envoy-config {})",
        DEMO_FLAGS.join(" ")
    );
    validate(&checked_in).unwrap();
    // It signs with the published demo key, and says so where a reader cannot miss it.
    assert!(checked_in.contains("DEMO ONLY"), "{checked_in}");
}

#[test]
fn only_the_demo_key_is_labelled_as_a_demo() {
    let dir = std::env::temp_dir().join(format!("ory-proxy-envoy-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key.pem");
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(&key, pair.serialize_pem()).unwrap();
    let key = key.display().to_string();
    let yaml = envoy_yaml(&[
        "http://127.0.0.1:3000",
        "--port",
        "4000",
        "--sdk-url",
        "http://127.0.0.1:4433",
        "--jwt-key",
        &key,
    ]);
    assert!(!yaml.contains("DEMO ONLY"), "{yaml}");
    assert!(yaml.starts_with("# Envoy v3 bootstrap"), "{yaml}");
    validate(&yaml).unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// The Wasm filter's `vm_config` straight from the YAML.
fn vm_config(yaml: &str) -> serde_json::Value {
    let tree: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
    tree["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
        ["typed_config"]["config"]["vm_config"]
        .clone()
}

#[test]
fn the_signing_key_is_named_not_written_unless_inlined() {
    let key = std::fs::read_to_string(demo_key()).unwrap();
    let key_body = key.lines().nth(1).expect("a PEM body line");
    for flags in CASES {
        let yaml = envoy_yaml(flags);
        assert!(!yaml.contains(key_body) && !yaml.contains("PRIVATE KEY"), "{flags:?}: the key is in the bootstrap");
        // Envoy passes the variable from its own environment: named in host_env_keys, its value
        // nowhere (key_values would show in /config_dump).
        let environment = &vm_config(&yaml)["environment_variables"];
        assert_eq!(environment, &serde_json::json!({ "host_env_keys": ["ORY_PROXY_SIGNING_KEY"] }), "{flags:?}");
        let (_, _, configuration) = typed(&validate(&yaml).unwrap());
        let configuration: serde_json::Value = serde_json::from_str(&configuration).unwrap();
        assert_eq!(configuration["signing_key_env"], "ORY_PROXY_SIGNING_KEY");
        assert!(configuration.get("signing_key").is_none());
        assert!(yaml.contains("ORY_PROXY_SIGNING_KEY=\"$(cat <key file>)\" envoy -c"), "the header says how to start");
    }

    let mut inline = DEMO_FLAGS.to_vec();
    inline.push("--inline-signing-key");
    let yaml = envoy_yaml(&inline);
    validate(&yaml).unwrap();
    assert!(yaml.contains(key_body), "--inline-signing-key writes the key");
    assert!(vm_config(&yaml).get("environment_variables").is_none());
    assert!(yaml.contains("keep this file as secret as the"), "and says to keep the file secret");
}
