//! The proxy-wasm host, pinned with small test filters (`test-filters/`) and the real filter,
//! driven request by request through the harness: header maps, bodies, local replies, HTTP calls,
//! shared data and queues, timers, logs, metrics, and filters that misbehave.

use std::time::{Duration, Instant};

use proxy_wasm_host::harness::{Harness, Recorded};
use proxy_wasm_host::{HeaderList, HostEnv, HttpCallResponse, Plugin, PluginSpec, VmError};

const HEADERS: &str = "headers";
const BODIES: &str = "bodies";
const CALLOUTS: &str = "callouts";
const FAULTY: &str = "faulty";
const UNKNOWN_IMPORT: &str = "unknown-import";

fn module(name: &str) -> Vec<u8> {
    let path = ory_proxy_tests::test_filter(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

fn harness(name: &str) -> Harness {
    Harness::with_config(&module(name), b"", &["backend"]).unwrap_or_else(|error| panic!("starting {name}: {error:#}"))
}

/// A request's headers as a client sends them, pseudo-headers first.
fn request_headers<'a>(method: &'a str, path: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![(":method", method), (":scheme", "https"), (":authority", "app.example"), (":path", path)]
}

fn get(path: &str) -> Vec<(&str, &str)> {
    request_headers("GET", path)
}

/// Why a filter did not start; panics when it did.
fn start_error(started: anyhow::Result<Harness>) -> String {
    match started {
        Ok(_) => panic!("the filter started but should not have"),
        Err(error) => format!("{error:#}"),
    }
}

fn load_error(wasm: &[u8]) -> String {
    match Plugin::load(wasm, PluginSpec::default(), HostEnv::new()) {
        Ok(_) => panic!("the module loaded but should not have"),
        Err(error) => format!("{error:#}"),
    }
}

/// Runs a request the filter answers itself and returns the body it answered with.
fn ask(harness: &mut Harness, path: &str) -> String {
    let id = harness.request(&get(path), b"").expect("the filter runs");
    let recorded = harness.finish(id).expect("the exchange finishes");
    assert_eq!(recorded.status(), Some(200), "{path}: {recorded:?}");
    assert!(recorded.upstream_headers.is_none(), "{path} is answered by the filter, not upstream");
    String::from_utf8(recorded.response_body).expect("a text answer")
}

fn values<'a>(headers: &'a HeaderList, name: &str) -> Vec<&'a str> {
    headers.get_all(name).map(|value| std::str::from_utf8(value).unwrap()).collect()
}

fn body(recorded: &Recorded) -> &str {
    std::str::from_utf8(&recorded.response_body).unwrap()
}

// --- header maps and properties ----------------------------------------------------------------

#[test]
fn the_filter_sees_pseudo_headers_and_properties_and_its_edits_go_upstream() {
    let mut h = harness(HEADERS);
    let mut headers = request_headers("POST", "/hello?x=1");
    headers.extend([("x-remove-me", "1"), ("x-replace", "original"), ("x-replace", "second")]);
    let id = h.request(&headers, b"").unwrap();

    let recorded = h.recorded(id);
    let upstream = recorded.upstream_headers.as_ref().expect("the request went upstream");
    assert!(recorded.upstream_complete, "a request without a body ends with its headers");
    // The four pseudo-headers are in the map the filter counted and read.
    assert_eq!(recorded.upstream_header("x-count"), Some("7"));
    assert_eq!(recorded.upstream_header("x-method"), Some("POST"));
    assert_eq!(recorded.upstream_header("x-authority"), Some("app.example"));
    assert_eq!(recorded.upstream_header("x-scheme"), Some("https"));
    assert_eq!(recorded.upstream_header(":path"), Some("/hello?x=1"), "the query stays in :path");
    // Properties.
    assert_eq!(recorded.upstream_header("x-source"), Some("127.0.0.1:50000"));
    assert_eq!(recorded.upstream_header("x-plugin"), Some("test"));
    // Remove, replace (every value), add (twice: two values).
    assert_eq!(upstream.get("x-remove-me"), None);
    assert_eq!(values(upstream, "x-replace"), ["replaced"]);
    assert_eq!(values(upstream, "x-added"), ["one", "two"]);

    h.respond(id, 200, &[("server", "upstream/1.0"), ("content-type", "text/plain")], b"hello").unwrap();
    let recorded = h.finish(id).unwrap();
    assert_eq!(recorded.status(), Some(200));
    assert_eq!(recorded.response_header("x-status-seen"), Some("200"), "on_response_headers read :status");
    assert_eq!(recorded.response_header("server"), None, "the filter removed it");
    assert_eq!(recorded.response_header("content-type"), Some("text/plain"));
    assert_eq!(body(&recorded), "hello");
    assert!(recorded.response_complete);
}

