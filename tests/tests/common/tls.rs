//! HTTPS in front of a plain-HTTP test server: a test CA (the runner's own `LocalCa` code, in a
//! temporary directory) and a TLS front that relays each connection to the server, so the Ory
//! stand-in can be reached as `https://localhost:<port>` the way Ory Network is.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ory_proxy::tls::LocalCa;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A CA made for one test, with its certificate in a file (for `--upstream-ca-file`).
pub struct TestCa {
    pub ca: LocalCa,
    dir: PathBuf,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let dir = std::env::temp_dir().join(format!("ory-proxy-test-ca-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = LocalCa::load_or_create(&dir).expect("a test CA");
        TestCa { ca, dir }
    }

    /// The CA certificate as a PEM file.
    pub fn cert_file(&self) -> PathBuf {
        self.ca.cert_path()
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// TLS on `127.0.0.1:<port>`, with a certificate from `ca` for `localhost` and `127.0.0.1`,
/// relaying the plain bytes to `backend`. HTTP/1.1 only, as the test servers speak.
pub async fn tls_front(ca: &TestCa, port: u16, backend: SocketAddr) {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let mut config = (*ca.ca.server_config(&names).expect("a serving certificate")).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends here, as it should.
                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                let Ok(mut plain) = TcpStream::connect(backend).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
}
