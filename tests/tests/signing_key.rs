//! End to end in both hosts (the runner and a real Envoy): the signing key reaches the filter
//! through the VM's environment, never through its configuration, so Envoy's admin
//! `/config_dump` shows no private key; a missing or malformed key stops the proxy from serving,
//! saying why.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use common::host::{Filter, Proxy};
use http::StatusCode;
use ory_proxy::deployment::SIGNING_KEY_ENV;
use ory_proxy_tests::http::{HttpClient, bind_loopback, response, spawn_server};
use ory_proxy_tests::standin::{DEMO_EMAIL, Standin, StandinConfig};
use p256::pkcs8::DecodePrivateKey as _;

/// Pieces of the private key as they could appear anywhere: the PEM body lines and the JWK `d`.
fn secret_forms(pem: &str) -> Vec<String> {
    let secret = p256::SecretKey::from_pkcs8_pem(pem).expect("a PKCS#8 key");
    let mut forms: Vec<String> =
        pem.lines().filter(|line| !line.starts_with("-----") && line.len() > 16).map(str::to_string).collect();
    forms.push(B64URL.encode(secret.to_bytes()));
    forms.push("PRIVATE KEY".to_string());
    forms
}

both_hosts! {
    async fn the_key_reaches_the_filter_outside_its_configuration(host: Host) {
        let standin = Standin::start(StandinConfig::default()).await.unwrap();
        let app = spawn_server(bind_loopback(0).await.unwrap(), |request, _| async move {
            let authorization = request.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
            Ok(response(StatusCode::OK, "text/plain", authorization.to_string()))
        })
        .unwrap();
        let mut deployment = common::host::deployment(&format!("http://{}", app.local_addr()));
        deployment.ory_url = Some(url::Url::parse(&standin.url()).unwrap());
        deployment.protection.prefixes.push("/members".into());
        let key = deployment.signing_key.clone();
        let plan = deployment.plan().unwrap();
        let configuration = plan.filter_configuration();
        assert!(configuration.contains(&format!("\"signing_key_env\":\"{SIGNING_KEY_ENV}\"")), "{configuration}");
        for secret in secret_forms(&key) {
            assert!(!configuration.contains(&secret), "the filter configuration holds the key");
        }
        let proxy = Proxy::start(host, &deployment).await;
        let client = HttpClient::new();

        // The filter has the key: JWTs verify against the published JWKS.
        let session = standin.create_session(DEMO_EMAIL).unwrap();
        let answer = client.get(&proxy.url("/members"), &[("cookie", &session.cookie)]).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        let jwt = answer.text().strip_prefix("Bearer ").expect("the app got a JWT").to_string();
        let jwks = client.get(&proxy.url("/.ory/jwks.json"), &[]).await.unwrap().json().unwrap();
        common::jwt::verify(&jwks, &jwt);
        let public = p256::SecretKey::from_pkcs8_pem(&key).unwrap().public_key();
        assert_eq!(common::jwt::public_key(&jwks["keys"][0]), p256::ecdsa::VerifyingKey::from(&public), "our key");

        // Whoever reads Envoy's configuration reads the variable's name, not the key.
        if let Some(envoy) = proxy.envoy() {
            for path in ["/config_dump", "/config_dump?include_eds"] {
                let dump = envoy.admin_get(path).await.unwrap();
                assert!(dump.contains("envoy.filters.http.wasm"), "{path} shows the Wasm filter");
                assert!(dump.contains("host_env_keys") && dump.contains(SIGNING_KEY_ENV), "{path}");
                for secret in secret_forms(&key) {
                    assert!(!dump.contains(&secret), "{path} shows the private key ({secret})");
                }
                assert!(!dump.contains("\"d\":"), "{path} shows a private JWK");
            }
        }
        proxy.stop().await;
        app.shutdown().await;
        standin.shutdown().await;
    }

    async fn a_missing_or_malformed_key_variable_keeps_the_proxy_from_serving(host: Host) {
        let mut deployment = common::host::deployment("http://127.0.0.1:9");
        deployment.ory_url = Some(url::Url::parse("http://127.0.0.1:9").unwrap());
        deployment.protection.prefixes.push("/members".into());
        let plan = deployment.plan().unwrap();
        let broken = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWxvb2tpbmctYnV0LWJyb2tlbg==\n-----END PRIVATE KEY-----\n";
        let cases: [(&[(String, String)], &str); 3] = [
            (&[], "ORY_PROXY_SIGNING_KEY is not set"),
            (&[(SIGNING_KEY_ENV.to_string(), String::new())], "ORY_PROXY_SIGNING_KEY is not set"),
            (&[(SIGNING_KEY_ENV.to_string(), broken.to_string())], "ORY_PROXY_SIGNING_KEY does not hold a key"),
        ];
        for (environment, reason) in cases {
            let error = match Proxy::try_start_plan(host, &plan, Filter::Embedded, environment).await {
                Ok(proxy) => {
                    // Started after all: nothing protected may pass.
                    let answer = HttpClient::new().get(&proxy.url("/members"), &[]).await;
                    proxy.stop().await;
                    panic!("{host:?} started without a usable key; /members answered {:?}", answer.map(|a| a.status));
                }
                Err(error) => format!("{error:#}"),
            };
            assert!(error.contains("signing_key_env") && error.contains(reason), "{host:?}: {error}");
            assert!(!error.contains("c2VjcmV0LWxvb2tpbmc"), "the value is never shown: {error}");
            let connect = tokio::net::TcpStream::connect(plan.listen).await;
            assert!(connect.is_err(), "{host:?}: something serves {} without a key", plan.listen);
        }
    }
}