#[test]
fn a_pseudo_header_the_filter_sets_reaches_upstream() {
    let mut h = harness(HEADERS);
    let id = h.request(&get("/rewrite/me?q"), b"").unwrap();
    assert_eq!(h.recorded(id).upstream_header(":path"), Some("/rewritten"));
}

#[test]
fn the_filter_can_replace_the_whole_map() {
    let mut h = harness(HEADERS);
    let mut headers = get("/replace-all");
    headers.push(("cookie", "secret"));
    let id = h.request(&headers, b"").unwrap();
    assert_eq!(
        h.recorded(id).upstream_headers,
        Some(HeaderList::from_pairs([(":method", "GET"), (":path", "/all"), (":authority", "replaced")]))
    );
}

// --- local replies -----------------------------------------------------------------------------

#[test]
fn a_local_reply_runs_through_the_response_callbacks_and_never_goes_upstream() {
    let mut h = harness(HEADERS);
    let id = h.request(&request_headers("POST", "/local"), b"a body nobody reads").unwrap();
    let recorded = h.finish(id).unwrap();
    assert!(recorded.replied);
    assert_eq!(recorded.upstream_headers, None, "the upstream never saw the request");
    assert!(recorded.upstream_body.is_empty());
    assert_eq!(recorded.status(), Some(418));
    assert_eq!(recorded.response_header("x-local"), Some("yes"));
    assert_eq!(recorded.response_header("x-status-seen"), Some("418"), "on_response_headers saw the reply");
    assert_eq!(recorded.response_header("content-length"), Some("15"));
    assert_eq!(body(&recorded), "short and stout");
    assert!(recorded.response_complete);
}

/// Host bug fixed: a filter that replied and then returned Continue had its request sent upstream
/// first. In Envoy a local reply ends the filter chain whatever the callback returns.
#[test]
fn a_local_reply_wins_over_continue() {
    let mut h = harness(HEADERS);
    let id = h.request(&get("/local-continue"), b"").unwrap();
    let recorded = h.finish(id).unwrap();
    assert_eq!(recorded.upstream_headers, None, "the upstream must not see a request the filter refused");
    assert_eq!(recorded.status(), Some(403));
    assert_eq!(recorded.response_header("x-local"), Some("continue"));
    assert_eq!(recorded.response_header("x-status-seen"), Some("403"));
    assert_eq!(body(&recorded), "denied");
}

// --- bodies ------------------------------------------------------------------------------------

#[test]
fn a_paused_request_body_accumulates_across_chunks_and_is_replaced_at_the_end() {
    let mut h = harness(BODIES);
    let mut headers = request_headers("POST", "/upper");
    headers.push(("content-length", "11"));
    let id = h.start_request(&headers).unwrap();
    let recorded = h.recorded(id);
    assert!(recorded.upstream_headers.is_some(), "the headers go on at once");
    assert_eq!(recorded.upstream_header("content-length"), None, "the filter removed it before editing");
    assert!(!recorded.upstream_complete);

    h.request_data(id, b"hello ", false).unwrap();
    assert!(h.recorded(id).upstream_body.is_empty(), "a paused body is held back");
    h.request_data(id, b"wor", false).unwrap();
    assert!(h.recorded(id).upstream_body.is_empty());
    h.request_data(id, b"ld", true).unwrap();
    let recorded = h.recorded(id);
    assert_eq!(recorded.upstream_body, b"HELLO WORLD", "upper-cased once, over the whole body");
    assert!(recorded.upstream_complete);
}

