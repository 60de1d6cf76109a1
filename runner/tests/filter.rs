//! The ory-proxy filter inside wasmtime, driven request by request through the runner's host
//! harness: sessions, JWTs and protected paths, `/.ory/` rewriting and CORS.
//! Ory's whoami is answered by the tests.

use std::io::{Read, Write};
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use p256::ecdsa::signature::Verifier as _;
use proxy_wasm_host::harness::{Harness, Recorded};
use proxy_wasm_host::{Exchange, HeaderList, HostEnv, HttpCallResponse, Out, PluginSpec, StreamInfo};
use serde_json::{Value, json};

const BROWSER: (&str, &str) = ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8");
const API: (&str, &str) = ("accept", "application/json");
const COOKIE: (&str, &str) = ("cookie", "ory_kratos_session=abc123; theme=dark");
/// What of [`COOKIE`] Ory is sent: the session cookie only.
const SESSION_COOKIE: &str = "ory_kratos_session=abc123";
const ORY: &str = "http://127.0.0.1:4433";

fn wasm() -> &'static [u8] {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| std::fs::read(env!("ORY_PROXY_FILTER_WASM_PATH")).expect("the filter module is built"))
}

fn key_pem() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(|| {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a P-256 key").serialize_pem()
    })
}

fn session_example() -> Vec<u8> {
    std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/ory/session-example.json"))
        .expect("the shared whoami example")
}

fn session_json() -> Value {
    serde_json::from_slice(&session_example()).expect("the example is JSON")
}

/// The configuration with Ory at `ORY`, `/members` protected, and `extra` merged in.
fn config(extra: Value) -> Vec<u8> {
    let mut doc = json!({
        "signing_key": key_pem(),
        "ory": { "url": ORY },
        "public_url": "http://localhost:4000",
        "protect": { "prefixes": ["/members"] },
    });
    if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            doc.insert(key.clone(), value.clone());
        }
    }
    serde_json::to_vec(&doc).expect("JSON")
}

fn harness_with(extra: Value) -> Harness {
    Harness::with_config(wasm(), &config(extra), &["ory"]).expect("the filter starts")
}

fn harness() -> Harness {
    harness_with(json!({}))
}

/// A GET from `authority` over `scheme`.
fn request_on(h: &mut Harness, scheme: &str, authority: &str, path: &str, extra: &[(&str, &str)]) -> u32 {
    let mut headers = vec![(":method", "GET"), (":path", path), (":authority", authority), (":scheme", scheme)];
    headers.extend_from_slice(extra);
    h.request(&headers, b"").expect("the request runs")
}

fn get(h: &mut Harness, path: &str, extra: &[(&str, &str)]) -> u32 {
    request_on(h, "http", "localhost:4000", path, extra)
}

fn reached_app(r: &Recorded) -> bool {
    r.upstream_headers.is_some() && !r.replied
}

/// The one whoami call dispatched since the last look, checked for shape.
fn whoami_call(h: &mut Harness) -> u32 {
    let calls = h.take_http_calls();
    assert_eq!(calls.len(), 1, "expected one whoami call, got {calls:?}");
    let call = &calls[0];
    assert_eq!(call.cluster, "ory");
    assert_eq!(call.headers.get_str(":method"), Some("GET"));
    assert_eq!(call.headers.get_str(":path"), Some("/sessions/whoami"));
    assert_eq!(call.headers.get_str(":authority"), Some("127.0.0.1:4433"));
    assert_eq!(call.headers.get_str("accept"), Some("application/json"));
    call.token
}

fn answer_active(h: &mut Harness, token: u32) {
    h.answer(token, Some(HttpCallResponse::new(200, &[("content-type", "application/json")], session_example())))
        .expect("answered");
}

const UNAUTHORIZED: &str = r#"{"error":{"code":401,"status":"Unauthorized","reason":"No valid session credentials found in the request.","message":"The request could not be authorized"}}"#;

fn answer_401(h: &mut Harness, token: u32) {
    h.answer(token, Some(HttpCallResponse::new(401, &[("content-type", "application/json")], UNAUTHORIZED)))
        .expect("answered");
}

fn bearer(r: &Recorded) -> String {
    let value = r.upstream_header("authorization").expect("an Authorization header");
    value.strip_prefix("Bearer ").expect("a bearer token").to_string()
}

/// Verifies a JWT against the filter's own JWKS and returns its claims.
fn verify(h: &mut Harness, jwt: &str) -> Value {
    let id = get(h, "/.ory/jwks.json", &[]);
    let jwks: Value = serde_json::from_slice(&h.recorded(id).response_body).expect("JWKS JSON");
    let key = &jwks["keys"][0];
    let coordinate = |name: &str| B64.decode(key[name].as_str().expect("coordinate")).expect("base64url");
    let mut sec1 = vec![4u8];
    sec1.extend(coordinate("x"));
    sec1.extend(coordinate("y"));
    let verifying = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).expect("a P-256 public key");
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    let header: Value = serde_json::from_slice(&B64.decode(parts[0]).expect("b64")).expect("header JSON");
    assert_eq!(header, json!({ "alg": "ES256", "kid": key["kid"], "typ": "JWT" }));
    let signature_bytes = B64.decode(parts[2]).expect("b64");
    assert_eq!(signature_bytes.len(), 64, "R || S, not DER");
    let signature = p256::ecdsa::Signature::from_slice(&signature_bytes).expect("a signature");
    verifying.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature).expect("the signature verifies");
    serde_json::from_slice(&B64.decode(parts[1]).expect("b64")).expect("claims JSON")
}

fn query_param(location: &str, name: &str) -> Option<String> {
    let url = url::Url::parse(location).expect("an absolute Location");
    url.query_pairs().find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
}

fn all_response_headers<'a>(r: &'a Recorded, name: &str) -> Vec<&'a str> {
    r.response_headers
        .as_ref()
        .map(|headers| headers.get_all(name).filter_map(|value| std::str::from_utf8(value).ok()).collect())
        .unwrap_or_default()
}

fn body_json(r: &Recorded) -> Value {
    serde_json::from_slice(&r.response_body).expect("a JSON body")
}

/// An exchange driven by hand, for what the harness's `respond` cannot do: response headers that
/// do not end the stream, then body chunks one by one. Only for requests that make no HTTP calls.
struct Streamed {
    exchange: Exchange,
}

impl Streamed {
    fn open(h: &mut Harness, request: &[(&str, &str)]) -> Streamed {
        let info = StreamInfo {
            source: "127.0.0.1:50000".parse().ok(),
            destination: "127.0.0.1:4000".parse().ok(),
            protocol: "HTTP/1.1".into(),
            connection_id: Some(1),
        };
        let (mut exchange, step) = Exchange::open(&mut h.vm, info, 1 << 20).expect("opened");
        let mut out = step.out;
        let headers = HeaderList::from_pairs(request.iter().copied());
        out.extend(exchange.request_headers(&mut h.vm, headers, true).expect("request headers").out);
        assert!(out.iter().any(|o| matches!(o, Out::RequestHeaders(..))), "went upstream: {out:?}");
        Streamed { exchange }
    }

    fn response_headers(&mut self, h: &mut Harness, status: u16, headers: &[(&str, &str)]) -> HeaderList {
        let mut list = HeaderList::from_pairs([(":status", status.to_string())]);
        for (name, value) in headers {
            list.add(name, value.as_bytes());
        }
        let step = self.exchange.response_headers(&mut h.vm, list, false).expect("response headers");
        let sent = step.out.iter().find_map(|o| match o {
            Out::ResponseHeaders(headers, _) => Some(headers.clone()),
            _ => None,
        });
        sent.expect("the response headers went on at once")
    }

    /// Sends a chunk; returns what reached the client right away.
    fn data(&mut self, h: &mut Harness, chunk: &[u8], end: bool) -> Vec<u8> {
        let step = self.exchange.response_data(&mut h.vm, chunk, end).expect("data");
        let mut sent = Vec::new();
        for o in &step.out {
            if let Out::ResponseData(data, _) = o {
                sent.extend_from_slice(data);
            }
        }
        sent
    }

    fn finish(self, h: &mut Harness) {
        self.exchange.finish(&mut h.vm).expect("finished");
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out).expect("valid gzip");
    out
}

// ---------------------------------------------------------------------------------------------
// Sessions, JWTs and protected paths
// ---------------------------------------------------------------------------------------------

