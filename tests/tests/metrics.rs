//! Metrics and health, in both hosts: after a known sequence of requests the filter's metrics say
//! exactly what happened (Envoy's admin `/stats/prometheus`, the runner's `--metrics-addr`
//! `/metrics`, the same names); the runner's `/healthz` and `/readyz` follow the process and Ory.

mod common;

use std::time::Duration;

use common::app::{RecordingApp, ory_deployment};
use common::host::{Host, Proxy};
use http::StatusCode;
use ory_proxy_tests::http::HttpClient;
use ory_proxy_tests::standin::{DEMO_EMAIL, Standin, StandinConfig};

const HTML: (&str, &str) = ("accept", "text/html");
const JSON: (&str, &str) = ("accept", "application/json");

/// A request (path and headers) and the status it gets.
type Step<'a> = (&'a str, Vec<(&'a str, &'a str)>, StatusCode);

/// Waits for a metric to reach `expected` (Envoy shows histograms once it flushes its stats).
async fn settled(proxy: &Proxy, name: &str, expected: f64) -> Option<f64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let value = proxy.metric(name).await;
        if value == Some(expected) || std::time::Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

both_hosts! {
    async fn the_metrics_count_what_happened(host: Host) {
        let standin = Standin::start(StandinConfig::default()).await.unwrap();
        let app = RecordingApp::start().await;
        let proxy = Proxy::start(host, &ory_deployment(app.addr(), &standin.url())).await;
        let client = HttpClient::new();
        let session = standin.create_session(DEMO_EMAIL).unwrap();
        let cookie = ("cookie", session.cookie.as_str());
        let made_up = ("cookie", "ory_kratos_session=made-up");
        let steps: [Step; 8] = [
            ("/public", vec![], StatusCode::OK),
            ("/members", vec![HTML], StatusCode::SEE_OTHER),
            ("/members", vec![JSON], StatusCode::UNAUTHORIZED),
            ("/members", vec![cookie], StatusCode::OK),
            ("/members", vec![cookie], StatusCode::OK),
            ("/public", vec![made_up], StatusCode::OK),
            ("/.ory/self-service/login/browser", vec![HTML], StatusCode::SEE_OTHER),
            // Through to Ory and back with nothing to move onto the proxy: not counted as rewritten.
            ("/.ory/sessions/whoami", vec![JSON], StatusCode::UNAUTHORIZED),
        ];
        for (path, headers, status) in steps {
            assert_eq!(client.get(&proxy.url(path), &headers).await.unwrap().status, status, "{path} {headers:?}");
        }

        let expected = [
            ("ory_proxy_requests_with_session_total", 2.0),
            ("ory_proxy_requests_without_session_total", 2.0),
            ("ory_proxy_login_redirects_total", 1.0),
            ("ory_proxy_unauthorized_total", 1.0),
            ("ory_proxy_failed_closed_total", 0.0),
            ("ory_proxy_session_cache_misses_total", 2.0),
            ("ory_proxy_session_cache_hits_total", 1.0),
            ("ory_proxy_whoami_active_total", 1.0),
            ("ory_proxy_whoami_no_session_total", 1.0),
            ("ory_proxy_whoami_failed_total", 0.0),
            ("ory_proxy_tokens_signed_total", 1.0),
            ("ory_proxy_ory_responses_rewritten_total", 1.0),
            ("ory_proxy_whoami_duration_ms_count", 2.0),
        ];
        for (name, value) in expected {
            assert_eq!(settled(&proxy, name, value).await, Some(value), "{name} in\n{}", proxy.metrics_text().await);
        }
        if host == Host::Runner {
            // The runner's own, beside the filter's.
            let requests = proxy.metric("ory_proxy_runner_requests_total").await.unwrap_or_default();
            assert!(requests >= 7.0, "{requests}");
        }
        proxy.stop().await;
        app.stop().await;
        standin.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_is_ready_while_ory_can_be_reached() {
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let app = RecordingApp::start().await;
    let proxy = Proxy::start(Host::Runner, &ory_deployment(app.addr(), &standin.url())).await;
    let base = format!("http://{}", proxy.runner_metrics_addr().expect("metrics are served"));
    let client = HttpClient::new();
    let answer = |path: &'static str| {
        let (client, url) = (&client, format!("{base}{path}"));
        async move {
            let answer = client.get(&url, &[]).await.unwrap();
            (answer.status, answer.text())
        }
    };
    assert_eq!(answer("/healthz").await, (StatusCode::OK, "ok\n".to_string()));
    assert_eq!(answer("/readyz").await, (StatusCode::OK, "ready\n".to_string()));
    standin.shutdown().await;
    let (status, why) = answer("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(why.starts_with("not ready: ory (") && why.contains("cannot be reached"), "{why}");
    assert_eq!(answer("/healthz").await.0, StatusCode::OK, "alive all the same");
    let (status, _) = answer("/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    proxy.stop().await;
    app.stop().await;
}
