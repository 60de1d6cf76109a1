//! The filter module loads in Envoy: it imports only what Envoy's Wasm host (proxy-wasm-cpp-host)
//! registers, and exports what that host looks for. V8 refuses to link a module with any other
//! import, so an extra one would make Envoy reject the filter at start-up, a failure no test
//! with our own host would show.

use wasmparser::{ExternalKind, Parser, Payload, TypeRef};

/// `env` functions proxy-wasm-cpp-host registers for a module that declares ABI v0.2.1
/// (`include/proxy-wasm/exports.h`: FOR_ALL_HOST_FUNCTIONS, plus the v0.2.1 entries of
/// FOR_ALL_HOST_FUNCTIONS_ABI_SPECIFIC that `WasmBase::registerCallbacks` adds for that ABI),
/// all named `proxy_<name>`.
const PROXY_WASM_0_2_1: &[&str] = &[
    "log",
    "get_status",
    "set_property",
    "get_property",
    "send_local_response",
    "get_shared_data",
    "set_shared_data",
    "register_shared_queue",
    "resolve_shared_queue",
    "dequeue_shared_queue",
    "enqueue_shared_queue",
    "get_header_map_value",
    "add_header_map_value",
    "replace_header_map_value",
    "remove_header_map_value",
    "get_header_map_pairs",
    "set_header_map_pairs",
    "get_header_map_size",
    "get_buffer_status",
    "get_buffer_bytes",
    "set_buffer_bytes",
    "http_call",
    "grpc_call",
    "grpc_stream",
    "grpc_close",
    "grpc_cancel",
    "grpc_send",
    "set_tick_period_milliseconds",
    "get_current_time_nanoseconds",
    "define_metric",
    "increment_metric",
    "record_metric",
    "get_metric",
    "set_effective_context",
    "done",
    "call_foreign_function",
    // ABI v0.2.1 only (v0.1.0's get_configuration, continue_request, continue_response and
    // clear_route_cache are not registered for it).
    "continue_stream",
    "close_stream",
    "get_log_level",
];

/// `env` functions registered for every module, whatever its ABI.
const ENV_ALWAYS: &[&str] = &["pthread_equal", "emscripten_notify_memory_growth"];

/// The WASI functions proxy-wasm-cpp-host implements (FOR_ALL_WASI_FUNCTIONS), registered under
/// both `wasi_snapshot_preview1` and `wasi_unstable`. Everything else WASI has (sockets, most of
/// the file system, `poll_oneoff`, `sched_yield`, …) is missing in Envoy.
const WASI: &[&str] = &[
    "fd_write",
    "fd_read",
    "fd_seek",
    "fd_close",
    "fd_fdstat_get",
    "environ_get",
    "environ_sizes_get",
    "args_get",
    "args_sizes_get",
    "clock_time_get",
    "random_get",
    "proc_exit",
    "path_open",
    "fd_prestat_get",
    "fd_prestat_dir_name",
];

fn envoy_provides(module: &str, name: &str) -> bool {
    match module {
        "env" => {
            ENV_ALWAYS.contains(&name)
                || name.strip_prefix("proxy_").is_some_and(|name| PROXY_WASM_0_2_1.contains(&name))
        }
        "wasi_snapshot_preview1" | "wasi_unstable" => WASI.contains(&name),
        _ => false,
    }
}

struct Surface {
    /// (module, name) of every function import; other kinds of import are listed as errors.
    imports: Vec<(String, String)>,
    non_function_imports: Vec<String>,
    exports: Vec<(String, ExternalKind)>,
}

fn surface(wasm: &[u8]) -> Surface {
    let mut surface = Surface { imports: Vec::new(), non_function_imports: Vec::new(), exports: Vec::new() };
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.expect("a well-formed module") {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.expect("a readable import");
                    match import.ty {
                        TypeRef::Func(_) => surface.imports.push((import.module.into(), import.name.into())),
                        other => {
                            surface.non_function_imports.push(format!("{}.{}: {other:?}", import.module, import.name))
                        }
                    }
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.expect("a readable export");
                    surface.exports.push((export.name.to_string(), export.kind));
                }
            }
            _ => {}
        }
    }
    surface
}

#[test]
fn the_filter_imports_only_what_envoy_provides() {
    let surface = surface(ory_proxy::local::EMBEDDED_FILTER);
    assert!(!surface.imports.is_empty(), "the module must import the proxy-wasm ABI");
    let missing: Vec<String> = surface
        .imports
        .iter()
        .filter(|(module, name)| !envoy_provides(module, name))
        .map(|(module, name)| format!("{module}.{name}"))
        .collect();
    assert!(missing.is_empty(), "Envoy does not provide these imports: {missing:?}");
    assert!(
        surface.non_function_imports.is_empty(),
        "Envoy gives no memory, table or global: {:?}",
        surface.non_function_imports
    );
    // The filter is a proxy-wasm module, not a general WASI program: it logs through the ABI.
    assert!(surface.imports.iter().any(|(module, name)| module == "env" && name == "proxy_log"));
}

#[test]
fn the_filter_exports_what_envoy_looks_for() {
    let surface = surface(ory_proxy::local::EMBEDDED_FILTER);
    let has = |name: &str, kind: ExternalKind| surface.exports.contains(&(name.to_string(), kind));
    // The ABI version Envoy reads from the export list; without it Envoy refuses the module.
    assert!(has("proxy_abi_version_0_2_1", ExternalKind::Func), "{:?}", surface.exports);
    assert!(has("memory", ExternalKind::Memory));
    // Envoy allocates the buffers it hands to the module with malloc or proxy_on_memory_allocate.
    assert!(has("proxy_on_memory_allocate", ExternalKind::Func) || has("malloc", ExternalKind::Func));
    // A WASI reactor: Envoy runs _initialize once per VM, then the proxy-wasm callbacks.
    assert!(has("_initialize", ExternalKind::Func) || has("_start", ExternalKind::Func));
    for callback in ["proxy_on_context_create", "proxy_on_vm_start", "proxy_on_configure", "proxy_on_request_headers"] {
        assert!(has(callback, ExternalKind::Func), "{callback} is not exported");
    }
}

#[test]
fn the_check_itself_refuses_what_envoy_lacks() {
    assert!(envoy_provides("env", "proxy_http_call"));
    assert!(envoy_provides("wasi_snapshot_preview1", "random_get"));
    assert!(!envoy_provides("env", "proxy_get_configuration"), "an ABI v0.1.0 call");
    assert!(!envoy_provides("wasi_snapshot_preview1", "sock_accept"));
    assert!(!envoy_provides("wasi_snapshot_preview1", "poll_oneoff"));
    assert!(!envoy_provides("env", "getrandom"));
    // Our own host's test filter that imports an unknown function is caught.
    let path = ory_proxy_tests::test_filter("unknown-import");
    let wasm = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let surface = surface(&wasm);
    assert!(surface.imports.iter().any(|(module, name)| !envoy_provides(module, name)), "{:?}", surface.imports);
}
