//! End to end through the proxy, in the runner and in a real Envoy, against the Ory stand-in and a
//! recording upstream: protected paths, the JWT, the login flow on the proxy's origin, logout,
//! failures, caching.

mod common;

use common::app::{RecordingApp, ory_deployment};
use common::host::{Host, Proxy};
use common::{Jar, browser_login, cookie_attributes};
use http::StatusCode;
use ory_proxy::deployment::Deployment;
use ory_proxy_tests::http::HttpClient;
use ory_proxy_tests::standin::{DEMO_EMAIL, DEMO_PASSWORD, Fault, RunningStandin, Standin, StandinConfig};
use serde_json::Value;

const HTML: (&str, &str) = ("accept", "text/html,application/xhtml+xml,*/*;q=0.8");
const JSON: (&str, &str) = ("accept", "application/json");

struct World {
    standin: RunningStandin,
    app: RecordingApp,
    proxy: Proxy,
    client: HttpClient,
}

impl World {
    async fn start(host: Host) -> World {
        Self::start_with(host, |_| {}).await
    }

    async fn start_with(host: Host, adjust: impl FnOnce(&mut Deployment)) -> World {
        let standin = Standin::start(StandinConfig::default()).await.unwrap();
        let app = RecordingApp::start().await;
        let mut deployment = ory_deployment(app.addr(), &standin.url());
        adjust(&mut deployment);
        let proxy = Proxy::start(host, &deployment).await;
        World { standin, app, proxy, client: HttpClient::new() }
    }

    fn url(&self, path: &str) -> String {
        self.proxy.url(path)
    }

    fn app_paths(&self) -> Vec<String> {
        self.app.paths()
    }

    fn last_app_header(&self, name: &str) -> Option<String> {
        self.app.last_header(name)
    }

    async fn stop(self) {
        self.proxy.stop().await;
        self.app.stop().await;
        self.standin.shutdown().await;
    }

    /// Checks the JWT the app received against the proxy's JWKS and returns its claims.
    async fn verified_claims(&self, jwt: &str) -> Value {
        let jwks = self.client.get(&self.url("/.ory/jwks.json"), &[]).await.unwrap().json().unwrap();
        common::jwt::verify(&jwks, jwt).1
    }
}

fn bearer(value: Option<String>) -> Option<String> {
    value.and_then(|v| v.strip_prefix("Bearer ").map(str::to_string))
}

/// Paths that must never reach a protected resource without a session, however they are spelled.
const ATTACKS: &[&str] = &[
    "/members",
    "/members/",
    "//members",
    "/./members",
    "/public/../members",
    "/public/%2e%2e/members",
    "/public/%2E%2E/members/x",
    "/%6d%65%6d%62%65%72%73",
    "/public/..%2fmembers",
    "/public%2f..%2fmembers",
    "/public/..;/members",
    "/members;jsessionid=1",
    "/public\\..\\members",
    "/public/%5c..%5cmembers",
    "/members%00",
    "/members#fragment",
    "/public?next=/members",
];