#[test]
fn a_body_in_one_chunk_is_replaced_too() {
    let mut h = harness(BODIES);
    let id = h.request(&request_headers("POST", "/upper"), b"one chunk").unwrap();
    assert_eq!(h.recorded(id).upstream_body, b"ONE CHUNK");
    assert!(h.recorded(id).upstream_complete);
}

#[test]
fn bodies_stream_chunk_by_chunk_when_the_filter_does_not_pause() {
    let mut h = harness(BODIES);
    let id = h.start_request(&request_headers("POST", "/stream")).unwrap();
    h.request_data(id, b"abc", false).unwrap();
    assert_eq!(h.recorded(id).upstream_body, b"abc", "each chunk goes on as it arrives");
    assert!(!h.recorded(id).upstream_complete);
    h.request_data(id, b"def", false).unwrap();
    assert_eq!(h.recorded(id).upstream_body, b"abcdef");
    h.request_data(id, b"", true).unwrap();
    assert!(h.recorded(id).upstream_complete);

    h.start_response(id, 200, &[("content-type", "text/plain")]).unwrap();
    let recorded = h.recorded(id);
    assert_eq!(recorded.status(), Some(200));
    assert!(recorded.response_body.is_empty() && !recorded.response_complete);
    h.response_data(id, b"123", false).unwrap();
    assert_eq!(h.recorded(id).response_body, b"123");
    h.response_data(id, b"456", true).unwrap();
    let recorded = h.finish(id).unwrap();
    assert_eq!(recorded.response_body, b"123456");
    assert!(recorded.response_complete);
}

#[test]
fn a_response_body_can_be_replaced_after_accumulating() {
    let mut h = harness(BODIES);
    let id = h.request(&get("/wrap"), b"").unwrap();
    h.start_response(id, 200, &[("content-length", "4")]).unwrap();
    assert_eq!(h.recorded(id).response_header("content-length"), None);
    h.response_data(id, b"ab", false).unwrap();
    assert!(h.recorded(id).response_body.is_empty(), "paused: nothing reaches the client yet");
    h.response_data(id, b"cd", true).unwrap();
    let recorded = h.finish(id).unwrap();
    assert_eq!(body(&recorded), "<abcd>");
    assert!(recorded.response_complete);
}

#[test]
fn a_body_can_be_prepended_and_appended_to() {
    let mut h = harness(BODIES);
    let id = h.request(&get("/edges"), b"").unwrap();
    h.respond(id, 200, &[], b"middle").unwrap();
    assert_eq!(body(h.recorded(id)), "[middle]");

    // Streaming: each chunk is edited as it passes.
    let id = h.request(&get("/edges"), b"").unwrap();
    h.start_response(id, 200, &[]).unwrap();
    h.response_data(id, b"ab", false).unwrap();
    assert_eq!(body(h.recorded(id)), "[ab]");
    h.response_data(id, b"cd", true).unwrap();
    assert_eq!(body(h.recorded(id)), "[ab][cd]");
}

#[test]
fn what_a_paused_filter_buffers_is_bounded() {
    let mut h = harness(BODIES);
    h.set_max_buffer(8);

    let id = h.start_request(&request_headers("POST", "/upper")).unwrap();
    h.request_data(id, b"12345", false).unwrap();
    assert_eq!(h.recorded(id).failed, None);
    h.request_data(id, b"67890", false).unwrap();
    let recorded = h.recorded(id);
    assert_eq!(recorded.failed.map(|(status, _)| status), Some(413));
    assert!(recorded.upstream_body.is_empty());

    let id = h.request(&request_headers("POST", "/upper"), b"far more than eight").unwrap();
    assert_eq!(h.recorded(id).failed.map(|(status, _)| status), Some(413));

    let id = h.request(&get("/wrap"), b"").unwrap();
    h.start_response(id, 200, &[]).unwrap();
    h.response_data(id, b"12345", false).unwrap();
    h.response_data(id, b"67890", true).unwrap();
    assert_eq!(h.recorded(id).failed.map(|(status, _)| status), Some(502));

    // A streamed body is not buffered, so the bound does not limit its total size.
    let id = h.start_request(&request_headers("POST", "/stream")).unwrap();
    for _ in 0..4 {
        h.request_data(id, b"12345", false).unwrap();
    }
    h.request_data(id, b"", true).unwrap();
    let recorded = h.recorded(id);
    assert_eq!(recorded.failed, None);
    assert_eq!(recorded.upstream_body.len(), 20);
    assert!(recorded.upstream_complete);
}

