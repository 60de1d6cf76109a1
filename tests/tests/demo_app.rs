//! The demo app against a stand-in proxy: a tiny in-test server that serves `/.ory/jwks.json`
//! (and the logout flow), with JWTs signed here with a P-256 key the way ory-proxy signs them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use http::StatusCode;
use ory_proxy_tests::demo_app::{DemoApp, DemoAppConfig, RunningDemoApp};
use ory_proxy_tests::http::{HttpClient, ServerHandle, bind_loopback, response, spawn_server};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use serde_json::{Value, json};

const ISSUER: &str = "http://127.0.0.1:4433";

struct Key {
    kid: String,
    sk: SigningKey,
}

impl Key {
    fn new(kid: &str) -> Key {
        loop {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).unwrap();
            if let Ok(sk) = SigningKey::from_slice(&bytes) {
                return Key { kid: kid.to_owned(), sk };
            }
        }
    }

    fn jwk(&self) -> Value {
        let point = self.sk.verifying_key().to_sec1_point(false);
        let bytes = point.as_bytes();
        assert_eq!(bytes.len(), 65);
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": B64.encode(&bytes[1..33]), "y": B64.encode(&bytes[33..65]),
        })
    }

    /// An ES256 JWS: header `{"alg":"ES256","kid":…,"typ":"JWT"}`, signature raw R || S.
    fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
        let input = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
        let sig: Signature = self.sk.sign(input.as_bytes());
        let raw = sig.to_bytes();
        assert_eq!(raw.len(), 64);
        format!("{input}.{}", B64.encode(raw))
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims(email: &str, iss: &str, exp_offset: i64) -> Value {
    let now = now() as i64;
    json!({
        "sub": "c4d24c01-feba-4213-858b-262c8d427f8c",
        "iss": iss,
        "iat": now,
        "nbf": now,
        "exp": now + exp_offset,
        "jti": "5b4bcd0e-6cf4-4c1b-8bcb-0e8a7e0fd0f3",
        "session": {
            "id": "0cd29640-3b64-419d-93b0-8c9e84c2090d",
            "active": true,
            "authenticator_assurance_level": "aal1",
            "identity": {
                "id": "c4d24c01-feba-4213-858b-262c8d427f8c",
                "traits": {"email": email}
            }
        }
    })
}

/// The proxy's part: JWKS and the logout flow.
struct FakeProxy {
    server: ServerHandle,
    keys: Arc<Mutex<Vec<Value>>>,
}

impl FakeProxy {
    async fn start(keys: Vec<Value>) -> FakeProxy {
        let keys = Arc::new(Mutex::new(keys));
        let served = Arc::clone(&keys);
        let listener = bind_loopback(0).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = spawn_server(listener, move |req, _| {
            let keys = served.lock().unwrap().clone();
            async move {
                Ok(match req.uri().path() {
                    "/.ory/jwks.json" => {
                        response(StatusCode::OK, "application/json", json!({"keys": keys}).to_string())
                    }
                    "/.ory/self-service/logout/browser" => {
                        let has_session = req
                            .headers()
                            .get("cookie")
                            .and_then(|c| c.to_str().ok())
                            .is_some_and(|c| c.contains("ory_kratos_session=abc"));
                        if has_session {
                            response(
                                StatusCode::OK,
                                "application/json",
                                json!({
                                    "logout_url": format!("http://127.0.0.1:{port}/.ory/self-service/logout?token=lo1"),
                                    "logout_token": "lo1"
                                })
                                .to_string(),
                            )
                        } else {
                            response(StatusCode::UNAUTHORIZED, "application/json", "{}")
                        }
                    }
                    _ => response(StatusCode::NOT_FOUND, "text/plain", "nope"),
                })
            }
        })
        .unwrap();
        FakeProxy { server, keys }
    }

    fn url(&self) -> String {
        format!("http://{}", self.server.local_addr())
    }
}

async fn start_app(proxy: &FakeProxy) -> RunningDemoApp {
    DemoApp::start(DemoAppConfig {
        port: 0,
        jwks_url: format!("{}/.ory/jwks.json", proxy.url()),
        issuer: ISSUER.to_owned(),
        ..DemoAppConfig::default()
    })
    .await
    .unwrap()
}

async fn get(app: &RunningDemoApp, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    let resp = HttpClient::new().get(&format!("{}{path}", app.url()), &headers).await.unwrap();
    (resp.status.as_u16(), resp.text())
}

#[tokio::test]
async fn greets_the_user_of_a_valid_token() {
    let key = Key::new("key-1");
    let proxy = FakeProxy::start(vec![key.jwk()]).await;
    let app = start_app(&proxy).await;
    let token = key.sign(&claims("ada@example.com", ISSUER, 60));

    let (status, html) = get(&app, "/", Some(&token)).await;
    assert_eq!(status, 200);
    assert!(html.contains("Hello, ada@example.com!"), "{html}");
    assert!(html.contains("href=\"/logout\""));
    let (status, html) = get(&app, "/members/area", Some(&token)).await;
    assert_eq!(status, 200);
    assert!(html.contains("Members area"));
    let (status, body) = get(&app, "/api/me", Some(&token)).await;
    assert_eq!(status, 200);
    let me: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(me["email"], "ada@example.com");
    assert_eq!(me["logged_in"], true);

    // Without a token: not logged in, with login links through /.ory/.
    let (status, html) = get(&app, "/", None).await;
    assert_eq!(status, 200);
    assert!(html.contains("You are not logged in"));
    assert!(html.contains("href=\"/.ory/self-service/login/browser\""));
    assert!(!html.contains("refused"));
    let (status, _) = get(&app, "/members", None).await;
    assert_eq!(status, 401);
    app.shutdown().await;
    proxy.server.shutdown().await;
}

