//! Signing keys that rotate without breaking apps, in both hosts: after a rotation the JWKS
//! publishes the new key and the previous one, so the demo app (which caches the JWKS, and
//! fetches it again for a key id it does not know) keeps accepting requests; once the previous
//! key's time is up it is gone from the JWKS, and what it signed verifies no more. The JWKS
//! answers with an `ETag`, and a matching `If-None-Match` with 304.

mod common;

use std::time::{Duration, SystemTime};

use common::host::Proxy;
use http::StatusCode;
use ory_proxy::deployment::{Deployment, SigningKey};
use ory_proxy::home::RetiredKey;
use ory_proxy_tests::demo_app::{DemoApp, DemoAppConfig, RunningDemoApp};
use ory_proxy_tests::http::HttpClient;
use ory_proxy_tests::standin::{DEMO_EMAIL, RunningStandin, Standin, StandinConfig};
use serde_json::Value;

fn signing_key(pem: &str) -> SigningKey {
    SigningKey::from_pem(pem).expect("a P-256 key")
}

fn new_pem() -> String {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap().serialize_pem()
}

struct World {
    standin: RunningStandin,
    app: RunningDemoApp,
    deployment: Deployment,
}

impl World {
    async fn start() -> World {
        let standin = Standin::start(StandinConfig::default()).await.unwrap();
        let port = common::host::free_port();
        let app = DemoApp::start(DemoAppConfig {
            jwks_url: format!("http://127.0.0.1:{port}/.ory/jwks.json"),
            issuer: standin.url().trim_end_matches('/').to_string(),
            ..DemoAppConfig::default()
        })
        .await
        .unwrap();
        let mut deployment = common::app::ory_deployment(app.local_addr(), &standin.url());
        deployment.listen.set_port(port);
        deployment.public_url.set_port(Some(port)).unwrap();
        World { standin, app, deployment }
    }

    /// The demo app's answer to a signed-in user, through `proxy`.
    async fn greeting(&self, proxy: &Proxy, cookie: &str) -> (StatusCode, String) {
        let answer = HttpClient::new().get(&proxy.url("/"), &[("cookie", cookie)]).await.unwrap();
        (answer.status, answer.text())
    }
}

async fn jwks(proxy: &Proxy) -> Value {
    HttpClient::new().get(&proxy.url("/.ory/jwks.json"), &[]).await.unwrap().json().unwrap()
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"].as_array().unwrap().iter().map(|key| key["kid"].as_str().unwrap().to_string()).collect()
}

both_hosts! {
    async fn the_demo_app_keeps_accepting_requests_across_a_rotation(host: Host) {
        let mut world = World::start().await;
        let (old_pem, new_pem) = (new_pem(), new_pem());
        let (old, new) = (signing_key(&old_pem), signing_key(&new_pem));
        let session = world.standin.create_session(DEMO_EMAIL).unwrap();

        world.deployment.signing_key = old_pem.clone();
        let before = Proxy::start(host, &world.deployment).await;
        let (status, page) = world.greeting(&before, &session.cookie).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(page.contains(DEMO_EMAIL), "the app verified the old key's token: {page}");
        assert_eq!(kids(&jwks(&before).await), [old.kid()]);
        before.stop().await;

        // `key rotate`, then a restart: the new key signs, the old one is still published.
        world.deployment.signing_key = new_pem;
        world.deployment.previous_key = Some(RetiredKey { key: old.clone(), retired: SystemTime::now() });
        let after = Proxy::start(host, &world.deployment).await;
        assert_eq!(kids(&jwks(&after).await), [new.kid(), old.kid()], "both keys, the signing one first");
        // The demo app fetches the JWKS at most once a second (a flood of made-up key ids costs it
        // nothing more); its last fetch was a moment ago, which a real rotation is not.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (status, page) = world.greeting(&after, &session.cookie).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(page.contains(DEMO_EMAIL), "the app took the new key's token: {page}");
        after.stop().await;

        // Long after the rotation, the old key is gone: what it signed verifies no more.
        let long_ago = SystemTime::now() - Duration::from_secs(3600);
        world.deployment.previous_key = Some(RetiredKey { key: old.clone(), retired: long_ago });
        let later = Proxy::start(host, &world.deployment).await;
        assert_eq!(kids(&jwks(&later).await), [new.kid()]);
        later.stop().await;
        world.app.shutdown().await;
        world.standin.shutdown().await;
    }

    async fn the_jwks_has_an_etag_and_a_matching_if_none_match_gets_304(host: Host) {
        let world = World::start().await;
        let proxy = Proxy::start(host, &world.deployment).await;
        let client = HttpClient::new();
        let first = client.get(&proxy.url("/.ory/jwks.json"), &[]).await.unwrap();
        assert_eq!(first.status, StatusCode::OK);
        assert!(first.header("cache-control").is_some_and(|value| value.contains("max-age=300")));
        let etag = first.header("etag").expect("an ETag").to_string();
        let again = client.get(&proxy.url("/.ory/jwks.json"), &[("if-none-match", &etag)]).await.unwrap();
        assert_eq!(again.status, StatusCode::NOT_MODIFIED);
        assert!(again.body.is_empty());
        assert_eq!(again.header("etag"), Some(etag.as_str()));
        let other = client.get(&proxy.url("/.ory/jwks.json"), &[("if-none-match", "\"something else\"")]).await.unwrap();
        assert_eq!(other.status, StatusCode::OK);
        proxy.stop().await;
        world.app.shutdown().await;
        world.standin.shutdown().await;
    }
}
