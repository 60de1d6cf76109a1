//! A real browser, through each host. Headless Chromium, driven over WebDriver, opens the
//! protected page, logs in through `/.ory/`, sees the demo app greet the user from the verified
//! JWT, logs out, and is asked to log in again:
//! - through `ory-proxy local` over HTTPS, trusting the proxy's local CA only because the proxy
//!   installed it into the (temporary) HOME's NSS database — no flag that ignores certificate
//!   errors;
//! - through a real Envoy started from what `ory-proxy envoy-config` prints for the same flags,
//!   over plain HTTP (TLS and the local CA are the runner's alone).
//!
//! Needs `chromium`, `chromedriver`, `certutil` and Envoy; `make test` installs them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};
use ory_proxy_tests::demo_app::{DemoApp, DemoAppConfig};
use ory_proxy_tests::envoy::{EnvoyStart, RunningEnvoy};
use ory_proxy_tests::standin::{DEMO_EMAIL, DEMO_PASSWORD, Standin, StandinConfig};

/// Kills a child process when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

use ory_proxy_tests::free_port;

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not start listening on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tool(name: &str) -> PathBuf {
    let found = Command::new("sh").args(["-c", &format!("command -v {name}")]).output().unwrap();
    let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
    assert!(!path.is_empty(), "`{name}` is not installed: run `make setup-browser` (make test does)");
    PathBuf::from(path)
}