both_hosts! {
    async fn a_browser_without_a_session_is_sent_to_login_with_the_whole_url(host: Host) {
        let world = World::start(host).await;
        let answer = world.client.get(&world.url("/members/page?a=1&b=x%20y"), &[HTML]).await.unwrap();
        assert_eq!(answer.status, StatusCode::SEE_OTHER);
        let location = url::Url::parse(answer.header("location").unwrap()).unwrap();
        assert_eq!(location.as_str().split('?').next(), Some(world.url("/.ory/self-service/login/browser").as_str()));
        let pairs: Vec<(String, String)> = location.query_pairs().into_owned().collect();
        // The query survives whole: `&` did not split return_to, and the original escape is intact.
        assert_eq!(pairs, [("return_to".to_string(), world.url("/members/page?a=1&b=x%20y"))]);
        assert!(world.app_paths().is_empty(), "the app must not be reached");
        world.stop().await;
    }

    async fn behind_a_public_url_redirects_name_it_and_spoofed_hosts_fall_back_to_it(host: Host) {
        let world = World::start_with(host, |deployment| {
            deployment.public_url = url::Url::parse("https://app.example.com").unwrap();
        })
        .await;
        let login = |host_header: &'static str| {
            let (client, url) = (&world.client, world.url("/members?a=1"));
            async move {
                let answer = client.get(&url, &[HTML, ("host", host_header)]).await.unwrap();
                assert_eq!(answer.status, StatusCode::SEE_OTHER, "{host_header}");
                answer.header("location").unwrap().to_string()
            }
        };
        // Through a balancer that ended TLS: the browser used https://app.example.com.
        let expected = "https://app.example.com/.ory/self-service/login/browser?return_to=https%3A%2F%2Fapp.example.com%2Fmembers%3Fa%3D1";
        assert_eq!(login("app.example.com").await, expected);
        assert_eq!(login("evil.example").await, expected, "a spoofed host gets the public URL");
        // The proxy's own names still keep what the browser used.
        let local = login("127.0.0.1").await;
        assert!(local.starts_with("http://127.0.0.1/.ory/self-service/login/browser?"), "{local}");
        world.stop().await;
    }

    async fn an_api_client_without_a_session_gets_401_json(host: Host) {
        let world = World::start(host).await;
        let answer = world.client.get(&world.url("/members"), &[JSON]).await.unwrap();
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer.json().unwrap()["error"]["code"], 401);
        assert!(world.app_paths().is_empty());
        world.stop().await;
    }

    async fn the_browser_login_flow_works_on_the_proxy_origin_only(host: Host) {
        let world = World::start(host).await;
        let mut jar = Jar::default();
        let return_to = world.url("/members/area?tab=1");
        let login =
            browser_login(&world.client, &mut jar, &world.url("/.ory"), DEMO_EMAIL, DEMO_PASSWORD, Some(&return_to)).await;
        assert_eq!(login.status, StatusCode::SEE_OTHER, "{}", login.text());
        assert_eq!(login.header("location"), Some(return_to.as_str()), "back to the protected page");
        let cookie_name = world.standin.cookie_name().to_string();
        let set_cookie = login.set_cookie(&cookie_name).expect("the session cookie reaches the browser");
        let attributes = cookie_attributes(set_cookie);
        assert!(!attributes.contains_key("domain"), "host-only cookie for the proxy's host: {set_cookie}");
        assert!(!attributes.contains_key("secure"), "plain HTTP keeps no Secure: {set_cookie}");
        assert!(jar.cookie(&cookie_name).is_some());

        let page = jar.get(&world.client, &return_to, &[HTML]).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text());
        let jwt = bearer(world.last_app_header("authorization")).expect("the app gets a Bearer JWT");
        let claims = world.verified_claims(&jwt).await;
        let identity = world.standin.identity_id(DEMO_EMAIL).unwrap().to_string();
        assert_eq!(claims["sub"], identity);
        assert_eq!(claims["session"]["identity"]["traits"]["email"], DEMO_EMAIL);
        assert_eq!(claims["iss"], world.standin.url());
        assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 60);

        // Logout through /.ory/ ends the session and the JWT.
        let logout = jar.get(&world.client, &world.url("/.ory/self-service/logout/browser"), &[JSON]).await;
        assert_eq!(logout.status, StatusCode::OK, "{}", logout.text());
        let logout_url = logout.json().unwrap()["logout_url"].as_str().unwrap().to_string();
        assert!(logout_url.starts_with(&world.url("/.ory/")), "rewritten onto the proxy: {logout_url}");
        let done = jar.get(&world.client, &logout_url, &[HTML]).await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text());
        let again = jar.get(&world.client, &return_to, &[HTML]).await;
        assert_eq!(again.status, StatusCode::SEE_OTHER, "logged out: asked to log in again");
        assert!(again.header("location").unwrap().contains("/.ory/self-service/login/browser"));
        world.stop().await;
    }

    async fn the_jwt_replaces_client_authorization_only_with_a_session(host: Host) {
        let world = World::start(host).await;
        let session = world.standin.create_session(DEMO_EMAIL).unwrap();
        let with = world
            .client
            .get(&world.url("/members"), &[("cookie", &session.cookie), ("authorization", "Bearer client-value")])
            .await
            .unwrap();
        assert_eq!(with.status, StatusCode::OK);
        let jwt = bearer(world.last_app_header("authorization")).unwrap();
        assert_ne!(jwt, "client-value");
        world.verified_claims(&jwt).await;
        // A measurement for the README, not an assertion: what the stand-in's session costs.
        eprintln!("JWT of the stand-in's session, whole: {} bytes", jwt.len());

        let without = world.client.get(&world.url("/public"), &[("authorization", "Bearer api-key-123")]).await.unwrap();
        assert_eq!(without.status, StatusCode::OK);
        assert_eq!(world.last_app_header("authorization").as_deref(), Some("Bearer api-key-123"));
        world.stop().await;
    }

    async fn the_jwt_carries_the_claims_asked_for_and_only_a_minimal_session(host: Host) {
        use ory_proxy::deployment::{ClaimName, CopiedClaim, SessionClaim, SessionPointer};
        let world = World::start_with(host, |deployment| {
            deployment.jwt_session_claim = SessionClaim::Minimal;
            deployment.jwt_claims = vec![CopiedClaim {
                name: ClaimName::try_from("email").unwrap(),
                pointer: SessionPointer::try_from("/identity/traits/email").unwrap(),
            }];
        })
        .await;
        let session = world.standin.create_session(DEMO_EMAIL).unwrap();
        let answer = world.client.get(&world.url("/members"), &[("cookie", &session.cookie)]).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        let jwt = bearer(world.last_app_header("authorization")).expect("a JWT");
        eprintln!("JWT of the stand-in's session, minimal with an email claim: {} bytes", jwt.len());
        let claims = world.verified_claims(&jwt).await;
        assert_eq!(claims["email"], DEMO_EMAIL);
        let minimal = claims["session"].as_object().expect("a session claim");
        let mut kept: Vec<&str> = minimal.keys().map(String::as_str).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["authentication_methods", "authenticator_assurance_level", "expires_at", "id", "identity"]);
        assert_eq!(claims["session"]["identity"].as_object().map(|identity| identity.len()), Some(1), "{claims}");
        assert_eq!(claims["session"]["identity"]["id"], claims["sub"]);
        world.stop().await;
    }

    async fn a_jwt_beyond_the_warning_size_is_sent_and_logged_with_advice(host: Host) {
        let world = World::start_with(host, |deployment| deployment.jwt_warn_bytes = 100).await;
        let session = world.standin.create_session(DEMO_EMAIL).unwrap();
        let answer = world.client.get(&world.url("/members"), &[("cookie", &session.cookie)]).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "the request is still served");
        let jwt = bearer(world.last_app_header("authorization")).expect("with its JWT");
        assert!(jwt.len() > 100);
        if let Some(envoy) = world.proxy.envoy() {
            // The runner's log of it: runner/tests/run_command.rs, which reads the binary's.
            let log = envoy.log();
            assert!(log.contains("more than 100 (jwt.warn_bytes)") && log.contains("--jwt-session-claim minimal"), "{log}");
        }
        world.stop().await;
    }

    async fn protected_paths_fail_closed_and_others_fail_open_when_ory_is_down(host: Host) {
        let world = World::start(host).await;
        let session = world.standin.create_session(DEMO_EMAIL).unwrap();
        world.standin.set_fault(Fault::Drop);
        let browser = world.client.get(&world.url("/members"), &[HTML, ("cookie", &session.cookie)]).await.unwrap();
        assert!(matches!(browser.status.as_u16(), 502 | 503), "{}", browser.status);
        let api = world.client.get(&world.url("/members"), &[JSON, ("cookie", &session.cookie)]).await.unwrap();
        assert!(matches!(api.status.as_u16(), 502 | 503), "{}", api.status);
        assert!(api.json().is_ok(), "API clients get JSON");
        assert!(world.app_paths().is_empty(), "fail closed: {:?}", world.app_paths());

        let open = world.client.get(&world.url("/public"), &[("cookie", &session.cookie)]).await.unwrap();
        assert_eq!(open.status, StatusCode::OK);
        assert_eq!(world.last_app_header("authorization"), None, "no JWT without a session check");
        world.stop().await;
    }

    async fn concurrent_requests_of_one_session_share_the_whoami_call(host: Host) {
        let world = World::start(host).await;
        let session = world.standin.create_session(DEMO_EMAIL).unwrap();
        world.standin.reset_whoami_calls();
        let requests = (0..100).map(|i| {
            let client = world.client.clone();
            let url = world.url(&format!("/members/{i}"));
            let cookie = session.cookie.clone();
            async move { client.get(&url, &[("cookie", &cookie)]).await.unwrap().status }
        });
        let statuses = futures_util::future::join_all(requests).await;
        assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
        let workers = world.proxy.vms();
        let calls = world.standin.whoami_calls();
        assert!(calls >= 1 && calls as usize <= workers, "{calls} whoami calls for 100 requests over {workers} VMs");
        world.stop().await;
    }


    async fn no_spelling_of_a_protected_path_reaches_the_app_without_a_session(host: Host) {
        let world = World::start(host).await;
        for attack in ATTACKS {
            let _ = world.client.get(&world.url(attack), &[JSON]).await;
        }
        for path in world.app_paths() {
            let path_only = path.split('?').next().unwrap_or_default();
            assert!(!path_only.starts_with("/members"), "{path} reached the app without a session");
        }
        world.stop().await;
    }

    async fn a_session_is_shared_by_every_worker_and_logout_ends_it_everywhere(host: Host) {
        let world = World::start(host).await;
        let session = world.standin.create_session(DEMO_EMAIL).unwrap();
        world.standin.reset_whoami_calls();
        // A new connection for every request, so that every worker (Envoy: one VM each) serves
        // some of them.
        for i in 0..20 {
            let answer = HttpClient::new().get(&world.url(&format!("/members/{i}")), &[("cookie", &session.cookie)]).await;
            assert_eq!(answer.unwrap().status, StatusCode::OK, "request {i}");
        }
        if let Some(envoy) = world.proxy.envoy() {
            let per_worker = envoy.connections_per_worker().await.unwrap();
            assert!(per_worker.iter().all(|&n| n > 0), "every worker served connections: {per_worker:?}");
        }
        assert_eq!(world.standin.whoami_calls(), 1, "one whoami call: the answer is cached for every worker");
        let tokens: Vec<String> = {
            let seen = world.app.seen.lock().unwrap();
            seen.iter().filter_map(|(_, h)| h.get("authorization")?.to_str().ok().map(str::to_string)).collect()
        };
        assert_eq!(tokens.len(), 20);
        assert!(tokens.iter().all(|t| t == &tokens[0]), "one JWT, signed once and reused by every worker");
        world.verified_claims(bearer(Some(tokens[0].clone())).as_deref().unwrap()).await;

        // Logging out through the proxy evicts the session for every worker at once (the cache
        // would otherwise keep answering for it until its TTL).
        let mut jar = Jar::default();
        jar.set(&world.standin.cookie_name(), &session.token);
        let logout = jar.get(&world.client, &world.url("/.ory/self-service/logout/browser"), &[JSON]).await;
        assert_eq!(logout.status, StatusCode::OK, "{}", logout.text());
        let logout_url = logout.json().unwrap()["logout_url"].as_str().unwrap().to_string();
        let done = HttpClient::new().get(&logout_url, &[("cookie", &session.cookie)]).await.unwrap();
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text());
        let reached = world.app_paths().len();
        for i in 0..20 {
            let answer =
                HttpClient::new().get(&world.url(&format!("/members/{i}")), &[HTML, ("cookie", &session.cookie)]).await;
            let answer = answer.unwrap();
            assert_eq!(answer.status, StatusCode::SEE_OTHER, "request {i} after logout");
            assert!(answer.header("location").unwrap().contains("/.ory/self-service/login/browser"));
        }
        assert_eq!(world.app_paths().len(), reached, "no request reached the app after logout");
        world.stop().await;
    }
}