// --- HTTP calls ----------------------------------------------------------------------------------

/// Starts `/call` (or `path`) and returns the stream and its one dispatched call's token.
fn call(h: &mut Harness, path: &str) -> (u32, u32) {
    let id = h.request(&get(path), b"").unwrap();
    assert_eq!(h.recorded(id).upstream_headers, None, "paused while the call is out");
    let calls = h.take_http_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    (id, calls[0].token)
}

#[test]
fn an_http_call_goes_to_its_cluster_and_its_answer_resumes_the_request() {
    let mut h = harness(CALLOUTS);
    let id = h.request(&get("/call"), b"").unwrap();
    assert_eq!(h.recorded(id).upstream_headers, None);
    let calls = h.take_http_calls();
    assert_eq!(calls.len(), 1);
    let request = &calls[0];
    assert_eq!(request.cluster, "backend");
    assert_eq!(request.headers.get_str(":method"), Some("GET"));
    assert_eq!(request.headers.get_str(":path"), Some("/check"));
    assert_eq!(request.headers.get_str(":authority"), Some("backend.local"));
    assert_eq!(request.timeout, Duration::from_millis(500));
    assert!(request.body.is_empty());
    assert_eq!(h.vm.pending_calls(), 1);

    h.answer(request.token, Some(HttpCallResponse::new(200, &[("content-type", "text/plain")], "alice"))).unwrap();
    let recorded = h.recorded(id);
    assert_eq!(recorded.upstream_header("x-check"), Some("alice"), "set from the call's answer");
    assert_eq!(recorded.upstream_header(":path"), Some("/call"));
    assert!(recorded.upstream_complete);
    assert_eq!(h.vm.pending_calls(), 0);
    assert!(h.take_http_calls().is_empty());
}

#[test]
fn answers_reach_the_stream_that_made_the_call() {
    let mut h = harness(CALLOUTS);
    let (first, first_token) = call(&mut h, "/call");
    let (second, second_token) = call(&mut h, "/call");
    assert_ne!(first_token, second_token);
    h.answer(second_token, Some(HttpCallResponse::new(200, &[], "two"))).unwrap();
    assert_eq!(h.recorded(first).upstream_headers, None, "still waiting");
    assert_eq!(h.recorded(second).upstream_header("x-check"), Some("two"));
    h.answer(first_token, Some(HttpCallResponse::new(200, &[], "one"))).unwrap();
    assert_eq!(h.recorded(first).upstream_header("x-check"), Some("one"));
}

#[test]
fn a_refusing_answer_becomes_a_local_reply() {
    let mut h = harness(CALLOUTS);
    let (id, token) = call(&mut h, "/call");
    h.answer(token, Some(HttpCallResponse::new(403, &[], "no"))).unwrap();
    let recorded = h.finish(id).unwrap();
    assert_eq!(recorded.upstream_headers, None);
    assert_eq!(recorded.status(), Some(502));
    assert_eq!(recorded.response_header("x-call-status"), Some("403"));
    assert_eq!(body(&recorded), "check answered 403");
}

#[test]
fn a_failed_call_is_seen_with_zero_headers() {
    let mut h = harness(CALLOUTS);
    let (id, token) = call(&mut h, "/call");
    h.answer(token, None).unwrap();
    let recorded = h.finish(id).unwrap();
    assert_eq!(recorded.upstream_headers, None);
    assert_eq!(recorded.status(), Some(503));
    assert_eq!(body(&recorded), "call failed");
}

#[test]
fn a_timed_out_call_is_seen_as_a_504() {
    let mut h = harness(CALLOUTS);
    let (id, token) = call(&mut h, "/call");
    h.time_out(token).unwrap();
    let recorded = h.finish(id).unwrap();
    assert_eq!(recorded.upstream_headers, None);
    assert_eq!(recorded.status(), Some(502));
    assert_eq!(recorded.response_header("x-call-status"), Some("504"));
}

