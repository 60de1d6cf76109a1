//! End to end in both hosts (the runner and a real Envoy): what the app receives when clients
//! send identity headers, tokens claiming to be the proxy's, double-encoded paths, and paths in
//! another case.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use common::app::{RecordingApp, ory_deployment};
use common::host::{Host, Proxy};
use http::StatusCode;
use ory_proxy::deployment::{Deployment, PassableHeader};
use ory_proxy_tests::http::HttpClient;
use ory_proxy_tests::standin::{DEMO_EMAIL, RunningStandin, Standin, StandinConfig};
use serde_json::{Value, json};

const JSON: (&str, &str) = ("accept", "application/json");

/// Headers an app may take for "who the user is" or "which path was asked for".
const SPOOFED: &[(&str, &str)] = &[
    ("x-kratos-authenticated-identity-id", "00000000-0000-0000-0000-000000000000"),
    ("x-original-url", "/members"),
    ("x-original-uri", "/members"),
    ("x-rewrite-url", "/members"),
    ("x-envoy-original-path", "/members"),
    ("x-user", "admin"),
    ("x-auth-request-user", "admin"),
    ("x-auth-request-email", "admin@example.com"),
    ("remote-user", "admin"),
    ("x-remote-user", "admin"),
];

struct World {
    standin: RunningStandin,
    app: RecordingApp,
    proxy: Proxy,
    client: HttpClient,
}

impl World {
    async fn start(host: Host, adjust: impl FnOnce(&mut Deployment)) -> World {
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

    /// The headers of the app's last request, after asserting there was one more than `before`.
    fn last_headers(&self, before: usize) -> http::HeaderMap {
        let seen = self.app.seen.lock().unwrap();
        assert_eq!(seen.len(), before + 1, "the app was reached once");
        seen.last().map(|(_, headers)| headers.clone()).unwrap_or_default()
    }

    fn count(&self) -> usize {
        self.app.count()
    }

    async fn jwks(&self) -> Value {
        self.client.get(&self.url("/.ory/jwks.json"), &[]).await.unwrap().json().unwrap()
    }

    async fn stop(self) {
        self.proxy.stop().await;
        self.app.stop().await;
        self.standin.shutdown().await;
    }
}

fn header(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_string)
}

fn forged_jwt(header: Value, claims: Value) -> String {
    let part = |value: Value| B64URL.encode(serde_json::to_vec(&value).unwrap());
    format!("{}.{}.{}", part(header), part(claims), B64URL.encode([7u8; 64]))
}

/// Verifies `jwt` with the published key and returns its header's kid.
fn verified_kid(jwks: &Value, jwt: &str) -> String {
    let (header, _) = common::jwt::verify(jwks, jwt);
    header["kid"].as_str().unwrap().to_string()
}

