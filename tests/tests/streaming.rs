//! What must stream through the proxy rather than be buffered, in the runner and in Envoy:
//! WebSockets, server-sent events, and large downloads (the 100 MB one lives in `download.rs`,
//! alone in its process, so its memory can be measured).

mod common;

use std::time::Duration;

use common::host::{Host, Proxy};
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::BodyExt as _;
use ory_proxy_tests::standin::{Standin, StandinConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// A proxy with the full filter (Ory configured, `/members` protected) in front of `upstream`.
async fn proxy_for(host: Host, upstream: std::net::SocketAddr, ory: &str) -> Proxy {
    let mut deployment = common::host::deployment(&format!("http://{upstream}"));
    deployment.ory_url = Some(url::Url::parse(ory).unwrap());
    deployment.protection.prefixes.push("/members".into());
    Proxy::start(host, &deployment).await
}

both_hosts! {
    async fn a_websocket_works_through_the_proxy(host: Host) {
        let standin = Standin::start(StandinConfig::default()).await.unwrap();
        // An echo server speaking WebSocket.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else { return };
                    while let Some(Ok(message)) = socket.next().await {
                        if message.is_text() && socket.send(message).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let proxy = proxy_for(host, upstream, &standin.url()).await;

        let (mut socket, handshake) = tokio_tungstenite::connect_async(format!("ws://{}/chat", proxy.addr))
            .await
            .expect("the handshake goes through");
        assert_eq!(handshake.status(), http::StatusCode::SWITCHING_PROTOCOLS);
        for text in ["hello", "second message"] {
            socket.send(Message::text(text)).await.unwrap();
            let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next()).await.unwrap().unwrap().unwrap();
            assert_eq!(echoed.into_text().unwrap().as_str(), text);
        }
        socket.close(None).await.unwrap();
        proxy.stop().await;
        standin.shutdown().await;
    }

    async fn server_sent_events_arrive_as_they_are_sent(host: Host) {
        let standin = Standin::start(StandinConfig::default()).await.unwrap();
        // An event stream that sends one event, then waits until told to send the next.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = listener.local_addr().unwrap();
        let (next, mut go) = tokio::sync::mpsc::channel::<()>(1);
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await.unwrap();
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
                        transfer-encoding: chunked\r\n\r\n";
            stream.write_all(head.as_bytes()).await.unwrap();
            for event in ["data: one\n\n", "data: two\n\n"] {
                stream.write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes()).await.unwrap();
                stream.flush().await.unwrap();
                if go.recv().await.is_none() {
                    return;
                }
            }
            stream.write_all(b"0\r\n\r\n").await.unwrap();
        });
        let proxy = proxy_for(host, upstream, &standin.url()).await;

        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let request = http::Request::get(format!("http://{}/events", proxy.addr))
            .header("accept", "text/event-stream")
            .body(http_body_util::Empty::new())
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut body = response.into_body();
        let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the first event arrives while the stream is still open")
            .unwrap()
            .unwrap();
        assert_eq!(first.into_data().unwrap(), "data: one\n\n");
        next.send(()).await.unwrap();
        let second = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.unwrap().unwrap().unwrap();
        assert_eq!(second.into_data().unwrap(), "data: two\n\n");
        next.send(()).await.unwrap();
        proxy.stop().await;
        standin.shutdown().await;
    }
}