fn temp_home(name: &str) -> PathBuf {
    let home = std::env::temp_dir().join(format!("ory-proxy-browser-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    home
}

fn nss_has_ca(home: &Path) -> bool {
    let listing =
        Command::new(tool("certutil")).args(["-L", "-d"]).arg(format!("sql:{}/.pki/nssdb", home.display())).output();
    listing.is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("ory-proxy"))
}

/// The demo: the stand-in, and the demo app that trusts the proxy's JWKS on `proxy_port`.
async fn demo(proxy_port: u16) -> (ory_proxy_tests::RunningStandin, ory_proxy_tests::RunningDemoApp) {
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let app = DemoApp::start(DemoAppConfig {
        port: 0,
        jwks_url: format!("http://127.0.0.1:{proxy_port}/.ory/jwks.json"),
        issuer: standin.url(),
        proxy_url: Some(format!("http://127.0.0.1:{proxy_port}")),
        ..DemoAppConfig::default()
    })
    .await
    .unwrap();
    (standin, app)
}

/// One browser at a time: two Chromiums on two cores make both slow enough to time out.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn chromium_logs_in_and_out_through_the_runner_over_https() {
    let _browser = ONE_BROWSER.lock().await;
    let home = temp_home("runner");
    let proxy_port = free_port();
    let (standin, app) = demo(proxy_port).await;
    let mut proxy = Reaped(
        Command::new(env!("CARGO_BIN_EXE_ory-proxy"))
            .args(["local", &format!("http://{}", app.local_addr()), "--port", &proxy_port.to_string()])
            .args(["--sdk-url", &standin.url(), "--protect-path-prefix", "/members", "--no-open"])
            .env("HOME", &home)
            .env("ORY_PROXY_HOME", home.join(".config/ory-proxy"))
            // Only the NSS database of this HOME: a test must not touch the machine's trust store.
            .env("ORY_PROXY_TRUST_STORES", "nss")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(proxy_port, &mut proxy.0, "ory-proxy");
    // The port is bound first (a busy port fails fast); the CA is installed right after.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !nss_has_ca(&home) {
        assert!(Instant::now() < deadline, "ory-proxy installed its CA into $HOME/.pki/nssdb");
        std::thread::sleep(Duration::from_millis(200));
    }
    let result = log_in_and_out(&home, &format!("https://localhost:{proxy_port}")).await;
    drop(proxy);
    app.shutdown().await;
    standin.shutdown().await;
    let _ = std::fs::remove_dir_all(&home);
    result.expect("the browser flow through the runner");
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_logs_in_and_out_through_envoy() {
    let _browser = ONE_BROWSER.lock().await;
    let home = temp_home("envoy");
    let proxy_port = free_port();
    let admin_port = free_port();
    let (standin, app) = demo(proxy_port).await;
    let module = home.join("ory_proxy_filter.wasm");
    std::fs::write(&module, ory_proxy::local::EMBEDDED_FILTER).unwrap();
    let config = home.join("envoy.yaml");
    let made = Command::new(env!("CARGO_BIN_EXE_ory-proxy"))
        .args(["envoy-config", &format!("http://{}", app.local_addr()), "--port", &proxy_port.to_string()])
        .args(["--sdk-url", &standin.url(), "--protect-path-prefix", "/members"])
        .args(["--module-path", module.to_str().unwrap(), "--admin-port", &admin_port.to_string()])
        .arg("-o")
        .arg(&config)
        .env("ORY_PROXY_HOME", home.join(".config/ory-proxy"))
        .env_remove("ORY_PROJECT_API_KEY")
        .output()
        .unwrap();
    assert!(made.status.success(), "envoy-config: {}", String::from_utf8_lossy(&made.stderr));
    // The key is not in the bootstrap: Envoy gets it in its environment, from the key file
    // envoy-config used (the one kept in $ORY_PROXY_HOME), as the bootstrap's header says.
    let key = std::fs::read_to_string(home.join(".config/ory-proxy").join(ory_proxy::home::SIGNING_KEY_FILE)).unwrap();
    let envoy = RunningEnvoy::start(EnvoyStart {
        bootstrap: std::fs::read_to_string(&config).unwrap(),
        admin_port,
        listen: Some(SocketAddr::from(([127, 0, 0, 1], proxy_port))),
        concurrency: 2,
        env: vec![(ory_proxy::deployment::SIGNING_KEY_ENV.to_string(), key)],
        cpu_list: None,
        log_level: None,
    })
    .await
    .unwrap_or_else(|error| panic!("{error:#}"));
    let result = log_in_and_out(&home, &format!("http://localhost:{proxy_port}")).await;
    let log = envoy.log_tail(40);
    envoy.shutdown();
    app.shutdown().await;
    standin.shutdown().await;
    let _ = std::fs::remove_dir_all(&home);
    if let Err(error) = &result {
        panic!("the browser flow through Envoy: {error}\nEnvoy's log:\n{log}");
    }
}

/// Chromium on the proxy at `origin`: the protected page sends it to Ory's login on the proxy's
/// origin; after logging in the demo app greets the user from the JWT; after logging out the
/// protected page asks for a login again.
async fn log_in_and_out(home: &Path, origin: &str) -> Result<(), fantoccini::error::CmdError> {
    let chromium = tool("chromium");
    let chromedriver = tool("chromedriver");
    let driver_port = free_port();
    let mut driver = Reaped(
        Command::new(&chromedriver)
            .arg(format!("--port={driver_port}"))
            .env("HOME", home)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(driver_port, &mut driver.0, "chromedriver");

    let profile = home.join("chromium-profile");
    let capabilities = serde_json::json!({
        "goog:chromeOptions": {
            "binary": chromium,
            // No --ignore-certificate-errors: the certificate must be trusted for real.
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                format!("--user-data-dir={}", profile.display()),
            ],
        }
    });
    let capabilities = capabilities.as_object().unwrap().clone();
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .expect("chromedriver session");

    let result = async {
        let members = format!("{origin}/members");
        browser.goto(&members).await?;
        // Sent to the stand-in's login page, on the proxy's origin.
        let url = browser.current_url().await?;
        assert!(url.as_str().starts_with(&format!("{origin}/.ory/")), "login page: {url}");
        browser.find(Locator::Css("input[name=identifier]")).await?.send_keys(DEMO_EMAIL).await?;
        browser.find(Locator::Css("input[name=password]")).await?.send_keys(DEMO_PASSWORD).await?;
        browser.find(Locator::Css("button[type=submit]")).await?.click().await?;

        wait_until(&browser, |url, _| url.starts_with(&members)).await?;
        let page = browser.source().await?;
        assert!(page.contains(DEMO_EMAIL), "the demo app greets the user from the JWT: {page}");

        // Log out, then the protected page asks for a login again.
        browser.find(Locator::LinkText("Log out")).await?.click().await?;
        wait_until(&browser, |_, page| !page.contains(DEMO_EMAIL)).await?;
        browser.goto(&members).await?;
        let url = browser.current_url().await?;
        assert!(url.path().starts_with("/.ory/"), "asked to log in again: {url}");
        Ok::<_, fantoccini::error::CmdError>(())
    }
    .await;
    let _ = browser.close().await;
    drop(driver);
    result
}

/// Polls until the page satisfies `done` (redirects and form posts take a moment).
async fn wait_until(
    browser: &fantoccini::Client,
    done: impl Fn(&str, &str) -> bool,
) -> Result<(), fantoccini::error::CmdError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = browser.current_url().await?.to_string();
        let page = browser.source().await?;
        if done(&url, &page) {
            return Ok(());
        }
        assert!(Instant::now() < deadline, "the page never got there: {url}\n{page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
