//! A 100 MB download streams through the proxy with bounded memory. Alone in its test binary so
//! that the process's memory is the proxy's and this download's only.

use http_body_util::BodyExt as _;
use ory_proxy::local;
use ory_proxy::plan::{self, Deployment};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

const SIZE: usize = 100 << 20;

/// Resident memory of this process, from /proc (Linux).
fn resident_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test]
async fn a_100_mb_download_streams_with_bounded_memory() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request).await.unwrap();
        let head =
            format!("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {SIZE}\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![7u8; 64 << 10];
        for _ in 0..SIZE / chunk.len() {
            if stream.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap().serialize_pem();
    let url = url::Url::parse(&format!("http://{upstream}")).unwrap();
    let mut deployment = Deployment::new(url, free_local_address(), key);
    deployment.ory_url = Some(url::Url::parse("http://127.0.0.1:9").unwrap());
    let proxy = local::start(&plan::plan(&deployment).unwrap(), local::EMBEDDED_FILTER).await.unwrap().spawn().unwrap();

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let request =
        http::Request::get(format!("http://{}/big.bin", proxy.addr)).body(http_body_util::Empty::new()).unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(response.headers()["content-length"], SIZE.to_string().as_str());
    let before = resident_bytes();
    let mut peak = before;
    let mut received = 0usize;
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received += data.len();
        }
        peak = peak.max(resident_bytes());
    }
    assert_eq!(received, SIZE);
    let growth = peak.saturating_sub(before);
    assert!(growth < 32 << 20, "memory grew by {} MiB while 100 MiB went through", growth >> 20);
    proxy.shutdown().await.unwrap();
}

/// A free loopback address: the plan needs the proxy's real port for its public URL.
fn free_local_address() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}