#[test]
fn a_browser_without_a_session_is_sent_to_login_with_the_whole_url() {
    let mut h = harness();
    let id = get(&mut h, "/members/area?tab=a b&x=1", &[BROWSER]);
    // No credentials at all: Ory is not even asked.
    assert!(h.take_http_calls().is_empty());
    let r = h.recorded(id);
    assert!(!reached_app(r));
    assert_eq!(r.status(), Some(303));
    let location = r.response_header("location").expect("Location");
    assert!(location.starts_with("http://localhost:4000/.ory/self-service/login/browser?return_to="), "{location}");
    assert!(
        location.ends_with("return_to=http%3A%2F%2Flocalhost%3A4000%2Fmembers%2Farea%3Ftab%3Da%2520b%26x%3D1"),
        "{location}"
    );
    assert_eq!(query_param(location, "return_to").as_deref(), Some("http://localhost:4000/members/area?tab=a%20b&x=1"));

    // With a cookie Ory does not know: the same, after asking.
    let id = get(&mut h, "/members", &[BROWSER, COOKIE]);
    let token = whoami_call(&mut h);
    assert!(h.recorded(id).response_headers.is_none(), "paused until Ory answers");
    answer_401(&mut h, token);
    assert_eq!(h.recorded(id).status(), Some(303));
    assert!(!reached_app(h.recorded(id)));
}

#[test]
fn a_browser_on_127_0_0_1_stays_there() {
    let mut h = harness();
    let id = request_on(&mut h, "http", "127.0.0.1:4000", "/members", &[BROWSER]);
    let location = h.recorded(id).response_header("location").expect("Location").to_string();
    assert_eq!(
        location,
        "http://127.0.0.1:4000/.ory/self-service/login/browser?return_to=http%3A%2F%2F127.0.0.1%3A4000%2Fmembers"
    );
}

#[test]
fn a_spoofed_host_falls_back_to_the_public_url() {
    let mut h = harness();
    for authority in ["evil.com", "localhost.evil.com:4000", "localhost@evil.com"] {
        let id = request_on(&mut h, "http", authority, "/members", &[BROWSER]);
        let location = h.recorded(id).response_header("location").expect("Location").to_string();
        assert!(
            location.starts_with("http://localhost:4000/.ory/self-service/login/browser?"),
            "{authority}: {location}"
        );
        assert_eq!(
            query_param(&location, "return_to").as_deref(),
            Some("http://localhost:4000/members"),
            "{authority}"
        );
    }
}

#[test]
fn an_api_client_without_a_session_gets_401_json() {
    let mut h = harness();
    for extra in [[API, ("x-other", "1")], [("accept", "*/*"), ("x-requested-with", "XMLHttpRequest")]] {
        let id = get(&mut h, "/members", &extra);
        let r = h.recorded(id);
        assert_eq!(r.status(), Some(401));
        assert_eq!(r.response_header("content-type"), Some("application/json"));
        let body = body_json(r);
        assert_eq!(body["error"]["code"], 401);
        assert_eq!(body["error"]["status"], "Unauthorized");
        assert!(!reached_app(r));
    }
}

#[test]
fn an_active_session_reaches_the_app_with_a_verifiable_jwt() {
    let mut h = harness();
    let id = get(
        &mut h,
        "/members",
        &[BROWSER, COOKIE, ("authorization", "Bearer client-token"), ("x-request-id", "rid-1")],
    );
    let calls = h.take_http_calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.headers.get_str("cookie"), Some(SESSION_COOKIE), "the session cookie, not the others");
    assert_eq!(call.headers.get_str("authorization"), Some("Bearer client-token"));
    assert_eq!(call.headers.get_str("x-request-id"), Some("rid-1"));
    assert_eq!(call.timeout, Duration::from_millis(5000));
    answer_active(&mut h, call.token);

    let r = h.recorded(id).clone();
    assert!(reached_app(&r));
    let jwt = bearer(&r);
    assert_ne!(jwt, "client-token", "the client's Authorization is overwritten");
    let claims = verify(&mut h, &jwt);
    let session = session_json();
    assert_eq!(claims["sub"], session["identity"]["id"]);
    assert_eq!(claims["session"], session);
    assert_eq!(claims["iss"], ORY);
    assert!(claims.get("aud").is_none());
    let iat = claims["iat"].as_u64().expect("iat");
    assert_eq!(claims["nbf"].as_u64(), Some(iat));
    assert_eq!(claims["exp"].as_u64(), Some(iat + 60));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs();
    assert!(iat.abs_diff(now) <= 5, "iat {iat} is now ({now})");
    assert_eq!(claims["jti"].as_str().map(str::len), Some(36));
}

#[test]
fn audience_and_lifetime_follow_the_configuration() {
    let mut h = harness_with(json!({
        "ory": { "url": "http://127.0.0.1:4433/", "whoami_timeout_ms": 750 },
        "jwt": { "ttl_seconds": 120, "audience": "my-app" },
    }));
    let id = get(&mut h, "/members", &[COOKIE]);
    let calls = h.take_http_calls();
    assert_eq!(calls[0].timeout, Duration::from_millis(750));
    answer_active(&mut h, calls[0].token);
    let jwt = bearer(h.recorded(id));
    let claims = verify(&mut h, &jwt);
    assert_eq!(claims["aud"], "my-app");
    assert_eq!(claims["iss"], ORY, "no trailing slash in iss");
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 120);
}

#[test]
fn without_jwts_an_active_session_passes_the_client_authorization() {
    let mut h = harness_with(json!({ "jwt": { "enabled": false } }));
    let id = get(&mut h, "/members", &[COOKIE, ("authorization", "Bearer client-token")]);
    let token = whoami_call(&mut h);
    answer_active(&mut h, token);
    assert!(reached_app(h.recorded(id)));
    assert_eq!(h.recorded(id).upstream_header("authorization"), Some("Bearer client-token"));
}

#[test]
fn without_a_session_the_client_authorization_passes_through() {
    let mut h = harness();
    // Unprotected, credentials Ory does not accept.
    let id = get(&mut h, "/public", &[("authorization", "Bearer my-api-key")]);
    let token = whoami_call(&mut h);
    answer_401(&mut h, token);
    let r = h.recorded(id);
    assert!(reached_app(r));
    assert_eq!(r.upstream_header("authorization"), Some("Bearer my-api-key"));

    // No credentials at all: no whoami call, straight through.
    let id = get(&mut h, "/public", &[BROWSER]);
    assert!(h.take_http_calls().is_empty());
    assert!(reached_app(h.recorded(id)));
    assert_eq!(h.recorded(id).upstream_header("authorization"), None);
}

#[test]
fn unprotected_paths_with_a_session_get_the_jwt_too() {
    let mut h = harness();
    let id = get(&mut h, "/", &[COOKIE]);
    let token = whoami_call(&mut h);
    answer_active(&mut h, token);
    let jwt = bearer(h.recorded(id));
    assert_eq!(verify(&mut h, &jwt)["sub"], session_json()["identity"]["id"]);
}

