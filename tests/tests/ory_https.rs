//! Ory over HTTPS, as Ory Network is reached, in the runner and in Envoy: the stand-in behind TLS
//! with a certificate from a test CA, and the proxy told to trust that CA with
//! `--upstream-ca-file`. Login works; with the wrong CA nothing is trusted and protected paths
//! fail closed.

mod common;

use std::sync::{Arc, Mutex};

use common::host::{Host, Proxy, free_port};
use common::tls::{TestCa, tls_front};
use common::{Jar, browser_login};
use http::StatusCode;
use ory_proxy_tests::http::{HttpClient, ServerHandle, bind_loopback, response, spawn_server};
use ory_proxy_tests::standin::{DEMO_EMAIL, DEMO_PASSWORD, RunningStandin, Standin, StandinConfig};

const HTML: (&str, &str) = ("accept", "text/html,application/xhtml+xml,*/*;q=0.8");
const JSON: (&str, &str) = ("accept", "application/json");

struct World {
    standin: RunningStandin,
    app: ServerHandle,
    reached: Arc<Mutex<Vec<String>>>,
    proxy: Proxy,
    _cas: (TestCa, TestCa),
}

/// The stand-in on `https://localhost:<port>` (certificate from one test CA); the proxy trusts
/// `trusted` (the same CA, or another one).
async fn start(host: Host, trust_the_right_ca: bool) -> World {
    let ory_ca = TestCa::new(&format!("ory-{host:?}-{trust_the_right_ca}"));
    let other_ca = TestCa::new(&format!("other-{host:?}-{trust_the_right_ca}"));
    let front = free_port();
    let public_url = format!("https://localhost:{front}");
    let standin = Standin::start(StandinConfig { public_url: Some(public_url.clone()), ..StandinConfig::default() })
        .await
        .unwrap();
    tls_front(&ory_ca, front, standin.local_addr()).await;

    let reached: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = reached.clone();
    let app = spawn_server(bind_loopback(0).await.unwrap(), move |request, _| {
        let record = record.clone();
        async move {
            record.lock().unwrap().push(request.uri().to_string());
            let jwt = request.headers().contains_key("authorization");
            Ok(response(StatusCode::OK, "text/plain", format!("app page, jwt: {jwt}")))
        }
    })
    .unwrap();
    let mut deployment = common::host::deployment(&format!("http://{}", app.local_addr()));
    deployment.ory_url = Some(url::Url::parse(&public_url).unwrap());
    deployment.protection.prefixes.push("/members".into());
    let trusted = if trust_the_right_ca { &ory_ca } else { &other_ca };
    deployment.upstream_ca_file = Some(trusted.cert_file());
    let proxy = Proxy::start(host, &deployment).await;
    World { standin, app, reached, proxy, _cas: (ory_ca, other_ca) }
}

impl World {
    async fn stop(self) {
        self.proxy.stop().await;
        self.app.shutdown().await;
        self.standin.shutdown().await;
    }
}

both_hosts! {
    async fn login_works_with_ory_over_https(host: Host) {
        let world = start(host, true).await;
        let client = HttpClient::new();
        let mut jar = Jar::default();
        let return_to = world.proxy.url("/members/area");
        let login =
            browser_login(&client, &mut jar, &world.proxy.url("/.ory"), DEMO_EMAIL, DEMO_PASSWORD, Some(&return_to))
                .await;
        assert_eq!(login.status, StatusCode::SEE_OTHER, "{}", login.text());
        assert_eq!(login.header("location"), Some(return_to.as_str()));
        let page = jar.get(&client, &return_to, &[HTML]).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text());
        assert_eq!(page.text(), "app page, jwt: true");
        world.stop().await;
    }

    async fn a_wrong_ca_fails_closed_on_protected_paths(host: Host) {
        let world = start(host, false).await;
        let session = world.standin.create_session(DEMO_EMAIL).unwrap();
        let client = HttpClient::new();
        let api = client.get(&world.proxy.url("/members"), &[JSON, ("cookie", &session.cookie)]).await.unwrap();
        assert!(matches!(api.status.as_u16(), 502 | 503), "{} {}", api.status, api.text());
        let error = api.json().expect("API clients get JSON");
        assert!(error["error"]["reason"].as_str().is_some_and(|r| !r.is_empty()), "{error}");
        let browser = client.get(&world.proxy.url("/members"), &[HTML, ("cookie", &session.cookie)]).await.unwrap();
        assert!(matches!(browser.status.as_u16(), 502 | 503), "{}", browser.status);
        // Ory's own pages cannot be reached either: the proxy does not trust the certificate.
        let login = client.get(&world.proxy.url("/.ory/self-service/login/browser"), &[HTML]).await.unwrap();
        assert!(matches!(login.status.as_u16(), 502 | 503), "{}", login.status);
        assert!(world.reached.lock().unwrap().is_empty(), "fail closed: {:?}", world.reached.lock().unwrap());
        assert_eq!(world.standin.whoami_calls(), 0, "no request got through TLS to Ory");
        if let Some(envoy) = world.proxy.envoy() {
            // The operator can tell why from Envoy's log: the certificate was not trusted.
            let log = envoy.log();
            assert!(log.contains("Ory could not be asked about a session"), "{}", envoy.log_tail(40));
        }
        world.stop().await;
    }
}
