//! The Ory stand-in over real sockets: every JSON body it emits is checked against Kratos's
//! OpenAPI schemas, and the browser flows are driven the way a browser would.

mod common;

use std::time::{Duration, Instant};

use common::{Jar, assert_schema, browser_login, cookie_attributes, form_action, input_value, matches_schema};
use http::Method;
use ory_proxy_tests::http::HttpClient;
use ory_proxy_tests::standin::{
    DEMO_EMAIL, DEMO_PASSWORD, Fault, FaultRule, IdentitySeed, Standin, StandinCli, StandinConfig,
};
use serde_json::Value;

const WHOAMI_401: &str = r#"{"error":{"code":401,"status":"Unauthorized","reason":"No valid session credentials found in the request.","message":"The request could not be authorized"}}"#;

fn client() -> HttpClient {
    HttpClient::with_timeout(Duration::from_secs(10))
}

#[test]
fn the_reference_session_example_matches_the_session_schema() {
    // Sanity check of the validator set-up: Ory's own example must pass, and a broken one fail.
    let text = std::fs::read_to_string(common::SESSION_EXAMPLE_PATH).unwrap();
    let example: Value = serde_json::from_str(&text).unwrap();
    assert_schema("session", &example);
    let mut broken = example.clone();
    broken["identity"]["state"] = Value::String("sleepy".into());
    assert!(!matches_schema("session", &broken));
    let mut broken = example;
    broken["expires_at"] = Value::String("tomorrow".into());
    assert!(!matches_schema("session", &broken));
    // errorGeneric needs error.message; logoutFlow needs both fields; a UI node needs node_type.
    assert!(!matches_schema("errorGeneric", &serde_json::json!({"error": {"code": 401}})));
    assert!(!matches_schema("logoutFlow", &serde_json::json!({"logout_url": "x"})));
    let node = serde_json::json!({"type": "input", "group": "default", "messages": [], "meta": {},
        "attributes": {"name": "csrf_token", "type": "hidden", "disabled": false}});
    assert!(!matches_schema("uiNode", &node));
    let mut fixed = node;
    fixed["attributes"]["node_type"] = "input".into();
    assert!(matches_schema("uiNode", &fixed));
}

#[tokio::test]
async fn whoami_without_credentials_is_the_exact_kratos_401() {
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let c = client();
    for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        let resp = c.request(method.clone(), &format!("{}/sessions/whoami", standin.url()), &[], "").await.unwrap();
        assert_eq!(resp.status, 401, "{method}");
        assert_eq!(resp.text(), WHOAMI_401);
        assert!(resp.header("content-type").unwrap().starts_with("application/json"));
        assert_schema("errorGeneric", &resp.json().unwrap());
    }
    // Unknown token, unknown cookie.
    let resp =
        c.get(&format!("{}/sessions/whoami", standin.url()), &[("cookie", "ory_kratos_session=nope")]).await.unwrap();
    assert_eq!((resp.status.as_u16(), resp.text()), (401, WHOAMI_401.to_owned()));
    assert_eq!(standin.whoami_calls(), 6);
    standin.shutdown().await;
}

