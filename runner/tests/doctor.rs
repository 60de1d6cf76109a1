//! `ory-proxy doctor` as a user runs it, in a home of its own: a machine ready for `ory-proxy
//! local` passes (exit 0), and one with a key others can read, a taken port, an Ory URL that is
//! not Ory and an untrusted CA gets one line for each, with what to do, and exit 1.
//!
//! Runner only: the checks are of the machine the runner runs on.

#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use http::StatusCode;
use ory_proxy_tests::http::{bind_loopback, response, spawn_server};
use ory_proxy_tests::standin::{Standin, StandinConfig};

const BINARY: &str = env!("CARGO_BIN_EXE_ory-proxy");

fn home(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ory-proxy-doctor-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("home")).unwrap();
    dir
}

fn ory_proxy(dir: &Path, args: &[&str]) -> Output {
    Command::new(BINARY)
        .args(args)
        .env("HOME", dir.join("home"))
        .env("ORY_PROXY_HOME", dir.join("state"))
        .env("ORY_PROXY_TRUST_STORES", "nss")
        .env_remove("ORY_SDK_URL")
        .env_remove("PORT")
        .output()
        .expect("the binary runs")
}

fn free_port() -> String {
    ory_proxy_tests::free_port().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_machine_passes() {
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let dir = home("ready");
    assert!(ory_proxy(&dir, &["key", "rotate"]).status.success());
    let output = ory_proxy(&dir, &["doctor", "--sdk-url", &standin.url(), "--port", &free_port()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    for expected in [
        "note  no local CA yet",
        "ok    signing key",
        "is free",
        "answers whoami as Ory does",
        "ok    the clock agrees with Ory's",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in\n{stdout}");
    }
    assert!(!stdout.contains("FAIL"), "{stdout}");
    standin.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_problem_gets_a_line_with_what_to_do_and_a_failing_exit() {
    let not_ory = spawn_server(bind_loopback(0).await.unwrap(), |_, _| async {
        Ok(response(StatusCode::OK, "text/html", "<h1>my app</h1>".to_string()))
    })
    .unwrap();
    let dir = home("broken");
    assert!(ory_proxy(&dir, &["key", "rotate"]).status.success());
    let key = dir.join("state").join(ory_proxy::home::SIGNING_KEY_FILE);
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(ory_proxy(&dir, &["cert", "path"]).status.success(), "makes the CA, trusts it nowhere");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let output =
        ory_proxy(&dir, &["doctor", "--sdk-url", &format!("http://{}", not_ory.local_addr()), "--port", &port]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stdout}");
    assert!(stderr.contains("4 things to fix"), "{stderr}\n{stdout}");
    for expected in [
        "does not trust the local CA: there is no database yet — run `ory-proxy local` once",
        "can be read by others (mode 644) — chmod 600",
        &format!("127.0.0.1:{port} is in use — stop what listens there"),
        "answered whoami with 200 OK, not Ory's 401 error — give the public URL",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in\n{stdout}");
    }
    assert_eq!(stdout.lines().filter(|line| line.starts_with("FAIL")).count(), 4, "{stdout}");
    drop(taken);
    not_ory.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