both_hosts! {
    async fn identity_headers_never_reach_the_app_unless_passed(host: Host) {
        let world = World::start(host, |deployment| {
            deployment.pass_client_headers = vec![PassableHeader::try_from("x-remote-user").unwrap()];
        })
        .await;
        let before = world.count();
        let answer = world.client.get(&world.url("/public"), SPOOFED).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        let headers = world.last_headers(before);
        for (name, _) in SPOOFED.iter().filter(|(name, _)| *name != "x-remote-user") {
            assert_eq!(header(&headers, name), None, "{name} reached the app");
        }
        assert_eq!(header(&headers, "x-remote-user").as_deref(), Some("admin"), "passed on purpose");

        // With a session too: the app gets the proxy's JWT and none of the client's claims.
        let session = world.standin.create_session(DEMO_EMAIL).unwrap();
        let mut extra = SPOOFED.to_vec();
        extra.push(("cookie", &session.cookie));
        let before = world.count();
        let answer = world.client.get(&world.url("/members"), &extra).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        let headers = world.last_headers(before);
        assert_eq!(header(&headers, "x-kratos-authenticated-identity-id"), None);
        assert_eq!(header(&headers, "remote-user"), None);
        assert!(header(&headers, "authorization").is_some_and(|value| value.starts_with("Bearer ")));
        world.stop().await;
    }

    async fn a_client_token_claiming_to_be_ours_never_reaches_the_app(host: Host) {
        let world = World::start(host, |_| {}).await;
        let jwks = world.jwks().await;
        let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_string();
        let issuer = world.standin.url();
        let forged = [
            forged_jwt(json!({ "alg": "ES256", "kid": kid, "typ": "JWT" }), json!({ "sub": "admin" })),
            forged_jwt(json!({ "alg": "ES256", "kid": "other", "typ": "JWT" }), json!({ "iss": issuer, "sub": "admin" })),
            format!(
                "{}.{}.",
                B64URL.encode(br#"{"alg":"none","typ":"JWT"}"#),
                B64URL.encode(json!({ "iss": issuer, "sub": "admin" }).to_string())
            ),
        ];
        for token in &forged {
            let authorization = format!("Bearer {token}");
            let before = world.count();
            let answer = world.client.get(&world.url("/public"), &[("authorization", &authorization)]).await.unwrap();
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(header(&world.last_headers(before), "authorization"), None, "{token} reached the app");
            // A protected path stays protected: the forgery is no session.
            let answer = world.client.get(&world.url("/members"), &[JSON, ("authorization", &authorization)]).await.unwrap();
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        }

        // With a session the app gets the proxy's own, verifiable JWT instead.
        let session = world.standin.create_session(DEMO_EMAIL).unwrap();
        let authorization = format!("Bearer {}", forged[0]);
        let before = world.count();
        let answer = world
            .client
            .get(&world.url("/members"), &[("cookie", &session.cookie), ("authorization", &authorization)])
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        let value = header(&world.last_headers(before), "authorization").expect("a JWT");
        let jwt = value.strip_prefix("Bearer ").expect("a bearer token");
        assert_ne!(jwt, forged[0]);
        assert_eq!(verified_kid(&jwks, jwt), kid);

        // Other credentials still pass without a session.
        let before = world.count();
        world.client.get(&world.url("/public"), &[("authorization", "Bearer api-key-123")]).await.unwrap();
        assert_eq!(header(&world.last_headers(before), "authorization").as_deref(), Some("Bearer api-key-123"));
        world.stop().await;
    }

    async fn double_encoded_paths_are_refused_and_never_reach_the_app(host: Host) {
        let world = World::start(host, |_| {}).await;
        for path in ["/%256dembers", "/x/%252e%252e/members", "/%252fmembers", "/public/%25%32%65%25%32%65/members"] {
            let answer = world.client.get(&world.url(path), &[JSON]).await.unwrap();
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{path}: {}", answer.text());
            let reason = answer.json().unwrap()["error"]["reason"].as_str().unwrap_or_default().to_string();
            assert!(reason.contains("percent-encoded twice"), "{path}: {reason}");
        }
        assert!(world.app_paths().is_empty(), "reached the app: {:?}", world.app_paths());
        world.stop().await;
    }

    async fn upper_case_paths_are_protected_only_with_ignore_case(host: Host) {
        let sensitive = World::start(host, |_| {}).await;
        let answer = sensitive.client.get(&sensitive.url("/MEMBERS"), &[JSON]).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "the seed's case-sensitive prefix");
        assert_eq!(sensitive.app_paths(), ["/MEMBERS"]);
        sensitive.stop().await;

        let ignoring = World::start(host, |deployment| deployment.protection.ignore_case = true).await;
        for path in ["/MEMBERS", "/Members/x", "/members"] {
            let answer = ignoring.client.get(&ignoring.url(path), &[JSON]).await.unwrap();
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}");
        }
        assert!(ignoring.app_paths().is_empty(), "reached the app: {:?}", ignoring.app_paths());
        let session = ignoring.standin.create_session(DEMO_EMAIL).unwrap();
        let answer = ignoring.client.get(&ignoring.url("/MEMBERS"), &[("cookie", &session.cookie)]).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        ignoring.stop().await;
    }
}
