//! End to end over real sockets, in the runner and in Envoy: requests reach a real upstream and
//! come back; the JWKS verifies signatures made with the configured key; a misbehaving filter
//! costs one request, not the proxy.

mod common;

use std::sync::{Arc, Mutex};

use common::host::{Filter, Host, Proxy};
use http::{Method, StatusCode};
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

async fn proxy_with(host: Host, upstream: &ServerHandle, key: &str, filter: Filter) -> Proxy {
    let mut deployment = common::host::deployment(&format!("http://{}", upstream.local_addr()));
    deployment.signing_key = key.to_string();
    Proxy::start_filter(host, &deployment, filter).await
}

both_hosts! {
    async fn requests_reach_the_upstream_and_come_back(host: Host) {
        let (upstream, seen) = upstream().await;
        let proxy = proxy_with(host, &upstream, &key_pem(), Filter::Embedded).await;
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
        proxy.stop().await;
        upstream.shutdown().await;
    }

    async fn the_jwks_verifies_signatures_made_with_the_configured_key(host: Host) {
        let (upstream, seen) = upstream().await;
        let key = key_pem();
        let proxy = proxy_with(host, &upstream, &key, Filter::Embedded).await;
        let answer = HttpClient::new().get(&format!("http://{}/.ory/jwks.json", proxy.addr), &[]).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("content-type"), Some("application/json"));
        assert!(answer.header("cache-control").is_some_and(|c| c.contains("max-age=")), "{:?}", answer.headers);
        let jwks = answer.json().unwrap();
        let jwk = &jwks["keys"][0];
        assert_eq!(jwk["alg"], "ES256");
        assert_eq!(jwk["use"], "sig");

        let published = common::jwt::public_key(jwk);

        let signer = p256::ecdsa::SigningKey::from_pkcs8_pem(&key).unwrap();
        let signature: p256::ecdsa::Signature = signer.sign(b"signed by the test");
        published.verify(b"signed by the test", &signature).expect("the published key is the configured key");
        assert!(published.verify(b"something else", &signature).is_err());

        assert!(seen.lock().unwrap().is_empty(), "the JWKS is answered by the filter, not the app");
        proxy.stop().await;
        upstream.shutdown().await;
    }

    async fn a_dead_upstream_is_a_503_as_in_envoy(host: Host) {
        let (upstream, _) = upstream().await;
        let proxy = proxy_with(host, &upstream, &key_pem(), Filter::Embedded).await;
        upstream.shutdown().await;
        let answer = HttpClient::new().get(&format!("http://{}/", proxy.addr), &[]).await.unwrap();
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{}", answer.text());
        if host == Host::Runner {
            // Envoy's body names its own reset reason; the runner says it in words, without
            // the socket error (that goes to the log).
            assert_eq!(answer.text(), "The upstream `app` could not be reached.\n");
        }
        proxy.stop().await;
    }

    async fn a_trapping_filter_costs_one_request_not_the_proxy(host: Host) {
        let (upstream, seen) = upstream().await;
        let proxy = proxy_with(host, &upstream, "unused by this filter", Filter::Test("faulty")).await;
        let client = HttpClient::new();
        let base = format!("http://{}", proxy.addr);
        for round in 0..2 {
            let answer = client.get(&format!("{base}/panic"), &[]).await.unwrap();
            assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "round {round}");
            // Envoy reloads a VM only once its backoff (under 100ms in the bootstrap) has passed
            // since the VM was loaded; the runner replaces it at once.
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            // Every worker VM is served in turn: all of them must still work.
            for _ in 0..4 {
                let answer = client.get(&format!("{base}/fine"), &[]).await.unwrap();
                assert_eq!(answer.status, StatusCode::OK, "after a trap, round {round}");
            }
        }
        let reached: Vec<String> = seen.lock().unwrap().iter().map(|s| s.1.clone()).collect();
        assert!(!reached.iter().any(|p| p == "/panic"), "{reached:?}");
        assert_eq!(reached.len(), 8, "{reached:?}");
        proxy.stop().await;
        upstream.shutdown().await;
    }
}

/// A filter that returns a status the ABI does not define is a failed filter in the runner: the
/// request gets 503 and the VM is replaced. Runner only, on purpose: Envoy 1.40 treats the value
/// as a pause and the stream hangs until the connection manager's idle timeout (5 minutes).
#[tokio::test]
async fn a_filter_returning_garbage_costs_one_request_in_the_runner() {
    let (upstream, seen) = upstream().await;
    let proxy = proxy_with(Host::Runner, &upstream, "unused by this filter", Filter::Test("faulty")).await;
    let client = HttpClient::new();
    let answer = client.get(&proxy.url("/garbage"), &[]).await.unwrap();
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    for _ in 0..4 {
        assert_eq!(client.get(&proxy.url("/fine"), &[]).await.unwrap().status, StatusCode::OK);
    }
    assert!(!seen.lock().unwrap().iter().any(|s| s.1 == "/garbage"));
    proxy.stop().await;
    upstream.shutdown().await;
}
