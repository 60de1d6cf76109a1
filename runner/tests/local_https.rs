//! The `ory-proxy` binary as a developer runs it, in a temporary HOME: the first start makes the
//! local CA, trusts it in that HOME's NSS database (the real `certutil`), announces and opens
//! `https://localhost:<port>/`, and answers HTTPS with a certificate that chains to the CA; the
//! second start reuses the CA and installs nothing again; SIGTERM stops it cleanly; `doctor` sees
//! it trusted; and `cert uninstall` removes the CA from the database.
//!
//! Runner only: the local CA, the trust stores and opening the browser are what the runner adds
//! for a laptop; Envoy has none of them (see `envoy/README.md`).

#![cfg(target_os = "linux")]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const BINARY: &str = env!("CARGO_BIN_EXE_ory-proxy");

use ory_proxy_tests::free_port;

struct Machine {
    _app: std::net::TcpListener,
    app_addr: std::net::SocketAddr,
    dir: PathBuf,
    home: PathBuf,
    state: PathBuf,
    opened: PathBuf,
}

impl Machine {
    fn new(name: &str) -> Machine {
        let dir = std::env::temp_dir().join(format!("ory-proxy-local-https-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let home = dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        // A "browser" that writes down what it was asked to open.
        let opened = dir.join("opened.txt");
        let browser = dir.join("browser.sh");
        std::fs::write(&browser, format!("#!/bin/sh\necho \"$1\" >> '{}'\n", opened.display())).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).unwrap();
        let app = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Machine { app_addr: app.local_addr().unwrap(), _app: app, state: dir.join("state"), dir, home, opened }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BINARY);
        command
            .args(args)
            .env("HOME", &self.home)
            .env("ORY_PROXY_HOME", &self.state)
            .env("ORY_PROXY_TRUST_STORES", "nss")
            .env("BROWSER", self.dir.join("browser.sh"))
            .env_remove("PORT")
            .env_remove("ORY_SDK_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Starts `ory-proxy local` and reads its banner up to "Press Ctrl-C".
    fn start(&self, port: u16) -> (Child, String) {
        // Somewhere for the app and Ory to be (nothing here asks them anything).
        let (app, ory) = (format!("http://{}", self.app_addr), format!("http://{}", self.app_addr));
        let port = port.to_string();
        let mut child =
            self.command(&["local", &app, "--sdk-url", &ory, "--port", &port]).spawn().expect("the binary starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut banner = String::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !banner.contains("Press Ctrl-C") {
            assert!(Instant::now() < deadline, "no banner yet: {banner}");
            let mut line = String::new();
            if stdout.read_line(&mut line).unwrap() == 0 {
                let mut stderr = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
                panic!("ory-proxy exited early:\n{banner}\n{stderr}");
            }
            banner.push_str(&line);
        }
        // Keep draining stdout so the proxy never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        (child, banner)
    }

    fn nssdb(&self) -> String {
        format!("sql:{}", self.home.join(".pki/nssdb").display())
    }
}

/// Stops `ory-proxy` and returns what it logged.
fn stop(mut child: Child) -> String {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    let mut logged = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut logged).unwrap();
    assert!(status.success(), "SIGTERM ends ory-proxy cleanly: {status}\n{logged}");
    logged
}

fn certutil_list(db: &str) -> String {
    let output = Command::new("certutil")
        .args(["-L", "-d", db])
        .output()
        .expect("certutil is missing: `make setup-browser` installs libnss3-tools (or install it yourself)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// GET `path` over HTTPS (HTTP/1.1), trusting only `ca`.
async fn https_get(port: u16, ca: &Path, path: &str) -> String {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_file(ca).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("the certificate chains to the local CA");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn the_first_start_trusts_the_ca_in_the_home_nss_database_and_the_second_reuses_it() {
    let machine = Machine::new("run");
    let port = free_port();
    let (child, banner) = machine.start(port);
    let url = format!("https://localhost:{port}/");
    assert!(banner.contains(&format!("Open your app at   {url}")), "{banner}");
    assert!(banner.contains("(new)"), "the first run makes the CA: {banner}");
    assert!(banner.contains("trusted now by     NSS database"), "{banner}");
    assert!(banner.contains(".pki/nssdb"), "{banner}");

    let ca = machine.state.join("ca.pem");
    let listed = certutil_list(&machine.nssdb());
    let line = listed.lines().find(|l| l.starts_with("ory-proxy local CA")).unwrap_or_else(|| panic!("{listed}"));
    assert!(line.trim_end().ends_with("C,,"), "trusted as a CA for TLS servers: {line}");

    let answer = https_get(port, &ca, "/.ory/jwks.json").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"keys\""), "{answer}");

    // The browser was asked to open the proxy (in the background: give it a moment).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !machine.opened.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(std::fs::read_to_string(&machine.opened).unwrap().trim(), url);
    let logged = stop(child);
    let compiling = "compiling the filter for this machine, once";
    assert!(logged.contains(compiling), "a first start says why it takes seconds: {logged}");

    // Second run: same CA, found in place.
    let first_ca = std::fs::read(&ca).unwrap();
    let (child, banner) = machine.start(port);
    assert!(!banner.contains("(new)"), "{banner}");
    assert!(banner.contains("trusted by         NSS database"), "{banner}");
    assert!(!banner.contains("trusted now by"), "nothing installed twice: {banner}");
    assert_eq!(std::fs::read(&ca).unwrap(), first_ca);
    let answer = https_get(port, &ca, "/.ory/jwks.json").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let logged = stop(child);
    assert!(!logged.contains(compiling), "the second start maps the code the first compiled: {logged}");

    // `doctor` sees it trusted there (and changes nothing).
    let output = machine.command(&["doctor", "--sdk-url", &format!("http://{}", machine.app_addr)]).output().unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    let trusted = format!("ok    trusted by NSS database sql:{}", machine.home.join(".pki/nssdb").display());
    assert!(said.contains(&trusted), "{trusted:?} in\n{said}");

    // `cert path` and `cert uninstall`.
    let output = machine.command(&["cert", "path"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), ca.display().to_string());
    let output = machine.command(&["cert", "uninstall"]).output().unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{said}");
    assert!(said.contains("removed from       NSS database"), "{said}");
    assert!(!certutil_list(&machine.nssdb()).contains("ory-proxy local CA"));
    std::fs::remove_dir_all(&machine.dir).unwrap();
}
