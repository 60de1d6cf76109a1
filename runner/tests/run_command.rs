//! The `ory-proxy` binary's `run` and `local --filter`, as a filter author starts them: what a
//! module other than the built-in one is (and is not) handed; and what `local` logs of a JWT too
//! large for common servers. Runner only: these are the runner's commands and log; what a filter
//! sees in both hosts is in `tests/tests/run.rs`, Envoy's log of the JWT advice in
//! `tests/tests/sessions.rs`.

use std::process::{Command, Output, Stdio};

const BINARY: &str = env!("CARGO_BIN_EXE_ory-proxy");

/// The built-in filter as a file, standing in for a module of somebody else's.
fn module(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("ory-proxy-run-command-{name}-{}.wasm", std::process::id()));
    std::fs::write(&path, ory_proxy::local::EMBEDDED_FILTER).unwrap();
    path
}

fn free_port() -> String {
    ory_proxy_tests::free_port().to_string()
}

/// Runs the binary to its end (it must end by itself), in a home of its own, with the signing
/// key variable set in its own environment as Envoy's would be.
fn run(name: &str, args: &[&str]) -> Output {
    let home = std::env::temp_dir().join(format!("ory-proxy-run-command-{name}-{}", std::process::id()));
    let mut child = Command::new(BINARY)
        .args(args)
        .env("ORY_PROXY_HOME", &home)
        .env(ory_proxy::deployment::SIGNING_KEY_ENV, include_str!("../../envoy/demo-signing-key.pem"))
        .env_remove("ORY_SDK_URL")
        .env_remove("PORT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("ory-proxy {args:?} did not end: {:?}", child.wait_with_output().unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn run_hands_a_module_nothing_of_ours_not_even_the_key_in_its_own_environment() {
    let module = module("run");
    let filter = module.to_str().unwrap();
    let common = ["run", "--filter", filter, "--upstream", "http://127.0.0.1:9", "--no-https", "--no-open"];
    // Our filter, asked to read the key from the variable the runner's own process has: the VM's
    // environment is only what --vm-env gives, so it finds no key and refuses to start.
    let config = r#"{"signing_key_env":"ORY_PROXY_SIGNING_KEY"}"#;
    let port = free_port();
    let output = run("key", &[&common[..], &["--port", &port, "--filter-config", config]].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("the filter rejected its configuration"), "{stderr}");
    assert!(stderr.contains("ORY_PROXY_SIGNING_KEY"), "the filter says which key it lacks: {stderr}");
    // Without a configuration it is handed none (not ory-proxy's).
    let port = free_port();
    let output = run("empty", &[&common[..], &["--port", &port]].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("invalid filter configuration"), "{stderr}");
    std::fs::remove_file(&module).unwrap();
}

#[test]
fn local_warns_that_a_module_given_with_filter_gets_the_key() {
    let module = module("local");
    let port = free_port();
    // A port that is taken makes `local` stop after loading the filter, with the warning given.
    let taken = std::net::TcpListener::bind(format!("127.0.0.1:{port}")).unwrap();
    let args = ["local", "http://127.0.0.1:9", "--filter", module.to_str().unwrap(), "--port", &port];
    let output = run("warn", &[&args[..], &["--no-https", "--no-open", "--sdk-url", "http://127.0.0.1:9"]].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is handed ory-proxy's configuration and the JWT signing key"), "{stderr}");
    assert!(stderr.contains("`ory-proxy run`"), "the warning says what to use instead: {stderr}");
    drop(taken);
    std::fs::remove_file(&module).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_beyond_the_warning_size_is_logged_with_advice() {
    use ory_proxy_tests::standin::{DEMO_EMAIL, Standin, StandinConfig};
    use std::io::{BufRead as _, BufReader};

    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let app =
        ory_proxy_tests::http::spawn_server(ory_proxy_tests::http::bind_loopback(0).await.unwrap(), |_, _| async {
            Ok(ory_proxy_tests::http::response(http::StatusCode::OK, "text/plain", "app".to_string()))
        })
        .unwrap();
    let port = free_port();
    let home = std::env::temp_dir().join(format!("ory-proxy-run-command-jwt-size-{}", std::process::id()));
    let mut child = Command::new(BINARY)
        .args(["local", &format!("http://{}", app.local_addr()), "--sdk-url", &standin.url(), "--port", &port])
        .args(["--jwt-warn-bytes", "100", "--no-https", "--no-open", "--protect-path-prefix", "/members"])
        .env("ORY_PROXY_HOME", &home)
        .env_remove("ORY_SDK_URL")
        .env_remove("PORT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (lines, said) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let session = standin.create_session(DEMO_EMAIL).unwrap();
    let url = format!("http://127.0.0.1:{port}/members");
    let client = ory_proxy_tests::http::HttpClient::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let answer = loop {
        match client.get(&url, &[("cookie", &session.cookie)]).await {
            Ok(answer) => break answer,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            Err(error) => panic!("the proxy did not start: {error}"),
        }
    };
    assert_eq!(answer.status, http::StatusCode::OK, "the request is still served");
    let advice = loop {
        let line = said.recv_timeout(std::time::Duration::from_secs(10)).expect("the proxy logs the advice");
        if line.contains("(jwt.warn_bytes)") {
            break line;
        }
    };
    assert!(advice.contains("more than 100") && advice.contains("--jwt-session-claim minimal"), "{advice}");
    child.kill().unwrap();
    let _ = child.wait();
    app.shutdown().await;
    standin.shutdown().await;
    let _ = std::fs::remove_dir_all(&home);
}
