//! A 100 MB download streams through the proxy with bounded memory, in the runner and in Envoy.
//! Alone in its test binary so that, for the runner, the process's memory is the proxy's and this
//! download's only (the two hosts run one after the other, in one test).

mod common;

use common::host::{Host, Proxy};

use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

const SIZE: usize = 100 << 20;

/// Both hosts in one test, one after the other: the runner's memory is this process's, and an
/// Envoy download running beside it would be counted too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_download_streams_with_bounded_memory() {
    download_through(Host::Runner).await;
    download_through(Host::Envoy).await;
}

async fn download_through(host: Host) {
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
    let mut deployment = common::host::deployment(&format!("http://{upstream}"));
    deployment.ory_url = Some(url::Url::parse("http://127.0.0.1:9").unwrap());
    let proxy = Proxy::start(host, &deployment).await;

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let request =
        http::Request::get(format!("http://{}/big.bin", proxy.addr)).body(http_body_util::Empty::new()).unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(response.headers()["content-length"], SIZE.to_string().as_str());
    let before = proxy.resident_bytes();
    let mut peak = before;
    let mut received = 0usize;
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received += data.len();
        }
        peak = peak.max(proxy.resident_bytes());
    }
    assert_eq!(received, SIZE);
    let growth = peak.saturating_sub(before);
    assert!(growth < 32 << 20, "{host:?}: memory grew by {} MiB while 100 MiB went through", growth >> 20);
    proxy.stop().await;
}
