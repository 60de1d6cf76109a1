//! End to end in both hosts (the runner and a real Envoy): how much Ory is asked. Cookies Ory
//! does not know cost nothing, a flood of made-up session cookies costs a bounded number of
//! whoami calls at a time, and while Ory hangs open pages still answer promptly (without a JWT)
//! and protected ones fail closed.

mod common;

use std::time::{Duration, Instant};

use common::app::{RecordingApp, ory_deployment};
use common::host::{Host, Proxy};
use http::StatusCode;
use ory_proxy::deployment::Deployment;
use ory_proxy_tests::http::HttpClient;
use ory_proxy_tests::standin::{DEMO_EMAIL, Fault, FaultRule, RunningStandin, Standin, StandinConfig};

const JSON: (&str, &str) = ("accept", "application/json");

struct World {
    standin: RunningStandin,
    app: RecordingApp,
    proxy: Proxy,
    client: HttpClient,
}

impl World {
    async fn start(host: Host, adjust: impl FnOnce(&mut Deployment)) -> World {
        World::start_with(host, StandinConfig::default(), adjust).await
    }

    async fn start_with(host: Host, standin: StandinConfig, adjust: impl FnOnce(&mut Deployment)) -> World {
        let standin = Standin::start(standin).await.unwrap();
        // A page that takes its time, so that its request outlives a slow whoami call.
        let app = RecordingApp::start_slow_under("/slow", Duration::from_millis(1500)).await;
        let mut deployment = ory_deployment(app.addr(), &standin.url());
        adjust(&mut deployment);
        let proxy = Proxy::start(host, &deployment).await;
        World { standin, app, proxy, client: HttpClient::new() }
    }

    fn url(&self, path: &str) -> String {
        self.proxy.url(path)
    }

    /// Whoami takes `ms` milliseconds from now on.
    fn slow_whoami(&self, ms: u64) {
        self.standin.add_fault_rule(FaultRule::new(Fault::Delay(ms)).on_path("/sessions/whoami"));
    }

    /// What the app received: path and Authorization of every request.
    fn app_saw(&self) -> Vec<(String, Option<String>)> {
        let seen = self.app.seen.lock().unwrap();
        let authorization =
            |headers: &http::HeaderMap| headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
        seen.iter().map(|(path, headers)| (path.clone(), authorization(headers))).collect()
    }

    /// GETs every `(path, cookie)` at once; the statuses, in order.
    async fn get_all(&self, requests: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<StatusCode> {
        let requests = requests.into_iter().map(|(path, cookie)| {
            let client = self.client.clone();
            let url = self.url(&path);
            let mut headers: Vec<(String, String)> =
                extra.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
            headers.push(("cookie".into(), cookie));
            async move {
                let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                client.get(&url, &headers).await.unwrap().status
            }
        });
        futures_util::future::join_all(requests).await
    }

    async fn stop(self) {
        self.proxy.stop().await;
        self.app.stop().await;
        self.standin.shutdown().await;
    }
}

both_hosts! {
    async fn cookies_ory_does_not_know_cost_no_whoami_call(host: Host) {
        let world = World::start(host, |_| {}).await;
        world.standin.reset_whoami_calls();
        // 200 requests, each with cookies of its own that are not Ory's (analytics, CSRF, the
        // app's own, Kratos's continuity cookie), half to an open page, half to a protected one.
        let cookie = |i: usize| format!("_ga=GA1.1.{i}; theme=t{i}; csrf_token_{i:x}=x; ory_kratos_continuity=c{i}");
        let open: Vec<(String, String)> = (0..100).map(|i| (format!("/public/{i}"), cookie(i))).collect();
        let protected: Vec<(String, String)> = (100..200).map(|i| ("/members".to_string(), cookie(i))).collect();
        let open = world.get_all(open, &[]).await;
        assert!(open.iter().all(|status| *status == StatusCode::OK), "{open:?}");
        let protected = world.get_all(protected, &[JSON]).await;
        assert!(protected.iter().all(|status| *status == StatusCode::UNAUTHORIZED), "{protected:?}");
        assert_eq!(world.standin.whoami_calls(), 0, "200 requests without anything Ory knows cost no whoami call");
        world.stop().await;
    }

    async fn made_up_session_cookies_cost_at_most_the_bound_of_calls_at_a_time(host: Host) {
        let world = World::start(host, |deployment| deployment.max_concurrent_whoami = Some(2)).await;
        world.standin.reset_whoami_calls();
        // Ory is slow, so every call stays out while the flood arrives.
        world.slow_whoami(3_000);
        let flood = |from: usize| -> Vec<(String, String)> {
            (from..from + 40).map(|i| ("/members".to_string(), format!("ory_kratos_session=made-up-{i}"))).collect()
        };
        let started = Instant::now();
        let statuses = world.get_all(flood(0), &[JSON]).await;
        let bound = 2 * world.proxy.vms() as u64;
        let calls = world.standin.whoami_calls();
        assert!(calls >= 1 && calls <= bound, "{calls} whoami calls for 40 distinct cookies (bound {bound})");
        // Those asked about are refused by Ory (401); the others fail closed without asking.
        assert!(statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED || *s == StatusCode::BAD_GATEWAY), "{statuses:?}");
        let refused = statuses.iter().filter(|s| **s == StatusCode::BAD_GATEWAY).count();
        assert!(refused as u64 >= 40 - bound, "{refused} of 40 failed closed: {statuses:?}");
        assert!(world.app_saw().is_empty(), "fail closed: {:?}", world.app_saw());
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());