#[test]
fn a_call_to_an_unknown_cluster_is_refused() {
    let mut h = harness(CALLOUTS);
    let id = h.request(&get("/call?cluster=nope"), b"").unwrap();
    assert!(h.take_http_calls().is_empty(), "nothing was dispatched");
    assert_eq!(h.vm.pending_calls(), 0);
    let recorded = h.finish(id).unwrap();
    assert_eq!(recorded.status(), Some(500));
    assert_eq!(body(&recorded), "dispatch refused: BadArgument");
    assert!(!h.vm.is_failed());
}

#[test]
fn an_answer_for_a_finished_stream_is_dropped() {
    let mut h = harness(CALLOUTS);
    let (id, token) = call(&mut h, "/call");
    h.finish(id).unwrap();
    assert_eq!(h.vm.pending_calls(), 0, "the finished stream's call is forgotten");
    h.answer(token, Some(HttpCallResponse::new(200, &[], "late"))).expect("a late answer is not an error");
    h.answer(token, None).expect("nor is a second one");
    assert!(!h.vm.is_failed());
    assert_eq!(h.recorded(id).upstream_headers, None);

    let (id, token) = call(&mut h, "/call");
    h.answer(token, Some(HttpCallResponse::new(200, &[], "fresh"))).unwrap();
    assert_eq!(h.recorded(id).upstream_header("x-check"), Some("fresh"));
}

// --- shared data, queues, timers, metrics --------------------------------------------------------

#[test]
fn shared_data_with_cas_is_shared_by_vms_of_one_env() {
    let mut one = harness(CALLOUTS);
    let spec = PluginSpec { name: "test".into(), vm_id: "test".into(), ..Default::default() };
    let mut two = Harness::new(&module(CALLOUTS), spec, one.env().clone()).unwrap();

    assert_eq!(ask(&mut one, "/shared/get?key=k"), "missing");
    assert_eq!(ask(&mut one, "/shared/set?key=k&value=first&cas=42"), "stored", "a new key ignores CAS");
    assert_eq!(ask(&mut two, "/shared/get?key=k"), "first@1", "VM 2 sees VM 1's value");
    assert_eq!(ask(&mut two, "/shared/set?key=k&value=second&cas=7"), "cas mismatch");
    assert_eq!(ask(&mut two, "/shared/set?key=k&value=second&cas=1"), "stored");
    assert_eq!(ask(&mut one, "/shared/set?key=k&value=third&cas=1"), "cas mismatch", "VM 1's CAS is stale");
    assert_eq!(ask(&mut one, "/shared/get?key=k"), "second@2");
    assert_eq!(ask(&mut one, "/shared/set?key=k&value=forced"), "stored", "CAS 0 is unconditional");
    assert_eq!(one.env().get_shared_data("k"), Some((b"forced".to_vec(), 3)));
    assert_eq!(ask(&mut two, "/shared/get?key=k"), "forced@3");
}

#[test]
fn a_queue_item_is_delivered_to_the_vm_that_owns_the_queue() {
    let mut one = harness(CALLOUTS);
    assert!(one.take_queue_ready().is_empty());
    // The next worker registers `events` too and, as in Envoy, becomes its owner.
    let mut two = one.worker(1).unwrap();
    assert_eq!(two.vm.number(), 1);

    assert_eq!(ask(&mut one, "/queue/push?vm=test&value=a"), "queued");
    assert_eq!(ask(&mut one, "/queue/push?vm=test&value=b"), "queued");
    assert_eq!(ask(&mut one, "/queue/push?vm=elsewhere&value=c"), "no such queue");
    let ready = one.take_queue_ready();
    assert_eq!(ready.len(), 2, "{ready:?}");
    let (vm, context, queue) = ready[0];
    assert_eq!(ready[1], ready[0]);
    assert_eq!(vm, 1, "the owner is VM 1");
    assert!(two.take_queue_ready().is_empty(), "the notice comes from the VM that enqueued");

    assert_eq!(one.env().get_shared_data("queue-drained"), None);
    two.vm.on_queue_ready(context, queue).unwrap();
    assert_eq!(one.env().get_shared_data("queue-drained").map(|(value, _)| value), Some(b"a,b,".to_vec()));
}

