//! HTTPS end to end: one port answers TLS (HTTP/1.1 and HTTP/2 by ALPN) and plain HTTP, the
//! certificate chains to the local CA for every name the proxy answers to, a bad handshake costs
//! only its own connection, and `--no-https` refuses TLS.
//!
//! Runner only: HTTPS on the proxy's own port, from a local CA, is what the runner adds for a
//! laptop. Envoy terminates TLS with a `transport_socket` its operator configures, which
//! `envoy-config` does not write (see `envoy/README.md`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ory_proxy::deployment::{self, Deployment};
use ory_proxy::local;
use ory_proxy::proxy::ProxyHandle;
use ory_proxy::tls::LocalCa;
use ory_proxy_tests::http::{HttpClient, ServerHandle, bind_loopback, response, spawn_server};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// An app that says which scheme the proxy told it the browser used; it doubles as an Ory that
/// knows no sessions.
async fn upstream() -> ServerHandle {
    let listener = bind_loopback(0).await.unwrap();
    spawn_server(listener, |request, _| async move {
        if request.uri().path() == "/sessions/whoami" {
            return Ok(response(StatusCode::UNAUTHORIZED, "application/json", r#"{"error":{"code":401}}"#));
        }
        let proto = request.headers().get("x-forwarded-proto").and_then(|v| v.to_str().ok()).unwrap_or("-");
        Ok(response(StatusCode::OK, "text/plain", format!("{} {proto}", request.uri().path())))
    })
    .unwrap()
}

struct Setup {
    dir: PathBuf,
    ca: LocalCa,
    upstream: ServerHandle,
    proxy: ProxyHandle,
}

async fn setup(name: &str, https: bool) -> Setup {
    let dir = std::env::temp_dir().join(format!("ory-proxy-https-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = LocalCa::load_or_create(&dir).unwrap();
    let upstream = upstream().await;
    let url = url::Url::parse(&format!("http://{}", upstream.local_addr())).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap().serialize_pem();
    // The filter wants a real port in the public URL: take a free one.
    let port = ory_proxy_tests::free_port();
    let mut deployment = Deployment::new(url.clone(), SocketAddr::from(([127, 0, 0, 1], port)), key);
    deployment.ory_url = Some(url);
    let scheme = if https { "https" } else { "http" };
    deployment.public_url = url::Url::parse(&format!("{scheme}://localhost:{port}")).unwrap();
    let plan = deployment.plan().unwrap();
    let tls = https.then(|| ca.server_config(&deployment::proxy_names(&plan.listen, &plan.public_url)).unwrap());
    let proxy = local::start_with_tls(&plan, local::EMBEDDED_FILTER, tls).await.unwrap().spawn().unwrap();
    Setup { dir, ca, upstream, proxy }
}

impl Setup {
    async fn stop(self) {
        self.proxy.shutdown().await.unwrap();
        self.upstream.shutdown().await;
        std::fs::remove_dir_all(&self.dir).unwrap();
    }
}

fn connector(roots: &[&LocalCa], alpn: &[&[u8]]) -> TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for ca in roots {
        store.add(ca.cert_der().clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

async fn tls_connect(
    addr: SocketAddr,
    connector: &TlsConnector,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    connector.connect(ServerName::try_from(name.to_string()).unwrap(), tcp).await
}

/// One GET over an open TLS connection, in whichever HTTP version ALPN chose.
async fn get_over_tls(stream: tokio_rustls::client::TlsStream<TcpStream>, path: &str) -> (Version, StatusCode, String) {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(stream);
    let response = if h2 {
        let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
        tokio::spawn(connection);
        let request = Request::get(format!("https://localhost{path}")).body(Empty::<Bytes>::new()).unwrap();
        sender.send_request(request).await.unwrap()
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        let request = Request::get(path).header("host", "localhost").body(Empty::<Bytes>::new()).unwrap();
        sender.send_request(request).await.unwrap()
    };
    let version = response.version();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (version, status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn one_port_answers_https_in_both_versions_and_plain_http() {
    let s = setup("both", true).await;
    let addr = s.proxy.addr;

    // HTTP/1.1 over TLS, for the name browsers use.
    let stream = tls_connect(addr, &connector(&[&s.ca], &[b"http/1.1"]), "localhost").await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (version, status, body) = get_over_tls(stream, "/hello").await;
    assert_eq!((version, status), (Version::HTTP_11, StatusCode::OK));
    assert_eq!(body, "/hello https", "the app is told the browser used https");

    // HTTP/2 when the client offers it, and the IP addresses are in the certificate too.
    for name in ["localhost", "127.0.0.1", "::1"] {
        let stream = tls_connect(addr, &connector(&[&s.ca], &[b"h2", b"http/1.1"]), name).await.unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "{name}");
        let (version, status, body) = get_over_tls(stream, "/two").await;
        assert_eq!((version, status), (Version::HTTP_2, StatusCode::OK), "{name}");
        assert_eq!(body, "/two https");
    }

    // A client offering no ALPN at all still gets HTTP/1.1.
    let stream = tls_connect(addr, &connector(&[&s.ca], &[]), "localhost").await.unwrap();
    let (version, status, _) = get_over_tls(stream, "/plain-tls").await;
    assert_eq!((version, status), (Version::HTTP_11, StatusCode::OK));

    // Plain HTTP on the very same port.
    let answer = HttpClient::new().get(&format!("http://{addr}/hello"), &[]).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "/hello http");
    let answer = HttpClient::new().get(&format!("http://{addr}/.ory/jwks.json"), &[]).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn bad_and_silent_connections_cost_only_themselves() {
    let s = setup("bad", true).await;
    let addr = s.proxy.addr;

    // A client that does not trust our CA fails its handshake.
    let stranger_dir = s.dir.join("stranger");
    let stranger = LocalCa::load_or_create(&stranger_dir).unwrap();
    let error = tls_connect(addr, &connector(&[&stranger], &[b"h2"]), "localhost").await.unwrap_err();
    assert!(error.to_string().to_lowercase().contains("certificate"), "{error}");
    // A name the certificate does not carry is refused by the client, too.
    assert!(tls_connect(addr, &connector(&[&s.ca], &[]), "example.com").await.is_err());

    // Garbage that starts like a TLS record: the server drops the connection.
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]).await.unwrap();
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut buffer)).await;
    assert!(read.is_ok(), "the server closes a connection whose handshake failed");

    // A client that connects and says nothing does not hold up anyone else.
    let _silent = TcpStream::connect(addr).await.unwrap();
    let _half = {
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(&[0x16]).await.unwrap();
        half
    };

    let stream = tls_connect(addr, &connector(&[&s.ca], &[b"h2"]), "localhost").await.unwrap();
    let (_, status, body) = get_over_tls(stream, "/still-fine").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "/still-fine https"));
    let answer = HttpClient::new().get(&format!("http://{addr}/still-fine"), &[]).await.unwrap();
    assert_eq!(answer.text(), "/still-fine http");
    s.stop().await;
}

#[tokio::test]
async fn without_https_tls_is_refused_and_http_served() {
    let s = setup("off", false).await;
    let addr = s.proxy.addr;
    let refused = tls_connect(addr, &connector(&[&s.ca], &[b"h2"]), "localhost").await;
    assert!(refused.is_err(), "a proxy started without HTTPS must not complete a TLS handshake");
    let answer = HttpClient::new().get(&format!("http://{addr}/hello"), &[]).await.unwrap();
    assert_eq!(answer.text(), "/hello http");
    s.stop().await;
}

/// A plain connection's first bytes tell HTTP/2's preface from an HTTP/1 request. One whose first
/// bytes arrive apart, or whose method starts like the preface, is still served in the protocol
/// it speaks.
#[tokio::test]
async fn plain_connections_are_understood_however_their_first_bytes_arrive() {
    async fn answer_to(addr: SocketAddr, pieces: &[&[u8]]) -> Vec<u8> {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        for piece in pieces {
            stream.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut answer = vec![0; 4096];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await.expect("an answer");
        answer.truncate(read.unwrap());
        answer
    }
    let s = setup("first-bytes", false).await;
    let addr = s.proxy.addr;

    // The first byte alone could start the preface.
    let answer = answer_to(addr, &[b"P", b"UT /put HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\n\r\n"]).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    // A WebDAV method shares the preface's first two bytes.
    let answer = answer_to(addr, &[b"PROPFIND /dav HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\n\r\n"]).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    // The preface in two pieces, then an empty SETTINGS frame: the proxy answers with its own.
    let preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let settings: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
    let answer = answer_to(addr, &[&preface[..2], &[&preface[2..], settings].concat()]).await;
    assert!(answer.len() >= 9 && answer[3] == 4, "an HTTP/2 SETTINGS frame, not {answer:?}");
    let answer = answer_to(addr, &[&[preface, settings].concat()]).await;
    assert!(answer.len() >= 9 && answer[3] == 4, "an HTTP/2 SETTINGS frame, not {answer:?}");

    s.stop().await;
}