        // On open paths the same flood goes on without a JWT, and still costs at most the bound.
        world.standin.reset_whoami_calls();
        let open: Vec<(String, String)> =
            flood(100).into_iter().map(|(_, cookie)| ("/public".to_string(), cookie)).collect();
        let statuses = world.get_all(open, &[]).await;
        assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
        let calls = world.standin.whoami_calls();
        assert!(calls <= bound, "{calls} whoami calls (bound {bound})");
        assert!(world.app_saw().iter().all(|(_, authorization)| authorization.is_none()));
        world.stop().await;
    }

    async fn while_ory_hangs_open_pages_answer_promptly_and_protected_ones_fail_closed(host: Host) {
        let world = World::start(host, |_| {}).await;
        let session = world.standin.create_session(DEMO_EMAIL).unwrap();
        world.slow_whoami(60_000);
        let started = Instant::now();
        let open = world.client.get(&world.url("/public"), &[("cookie", &session.cookie)]).await.unwrap();
        let waited = started.elapsed();
        assert_eq!(open.status, StatusCode::OK);
        // The filter's default wait is 300 ms (checked on a tick of a quarter of that).
        assert!(waited < Duration::from_millis(1_500), "the open page waited {waited:?} for a hung Ory");
        assert!(waited >= Duration::from_millis(250), "it did wait for Ory a little: {waited:?}");
        assert_eq!(world.app_saw(), [("/public".to_string(), None)], "no JWT without an answer");

        let protected = world.client.get(&world.url("/members"), &[JSON, ("cookie", &session.cookie)]).await.unwrap();
        assert!(matches!(protected.status.as_u16(), 502..=504), "{}", protected.status);
        assert!(world.app_saw().iter().all(|(path, _)| path != "/members"), "fail closed: {:?}", world.app_saw());

        // Once Ory answers again, so does the session.
        world.standin.clear_faults();
        let open = world.client.get(&world.url("/public"), &[("cookie", &session.cookie)]).await.unwrap();
        assert_eq!(open.status, StatusCode::OK);
        let (_, authorization) = world.app_saw().last().cloned().unwrap();
        assert!(authorization.is_some_and(|value| value.starts_with("Bearer ")));
        world.stop().await;
    }

    async fn a_late_answer_still_fills_the_cache(host: Host) {
        let world = World::start(host, |_| {}).await;
        let session = world.standin.create_session(DEMO_EMAIL).unwrap();
        world.standin.reset_whoami_calls();
        // Whoami answers after the open-path wait but while the (slow) page is still loading.
        world.slow_whoami(700);
        let slow = world.client.get(&world.url("/slow"), &[("cookie", &session.cookie)]).await.unwrap();
        assert_eq!(slow.status, StatusCode::OK);
        assert_eq!(world.app_saw(), [("/slow".to_string(), None)], "it went on without a JWT");
        world.standin.clear_faults();
        let next = world.client.get(&world.url("/public"), &[("cookie", &session.cookie)]).await.unwrap();
        assert_eq!(next.status, StatusCode::OK);
        let (_, authorization) = world.app_saw().last().cloned().unwrap();
        assert!(authorization.is_some_and(|value| value.starts_with("Bearer ")), "the session is known now");
        assert_eq!(world.standin.whoami_calls(), 1, "from the cache the late answer filled");
        world.stop().await;
    }

    async fn a_kratos_with_its_own_cookie_name_is_asked_once_the_name_is_configured(host: Host) {
        let standin = || StandinConfig { cookie_name: Some("acme_sid".into()), ..StandinConfig::default() };
        // By default the name is not one of Ory's: the session is never looked at.
        let unknown = World::start_with(host, standin(), |_| {}).await;
        let session = unknown.standin.create_session(DEMO_EMAIL).unwrap();
        assert!(session.cookie.starts_with("acme_sid="), "{}", session.cookie);
        let answer = unknown.client.get(&unknown.url("/members"), &[JSON, ("cookie", &session.cookie)]).await.unwrap();
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(unknown.standin.whoami_calls(), 0);
        unknown.stop().await;

        let configured =
            World::start_with(host, standin(), |deployment| deployment.session_cookie_prefixes = vec!["acme_sid".into()])
                .await;
        let session = configured.standin.create_session(DEMO_EMAIL).unwrap();
        let answer = configured.client.get(&configured.url("/members"), &[("cookie", &session.cookie)]).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        let (_, authorization) = configured.app_saw().last().cloned().unwrap();
        assert!(authorization.is_some_and(|value| value.starts_with("Bearer ")));
        configured.stop().await;
    }
}