/// Ory failing in every way: protected paths fail closed, unprotected ones open without a JWT.
#[test]
fn ory_failures_fail_closed_on_protected_and_open_on_unprotected_paths() {
    type Failure = fn(&mut Harness, u32);
    let failures: [(&str, Failure); 5] = [
        ("500", |h, token| {
            h.answer(token, Some(HttpCallResponse::new(500, &[("content-type", "text/plain")], "boom"))).unwrap()
        }),
        ("timeout", |h, token| h.time_out(token).unwrap()),
        ("garbage", |h, token| {
            h.answer(token, Some(HttpCallResponse::new(200, &[("content-type", "application/json")], "<html>not json")))
                .unwrap()
        }),
        ("inactive without identity", |h, token| {
            h.answer(token, Some(HttpCallResponse::new(200, &[], r#"{"active":true}"#))).unwrap()
        }),
        ("connection failure", |h, token| h.answer(token, None).unwrap()),
    ];
    // Failures are never cached, so one VM serves every case.
    let mut h = harness();
    for (name, fail) in failures {
        let browser = get(&mut h, "/members", &[BROWSER, COOKIE]);
        let token = whoami_call(&mut h);
        fail(&mut h, token);
        let r = h.recorded(browser);
        assert!(!reached_app(r), "{name}: the app must not be reached");
        assert_eq!(r.status(), Some(502), "{name}");
        assert!(r.response_header("content-type").unwrap_or_default().starts_with("text/html"), "{name}");
        assert!(String::from_utf8_lossy(&r.response_body).contains("could not be asked"), "{name}");

        let api = get(&mut h, "/members", &[API, COOKIE]);
        let token = whoami_call(&mut h);
        fail(&mut h, token);
        let r = h.recorded(api);
        assert!(!reached_app(r), "{name}");
        assert_eq!(r.status(), Some(502), "{name}");
        assert_eq!(body_json(r)["error"]["code"], 502, "{name}");

        let open = get(&mut h, "/public", &[BROWSER, COOKIE, ("authorization", "Bearer mine")]);
        let token = whoami_call(&mut h);
        fail(&mut h, token);
        let r = h.recorded(open);
        assert!(reached_app(r), "{name}: unprotected paths fail open");
        assert_eq!(r.upstream_header("authorization"), Some("Bearer mine"), "{name}: no JWT");
    }
}

#[test]
fn a_second_factor_requirement_goes_through_the_proxy() {
    let body = json!({
        "error": {
            "id": "session_aal2_required",
            "code": 403,
            "status": "Forbidden",
            "reason": "A higher authenticator assurance level is required.",
            "message": "Forbidden",
            "details": { "redirect_browser_to": format!("{ORY}/self-service/login/browser?aal=aal2") },
        },
        "redirect_browser_to": format!("{ORY}/self-service/login/browser?aal=aal2"),
    })
    .to_string();
    let mut h = harness();
    let id = request_on(&mut h, "http", "127.0.0.1:4000", "/members/x?y=1", &[BROWSER, COOKIE]);
    let token = whoami_call(&mut h);
    h.answer(token, Some(HttpCallResponse::new(403, &[("content-type", "application/json")], body.clone()))).unwrap();
    let r = h.recorded(id);
    assert_eq!(r.status(), Some(303));
    let location = r.response_header("location").unwrap();
    assert!(
        location.starts_with("http://127.0.0.1:4000/.ory/self-service/login/browser?aal=aal2&return_to="),
        "{location}"
    );
    assert_eq!(query_param(location, "return_to").as_deref(), Some("http://127.0.0.1:4000/members/x?y=1"));

    // Cached: the API client is answered without asking again.
    let id = request_on(&mut h, "http", "127.0.0.1:4000", "/members", &[API, COOKIE]);
    assert!(h.take_http_calls().is_empty());
    let r = h.recorded(id);
    assert_eq!(r.status(), Some(403));
    assert_eq!(body_json(r)["error"]["id"], "session_aal2_required");
}

#[test]
fn the_cache_reuses_the_session_and_its_jwt() {
    let mut h = harness();
    let first = get(&mut h, "/members", &[COOKIE]);
    let token = whoami_call(&mut h);
    answer_active(&mut h, token);
    let jwt = bearer(h.recorded(first));

    // Within the TTL: no call, the same token. Other cookies do not split the cache.
    let second = get(&mut h, "/members", &[("cookie", "theme=light; ory_kratos_session=abc123")]);
    assert!(h.take_http_calls().is_empty(), "a cached session is not asked again");
    assert_eq!(bearer(h.recorded(second)), jwt);

    // After the TTL (5 s): Ory is asked again; the JWT is still young, so it is kept.
    h.env().clock.advance(Duration::from_millis(5_100));
    let third = get(&mut h, "/members", &[COOKIE]);
    let token = whoami_call(&mut h);
    answer_active(&mut h, token);
    assert_eq!(bearer(h.recorded(third)), jwt);

    // Once most of the JWT's life is spent, a new one is signed.
    h.env().clock.advance(Duration::from_secs(50));
    let fourth = get(&mut h, "/members", &[COOKIE]);
    let token = whoami_call(&mut h);
    answer_active(&mut h, token);
    let new_jwt = bearer(h.recorded(fourth));
    assert_ne!(new_jwt, jwt);
    verify(&mut h, &new_jwt);
}

#[test]
fn no_session_is_remembered_briefly() {
    let mut h = harness();
    let first = get(&mut h, "/members", &[API, COOKIE]);
    let token = whoami_call(&mut h);
    answer_401(&mut h, token);
    assert_eq!(h.recorded(first).status(), Some(401));
    let second = get(&mut h, "/members", &[API, COOKIE]);
    assert!(h.take_http_calls().is_empty());
    assert_eq!(h.recorded(second).status(), Some(401));
    h.env().clock.advance(Duration::from_millis(1_100));
    get(&mut h, "/members", &[API, COOKIE]);
    whoami_call(&mut h);
}

#[test]
fn concurrent_requests_with_one_session_share_one_whoami_call() {
    let mut h = harness();
    let ids: Vec<u32> = (0..5).map(|_| get(&mut h, "/members", &[BROWSER, COOKIE])).collect();
    let other = get(&mut h, "/members", &[BROWSER, ("cookie", "ory_kratos_session=someone-else")]);
    let calls = h.take_http_calls();
    assert_eq!(calls.len(), 2, "one call per distinct session: {calls:?}");
    let mine = calls.iter().find(|call| call.headers.get_str("cookie") == Some(SESSION_COOKIE)).unwrap().token;
    let theirs = calls.iter().find(|call| call.token != mine).unwrap().token;
    for id in &ids {
        assert!(h.recorded(*id).upstream_headers.is_none(), "waiting for Ory");
    }
    answer_active(&mut h, mine);
    let jwts: Vec<String> = ids.iter().map(|id| bearer(h.recorded(*id))).collect();
    assert!(jwts.iter().all(|jwt| *jwt == jwts[0]), "every waiter gets the same JWT");
    verify(&mut h, &jwts[0]);
    assert!(h.recorded(other).upstream_headers.is_none());
    answer_401(&mut h, theirs);
    assert_eq!(h.recorded(other).status(), Some(303));
}

#[test]
fn a_waiter_that_goes_away_does_not_break_the_others() {
    let mut h = harness();
    let first = get(&mut h, "/members", &[COOKIE]);
    let gone = get(&mut h, "/members", &[COOKIE]);
    let token = whoami_call(&mut h);
    h.finish(gone).expect("the client went away");
    answer_active(&mut h, token);
    assert!(reached_app(h.recorded(first)));
    assert!(!reached_app(h.recorded(gone)));
    // And the next request is served from the cache.
    let next = get(&mut h, "/members", &[COOKIE]);
    assert!(h.take_http_calls().is_empty());
    assert!(reached_app(h.recorded(next)));
}

#[test]
fn when_the_caller_goes_away_the_root_asks_again_for_the_others() {
    let mut h = harness();
    assert_eq!(h.tick_period(), Some(Duration::from_millis(75)), "a quarter of the open-path wait");
    let caller = get(&mut h, "/members", &[COOKIE]);
    let waiter = get(&mut h, "/members", &[COOKIE]);
    let old = whoami_call(&mut h);
    h.finish(caller).expect("the caller's client went away");
    // Hosts cancel a gone request's calls; an answer arriving anyway is ignored.
    answer_active(&mut h, old);
    h.tick().expect("tick");
    let token = whoami_call(&mut h);
    answer_active(&mut h, token);
    assert!(reached_app(h.recorded(waiter)));
    let jwt = bearer(h.recorded(waiter));
    verify(&mut h, &jwt);
}

#[test]
fn the_last_waiter_leaving_forgets_the_call() {
    let mut h = harness();
    let only = get(&mut h, "/members", &[COOKIE]);
    let _old = whoami_call(&mut h);
    h.finish(only).expect("gone");
    // The next request with the same credentials asks afresh instead of waiting forever.
    let next = get(&mut h, "/members", &[COOKIE]);
    let token = whoami_call(&mut h);
    answer_active(&mut h, token);
    assert!(reached_app(h.recorded(next)));
}

#[test]
fn logout_through_the_proxy_evicts_the_session() {
    let mut h = harness();
    let first = get(&mut h, "/members", &[COOKIE]);
    let token = whoami_call(&mut h);
    answer_active(&mut h, token);
    assert!(reached_app(h.recorded(first)));

    let logout = get(&mut h, "/.ory/self-service/logout?token=t1", &[BROWSER, COOKIE]);
    assert!(h.take_http_calls().is_empty());
    assert!(reached_app(h.recorded(logout)), "the logout goes to Ory");
    h.respond(
        logout,
        303,
        &[
            ("location", &format!("{ORY}/self-service/login/browser")),
            ("set-cookie", "ory_kratos_session=; Max-Age=0; Path=/"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(h.recorded(logout).status(), Some(303));

    // The session is asked about again, and Ory's answer now counts.
    let after = get(&mut h, "/members", &[API, COOKIE]);
    let token = whoami_call(&mut h);
    answer_401(&mut h, token);
    assert_eq!(h.recorded(after).status(), Some(401));
}

#[test]
fn a_whoami_cookie_refresh_reaches_the_browser() {
    let mut h = harness();
    let id = get(&mut h, "/members", &[COOKIE]);
    let token = whoami_call(&mut h);
    h.answer(
        token,
        Some(HttpCallResponse::new(
            200,
            &[
                ("content-type", "application/json"),
                ("set-cookie", "ory_kratos_session=fresh; Path=/; Max-Age=86400; HttpOnly; Secure; SameSite=Lax"),
            ],
            session_example(),
        )),
    )
    .unwrap();
    h.respond(id, 200, &[("content-type", "text/plain")], b"hello").unwrap();
    let cookies = all_response_headers(h.recorded(id), "set-cookie");
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let cookie = cookies[0];
    assert!(cookie.starts_with("ory_kratos_session=fresh"), "{cookie}");
    assert!(cookie.contains("Max-Age=86400") && cookie.contains("HttpOnly") && cookie.contains("Path=/"), "{cookie}");
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
}

/// Attack paths with `/members` protected and no session: the app must never receive a path it
/// would treat as `/members…`. Each is refused (400), sent to login (303), or forwarded as an
/// unprotected normalised path.
#[test]
fn path_normalisation_never_lets_a_protected_path_through() {
    let mut h = harness();
    let cases: &[(&str, Option<&str>)] = &[
        // (attack, expected upstream path if forwarded; None: must be stopped)
        ("/members", None),
        ("/members/", None),
        ("/members/secret?x=1", None),
        ("//members", None),
        ("///members//secret", None),
        ("/./members", None),
        ("/public/../members", None),
        ("/public/%2e%2e/members", None),
        ("/public/%2E%2E/members", None),
        ("/public/.%2e/members", None),
        ("/%2e%2e/members", None),
        ("/%6dembers", None),
        ("/%6D%65mbers", None),
        ("/members%2Fsecret", None),
        ("/public%2F..%2Fmembers", None),
        ("/%2fmembers", None),
        ("/public%5C..%5Cmembers", None),
        ("/public\\..\\members", None),
        ("\\members", None),
        ("/members;jsessionid=1", None),
        ("/public/..;/members", None),
        ("/public;x=1/../members", None),
        ("/members#frag", None),
        ("/members%00", None),
        ("/members%0a", None),
        ("/members%C0%AE", None),
        ("/public/%C0%AE%C0%AE/members", None),
        ("/.ory/../members", None),
        ("/MEMBERS", Some("/MEMBERS")),
        ("/Members/x", Some("/Members/x")),
        ("/public?/members", Some("/public?/members")),
        ("/public?next=/members", Some("/public?next=/members")),
        // Double encoding is refused: an app that decodes twice would serve /members.
        ("/public/%252e%252e/members", None),
        ("/%256dembers", None),
        ("/%252fmembers", None),
        ("/membe", Some("/membe")),
    ];
    for (attack, expected) in cases {
        let id = get(&mut h, attack, &[BROWSER]);
        assert!(h.take_http_calls().is_empty());
        let r = h.recorded(id);
        let upstream = r.upstream_header(":path").map(str::to_string);
        match expected {
            None => {
                assert!(!reached_app(r), "{attack:?} reached the app as {upstream:?}");
                assert!(matches!(r.status(), Some(303 | 400)), "{attack:?}: {:?}", r.status());
            }
            Some(path) => {
                assert!(reached_app(r), "{attack:?}");
                assert_eq!(upstream.as_deref(), Some(*path), "{attack:?}");
            }
        }
        if let Some(path) = upstream {
            assert!(!path.starts_with("/members"), "{attack:?} reached the app as {path}");
        }
    }
}

#[test]
fn the_app_receives_the_normalised_path() {
    let mut h = harness();
    let id = get(&mut h, "/a//b/./c/../d%7e?q=%2F", &[]);
    assert_eq!(h.recorded(id).upstream_header(":path"), Some("/a/b/d~?q=%2F"));
}

#[test]
fn a_refused_path_gets_400_json() {
    let mut h = harness();
    let id = get(&mut h, "/a%2Fb", &[BROWSER]);
    let r = h.recorded(id);
    assert_eq!(r.status(), Some(400));
    assert_eq!(r.response_header("content-type"), Some("application/json"));
    assert_eq!(body_json(r)["error"]["code"], 400);
}

#[test]
fn glob_and_regex_rules_protect() {
    let mut h = harness_with(json!({ "protect": { "globs": ["/admin/**"], "regexes": ["^/api/v[0-9]+/private"] } }));
    for (path, protected) in [
        ("/admin/x/y", true),
        ("/admin", false),
        ("/api/v2/private/z", true),
        ("/api/v2/public", false),
        ("/members", false),
    ] {
        let id = get(&mut h, path, &[API]);
        let r = h.recorded(id);
        assert_eq!(!reached_app(r), protected, "{path}");
    }
}

#[test]
fn regex_rules_keep_perl_classes_and_case_folding_but_not_unicode_properties() {
    let mut h = harness_with(json!({ "protect": { "regexes": [r"^/orders/\d+$", "(?i)^/caf\u{e9}/\\w+"] } }));
    for (path, protected) in
        [("/orders/42", true), ("/orders/x", false), ("/CAF%C3%89/menu", true), ("/cafe/menu", false)]
    {
        let id = get(&mut h, path, &[API]);
        assert_eq!(!reached_app(h.recorded(id)), protected, "{path}");
    }
    // The module carries no Unicode property tables: such a rule is refused at start-up.
    let config = serde_json::to_vec(&json!({
        "signing_key": key_pem(),
        "ory": { "url": ORY },
        "public_url": "http://localhost:4000",
        "protect": { "regexes": [r"^/\p{Greek}+"] },
    }))
    .unwrap();
    assert!(Harness::with_config(wasm(), &config, &["ory"]).is_err());
}

#[test]
fn jwks_is_served_before_any_session_check() {
    let mut h = harness();
    let id = get(&mut h, "/.ory/jwks.json", &[COOKIE]);
    assert!(h.take_http_calls().is_empty());
    let r = h.recorded(id);
    assert_eq!(r.status(), Some(200));
    assert_eq!(body_json(r)["keys"][0]["alg"], "ES256");
}

#[test]
fn without_ory_only_the_jwks_is_served() {
    let config = serde_json::to_vec(&json!({ "signing_key": key_pem() })).unwrap();
    let mut h = Harness::with_config(wasm(), &config, &[]).expect("starts");
    let id = get(&mut h, "/.ory/jwks.json", &[]);
    assert_eq!(h.recorded(id).status(), Some(200));
    let id = get(&mut h, "/members//x", &[COOKIE]);
    assert!(h.take_http_calls().is_empty());
    assert_eq!(h.recorded(id).upstream_header(":path"), Some("/members//x"));
}

#[test]
fn a_bad_configuration_refuses_to_start() {
    let config = serde_json::to_vec(&json!({
        "signing_key": key_pem(),
        "ory": { "url": ORY },
        "public_url": "http://localhost:4000",
        "protect": { "regexes": ["(unclosed"] },
    }))
    .unwrap();
    assert!(Harness::with_config(wasm(), &config, &["ory"]).is_err());
}

// ---------------------------------------------------------------------------------------------
// Hardening: identity headers, tokens claiming to be ours, double encoding, case
// ---------------------------------------------------------------------------------------------

/// Headers an app may take for "who the user is" or "which path was asked for".
const SPOOFED_IDENTITY: &[(&str, &str)] = &[
    ("x-kratos-authenticated-identity-id", "00000000-0000-0000-0000-000000000000"),
    ("x-original-url", "/members"),
    ("x-original-uri", "/members"),
    ("x-rewrite-url", "/members"),
    ("x-envoy-original-path", "/members"),
    ("x-user", "admin"),
    ("x-email", "admin@example.com"),
    ("x-auth-request-user", "admin"),
    ("x-auth-request-email", "admin@example.com"),
    ("remote-user", "admin"),
    ("x-remote-user", "admin"),
];

fn assert_no_spoofed_identity(r: &Recorded) {
    for (name, _) in SPOOFED_IDENTITY {
        assert_eq!(r.upstream_header(name), None, "{name} reached the app");
    }
}

#[test]
fn identity_and_path_override_headers_never_reach_the_app() {
    let mut h = harness();
    // Without credentials: no session check at all.
    let id = get(&mut h, "/public", SPOOFED_IDENTITY);
    assert!(h.take_http_calls().is_empty());
    assert!(reached_app(h.recorded(id)));
    assert_no_spoofed_identity(h.recorded(id));

    // With a session, on a protected path.
    let mut extra = SPOOFED_IDENTITY.to_vec();
    extra.push(COOKIE);
    let id = get(&mut h, "/members", &extra);
    let token = whoami_call(&mut h);
    answer_active(&mut h, token);
    let r = h.recorded(id);
    assert!(reached_app(r));
    assert_no_spoofed_identity(r);
    let jwt = bearer(r);
    assert_eq!(verify(&mut h, &jwt)["sub"], session_json()["identity"]["id"]);
}

#[test]
fn a_passed_client_header_reaches_the_app_and_no_other() {
    let mut h = harness_with(json!({ "pass_client_headers": ["X-Remote-User"] }));
    let id = get(&mut h, "/public", SPOOFED_IDENTITY);
    let r = h.recorded(id);
    assert!(reached_app(r));
    assert_eq!(r.upstream_header("x-remote-user"), Some("admin"));
    assert_eq!(r.upstream_header("remote-user"), None);
    assert_eq!(r.upstream_header("x-original-url"), None);
}

#[test]
fn a_configuration_passing_a_forwarding_header_refuses_to_start() {
    let config = config(json!({ "pass_client_headers": ["x-forwarded-host"] }));
    assert!(Harness::with_config(wasm(), &config, &["ory"]).is_err());
}

/// A compact JWT with these header and claims and a signature that verifies nowhere.
fn forged_jwt(header: Value, claims: Value) -> String {
    let part = |value: Value| B64.encode(serde_json::to_vec(&value).expect("JSON"));
    format!("{}.{}.{}", part(header), part(claims), B64.encode([7u8; 64]))
}

fn our_kid(h: &mut Harness) -> String {
    let id = get(h, "/.ory/jwks.json", &[]);
    body_json(h.recorded(id))["keys"][0]["kid"].as_str().expect("a kid").to_string()
}

#[test]
fn a_client_token_claiming_to_be_ours_never_reaches_the_app() {
    let mut h = harness();
    let kid = our_kid(&mut h);
    let claims = json!({ "sub": session_json()["identity"]["id"], "iss": ORY, "exp": 4_000_000_000u64 });
    let forged = [
        forged_jwt(json!({ "alg": "ES256", "kid": kid, "typ": "JWT" }), json!({ "sub": "admin" })),
        forged_jwt(json!({ "alg": "ES256", "kid": "someone-else", "typ": "JWT" }), claims.clone()),
        format!("{}.{}.", B64.encode(br#"{"alg":"none","typ":"JWT"}"#), B64.encode(claims.to_string())),
    ];
    for token in &forged {
        let authorization = format!("Bearer {token}");
        // No other credentials: removed, so there is nothing to ask Ory about.
        let id = get(&mut h, "/public", &[("authorization", &authorization)]);
        assert!(h.take_http_calls().is_empty(), "the forged token was sent to Ory: {token}");
        let r = h.recorded(id);
        assert!(reached_app(r));
        assert_eq!(r.upstream_header("authorization"), None, "{token}");

        // With a session the proxy's own JWT replaces it, and Ory never sees the forgery.
        let id = get(&mut h, "/members", &[COOKIE, ("authorization", &authorization)]);
        // (The first asks Ory; the others find the session in the cache.)
        let calls = h.take_http_calls();
        assert!(calls.len() <= 1, "{calls:?}");
        if let Some(call) = calls.first() {
            assert_eq!(call.headers.get_str("authorization"), None);
            answer_active(&mut h, call.token);
        }
        let jwt = bearer(h.recorded(id));
        assert_ne!(&jwt, token);
        verify(&mut h, &jwt);
    }

    // Another issuer's JWT is an ordinary credential and passes, as an API key does.
    let other = forged_jwt(json!({ "alg": "RS256", "kid": "idp-key" }), json!({ "iss": "https://idp.example" }));
    let authorization = format!("Bearer {other}");
    let id = get(&mut h, "/public", &[("authorization", &authorization)]);
    let token = whoami_call(&mut h);
    answer_401(&mut h, token);
    assert_eq!(h.recorded(id).upstream_header("authorization"), Some(authorization.as_str()));
}

#[test]
fn double_encoded_paths_are_refused_with_400() {
    let mut h = harness();
    for path in ["/%256dembers", "/x/%252e%252e/members", "/%252fmembers", "/public/%25%32%65%25%32%65/members"] {
        let id = get(&mut h, path, &[API]);
        let r = h.recorded(id);
        assert!(!reached_app(r), "{path} reached the app");
        assert_eq!(r.status(), Some(400), "{path}");
        let message = body_json(r)["error"]["reason"].as_str().unwrap_or_default().to_string();
        assert!(message.contains("percent-encoded twice"), "{path}: {message}");
    }
    // A literal percent sign that cannot be decoded again still passes.
    let id = get(&mut h, "/offers/50%25off", &[]);
    assert_eq!(h.recorded(id).upstream_header(":path"), Some("/offers/50%25off"));
}

#[test]
fn ignore_case_protects_every_spelling_of_a_rule() {
    let mut h = harness_with(json!({
        "protect": { "prefixes": ["/members"], "globs": ["/admin/**"], "regexes": ["^/api/private"], "ignore_case": true },
    }));
    for path in ["/MEMBERS", "/Members/x", "/%4dembers", "/ADMIN/x", "/API/Private/1"] {
        let id = get(&mut h, path, &[BROWSER]);
        let r = h.recorded(id);
        assert!(!reached_app(r), "{path} reached the app");
        assert_eq!(r.status(), Some(303), "{path}: sent to login");
    }
    let id = get(&mut h, "/public/MEMBERS", &[BROWSER]);
    assert!(reached_app(h.recorded(id)));

    // Case-sensitive by default, as the seed.
    let mut h = harness();
    let id = get(&mut h, "/MEMBERS", &[BROWSER]);
    assert!(reached_app(h.recorded(id)));
}

// ---------------------------------------------------------------------------------------------
// /.ory routing, rewriting and CORS
// ---------------------------------------------------------------------------------------------

#[test]
fn ory_bound_requests_get_the_rewrite_headers_and_no_spoofed_ones() {
    let mut h = harness_with(json!({ "ory": { "url": ORY, "project_api_key": "ory_pat_secret" } }));
    let id = get(
        &mut h,
        "/.ory//self-service/login/browser?return_to=x",
        &[
            BROWSER,
            COOKIE,
            ("ory-base-url-rewrite", "https://evil.com"),
            ("Ory-Base-URL-Rewrite-Token", "stolen"),
            ("ory-no-custom-domain-redirect", "false"),
            ("x-forwarded-host", "evil.com"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "host=evil.com"),
        ],
    );
    assert!(h.take_http_calls().is_empty(), "no session check for Ory's own paths");
    let r = h.recorded(id);
    assert!(reached_app(r));
    // The host's route strips /.ory; the filter leaves the normalised path for it.
    assert_eq!(r.upstream_header(":path"), Some("/.ory/self-service/login/browser?return_to=x"));
    assert_eq!(r.upstream_header("ory-no-custom-domain-redirect"), Some("true"));
    assert_eq!(r.upstream_header("ory-base-url-rewrite"), Some("http://localhost:4000/.ory"));
    assert_eq!(r.upstream_header("ory-base-url-rewrite-token"), Some("ory_pat_secret"));
    let headers = r.upstream_headers.as_ref().unwrap();
    assert_eq!(headers.get_all("ory-base-url-rewrite").count(), 1);
    assert_eq!(r.upstream_header("x-forwarded-host"), None);
    assert_eq!(r.upstream_header("forwarded"), None);
    assert_eq!(r.upstream_header("x-forwarded-proto"), Some("http"), "the browser's scheme, not the client's claim");
    assert_eq!(r.upstream_header("cookie"), Some(COOKIE.1));
}

#[test]
fn no_ory_header_and_no_spoofed_forwarding_reaches_the_app() {
    let mut h = harness_with(json!({ "ory": { "url": ORY, "project_api_key": "ory_pat_secret" } }));
    let id = get(
        &mut h,
        "/public",
        &[
            ("ory-base-url-rewrite", "https://evil.com"),
            ("ory-base-url-rewrite-token", "x"),
            ("ory-no-custom-domain-redirect", "true"),
            ("ory-anything", "x"),
            ("x-forwarded-host", "evil.com"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-uri", "/members"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("connection", "keep-alive, authorization, x-forwarded-for"),
        ],
    );
    let r = h.recorded(id);
    assert!(reached_app(r));
    let headers = r.upstream_headers.as_ref().unwrap();
    for (name, _) in &headers.0 {
        assert!(!name.starts_with("ory-"), "{name} reached the app");
    }
    assert_eq!(r.upstream_header("x-forwarded-host"), Some("localhost:4000"));
    assert_eq!(r.upstream_header("x-forwarded-proto"), Some("http"));
    assert_eq!(r.upstream_header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(headers.get_all("x-forwarded-for").count(), 1);
    assert_eq!(r.upstream_header("x-forwarded-uri"), None);
    assert_eq!(r.upstream_header("forwarded"), None);
    assert_eq!(r.upstream_header("x-real-ip"), None);
    assert_eq!(r.upstream_header("connection"), Some("keep-alive"));
}

fn ory_response(
    h: &mut Harness,
    path: &str,
    extra: &[(&str, &str)],
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Recorded {
    let id = get(h, path, extra);
    assert!(reached_app(h.recorded(id)), "{path} goes to Ory");
    h.respond(id, status, headers, body).unwrap();
    h.recorded(id).clone()
}

#[test]
fn absolute_locations_on_ory_move_under_the_proxy() {
    let mut h = harness();
    let r = ory_response(
        &mut h,
        "/.ory/self-service/login/browser",
        &[BROWSER],
        303,
        &[("location", &format!("{ORY}/ui/login?flow=abc"))],
        b"",
    );
    assert_eq!(r.response_header("location"), Some("http://localhost:4000/.ory/ui/login?flow=abc"));
    // On 127.0.0.1 the browser stays there.
    let id = request_on(&mut h, "http", "127.0.0.1:4000", "/.ory/self-service/login/browser", &[BROWSER]);
    h.respond(id, 303, &[("location", &format!("{ORY}/ui/login?flow=abc"))], b"").unwrap();
    assert_eq!(h.recorded(id).response_header("location"), Some("http://127.0.0.1:4000/.ory/ui/login?flow=abc"));
    // Other hosts are left alone.
    let r = ory_response(
        &mut h,
        "/.ory/self-service/login/browser",
        &[],
        303,
        &[("location", "https://github.com/login")],
        b"",
    );
    assert_eq!(r.response_header("location"), Some("https://github.com/login"));
}

#[test]
fn relative_locations_are_resolved_on_ory_first() {
    let mut h = harness();
    for (location, expected) in [
        ("/ui/login?flow=1", "http://localhost:4000/.ory/ui/login?flow=1"),
        ("flows?id=2", "http://localhost:4000/.ory/self-service/login/flows?id=2"),
        ("../../ui/error?id=3", "http://localhost:4000/.ory/ui/error?id=3"),
    ] {
        let r = ory_response(&mut h, "/.ory/self-service/login/browser?x=1", &[], 303, &[("location", location)], b"");
        assert_eq!(r.response_header("location"), Some(expected), "{location}");
    }
}

#[test]
fn the_welcome_page_goes_to_the_default_redirect() {
    let mut h = harness();
    let r =
        ory_response(&mut h, "/.ory/self-service/login", &[], 303, &[("location", &format!("{ORY}/ui/welcome"))], b"");
    assert_eq!(r.response_header("location"), Some("http://localhost:4000/"));
    let r = ory_response(
        &mut h,
        "/.ory/self-service/login",
        &[],
        303,
        &[("location", "http://localhost:4000/.ory/ui/welcome")],
        b"",
    );
    assert_eq!(r.response_header("location"), Some("http://localhost:4000/"));

    let mut h = harness_with(json!({ "default_redirect_url": "http://localhost:4000/dashboard" }));
    let r =
        ory_response(&mut h, "/.ory/self-service/login", &[], 303, &[("location", &format!("{ORY}/ui/welcome"))], b"");
    assert_eq!(r.response_header("location"), Some("http://localhost:4000/dashboard"));
}

const KRATOS_CSRF: &str = "csrf_token_806060ca=abc; Path=/; Domain=127.0.0.1; Max-Age=31536000; HttpOnly; Secure; SameSite=None; Priority=High";
const KRATOS_SESSION: &str =
    "ory_kratos_session=s1; Path=/; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Max-Age=86400; HttpOnly; SameSite=Lax";

fn cookie_attributes(cookie: &str) -> Vec<String> {
    cookie.split(';').map(|part| part.trim().to_ascii_lowercase()).collect()
}

#[test]
fn cookies_over_plain_http_are_host_only_lax_and_not_secure() {
    let mut h = harness();
    let r = ory_response(
        &mut h,
        "/.ory/self-service/login",
        &[],
        200,
        &[("set-cookie", KRATOS_CSRF), ("set-cookie", KRATOS_SESSION), ("content-type", "image/png")],
        b"",
    );
    let cookies = all_response_headers(&r, "set-cookie");
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    let csrf = cookie_attributes(cookies[0]);
    assert_eq!(csrf[0], "csrf_token_806060ca=abc");
    assert!(!csrf.iter().any(|a| a.starts_with("domain")), "{csrf:?}");
    assert!(!csrf.contains(&"secure".to_string()), "{csrf:?}");
    assert!(csrf.contains(&"samesite=lax".to_string()), "{csrf:?}");
    assert!(csrf.contains(&"path=/".to_string()), "{csrf:?}");
    assert!(csrf.contains(&"max-age=31536000".to_string()), "{csrf:?}");
    assert!(csrf.contains(&"httponly".to_string()), "{csrf:?}");
    assert!(csrf.contains(&"priority=high".to_string()), "{csrf:?}");
    let session = cookie_attributes(cookies[1]);
    assert_eq!(session[0], "ory_kratos_session=s1");
    assert!(session.contains(&"max-age=86400".to_string()), "{session:?}");
    assert!(session.iter().any(|a| a.starts_with("expires=")), "{session:?}");
    assert!(session.contains(&"samesite=lax".to_string()), "{session:?}");
}

#[test]
fn cookies_over_https_keep_secure_and_take_the_configured_domain() {
    let mut h = harness_with(json!({ "public_url": "https://localhost:4000", "cookie_domain": "localhost" }));
    let id = request_on(&mut h, "https", "localhost:4000", "/.ory/self-service/login", &[]);
    h.respond(id, 200, &[("set-cookie", KRATOS_CSRF)], b"").unwrap();
    let cookies = all_response_headers(h.recorded(id), "set-cookie");
    let csrf = cookie_attributes(cookies[0]);
    assert!(csrf.contains(&"secure".to_string()), "{csrf:?}");
    assert!(csrf.contains(&"samesite=none".to_string()), "{csrf:?}");
    assert!(csrf.contains(&"domain=localhost".to_string()), "{csrf:?}");
}

#[test]
fn json_and_html_bodies_from_ory_are_rewritten() {
    let mut h = harness();
    let json_body = format!(
        r#"{{"ui":{{"action":"{ORY}/self-service/login?flow=1"}},"logout_url":"{ORY}/self-service/logout?token=t"}}"#
    );
    let id = get(&mut h, "/.ory/self-service/login/flows?id=1", &[API]);
    h.respond(
        id,
        200,
        &[("content-type", "application/json"), ("content-length", &json_body.len().to_string())],
        json_body.as_bytes(),
    )
    .unwrap();
    let r = h.recorded(id);
    assert_eq!(r.response_header("content-length"), None, "the length changed");
    let body = String::from_utf8(r.response_body.clone()).unwrap();
    assert_eq!(
        body,
        r#"{"ui":{"action":"http://localhost:4000/.ory/self-service/login?flow=1"},"logout_url":"http://localhost:4000/.ory/self-service/logout?token=t"}"#
    );

    let html = format!(r#"<form action="{ORY}/self-service/login?flow=2"></form>"#);
    let mut stream = Streamed::open(
        &mut h,
        &[
            (":method", "GET"),
            (":path", "/.ory/ui/login?flow=2"),
            (":authority", "localhost:4000"),
            (":scheme", "http"),
            BROWSER,
        ],
    );
    let sent = stream.response_headers(
        &mut h,
        200,
        &[("content-type", "text/html; charset=utf-8"), ("content-length", &html.len().to_string())],
    );
    assert_eq!(sent.get_str("content-length"), None);
    // Sent in pieces: the filter buffers until the end, then rewrites.
    let (a, b) = html.as_bytes().split_at(20);
    assert!(stream.data(&mut h, a, false).is_empty(), "buffered until complete");
    assert_eq!(
        String::from_utf8(stream.data(&mut h, b, true)).unwrap(),
        r#"<form action="http://localhost:4000/.ory/self-service/login?flow=2"></form>"#
    );
    stream.finish(&mut h);
}

#[test]
fn gzip_bodies_are_rewritten_and_stay_gzip() {
    let mut h = harness();
    let body = format!(r#"{{"ui":{{"action":"{ORY}/self-service/registration?flow=9"}}}}"#);
    let compressed = gzip(body.as_bytes());
    let id = get(&mut h, "/.ory/self-service/registration/flows?id=9", &[API]);
    h.respond(
        id,
        200,
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
            ("content-length", &compressed.len().to_string()),
        ],
        &compressed,
    )
    .unwrap();
    let r = h.recorded(id);
    assert_eq!(r.response_header("content-encoding"), Some("gzip"));
    assert_eq!(r.response_header("content-length"), None);
    assert_eq!(
        String::from_utf8(gunzip(&r.response_body)).unwrap(),
        r#"{"ui":{"action":"http://localhost:4000/.ory/self-service/registration?flow=9"}}"#
    );
}

#[test]
fn ory_is_asked_only_for_codings_the_filter_can_rewrite() {
    let mut h = harness();
    for (offered, asked) in
        [("gzip, deflate, br, zstd", "gzip"), ("br;q=1.0, gzip;q=0.5", "gzip;q=0.5"), ("br, zstd", "identity")]
    {
        let id = get(&mut h, "/.ory/self-service/login/browser", &[BROWSER, ("accept-encoding", offered)]);
        let r = h.recorded(id);
        assert_eq!(r.upstream_header("accept-encoding"), Some(asked), "{offered}");
    }
    let id = get(&mut h, "/.ory/self-service/login/browser", &[BROWSER]);
    assert_eq!(h.recorded(id).upstream_header("accept-encoding"), Some("identity"));
}

#[test]
fn a_brotli_body_from_ory_passes_unrewritten() {
    let mut h = harness();
    // Ory was not asked for br, but a body in it (or any coding the filter cannot redo) is sent
    // on byte for byte: the filter never decodes it.
    let body = format!(r#"{{"ui":{{"action":"{ORY}/self-service/login?flow=3"}}}}"#);
    let id = get(&mut h, "/.ory/self-service/login/flows?id=3", &[API, ("accept-encoding", "br")]);
    h.respond(
        id,
        200,
        &[
            ("content-type", "application/json"),
            ("content-encoding", "br"),
            ("content-length", &body.len().to_string()),
        ],
        body.as_bytes(),
    )
    .unwrap();
    let r = h.recorded(id);
    assert_eq!(r.response_header("content-encoding"), Some("br"));
    assert_eq!(r.response_header("content-length"), Some(body.len().to_string().as_str()));
    assert_eq!(r.response_body, body.as_bytes());
}

#[test]
fn responses_that_need_no_rewriting_stream_untouched() {
    let mut h = harness();
    let request = |path: &'static str| {
        [(":method", "GET"), (":path", path), (":authority", "localhost:4000"), (":scheme", "http")]
    };
    // An Ory image, an app page that names Ory, server-sent events: none is buffered or changed.
    let mut stream = Streamed::open(&mut h, &request("/.ory/ui/logo.png"));
    let sent = stream.response_headers(&mut h, 200, &[("content-type", "image/png"), ("content-length", "8")]);
    assert_eq!(sent.get_str("content-length"), Some("8"));
    assert_eq!(stream.data(&mut h, b"PNG1", false), b"PNG1", "streamed at once");
    assert_eq!(stream.data(&mut h, b"PNG2", true), b"PNG2");
    stream.finish(&mut h);

    let app_body = format!("<a href=\"{ORY}/x\">login</a>");
    let mut stream = Streamed::open(&mut h, &request("/page"));
    stream.response_headers(&mut h, 200, &[("content-type", "text/html")]);
    assert_eq!(stream.data(&mut h, app_body.as_bytes(), false), app_body.as_bytes(), "app bodies are never rewritten");
    stream.finish(&mut h);

    let mut stream = Streamed::open(&mut h, &request("/.ory/events"));
    stream.response_headers(&mut h, 200, &[("content-type", "text/event-stream")]);
    let event = format!("data: {ORY}/x\n\n");
    assert_eq!(stream.data(&mut h, event.as_bytes(), false), event.as_bytes(), "server-sent events stream");
    stream.finish(&mut h);

    let id = h
        .request(
            &[(":method", "HEAD"), (":path", "/.ory/ui/login"), (":authority", "localhost:4000"), (":scheme", "http")],
            b"",
        )
        .unwrap();
    h.respond(id, 200, &[("content-type", "text/html"), ("content-length", "1234")], b"").unwrap();
    assert_eq!(h.recorded(id).response_header("content-length"), Some("1234"));
}

#[test]
fn every_response_undoes_hsts() {
    let mut h = harness();
    let app = get(&mut h, "/page", &[]);
    h.respond(app, 200, &[("strict-transport-security", "max-age=31536000")], b"ok").unwrap();
    assert_eq!(all_response_headers(h.recorded(app), "strict-transport-security"), ["max-age=0"]);
    let ory = ory_response(&mut h, "/.ory/ui/login", &[], 200, &[], b"");
    assert_eq!(ory.response_header("strict-transport-security"), Some("max-age=0"));
    let local = get(&mut h, "/members", &[API]);
    assert_eq!(h.recorded(local).response_header("strict-transport-security"), Some("max-age=0"));
}

#[test]
fn cors_preflights_are_answered_by_the_proxy() {
    let mut h = harness_with(
        json!({ "cors": { "allowed_origins": ["http://app.test:3000"], "additional_headers": ["x-tenant"] } }),
    );
    let preflight = |h: &mut Harness, origin: &str, path: &str| {
        h.request(
            &[
                (":method", "OPTIONS"),
                (":path", path),
                (":authority", "localhost:4000"),
                (":scheme", "http"),
                ("origin", origin),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type, x-tenant"),
            ],
            b"",
        )
        .unwrap()
    };
    for path in ["/api/things", "/.ory/self-service/login"] {
        let id = preflight(&mut h, "http://app.test:3000", path);
        let r = h.recorded(id);
        assert!(!reached_app(r), "{path}");
        assert_eq!(r.status(), Some(204), "{path}");
        assert_eq!(r.response_header("access-control-allow-origin"), Some("http://app.test:3000"));
        assert_eq!(r.response_header("access-control-allow-credentials"), Some("true"));
        assert_eq!(r.response_header("access-control-allow-headers"), Some("content-type, x-tenant"));
        assert!(r.response_header("access-control-allow-methods").unwrap().contains("POST"));
    }
    // The proxy's own origin is allowed by default.
    let id = preflight(&mut h, "http://localhost:4000", "/api");
    assert_eq!(h.recorded(id).status(), Some(204));
    let id = preflight(&mut h, "http://evil.test", "/api");
    let r = h.recorded(id);
    assert_eq!(r.status(), Some(403));
    assert_eq!(r.response_header("access-control-allow-origin"), None);
    assert!(!reached_app(r));
}

#[test]
fn cors_headers_on_responses_come_from_the_policy_only() {
    let mut h = harness_with(json!({ "cors": { "allowed_origins": ["http://app.test:3000"] } }));
    let id = get(&mut h, "/api", &[("origin", "http://app.test:3000")]);
    h.respond(
        id,
        200,
        &[("access-control-allow-origin", "*"), ("access-control-allow-methods", "*"), ("vary", "Accept")],
        b"{}",
    )
    .unwrap();
    let r = h.recorded(id);
    assert_eq!(all_response_headers(r, "access-control-allow-origin"), ["http://app.test:3000"]);
    assert_eq!(r.response_header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.response_header("access-control-allow-methods"), None);
    let vary = all_response_headers(r, "vary");
    assert!(vary.contains(&"Accept") && vary.contains(&"Origin"), "{vary:?}");

    let id = get(&mut h, "/api", &[("origin", "http://evil.test")]);
    h.respond(id, 200, &[("access-control-allow-origin", "*")], b"{}").unwrap();
    assert_eq!(h.recorded(id).response_header("access-control-allow-origin"), None);

    // A 401 for a protected path is readable by an allowed origin's script.
    let mut h = harness_with(json!({ "cors": { "allowed_origins": ["http://app.test:3000"] } }));
    let id = get(&mut h, "/members", &[API, ("origin", "http://app.test:3000")]);
    assert_eq!(h.recorded(id).status(), Some(401));
    assert_eq!(h.recorded(id).response_header("access-control-allow-origin"), Some("http://app.test:3000"));
}

/// Envoy runs one VM per worker: two instances of the module, sharing the host's data, must
/// sign with the same key and serve each other's cached sessions.
#[test]
fn two_vms_share_the_key_and_the_session_cache() {
    let mut first = harness();
    let mut second = first.worker(1).expect("a second VM");

    let id = get(&mut first, "/members", &[COOKIE]);
    let token = whoami_call(&mut first);
    answer_active(&mut first, token);
    let jwt_first = bearer(first.recorded(id));

    // The second VM finds the first one's entry: no whoami call, the same token.
    let id = get(&mut second, "/members", &[COOKIE]);
    assert!(second.take_http_calls().is_empty(), "the second VM must use the shared cache");
    assert!(reached_app(second.recorded(id)));
    assert_eq!(bearer(second.recorded(id)), jwt_first);

    // A new session signed by the second VM verifies with the key the first VM publishes.
    let id = get(&mut second, "/members", &[("cookie", "ory_kratos_session=another")]);
    let token = whoami_call(&mut second);
    answer_active(&mut second, token);
    let jwt_second = bearer(second.recorded(id));
    assert_ne!(jwt_second, jwt_first);
    let claims = verify(&mut first, &jwt_second);
    assert_eq!(claims["sub"], session_json()["identity"]["id"]);
    // And both publish one and the same key.
    let jwks = |h: &mut Harness| {
        let id = get(h, "/.ory/jwks.json", &[]);
        h.recorded(id).response_body.clone()
    };
    assert_eq!(jwks(&mut first), jwks(&mut second));
}

/// The runner's access log says whether a session was found: the filter annotates the request.
#[test]
fn the_access_log_learns_whether_a_session_was_found() {
    let mut h = harness();
    let id = get(&mut h, "/members", &[COOKIE]);
    let token = whoami_call(&mut h);
    answer_active(&mut h, token);
    let annotations = h.finish(id).expect("finished").annotations;
    assert_eq!(annotations, [("session".to_string(), "active".to_string())]);

    let id = get(&mut h, "/members", &[("cookie", "ory_kratos_session=unknown")]);
    let token = whoami_call(&mut h);
    answer_401(&mut h, token);
    let annotations = h.finish(id).expect("finished").annotations;
    assert_eq!(annotations, [("session".to_string(), "none".to_string())]);
}

/// Ory is asked only about what it could know: its session cookies, `X-Session-Token`, a bearer
/// token. Everything else costs no whoami call, on any path.
#[test]
fn requests_without_anything_ory_knows_cost_no_whoami_call() {
    let mut h = harness();
    for (i, extra) in [
        ("cookie", "_ga=GA1.2.3; theme=dark"),
        ("cookie", "csrf_token_0123=abc; ory_kratos_continuity=x"),
        ("authorization", "Basic dXNlcjpwYXNz"),
    ]
    .into_iter()
    .enumerate()
    {
        let open = get(&mut h, &format!("/public/{i}"), &[extra]);
        assert!(reached_app(h.recorded(open)), "{extra:?}");
        let protected = get(&mut h, "/members", &[API, extra]);
        assert_eq!(h.recorded(protected).status(), Some(401), "{extra:?}");
        assert!(h.take_http_calls().is_empty(), "{extra:?} cost a whoami call");
    }
    // Each of Ory's own does, and Ory gets only the credentials, not the other cookies.
    for extra in [
        ("cookie", "_ga=1; ory_session_playfulpike=s1; theme=dark"),
        ("x-session-token", "st"),
        ("authorization", "Bearer session-token"),
    ] {
        get(&mut h, "/public", &[extra]);
        let calls = h.take_http_calls();
        assert_eq!(calls.len(), 1, "{extra:?}");
        let cookie = calls[0].headers.get_str("cookie");
        assert!(cookie.is_none_or(|cookie| cookie == "ory_session_playfulpike=s1"), "{cookie:?}");
    }
}

/// An open path waits only so long for Ory; the answer, when it comes, still fills the cache.
/// A protected path waits for the answer.
#[test]
fn an_open_path_goes_on_without_a_jwt_after_its_wait_and_the_answer_still_counts() {
    let mut h = harness_with(json!({ "ory": { "url": ORY, "open_path_wait_ms": 200 } }));
    assert_eq!(h.tick_period(), Some(Duration::from_millis(50)));
    let open = get(&mut h, "/public", &[COOKIE]);
    let protected = get(&mut h, "/members", &[COOKIE]);
    let token = whoami_call(&mut h);
    h.env().clock.advance(Duration::from_millis(150));
    h.tick().expect("tick");
    assert!(h.recorded(open).upstream_headers.is_none(), "still within its wait");
    h.env().clock.advance(Duration::from_millis(60));
    h.tick().expect("tick");
    assert!(reached_app(h.recorded(open)), "past its wait the open path goes on");
    assert_eq!(h.recorded(open).upstream_header("authorization"), None, "without a JWT");
    assert!(h.recorded(protected).upstream_headers.is_none(), "a protected path waits for the answer");

    // The call was not abandoned: its answer lets the protected request in and fills the cache.
    answer_active(&mut h, token);
    assert!(reached_app(h.recorded(protected)));
    let jwt = bearer(h.recorded(protected));
    let annotations = h.finish(open).expect("finished").annotations;
    assert_eq!(annotations, [("session".to_string(), "ory-unavailable".to_string())]);
    let next = get(&mut h, "/public", &[COOKIE]);
    assert!(h.take_http_calls().is_empty(), "served from the cache");
    assert_eq!(bearer(h.recorded(next)), jwt);
}

/// The request that made the call stopped waiting and then finished: nobody is left to get the
/// answer, so the call is over and the next request asks afresh.
#[test]
fn a_released_caller_that_finishes_frees_its_call() {
    let mut h = harness_with(json!({ "ory": { "url": ORY, "max_concurrent_whoami": 1 } }));
    let open = get(&mut h, "/public", &[COOKIE]);
    let _token = whoami_call(&mut h);
    h.env().clock.advance(Duration::from_millis(400));
    h.tick().expect("tick");
    assert!(reached_app(h.recorded(open)));
    // While it lives, its call still counts against the bound of one.
    let other = get(&mut h, "/public", &[("cookie", "ory_kratos_session=other")]);
    assert!(h.take_http_calls().is_empty(), "the bound is reached");
    assert!(reached_app(h.recorded(other)));
    h.respond(open, 200, &[], b"page").unwrap();
    h.finish(open).expect("finished");
    let again = get(&mut h, "/public", &[("cookie", "ory_kratos_session=other")]);
    let token = whoami_call(&mut h);
    answer_active(&mut h, token);
    assert!(bearer(h.recorded(again)).contains('.'));
}

/// At most `max_concurrent_whoami` calls per VM: beyond, protected paths fail closed (as when Ory
/// cannot be asked) and open ones go on without a JWT; joining a call already out is free.
#[test]
fn whoami_calls_in_flight_are_bounded_per_vm() {
    let mut h = harness_with(json!({ "ory": { "url": ORY, "max_concurrent_whoami": 2 } }));
    let cookie = |i: usize| ("cookie".to_string(), format!("ory_kratos_session=flood-{i}"));
    let mut ids = Vec::new();
    for i in 0..2 {
        let (name, value) = cookie(i);
        ids.push(get(&mut h, "/members", &[API, (&name, &value)]));
    }
    let tokens: Vec<u32> = h.take_http_calls().iter().map(|call| call.token).collect();
    assert_eq!(tokens.len(), 2);
    for i in 2..20 {
        let (name, value) = cookie(i);
        let api = get(&mut h, "/members", &[API, (&name, &value)]);
        let r = h.recorded(api);
        assert_eq!(r.status(), Some(502), "over the bound a protected path fails closed");
        assert_eq!(body_json(r)["error"]["code"], 502);
        let open = get(&mut h, "/public", &[(&name, &value)]);
        assert!(reached_app(h.recorded(open)), "over the bound an open path goes on");
        assert_eq!(h.recorded(open).upstream_header("authorization"), None);
    }
    assert!(h.take_http_calls().is_empty(), "no call beyond the bound");
    // The same credentials as a call already out join it.
    let (name, value) = cookie(0);
    let joined = get(&mut h, "/members", &[API, (&name, &value)]);
    assert!(h.take_http_calls().is_empty());
    answer_active(&mut h, tokens[0]);
    assert!(reached_app(h.recorded(ids[0])) && reached_app(h.recorded(joined)));
    // With one call answered there is room for one more.
    let (name, value) = cookie(99);
    get(&mut h, "/members", &[API, (&name, &value)]);
    assert_eq!(h.take_http_calls().len(), 1);
    // Other VMs have bounds of their own.
    let mut second = h.worker(1).expect("a second VM");
    let (name, value) = cookie(100);
    get(&mut second, "/members", &[API, (&name, &value)]);
    assert_eq!(second.take_http_calls().len(), 1);
}

fn harness_with_environment(config: Value, environment: &[(&str, &str)]) -> anyhow::Result<Harness> {
    let spec = PluginSpec {
        name: "test".into(),
        vm_id: "test".into(),
        configuration: serde_json::to_vec(&config).unwrap(),
        environment: environment.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        clusters: vec!["ory".into()],
        ..PluginSpec::default()
    };
    Harness::new(wasm(), spec, HostEnv::new())
}

/// The key may come from the VM's environment (Envoy's `vm_config.environment_variables`), read
/// through WASI: the configuration then names the variable and holds no key.
#[test]
fn the_signing_key_may_come_from_the_vms_environment() {
    let mut config: Value = serde_json::from_slice(&config(json!({}))).unwrap();
    let object = config.as_object_mut().unwrap();
    object.remove("signing_key");
    object.insert("signing_key_env".into(), json!("ORY_PROXY_SIGNING_KEY"));
    let environment = [("LANG", "C.UTF-8"), ("ORY_PROXY_SIGNING_KEY", key_pem()), ("EMPTY", "")];
    let mut h = harness_with_environment(config.clone(), &environment).expect("the filter starts");
    let id = get(&mut h, "/members", &[COOKIE]);
    let token = whoami_call(&mut h);
    answer_active(&mut h, token);
    let jwt = bearer(h.recorded(id));
    verify(&mut h, &jwt);
    // The same key as when the configuration carries it.
    let mut inline = harness();
    let jwks = |h: &mut Harness| {
        let id = get(h, "/.ory/jwks.json", &[]);
        h.recorded(id).response_body.clone()
    };
    assert_eq!(jwks(&mut h), jwks(&mut inline));

    // Missing or malformed: the filter refuses to start, saying which variable and why, and
    // never what it holds.
    let missing = harness_with_environment(config.clone(), &[("LANG", "C")]).err().expect("refused");
    let missing = format!("{missing:#}");
    assert!(missing.contains("signing_key_env") && missing.contains("ORY_PROXY_SIGNING_KEY is not set"), "{missing}");
    let broken = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n-----END PRIVATE KEY-----\n";
    let malformed = harness_with_environment(config, &[("ORY_PROXY_SIGNING_KEY", broken)]).err().expect("refused");
    let malformed = format!("{malformed:#}");
    assert!(malformed.contains("ORY_PROXY_SIGNING_KEY does not hold a key"), "{malformed}");
    assert!(!malformed.contains("bm90IGEga2V5"), "{malformed}");
}