#[tokio::test]
async fn refuses_bad_tokens_and_says_why() {
    let key = Key::new("key-1");
    let other = Key::new("key-1"); // same kid, different key: a forged signature
    let proxy = FakeProxy::start(vec![key.jwk()]).await;
    let app = start_app(&proxy).await;

    let cases = [
        (key.sign(&claims("ada@example.com", ISSUER, -120)), "expired"),
        (key.sign(&claims("ada@example.com", "https://evil.example", 60)), "issued by someone else"),
        (key.sign(&claims("ada@example.com", "http://127.0.0.1:4433/", 60)), "issued by someone else"),
        (other.sign(&claims("ada@example.com", ISSUER, 60)), "signature does not verify"),
        (Key::new("unknown").sign(&claims("ada@example.com", ISSUER, 60)), "no key with kid"),
        ("not.a.jwt".to_owned(), "malformed"),
    ];
    for (token, why) in &cases {
        let (status, html) = get(&app, "/", Some(token)).await;
        assert_eq!(status, 200);
        assert!(html.contains("You are not logged in"), "{why}: {html}");
        assert!(html.contains(why), "expected {why:?} in {html}");
        let (status, html) = get(&app, "/members", Some(token)).await;
        assert_eq!(status, 401, "{why}");
        assert!(html.contains(why));
    }
    // `alg: none` and HS256 tokens are refused outright.
    let none = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(claims("ada@example.com", ISSUER, 60).to_string())
    );
    let (_, html) = get(&app, "/", Some(&none)).await;
    assert!(html.contains("You are not logged in"));
    let hs = format!(
        "{}.{}.c2ln",
        B64.encode(r#"{"alg":"HS256","typ":"JWT","kid":"key-1"}"#),
        B64.encode(claims("ada@example.com", ISSUER, 60).to_string())
    );
    let (_, html) = get(&app, "/", Some(&hs)).await;
    assert!(html.contains("not ES256"), "{html}");
    // A non-bearer Authorization header.
    let resp = HttpClient::new().get(&format!("{}/", app.url()), &[("authorization", "Basic YTpi")]).await.unwrap();
    assert!(resp.text().contains("does not carry a Bearer token"));
    app.shutdown().await;
    proxy.server.shutdown().await;
}

#[tokio::test]
async fn escapes_user_data_and_picks_up_new_keys() {
    let key = Key::new("key-1");
    let proxy = FakeProxy::start(vec![key.jwk()]).await;
    let app = start_app(&proxy).await;
    let token = key.sign(&claims("<script>alert(1)</script>@example.com", ISSUER, 60));
    let (_, html) = get(&app, "/", Some(&token)).await;
    assert!(!html.contains("<script>alert(1)</script>"));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;@example.com"));

    // A key the app has not seen: refused, then accepted once the JWKS has it (rotation).
    let rotated = Key::new("key-2");
    let token = rotated.sign(&claims("ada@example.com", ISSUER, 60));
    let (_, html) = get(&app, "/", Some(&token)).await;
    assert!(html.contains("no key with kid"));
    proxy.keys.lock().unwrap().push(rotated.jwk());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, html) = get(&app, "/", Some(&token)).await;
    assert!(html.contains("Hello, ada@example.com!"), "{html}");
    app.shutdown().await;
    proxy.server.shutdown().await;
}

#[tokio::test]
async fn logs_out_through_the_proxy() {
    let key = Key::new("key-1");
    let proxy = FakeProxy::start(vec![key.jwk()]).await;
    let app = start_app(&proxy).await;
    let c = HttpClient::new();
    let resp = c.get(&format!("{}/logout", app.url()), &[("cookie", "ory_kratos_session=abc; other=1")]).await.unwrap();
    assert_eq!(resp.status, 303);
    // The browser stays on the origin it uses: only the logout URL's path and query are kept.
    assert_eq!(resp.header("location").unwrap(), "/.ory/self-service/logout?token=lo1");
    // Not logged in: back home.
    let resp = c.get(&format!("{}/logout", app.url()), &[]).await.unwrap();
    assert_eq!(resp.status, 303);
    assert_eq!(resp.header("location").unwrap(), "/");
    app.shutdown().await;

    // The JWKS being unreachable is a reason, not a crash.
    let app = DemoApp::start(DemoAppConfig {
        jwks_url: "http://127.0.0.1:9/.ory/jwks.json".to_owned(),
        ..DemoAppConfig::default()
    })
    .await
    .unwrap();
    let token = key.sign(&claims("ada@example.com", ISSUER, 60));
    let (status, html) = get(&app, "/", Some(&token)).await;
    assert_eq!(status, 200);
    assert!(html.contains("JWKS could not be fetched"), "{html}");
    app.shutdown().await;
    proxy.server.shutdown().await;
}

#[test]
fn the_command_line_has_the_documented_defaults() {
    use clap::Parser;
    let cli = ory_proxy_tests::demo_app::DemoAppCli::try_parse_from(["demo-app"]).unwrap();
    let config = cli.into_config();
    assert_eq!(config.port, 3000);
    assert_eq!(config.jwks_url, "http://127.0.0.1:4000/.ory/jwks.json");
    assert_eq!(config.issuer, "http://127.0.0.1:4433");
}
