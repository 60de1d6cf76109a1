//! End to end over real sockets: requests through `ory-proxy local` reach a real upstream and
//! come back; the JWKS verifies signatures made with the configured key; a misbehaving filter
//! costs one request, not the proxy.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use http::{Method, StatusCode};
use ory_proxy::local;
use ory_proxy::plan::{self, Deployment};
use ory_proxy::proxy::ProxyHandle;
use ory_proxy_tests::http::{HttpClient, ServerHandle, bind_loopback, read_body, response, spawn_server};
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::pkcs8::DecodePrivateKey as _;

/// What the upstream saw: method, path, Host header, body length.
type Seen = Arc<Mutex<Vec<(String, String, String, usize)>>>;

async fn upstream() -> (ServerHandle, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let listener = bind_loopback(0).await.unwrap();
    let server = spawn_server(listener, move |request, _| {
        let record = record.clone();
        async move {
            let method = request.method().to_string();
            let path = request.uri().to_string();
            let host = request.headers().get("host").and_then(|h| h.to_str().ok()).unwrap_or_default().to_string();
            let body = read_body(request.into_body(), 64 << 20).await.unwrap_or_default();
            record.lock().unwrap().push((method.clone(), path.clone(), host, body.len()));
            Ok(response(
                StatusCode::OK,
                "text/plain",
                format!("upstream saw {method} {path} with {} bytes", body.len()),
            ))
        }
    })
    .unwrap();
    (server, seen)
}

fn key_pem() -> String {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap().serialize_pem()
}

async fn proxy_with(upstream: &ServerHandle, key: &str, wasm: &[u8]) -> ProxyHandle {
    let url = url::Url::parse(&format!("http://{}", upstream.local_addr())).unwrap();
    let deployment = Deployment::new(url, "127.0.0.1:0".parse().unwrap(), key.to_string());
    let plan = plan::plan(&deployment).unwrap();
    local::start(&plan, wasm).await.unwrap().spawn().unwrap()
}

#[tokio::test]
async fn requests_reach_the_upstream_and_come_back() {
    let (upstream, seen) = upstream().await;
    let proxy = proxy_with(&upstream, &key_pem(), local::EMBEDDED_FILTER).await;
    let client = HttpClient::new();
    let base = format!("http://{}", proxy.addr);

    let answer = client.get(&format!("{base}/hello?x=1"), &[]).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "upstream saw GET /hello?x=1 with 0 bytes");

    // A large body streams through intact.
    let body = vec![b'z'; 3 << 20];
    let answer = client.request(Method::POST, &format!("{base}/upload"), &[], body).await.unwrap();
    assert_eq!(answer.text(), format!("upstream saw POST /upload with {} bytes", 3 << 20));

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    // The app receives the browser's Host, as the reference proxy did.
    assert_eq!(seen[0].2, proxy.addr.to_string());
    proxy.shutdown().await.unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn the_jwks_verifies_signatures_made_with_the_configured_key() {
    let (upstream, seen) = upstream().await;
    let key = key_pem();
    let proxy = proxy_with(&upstream, &key, local::EMBEDDED_FILTER).await;
    let answer = HttpClient::new().get(&format!("http://{}/.ory/jwks.json", proxy.addr), &[]).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert!(answer.header("cache-control").is_some_and(|c| c.contains("max-age=")), "{:?}", answer.headers);
    let jwks = answer.json().unwrap();
    let jwk = &jwks["keys"][0];
    assert_eq!(jwk["alg"], "ES256");
    assert_eq!(jwk["use"], "sig");

    let mut point = vec![4u8];
    point.extend(B64URL.decode(jwk["x"].as_str().unwrap()).unwrap());
    point.extend(B64URL.decode(jwk["y"].as_str().unwrap()).unwrap());
    let published = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();

    let signer = p256::ecdsa::SigningKey::from_pkcs8_pem(&key).unwrap();
    let signature: p256::ecdsa::Signature = signer.sign(b"signed by the test");
    published.verify(b"signed by the test", &signature).expect("the published key is the configured key");
    assert!(published.verify(b"something else", &signature).is_err());

    assert!(seen.lock().unwrap().is_empty(), "the JWKS is answered by the filter, not the app");
    proxy.shutdown().await.unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn a_dead_upstream_is_a_502_with_a_clear_body() {
    let (upstream, _) = upstream().await;
    let proxy = proxy_with(&upstream, &key_pem(), local::EMBEDDED_FILTER).await;
    upstream.shutdown().await;
    let answer = HttpClient::new().get(&format!("http://{}/", proxy.addr), &[]).await.unwrap();
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert!(answer.text().contains("could not be reached"), "{}", answer.text());
    proxy.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_trapping_filter_costs_one_request_not_the_proxy() {
    let (upstream, seen) = upstream().await;
    let faulty = std::fs::read(format!("{}/test_filter_faulty.wasm", local::TEST_FILTERS_DIR)).unwrap();
    let proxy = proxy_with(&upstream, "unused by this filter", &faulty).await;
    let client = HttpClient::new();
    let base = format!("http://{}", proxy.addr);
    for broken in ["/panic", "/garbage"] {
        let answer = client.get(&format!("{base}{broken}"), &[]).await.unwrap();
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR, "{broken}");
        // Every worker VM is served in turn: all of them must still work.
        for _ in 0..4 {
            let answer = client.get(&format!("{base}/fine"), &[]).await.unwrap();
            assert_eq!(answer.status, StatusCode::OK, "after {broken}");
        }
    }
    let reached: Vec<String> = seen.lock().unwrap().iter().map(|s| s.1.clone()).collect();
    assert!(!reached.iter().any(|p| p == "/panic" || p == "/garbage"), "{reached:?}");
    proxy.shutdown().await.unwrap();
    upstream.shutdown().await;
}
