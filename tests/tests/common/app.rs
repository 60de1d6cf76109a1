//! The app behind the proxy in the end-to-end suites: it answers `app page <uri>` and keeps
//! what reached it, so that a test can say what the proxy let through and with which headers.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use ory_proxy::deployment::Deployment;
use ory_proxy_tests::http::{ServerHandle, bind_loopback, response, spawn_server};

/// Every request the app received: its URI and headers, in order.
pub type Seen = Arc<Mutex<Vec<(String, HeaderMap)>>>;

pub struct RecordingApp {
    pub server: ServerHandle,
    pub seen: Seen,
}

impl RecordingApp {
    pub async fn start() -> RecordingApp {
        RecordingApp::start_slow_under("", Duration::ZERO).await
    }

    /// Pages under `prefix` take `delay` to answer (a request that outlives a slow whoami).
    pub async fn start_slow_under(prefix: &'static str, delay: Duration) -> RecordingApp {
        RecordingApp::spawn(prefix, delay, |uri| format!("app page {uri}")).await
    }

    /// An app that answers each request with `answer(uri)`, as text.
    pub async fn answering(answer: impl Fn(&str) -> String + Clone + Send + Sync + 'static) -> RecordingApp {
        RecordingApp::spawn("", Duration::ZERO, answer).await
    }

    async fn spawn(
        slow_prefix: &'static str,
        delay: Duration,
        answer: impl Fn(&str) -> String + Clone + Send + Sync + 'static,
    ) -> RecordingApp {
        let seen: Seen = Arc::default();
        let record = seen.clone();
        let server = spawn_server(bind_loopback(0).await.unwrap(), move |request, _| {
            let (record, answer) = (record.clone(), answer.clone());
            async move {
                record.lock().unwrap().push((request.uri().to_string(), request.headers().clone()));
                if !delay.is_zero() && request.uri().path().starts_with(slow_prefix) {
                    tokio::time::sleep(delay).await;
                }
                Ok(response(StatusCode::OK, "text/plain", answer(&request.uri().to_string())))
            }
        })
        .unwrap();
        RecordingApp { server, seen }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The paths (with queries) that reached the app.
    pub fn paths(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().map(|(path, _)| path.clone()).collect()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// `name` as the app's last request carried it.
    pub fn last_header(&self, name: &str) -> Option<String> {
        let seen = self.seen.lock().unwrap();
        seen.last().and_then(|(_, headers)| headers.get(name)).and_then(|v| v.to_str().ok()).map(str::to_string)
    }

    pub async fn stop(self) {
        self.server.shutdown().await;
    }
}

/// A deployment in front of `app` with Ory at `ory` and `/members` protected: what most suites
/// run.
pub fn ory_deployment(app: SocketAddr, ory: &str) -> Deployment {
    let mut deployment = super::host::deployment(&format!("http://{app}"));
    deployment.ory_url = Some(url::Url::parse(ory).unwrap());
    deployment.protection.prefixes.push("/members".into());
    deployment
}