#[test]
fn the_tick_timer_fires_on_the_root_context() {
    let mut h = harness(CALLOUTS);
    assert_eq!(h.tick_period(), Some(Duration::from_millis(250)), "set in on_configure");
    h.tick().unwrap();
    assert_eq!(h.env().get_shared_data("ticks").map(|(value, _)| value), Some(vec![1]));
    h.tick().unwrap();
    h.tick().unwrap();
    assert_eq!(h.env().get_shared_data("ticks").map(|(value, _)| value), Some(vec![3]));

    // A replacement VM's own start-up requests (its timer) are carried out, not left queued.
    h.replace_vm().unwrap();
    assert!(h.vm.take_effects().is_empty());
    assert_eq!(h.tick_period(), Some(Duration::from_millis(250)));
    h.tick().unwrap();
    assert_eq!(h.env().get_shared_data("ticks").map(|(value, _)| value), Some(vec![4]));
}

#[test]
fn a_counter_counts_every_request_of_every_vm() {
    let mut h = harness(CALLOUTS);
    assert_eq!(h.env().metric("callouts_requests"), Some(0), "defined in on_configure");
    for path in ["/a", "/b", "/c"] {
        let id = h.request(&get(path), b"").unwrap();
        h.respond(id, 204, &[], b"").unwrap();
        h.finish(id).unwrap();
    }
    assert_eq!(ask(&mut h, "/metric"), "4", "the filter reads the counter, its own request included");
    assert_eq!(h.env().metric("callouts_requests"), Some(4));

    let mut other = h.worker(1).unwrap();
    assert_eq!(ask(&mut other, "/metric"), "5", "metrics are process-wide");
    assert_eq!(h.env().metric("callouts_requests"), Some(5));
}

// --- faults ---------------------------------------------------------------------------------------

#[test]
fn a_module_importing_an_unknown_function_is_refused_by_name() {
    let message = load_error(&module(UNKNOWN_IMPORT));
    assert!(message.contains("env.proxy_make_coffee"), "{message}");
    let message = start_error(Harness::with_config(&module(UNKNOWN_IMPORT), b"", &[]));
    assert!(message.contains("env.proxy_make_coffee"), "{message}");
}

#[test]
fn something_that_is_not_a_filter_is_refused_clearly() {
    let message = load_error(b"#!/bin/sh\necho not wasm\n");
    assert!(message.contains("not a valid WebAssembly module"), "{message}");
    let message = load_error(b"\0asm\x01\0\0\0");
    assert!(message.contains("proxy_abi_version_0_2_1"), "an empty module: {message}");
}

fn assert_keeps_serving(h: &mut Harness) {
    assert!(h.vm.is_failed());
    assert!(matches!(h.request(&get("/ok"), b""), Err(VmError::Failed)), "a failed VM refuses work");
    h.replace_vm().unwrap();
    assert!(!h.vm.is_failed());
    let id = h.request(&get("/ok"), b"").expect("the replacement VM serves");
    assert_eq!(h.recorded(id).upstream_header(":path"), Some("/ok"));
    h.respond(id, 200, &[], b"fine").unwrap();
    assert_eq!(body(&h.finish(id).unwrap()), "fine");
}