#[tokio::test]
async fn full_login_whoami_logout_cycle() {
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let base = standin.url();
    let c = client();
    let mut jar = Jar::default();
    let return_to = "http://127.0.0.1:4000/members/area?x=1&y=2";

    // 1. Start the flow: 303 to the login UI on the stand-in's own origin, CSRF cookie set.
    let start = format!(
        "{base}/self-service/login/browser?return_to={}",
        url::form_urlencoded::byte_serialize(return_to.as_bytes()).collect::<String>()
    );
    let resp = jar.get(&c, &start, &[("accept", "text/html")]).await;
    assert_eq!(resp.status, 303);
    let location = resp.header("location").unwrap().to_owned();
    assert!(location.starts_with(&format!("{base}/ui/login?flow=")), "{location}");
    let flow_id = location.rsplit('=').next().unwrap().to_owned();
    let csrf_name = format!("csrf_token_{}", common::sha256_hex(&base));
    assert_eq!(standin.csrf_cookie_name(), csrf_name);
    let csrf_cookie = resp.set_cookie(&csrf_name).expect("CSRF cookie").to_owned();
    let attrs = cookie_attributes(&csrf_cookie);
    assert_eq!(attrs.get("path").map(String::as_str), Some("/"));
    assert_eq!(attrs.get("max-age").map(String::as_str), Some("31536000"));
    assert_eq!(attrs.get("samesite").map(String::as_str), Some("Lax"));
    assert!(attrs.contains_key("httponly"));
    assert!(!attrs.contains_key("secure") && !attrs.contains_key("domain"));

    // 2. The flow as JSON (with the CSRF cookie), valid against loginFlow.
    let flow = jar.get(&c, &format!("{base}/self-service/login/flows?id={flow_id}"), &[]).await;
    assert_eq!(flow.status, 200, "{}", flow.text());
    let flow = flow.json().unwrap();
    assert_schema("loginFlow", &flow);
    assert_eq!(flow["return_to"], return_to);
    assert_eq!(flow["ui"]["action"], format!("{base}/self-service/login?flow={flow_id}"));
    assert!(flow["request_url"].as_str().unwrap().starts_with(&base));
    // Without the CSRF cookie the flow is not handed out.
    let resp = c.get(&format!("{base}/self-service/login/flows?id={flow_id}"), &[]).await.unwrap();
    assert_eq!(resp.status, 403);
    assert_schema("errorGeneric", &resp.json().unwrap());

    // 3. The login page: a form posting to an absolute URL on the stand-in.
    let page = jar.get(&c, &location, &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    let html = page.text();
    assert!(html.contains("development and test tool"));
    let action = form_action(&html).unwrap();
    assert_eq!(action, format!("{base}/self-service/login?flow={flow_id}"));
    let csrf = input_value(&html, "csrf_token").unwrap();
    assert_eq!(Some(csrf.as_str()), jar.cookie(&csrf_name));

    // 4. A wrong password: back to the form, with Kratos's message on the flow.
    let resp = jar
        .post_form(
            &c,
            &action,
            &[],
            &[("csrf_token", &csrf), ("identifier", DEMO_EMAIL), ("password", "wrong"), ("method", "password")],
        )
        .await;
    assert_eq!(resp.status, 303);
    assert_eq!(resp.header("location").unwrap(), location);
    assert!(resp.set_cookie(&standin.cookie_name()).is_none());
    let flow = jar.get(&c, &format!("{base}/self-service/login/flows?id={flow_id}"), &[]).await.json().unwrap();
    assert_schema("loginFlow", &flow);
    assert_eq!(flow["ui"]["messages"][0]["id"], 4000006);
    let page = jar.get(&c, &location, &[]).await.text();
    assert!(page.contains("The provided credentials are invalid"));
    assert_eq!(input_value(&page, "identifier").as_deref(), Some(DEMO_EMAIL));

    // 5. The right password: session cookie with Kratos's attributes, redirect to return_to.
    let resp = jar
        .post_form(
            &c,
            &action,
            &[],
            &[("csrf_token", &csrf), ("identifier", DEMO_EMAIL), ("password", DEMO_PASSWORD), ("method", "password")],
        )
        .await;
    assert_eq!(resp.status, 303);
    assert_eq!(resp.header("location").unwrap(), return_to);
    let session_cookie = resp.set_cookie("ory_kratos_session").unwrap().to_owned();
    let attrs = cookie_attributes(&session_cookie);
    assert_eq!(attrs.get("path").map(String::as_str), Some("/"));
    assert_eq!(attrs.get("samesite").map(String::as_str), Some("Lax"));
    assert!(attrs.contains_key("httponly"));
    assert!(!attrs.contains_key("secure"), "dev mode: no Secure");
    assert!(!attrs.contains_key("domain"));
    let max_age: i64 = attrs["max-age"].parse().unwrap();
    assert!((86_390..=86_400).contains(&max_age), "{max_age}");
    let token = jar.cookie("ory_kratos_session").unwrap().to_owned();

    // 6. whoami with the cookie: the Session, Kratos's headers.
    standin.reset_whoami_calls();
    let resp = jar.get(&c, &format!("{base}/sessions/whoami"), &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let session = resp.json().unwrap();
    assert_schema("session", &session);
    assert_schema("identity", &session["identity"]);
    assert_eq!(session["active"], true);
    assert_eq!(session["authenticator_assurance_level"], "aal1");
    assert_eq!(session["identity"]["traits"]["email"], DEMO_EMAIL);
    let identity_id = standin.identity_id(DEMO_EMAIL).unwrap().to_string();
    assert_eq!(session["identity"]["id"], identity_id.as_str());
    assert_eq!(resp.header("x-kratos-authenticated-identity-id"), Some(identity_id.as_str()));
    assert_eq!(resp.header("cache-control"), Some("private, no-cache, no-store, must-revalidate"));
    assert_eq!(resp.header("vary"), Some("Cookie"));
    assert!(resp.set_cookie("ory_kratos_session").is_none(), "not extended: no Set-Cookie");
    assert!(session["identity"]["schema_url"].as_str().unwrap().starts_with(&format!("{base}/schemas/")));
    // The schema URL answers.
    let schema = c.get(session["identity"]["schema_url"].as_str().unwrap(), &[]).await.unwrap();
    assert_eq!(schema.status, 200);
    assert!(schema.json().unwrap()["properties"]["traits"].is_object());

    // The same session by token, both ways Kratos accepts it.
    for header in [("x-session-token", token.clone()), ("authorization", format!("Bearer {token}"))] {
        let resp = c.get(&format!("{base}/sessions/whoami"), &[(header.0, &header.1)]).await.unwrap();
        assert_eq!(resp.status, 200, "{}", header.0);
        assert_eq!(resp.json().unwrap()["id"], session["id"]);
    }
    assert_eq!(standin.whoami_calls(), 3);

    // A new login flow while logged in goes straight to return_to (or JSON: 400).
    let resp = jar.get(&c, &format!("{base}/self-service/login/browser"), &[]).await;
    assert_eq!(resp.status, 303);
    assert_eq!(resp.header("location").unwrap(), format!("{base}/ui/welcome"));
    let resp = jar.get(&c, &format!("{base}/self-service/login/browser"), &[("accept", "application/json")]).await;
    assert_eq!(resp.status, 400);
    let body = resp.json().unwrap();
    assert_schema("errorGeneric", &body);
    assert_eq!(body["error"]["id"], "session_already_available");
    // The welcome page knows the user.
    let welcome = jar.get(&c, &format!("{base}/ui/welcome"), &[]).await.text();
    assert!(welcome.contains(DEMO_EMAIL));

    // 7. Logout: the browser flow gives a logout URL on the stand-in's origin.
    let resp = jar.get(&c, &format!("{base}/self-service/logout/browser"), &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let logout = resp.json().unwrap();
    assert_schema("logoutFlow", &logout);
    let logout_url = logout["logout_url"].as_str().unwrap().to_owned();
    let logout_token = logout["logout_token"].as_str().unwrap();
    assert_eq!(logout_url, format!("{base}/self-service/logout?token={logout_token}"));
    // A wrong token does not log out.
    let resp =
        jar.get(&c, &format!("{base}/self-service/logout?token=forged"), &[("accept", "application/json")]).await;
    assert_eq!(resp.status, 403);
    assert_schema("errorGeneric", &resp.json().unwrap());
    let resp = jar.get(&c, &format!("{base}/sessions/whoami"), &[]).await;
    assert_eq!(resp.status, 200);
    // The real one does: session cookie expired, redirect to the welcome page.
    let resp = jar.get(&c, &logout_url, &[]).await;
    assert_eq!(resp.status, 303);
    assert_eq!(resp.header("location").unwrap(), format!("{base}/ui/welcome"));
    let expired = resp.set_cookie("ory_kratos_session").unwrap();
    assert_eq!(cookie_attributes(expired).get("max-age").map(String::as_str), Some("0"));
    assert!(jar.cookie("ory_kratos_session").is_none());

    // 8. The session is gone, by cookie and by token.
    let resp =
        c.get(&format!("{base}/sessions/whoami"), &[("cookie", &format!("ory_kratos_session={token}"))]).await.unwrap();
    assert_eq!((resp.status.as_u16(), resp.text()), (401, WHOAMI_401.to_owned()));
    let resp = c.get(&format!("{base}/sessions/whoami"), &[("x-session-token", &token)]).await.unwrap();
    assert_eq!(resp.status, 401);
    // Logout without a session: 401 in Ory's shape.
    let resp = jar.get(&c, &format!("{base}/self-service/logout/browser"), &[]).await;
    assert_eq!(resp.status, 401);
    assert_schema("errorGeneric", &resp.json().unwrap());
    standin.shutdown().await;
}

#[tokio::test]
async fn return_to_allow_list_rejects_foreign_hosts() {
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let base = standin.url();
    let c = client();
    for evil in [
        "https://evil.example/steal",
        "//evil.example/x",
        "/\\evil.example/x",
        "http://127.0.0.1.evil.example:4000/",
        "http://127.0.0.1:4000@evil.example/",
        "javascript:alert(1)",
    ] {
        let enc: String = url::form_urlencoded::byte_serialize(evil.as_bytes()).collect();
        // JSON clients get the error directly.
        let resp = c
            .get(&format!("{base}/self-service/login/browser?return_to={enc}"), &[("accept", "application/json")])
            .await
            .unwrap();
        assert_eq!(resp.status, 400, "{evil}");
        let body = resp.json().unwrap();
        assert_schema("errorGeneric", &body);
        assert_eq!(body["error"]["id"], "self_service_flow_return_to_forbidden");
        assert!(resp.set_cookie(&standin.csrf_cookie_name()).is_none());
        // Browsers are sent to the error UI, whose error is also readable as JSON.
        let resp = c.get(&format!("{base}/self-service/login/browser?return_to={enc}"), &[]).await.unwrap();
        assert_eq!(resp.status, 303, "{evil}");
        let location = resp.header("location").unwrap();
        assert!(location.starts_with(&format!("{base}/ui/error?id=")), "{location}");
        let id = location.rsplit('=').next().unwrap();
        let page = c.get(location, &[]).await.unwrap();
        assert_eq!(page.status, 200);
        assert!(page.text().contains("is not allowed"));
        let error = c.get(&format!("{base}/self-service/errors?id={id}"), &[]).await.unwrap();
        assert_eq!(error.status, 200);
        let error = error.json().unwrap();
        assert_schema("flowError", &error);
        assert_eq!(error["error"]["code"], 400);
    }
    // The same on registration and logout.
    let resp = c
        .get(
            &format!("{base}/self-service/registration/browser?return_to=https%3A%2F%2Fevil.example%2F"),
            &[("accept", "application/json")],
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 400);
    // Loopback URLs, any port, are fine by default.
    for ok in ["http://localhost:8080/x", "https://127.0.0.1/", "http://[::1]:3000/"] {
        let enc: String = url::form_urlencoded::byte_serialize(ok.as_bytes()).collect();
        let resp = c.get(&format!("{base}/self-service/login/browser?return_to={enc}"), &[]).await.unwrap();
        assert_eq!(resp.status, 303, "{ok}");
        assert!(resp.header("location").unwrap().contains("/ui/login?flow="));
    }
    standin.shutdown().await;

    // An explicit allow-list replaces the loopback default.
    let standin = Standin::start(StandinConfig {
        allowed_return_urls: vec!["https://app.example.com/dashboard".into()],
        ..StandinConfig::default()
    })
    .await
    .unwrap();
    let base = standin.url();
    let check = |rt: &'static str| {
        let c = c.clone();
        let base = base.clone();
        async move {
            let enc: String = url::form_urlencoded::byte_serialize(rt.as_bytes()).collect();
            c.get(&format!("{base}/self-service/login/browser?return_to={enc}"), &[("accept", "application/json")])
                .await
                .unwrap()
                .status
                .as_u16()
        }
    };
    assert_eq!(check("https://app.example.com/dashboard/x").await, 200);
    assert_eq!(check("https://app.example.com/admin").await, 400);
    assert_eq!(check("http://127.0.0.1:4000/").await, 400);
    standin.shutdown().await;
}

#[tokio::test]
async fn json_flows_match_their_schemas() {
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let base = standin.url();
    let c = client();
    let resp = c
        .get(
            &format!("{base}/self-service/login/browser?return_to=http%3A%2F%2F127.0.0.1%3A4000%2F"),
            &[("accept", "application/json")],
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.set_cookie(&standin.csrf_cookie_name()).is_some());
    let flow = resp.json().unwrap();
    assert_schema("loginFlow", &flow);
    assert_eq!(flow["type"], "browser");
    assert_eq!(flow["requested_aal"], "aal1");
    let names: Vec<&str> =
        flow["ui"]["nodes"].as_array().unwrap().iter().map(|n| n["attributes"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["csrf_token", "identifier", "password", "method"]);

    let resp =
        c.get(&format!("{base}/self-service/registration/browser"), &[("accept", "application/json")]).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_schema("registrationFlow", &resp.json().unwrap());

    let health = c.get(&format!("{base}/health/ready"), &[]).await.unwrap();
    assert_schema("healthStatus", &health.json().unwrap());

    // Unknown flows and paths answer in Ory's error shape.
    for path in [
        "/self-service/login/flows?id=00000000-0000-4000-8000-000000000000",
        "/self-service/login/flows?id=not-a-uuid",
        "/self-service/errors?id=00000000-0000-4000-8000-000000000000",
        "/no/such/path",
    ] {
        let resp = c.get(&format!("{base}{path}"), &[]).await.unwrap();
        assert!(resp.status.is_client_error(), "{path}");
        assert_schema("errorGeneric", &resp.json().unwrap());
    }
    standin.shutdown().await;
}

#[tokio::test]
async fn api_style_login_and_registration_answer_json() {
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let base = standin.url();
    let c = client();
    let json = [("accept", "application/json")];
    // Login through the browser flow, but as an AJAX client with a JSON body.
    let mut jar = Jar::default();
    let flow = jar.get(&c, &format!("{base}/self-service/login/browser"), &json).await.json().unwrap();
    let action = flow["ui"]["action"].as_str().unwrap();
    let csrf = jar.cookie(&standin.csrf_cookie_name()).unwrap().to_owned();
    let body = serde_json::json!({
        "method": "password", "identifier": DEMO_EMAIL, "password": "nope", "csrf_token": csrf,
    });
    let cookie = jar.header();
    let resp = c
        .request(
            Method::POST,
            action,
            &[("accept", "application/json"), ("content-type", "application/json"), ("cookie", &cookie)],
            body.to_string(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 400);
    assert_schema("loginFlow", &resp.json().unwrap());
    let body = serde_json::json!({
        "method": "password", "identifier": DEMO_EMAIL, "password": DEMO_PASSWORD, "csrf_token": csrf,
    });
    let resp = c
        .request(
            Method::POST,
            action,
            &[("accept", "application/json"), ("content-type", "application/json"), ("cookie", &cookie)],
            body.to_string(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_schema("successfulNativeLogin", &resp.json().unwrap());
    assert!(resp.set_cookie(&standin.cookie_name()).is_some());

    // Registration with a form, JSON answer.
    let mut jar = Jar::default();
    let flow = jar.get(&c, &format!("{base}/self-service/registration/browser"), &json).await.json().unwrap();
    let action = flow["ui"]["action"].as_str().unwrap().to_owned();
    let csrf = jar.cookie(&standin.csrf_cookie_name()).unwrap().to_owned();
    let resp = jar
        .post_form(
            &c,
            &action,
            &json,
            &[
                ("csrf_token", &csrf),
                ("traits.email", "new@example.com"),
                ("password", "a long enough password"),
                ("method", "password"),
            ],
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let body = resp.json().unwrap();
    assert_schema("successfulNativeRegistration", &body);
    assert_schema("session", &body["session"]);
    assert!(standin.identity_id("new@example.com").is_some());
    // Logout as JSON: 204.
    let logout = jar.get(&c, &format!("{base}/self-service/logout/browser"), &[]).await.json().unwrap();
    let resp = jar.get(&c, logout["logout_url"].as_str().unwrap(), &json).await;
    assert_eq!(resp.status, 204);
    standin.shutdown().await;
}

#[tokio::test]
async fn browser_registration_creates_an_identity_and_logs_in() {
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let base = standin.url();
    let c = client();
    let mut jar = Jar::default();
    let resp = jar
        .get(&c, &format!("{base}/self-service/registration/browser?return_to=http%3A%2F%2F127.0.0.1%3A4000%2F"), &[])
        .await;
    assert_eq!(resp.status, 303);
    let ui = resp.header("location").unwrap().to_owned();
    assert!(ui.starts_with(&format!("{base}/ui/registration?flow=")));
    let html = jar.get(&c, &ui, &[]).await.text();
    let action = form_action(&html).unwrap();
    let csrf = input_value(&html, "csrf_token").unwrap();
    // A duplicate email and a short password are refused with Kratos's messages.
    for (email, password, id) in
        [(DEMO_EMAIL, "long enough password", "4000007"), ("fresh@example.com", "short", "4000032")]
    {
        let resp = jar
            .post_form(
                &c,
                &action,
                &[],
                &[("csrf_token", &csrf), ("traits.email", email), ("password", password), ("method", "password")],
            )
            .await;
        assert_eq!(resp.status, 303);
        assert_eq!(resp.header("location").unwrap(), ui);
        let page = jar.get(&c, &ui, &[]).await.text();
        assert!(page.contains(&format!("data-message-id=\"{id}\"")), "{page}");
    }
    let resp = jar
        .post_form(
            &c,
            &action,
            &[],
            &[
                ("csrf_token", &csrf),
                ("traits.email", "fresh@example.com"),
                ("password", "<script>alert(1)</script>"),
                ("method", "password"),
            ],
        )
        .await;
    assert_eq!(resp.status, 303);
    assert_eq!(resp.header("location").unwrap(), "http://127.0.0.1:4000/");
    let session = jar.get(&c, &format!("{base}/sessions/whoami"), &[]).await;
    assert_eq!(session.status, 200);
    assert_eq!(session.json().unwrap()["identity"]["traits"]["email"], "fresh@example.com");
    // And the new identity can log in again.
    let mut jar = Jar::default();
    let resp = browser_login(&c, &mut jar, &base, "fresh@example.com", "<script>alert(1)</script>", None).await;
    assert_eq!(resp.status, 303);
    assert!(jar.cookie("ory_kratos_session").is_some());
    standin.shutdown().await;
}

#[tokio::test]
async fn csrf_is_enforced_on_form_posts() {
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let base = standin.url();
    let c = client();
    let mut jar = Jar::default();
    let resp = jar.get(&c, &format!("{base}/self-service/login/browser"), &[]).await;
    let ui = resp.header("location").unwrap().to_owned();
    let html = jar.get(&c, &ui, &[]).await.text();
    let action = form_action(&html).unwrap();
    let csrf = input_value(&html, "csrf_token").unwrap();
    let fields = [("identifier", DEMO_EMAIL), ("password", DEMO_PASSWORD), ("method", "password")];
    // No cookie (a cross-site form post): refused, even with the right form token.
    let mut with_token = fields.to_vec();
    with_token.push(("csrf_token", &csrf));
    let resp = c.post_form(&action, &[("accept", "application/json")], &with_token).await.unwrap();
    assert_eq!(resp.status, 403);
    let body = resp.json().unwrap();
    assert_schema("errorGeneric", &body);
    assert_eq!(body["error"]["id"], "security_csrf_violation");
    // Cookie but no or a wrong form token: refused; a browser lands on the error page.
    let resp = jar.post_form(&c, &action, &[], &fields).await;
    assert_eq!(resp.status, 303);
    assert!(resp.header("location").unwrap().starts_with(&format!("{base}/ui/error?id=")));
    let mut wrong = fields.to_vec();
    wrong.push(("csrf_token", "forged"));
    let resp = jar.post_form(&c, &action, &[], &wrong).await;
    assert!(resp.header("location").unwrap().contains("/ui/error?id="));
    assert!(jar.cookie("ory_kratos_session").is_none());
    // Garbage bodies get a 400 in Ory's shape, no panic.
    let cookie = jar.header();
    let resp = c
        .request(
            Method::POST,
            &action,
            &[("accept", "application/json"), ("content-type", "application/json"), ("cookie", &cookie)],
            "{not json",
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 400);
    assert_schema("errorGeneric", &resp.json().unwrap());
    let resp = c
        .request(Method::POST, &format!("{base}/self-service/login?flow=nope"), &[("accept", "application/json")], "x")
        .await
        .unwrap();
    assert_eq!(resp.status, 400);
    assert_schema("errorGeneric", &resp.json().unwrap());
    standin.shutdown().await;
}

#[tokio::test]
async fn credentials_are_looked_up_in_kratos_order() {
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let base = standin.url();
    let c = client();
    let s = standin.create_session(DEMO_EMAIL).unwrap();
    let whoami = |headers: Vec<(&'static str, String)>| {
        let c = c.clone();
        let url = format!("{base}/sessions/whoami");
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            c.get(&url, &h).await.unwrap().status.as_u16()
        }
    };
    let cookie = s.cookie.clone();
    // X-Session-Token first: an invalid one wins over a valid cookie.
    assert_eq!(whoami(vec![("x-session-token", "bad".into()), ("cookie", cookie.clone())]).await, 401);
    // Then the cookie: a valid cookie wins over an invalid bearer token.
    assert_eq!(whoami(vec![("cookie", cookie.clone()), ("authorization", "Bearer bad".into())]).await, 200);
    assert_eq!(
        whoami(vec![("cookie", "ory_kratos_session=bad".into()), ("authorization", format!("Bearer {}", s.token))])
            .await,
        401
    );
    // Other cookies around it do not matter; other cookie names are not the session.
    assert_eq!(whoami(vec![("cookie", format!("a=b; {cookie}; c=d"))]).await, 200);
    assert_eq!(whoami(vec![("cookie", format!("ory_session_other={}", s.token))]).await, 401);
    // Bearer last, case-insensitive scheme.
    assert_eq!(whoami(vec![("authorization", format!("bearer {}", s.token))]).await, 200);
    // Expired and revoked sessions are not sessions.
    standin.expire_session(&s.token);
    assert_eq!(whoami(vec![("x-session-token", s.token.clone())]).await, 401);
    let s2 = standin.create_session(DEMO_EMAIL).unwrap();
    standin.revoke_session(&s2.token);
    assert_eq!(whoami(vec![("x-session-token", s2.token.clone())]).await, 401);
    standin.shutdown().await;
}

#[tokio::test]
async fn second_factor_is_required_for_aal2_identities() {
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let base = standin.url();
    standin.add_identity(IdentitySeed::new("mfa@example.com", "mfa-password").needs_aal2(true)).unwrap();
    let c = client();
    let mut jar = Jar::default();
    let resp =
        browser_login(&c, &mut jar, &base, "mfa@example.com", "mfa-password", Some("http://127.0.0.1:4000/members"))
            .await;
    assert_eq!(resp.status, 303);
    // After the password, the browser is sent on to the second factor.
    let next = resp.header("location").unwrap().to_owned();
    assert!(next.starts_with(&format!("{base}/self-service/login/browser?aal=aal2")), "{next}");

    let resp = jar.get(&c, &format!("{base}/sessions/whoami"), &[]).await;
    assert_eq!(resp.status, 403);
    let body = resp.json().unwrap();
    assert_schema("errorGeneric", &body);
    assert_schema("errorAuthenticatorAssuranceLevelNotSatisfied", &body);
    assert_eq!(body["error"]["id"], "session_aal2_required");
    assert_eq!(body["error"]["code"], 403);
    let redirect = format!("{base}/self-service/login/browser?aal=aal2");
    assert_eq!(body["redirect_browser_to"], redirect.as_str());
    assert_eq!(body["error"]["details"]["redirect_browser_to"], redirect.as_str());

    // The aal2 flow: a one-time-code form.
    let resp = jar.get(&c, &next, &[]).await;
    assert_eq!(resp.status, 303);
    let ui = resp.header("location").unwrap().to_owned();
    let flow_id = ui.rsplit('=').next().unwrap();
    let flow = jar.get(&c, &format!("{base}/self-service/login/flows?id={flow_id}"), &[]).await.json().unwrap();
    assert_schema("loginFlow", &flow);
    assert_eq!(flow["requested_aal"], "aal2");
    let html = jar.get(&c, &ui, &[]).await.text();
    let action = form_action(&html).unwrap();
    let csrf = input_value(&html, "csrf_token").unwrap();
    let resp =
        jar.post_form(&c, &action, &[], &[("csrf_token", &csrf), ("totp_code", "000000"), ("method", "totp")]).await;
    assert_eq!(resp.header("location").unwrap(), ui);
    let resp =
        jar.post_form(&c, &action, &[], &[("csrf_token", &csrf), ("totp_code", "123456"), ("method", "totp")]).await;
    assert_eq!(resp.status, 303);
    assert_eq!(resp.header("location").unwrap(), "http://127.0.0.1:4000/members");
    let resp = jar.get(&c, &format!("{base}/sessions/whoami"), &[]).await;
    assert_eq!(resp.status, 200);
    let session = resp.json().unwrap();
    assert_schema("session", &session);
    assert_eq!(session["authenticator_assurance_level"], "aal2");
    assert_eq!(session["authentication_methods"][1]["method"], "totp");

    // An aal2 flow without any session is refused.
    let resp =
        c.get(&format!("{base}/self-service/login/browser?aal=aal2"), &[("accept", "application/json")]).await.unwrap();
    assert_eq!(resp.status, 401);
    assert_eq!(resp.json().unwrap()["error"]["id"], "session_aal1_required");
    standin.shutdown().await;
}

#[tokio::test]
async fn an_extended_session_gets_a_fresh_cookie_on_whoami() {
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let base = standin.url();
    let c = client();
    let s = standin.create_session(DEMO_EMAIL).unwrap();
    let resp = c.get(&format!("{base}/sessions/whoami"), &[("cookie", &s.cookie)]).await.unwrap();
    assert!(resp.set_cookie("ory_kratos_session").is_none());
    let before = resp.json().unwrap()["expires_at"].clone();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(standin.extend_session(&s.token));
    let resp = c.get(&format!("{base}/sessions/whoami"), &[("cookie", &s.cookie)]).await.unwrap();
    assert_eq!(resp.status, 200);
    let set_cookie = resp.set_cookie("ory_kratos_session").expect("refreshed cookie");
    assert!(set_cookie.starts_with(&format!("{}; ", s.cookie)));
    let attrs = cookie_attributes(set_cookie);
    assert!(attrs.contains_key("httponly"));
    assert_ne!(resp.json().unwrap()["expires_at"], before);
    // Only once; and never for token-based calls.
    let resp = c.get(&format!("{base}/sessions/whoami"), &[("cookie", &s.cookie)]).await.unwrap();
    assert!(resp.set_cookie("ory_kratos_session").is_none());
    // The admin extension endpoint does the same.
    let resp =
        c.request(Method::PATCH, &format!("{base}/admin/sessions/{}/extend", s.session_id), &[], "").await.unwrap();
    assert_eq!(resp.status, 200);
    assert_schema("session", &resp.json().unwrap());
    let resp = c.get(&format!("{base}/sessions/whoami"), &[("x-session-token", &s.token)]).await.unwrap();
    assert!(resp.set_cookie("ory_kratos_session").is_none());
    let resp = c.get(&format!("{base}/sessions/whoami"), &[("cookie", &s.cookie)]).await.unwrap();
    assert!(resp.set_cookie("ory_kratos_session").is_some());
    standin.shutdown().await;
}

#[tokio::test]
async fn faults_can_be_injected_and_cleared() {
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let base = standin.url();
    let whoami = format!("{base}/sessions/whoami");
    let c = HttpClient::with_timeout(Duration::from_secs(5));
    let s = standin.create_session(DEMO_EMAIL).unwrap();
    let auth = [("x-session-token", s.token.as_str())];

    standin.set_fault(Fault::Status(503));
    let resp = c.get(&whoami, &auth).await.unwrap();
    assert_eq!(resp.status, 503);
    assert_schema("errorGeneric", &resp.json().unwrap());

    standin.set_fault(Fault::Garbage);
    let resp = c.get(&whoami, &auth).await.unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.header("content-type").unwrap().starts_with("application/json"));
    assert!(resp.json().is_err(), "a malformed body");

    standin.set_fault(Fault::Drop);
    assert!(c.get(&whoami, &auth).await.is_err(), "connection dropped");

    standin.set_fault(Fault::Delay(300));
    let t = Instant::now();
    let resp = c.get(&whoami, &auth).await.unwrap();
    assert_eq!(resp.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));

    standin.set_fault(Fault::None);
    assert_eq!(c.get(&whoami, &auth).await.unwrap().status, 200);

    // A counted rule on one path only.
    standin.add_fault_rule(FaultRule::new(Fault::Status(500)).on_path("/sessions/whoami").times(2));
    assert_eq!(c.get(&format!("{base}/health/alive"), &[]).await.unwrap().status, 200);
    assert_eq!(c.get(&whoami, &auth).await.unwrap().status, 500);
    assert_eq!(c.get(&whoami, &auth).await.unwrap().status, 500);
    assert_eq!(c.get(&whoami, &auth).await.unwrap().status, 200);

    // Latency for everything.
    standin.set_latency(Duration::from_millis(150));
    let t = Instant::now();
    assert_eq!(c.get(&whoami, &auth).await.unwrap().status, 200);
    assert!(t.elapsed() >= Duration::from_millis(150));
    standin.set_latency(Duration::ZERO);

    // Every whoami was counted, faulted or not; the requests were recorded.
    assert_eq!(standin.whoami_calls(), 9);
    let recorded = standin.requests();
    assert!(recorded.iter().all(|r| r.path() == "/sessions/whoami" || r.path() == "/health/alive"));
    assert_eq!(recorded.last().unwrap().header("X-Session-Token"), Some(s.token.as_str()));
    standin.shutdown().await;
}

#[tokio::test]
async fn project_mode_and_public_url() {
    let standin = Standin::start(StandinConfig {
        project_slug: Some("playful-pike-abc123".into()),
        public_url: Some("https://playful-pike-abc123.projects.oryapis.example/".into()),
        access_token: Some("ory_pat_secret".into()),
        dev: false,
        ..StandinConfig::default()
    })
    .await
    .unwrap();
    let public = "https://playful-pike-abc123.projects.oryapis.example";
    assert_eq!(standin.url(), public);
    assert_eq!(standin.cookie_name(), "ory_session_playful-pike-abc123");
    assert_eq!(standin.csrf_cookie_name(), format!("csrf_token_{}", common::sha256_hex(public)));
    let listen = standin.listen_url();
    let c = client();
    // Every URL uses the public origin, not where it listens.
    let resp = c.get(&format!("{listen}/self-service/login/browser"), &[]).await.unwrap();
    assert!(resp.header("location").unwrap().starts_with(&format!("{public}/ui/login?flow=")));
    let csrf = resp.set_cookie(&standin.csrf_cookie_name()).unwrap();
    assert!(cookie_attributes(csrf).contains_key("secure"), "not dev mode: Secure");
    // The whole login through the listening address, with the public URL in every link.
    let mut jar = Jar::default();
    let flow = jar
        .get(&c, &format!("{listen}/self-service/login/browser"), &[("accept", "application/json")])
        .await
        .json()
        .unwrap();
    assert!(flow["ui"]["action"].as_str().unwrap().starts_with(public));
    let action = flow["ui"]["action"].as_str().unwrap().replace(public, &listen);
    let csrf = jar.cookie(&standin.csrf_cookie_name()).unwrap().to_owned();
    let resp = jar
        .post_form(
            &c,
            &action,
            &[],
            &[("csrf_token", &csrf), ("identifier", DEMO_EMAIL), ("password", DEMO_PASSWORD), ("method", "password")],
        )
        .await;
    assert_eq!(resp.header("location").unwrap(), format!("{public}/ui/welcome"));
    let cookie = resp.set_cookie("ory_session_playful-pike-abc123").unwrap();
    assert!(cookie_attributes(cookie).contains_key("secure"));
    let session = jar.get(&c, &format!("{listen}/sessions/whoami"), &[]).await;
    assert_eq!(session.status, 200);
    let session = session.json().unwrap();
    assert!(session["identity"]["schema_url"].as_str().unwrap().starts_with(public));
    let logout = jar.get(&c, &format!("{listen}/self-service/logout/browser"), &[]).await.json().unwrap();
    assert!(logout["logout_url"].as_str().unwrap().starts_with(&format!("{public}/self-service/logout?token=")));

    // The console's slug lookup.
    let slug =
        c.get(&format!("{listen}/backoffice/token/slug"), &[("authorization", "Bearer ory_pat_secret")]).await.unwrap();
    assert_eq!(slug.status, 200);
    assert_eq!(slug.json().unwrap(), serde_json::json!({"slug": "playful-pike-abc123"}));
    for auth in ["Bearer wrong", "Basic b3J5OnBhdA=="] {
        let resp = c.get(&format!("{listen}/backoffice/token/slug"), &[("authorization", auth)]).await.unwrap();
        assert_eq!(resp.status, 401);
        assert_schema("errorGeneric", &resp.json().unwrap());
    }
    standin.shutdown().await;
}

#[tokio::test]
async fn the_command_line_reads_an_identities_file() {
    let dir = std::env::temp_dir().join(format!("ory-standin-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("identities.json");
    std::fs::write(
        &file,
        r#"[{"email":"seeded@example.com","password":"seeded-password","needs_aal2":false,
             "id":"0b0b0b0b-0000-4000-8000-000000000001","traits":{"name":{"first":"Ada"}}}]"#,
    )
    .unwrap();
    let cli = <StandinCli as clap::Parser>::try_parse_from([
        "ory-standin",
        "--port",
        "0",
        "--identities",
        file.to_str().unwrap(),
        "--no-demo-identity",
        "--session-lifespan",
        "1h",
        "--cookie-name",
        "my_session",
        "--fault",
        "status:502",
        "--fault-path",
        "/health",
    ])
    .unwrap();
    let config = cli.into_config().unwrap();
    assert_eq!(config.session_lifespan, Duration::from_secs(3600));
    let standin = Standin::start(config).await.unwrap();
    assert!(standin.identity_id(DEMO_EMAIL).is_none());
    assert_eq!(standin.identity_id("seeded@example.com").unwrap().to_string(), "0b0b0b0b-0000-4000-8000-000000000001");
    let c = client();
    assert_eq!(c.get(&format!("{}/health/alive", standin.url()), &[]).await.unwrap().status, 502);
    let mut jar = Jar::default();
    let resp = browser_login(&c, &mut jar, &standin.url(), "seeded@example.com", "seeded-password", None).await;
    assert_eq!(resp.status, 303);
    let max_age: i64 = cookie_attributes(resp.set_cookie("my_session").unwrap())["max-age"].parse().unwrap();
    assert!((3590..=3600).contains(&max_age));
    let session = jar.get(&c, &format!("{}/sessions/whoami", standin.url()), &[]).await.json().unwrap();
    assert_schema("session", &session);
    assert_eq!(session["identity"]["traits"]["name"]["first"], "Ada");
    standin.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);

    // --help says what it is.
    let help = <StandinCli as clap::CommandFactory>::command().render_long_help().to_string();
    assert!(help.contains("development and test tool"), "{help}");
    assert!(help.contains("demo@example.com"));
    // Bad flags are errors, not panics.
    let bad = <StandinCli as clap::Parser>::try_parse_from(["ory-standin", "--fault", "explode"]).unwrap();
    assert!(bad.into_config().is_err());
}