#[test]
fn a_trap_names_the_callback_and_what_the_filter_printed() {
    let mut h = harness(FAULTY);
    match h.request(&get("/panic"), b"") {
        Err(VmError::Trap { callback, message }) => {
            assert_eq!(callback, "proxy_on_request_headers");
            assert!(message.contains("boom on purpose"), "{message}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_keeps_serving(&mut h);
}

#[test]
fn a_garbage_return_value_fails_the_vm() {
    let mut h = harness(FAULTY);
    match h.request(&get("/garbage"), b"") {
        Err(VmError::BadReturn { callback, value }) => {
            assert_eq!(callback, "proxy_on_request_headers");
            assert_eq!(value, 7);
        }
        other => panic!("expected a bad return, got {other:?}"),
    }
    assert_keeps_serving(&mut h);
}

#[test]
fn a_pointer_outside_the_filters_memory_is_a_bad_argument() {
    let mut h = harness(FAULTY);
    let id = h.request(&get("/bad-pointer"), b"").expect("the host refuses the call; nothing traps");
    assert_eq!(h.recorded(id).upstream_header("x-log-status"), Some("2"), "BAD_ARGUMENT");
    assert!(!h.vm.is_failed());
    let id = h.request(&get("/ok"), b"").unwrap();
    assert!(h.recorded(id).upstream_headers.is_some());
}

#[test]
fn a_callback_that_runs_forever_is_interrupted_at_its_deadline() {
    let spec = PluginSpec {
        name: "test".into(),
        vm_id: "test".into(),
        callback_deadline: Some(Duration::from_millis(200)),
        ..Default::default()
    };
    let mut h = Harness::new(&module(FAULTY), spec, HostEnv::new()).unwrap();
    h.plugin().start_deadline_ticker();
    let started = Instant::now();
    let outcome = h.request(&get("/loop"), b"");
    let took = started.elapsed();
    match outcome {
        Err(VmError::Trap { callback, message }) => {
            assert_eq!(callback, "proxy_on_request_headers");
            assert!(message.contains("deadline"), "{message}");
        }
        other => panic!("expected an interrupted callback, got {other:?}"),
    }
    assert!(took >= Duration::from_millis(100), "interrupted too early: {took:?}");
    assert!(took < Duration::from_secs(5), "interrupted too late: {took:?}");
    assert_keeps_serving(&mut h);
}

#[test]
fn a_refused_configuration_fails_start_up_with_what_the_filter_logged() {
    let message = start_error(Harness::with_config(&module(FAULTY), b"reject", &[]));
    assert!(message.contains("rejected its configuration"), "{message}");
    assert!(message.contains("configuration `reject` is not acceptable"), "{message}");
    // Any other configuration is fine.
    Harness::with_config(&module(FAULTY), b"accept", &[]).expect("accepted");
}

// --- the real filter -----------------------------------------------------------------------------

fn real_filter() -> Vec<u8> {
    std::fs::read(env!("ORY_PROXY_FILTER_WASM_PATH")).expect("the filter was built")
}

#[test]
fn the_real_filter_serves_its_jwks_and_passes_the_rest_through() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = key.public_key_raw();
    assert_eq!((point.len(), point[0]), (65, 4), "an uncompressed SEC1 point");
    let config = serde_json::to_vec(&serde_json::json!({ "signing_key": key.serialize_pem() })).unwrap();
    let mut h = Harness::with_config(&real_filter(), &config, &[]).unwrap_or_else(|e| panic!("{e:#}"));

    let id = h.request(&get("/.ory/jwks.json"), b"").unwrap();
    let recorded = h.finish(id).unwrap();
    assert_eq!(recorded.upstream_headers, None, "answered by the filter");
    assert_eq!(recorded.status(), Some(200));
    assert_eq!(recorded.response_header("content-type"), Some("application/json"));
    let cache = recorded.response_header("cache-control").unwrap_or_default();
    assert!(cache.contains("max-age="), "{cache}");
    let jwks: serde_json::Value = serde_json::from_slice(&recorded.response_body).unwrap();
    let jwk = &jwks["keys"][0];
    assert_eq!(jwk["kty"], "EC");
    assert_eq!(jwk["crv"], "P-256");
    assert_eq!(jwk["x"], b64.encode(&point[1..33]));
    assert_eq!(jwk["y"], b64.encode(&point[33..65]));
    assert!(jwk.get("d").is_none(), "the private part stays private");

    let headers = [get("/anything?x=1"), vec![("accept", "text/html")]].concat();
    let id = h.request(&headers, b"").unwrap();
    let sent = h.recorded(id).upstream_headers.clone().expect("passed upstream");
    assert_eq!(sent, HeaderList::from_pairs(headers.iter().copied()), "untouched");
    h.respond(id, 200, &[("content-type", "text/html")], b"<p>app</p>").unwrap();
    let recorded = h.finish(id).unwrap();
    assert_eq!(recorded.status(), Some(200));
    assert_eq!(body(&recorded), "<p>app</p>");
}

#[test]
fn the_real_filter_refuses_a_bad_configuration_by_field() {
    for config in [&b"{}"[..], br#"{"signing_key":"nope"}"#] {
        let message = start_error(Harness::with_config(&real_filter(), config, &[]));
        assert!(message.contains("signing_key"), "{}: {message}", String::from_utf8_lossy(config));
    }
}
