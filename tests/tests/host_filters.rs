//! The host's ABI behaviour, pinned to Envoy's: the small filters of `test-filters/` run in the
//! runner and in a real Envoy, and every assertion here holds in both. What differs on purpose
//! is listed in `envoy/README.md`.

mod common;

use std::sync::{Arc, Mutex};

use common::host::{Filter, Host, Proxy};
use http::{HeaderMap, Method, StatusCode};
use ory_proxy_tests::http::{
    HttpClient, ServerHandle, append_header, bind_loopback, read_body, response, spawn_server,
};

/// What the app received: path and headers of every request.
type Seen = Arc<Mutex<Vec<(String, HeaderMap)>>>;

/// An app that records what it gets, answers `/check` for the callouts filter, echoes request
/// bodies, and names itself in `Server` (which the headers filter removes).
async fn app() -> (ServerHandle, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let server = spawn_server(bind_loopback(0).await.unwrap(), move |request, _| {
        let record = record.clone();
        async move {
            let path = request.uri().to_string();
            record.lock().unwrap().push((path.clone(), request.headers().clone()));
            let body = read_body(request.into_body(), 1 << 20).await.unwrap_or_default();
            let text = match path.as_str() {
                "/check" => "checked by the app".to_string(),
                _ if !body.is_empty() => String::from_utf8_lossy(&body).into_owned(),
                _ => format!("app saw {path}"),
            };
            let mut answer = response(StatusCode::OK, "text/plain", text);
            append_header(&mut answer, http::header::SERVER, "test-app");
            Ok(answer)
        }
    })
    .unwrap();
    (server, seen)
}

async fn start(host: Host, filter: &'static str) -> (Proxy, ServerHandle, Seen) {
    let (app, seen) = app().await;
    let deployment = common::host::deployment(&format!("http://{}", app.local_addr()));
    let proxy = Proxy::start_filter(host, &deployment, Filter::Test(filter)).await;
    (proxy, app, seen)
}

fn last_seen(seen: &Seen) -> (String, HeaderMap) {
    seen.lock().unwrap().last().cloned().expect("the app was reached")
}

fn value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

both_hosts! {
    async fn the_filter_sees_the_request_as_envoy_shows_it(host: Host) {
        let (proxy, app, seen) = start(host, "headers").await;
        let answer = HttpClient::new()
            .get(
                &proxy.url("/echo?x=1"),
                &[
                    ("x-forwarded-for", "203.0.113.9"),
                    ("x-request-id", "chosen-by-the-client"),
                    ("x-envoy-retry-on", "5xx"),
                    ("x-remove-me", "1"),
                    ("x-replace", "original"),
                    ("user-agent", "host-filters-test/1"),
                    ("referer", "http://localhost/from"),
                ],
            )
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        let (path, headers) = last_seen(&seen);
        assert_eq!(path, "/echo?x=1");
        // Pseudo-headers and properties, as the filter read them.
        assert_eq!(value(&headers, "x-method"), Some("GET"));
        assert_eq!(value(&headers, "x-authority"), Some(proxy.addr.to_string().as_str()));
        assert_eq!(value(&headers, "x-scheme"), Some("http"));
        assert!(value(&headers, "x-source").is_some_and(|s| s.starts_with("127.0.0.1:")), "{headers:?}");
        assert_eq!(value(&headers, "x-plugin"), Some("ory-proxy"));
        assert_eq!(value(&headers, "x-query"), Some("x=1"));
        assert_eq!(value(&headers, "x-useragent"), Some("host-filters-test/1"));
        assert_eq!(value(&headers, "x-referer"), Some("http://localhost/from"));
        // WASI's wall clock, to the microsecond as Envoy keeps it.
        let realtime: u128 = value(&headers, "x-wasi-realtime-ns").unwrap_or_default().parse().unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        assert!(now.abs_diff(realtime) < 60_000_000_000, "{realtime} is now");
        assert_eq!(realtime % 1000, 0, "{realtime}: microseconds");
        // What the filter changed.
        assert_eq!(value(&headers, "x-remove-me"), None);
        assert_eq!(value(&headers, "x-replace"), Some("replaced"));
        assert_eq!(value(&headers, "x-last-after-replace"), Some("x-replace"), "a replaced header moves to the end");
        let added: Vec<&str> = headers.get_all("x-added").iter().filter_map(|v| v.to_str().ok()).collect();
        assert_eq!(added, ["one", "two"]);
        // What the edge manages before any filter runs: the scheme, the peer appended to the
        // client's chain, a request id of its own, and no client `x-envoy-*` header.
        assert_eq!(value(&headers, "x-forwarded-proto"), Some("http"));
        // The runner appends the peer (127.0.0.1); Envoy appends its own address instead when
        // the peer is loopback (it takes a local peer for a sidecar's client).
        let chain: Vec<&str> = value(&headers, "x-forwarded-for").unwrap_or_default().split(',').collect();
        assert_eq!(chain.len(), 2, "{chain:?}");
        assert_eq!(chain[0], "203.0.113.9");
        assert!(chain[1].parse::<std::net::IpAddr>().is_ok(), "{chain:?}");
        if host == Host::Runner {
            assert_eq!(chain[1], "127.0.0.1");
        }
        assert_eq!(value(&headers, "x-envoy-external-address"), Some("127.0.0.1"));
        assert_eq!(value(&headers, "x-envoy-retry-on"), None);
        let request_id = value(&headers, "x-request-id").expect("a request id");
        assert_ne!(request_id, "chosen-by-the-client");
        assert!(uuid::Uuid::parse_str(request_id).is_ok(), "{request_id}");
        // The filter counted the headers it was shown (before adding its own): 4 pseudo-headers
        // (`host` became `:authority`), the client's `x-remove-me`, `x-replace`, `user-agent` and
        // `referer`, and the edge's 4 (`x-forwarded-for` in place of the client's, `x-forwarded-proto`,
        // `x-envoy-external-address`, `x-request-id` in place of the client's).
        assert_eq!(value(&headers, "x-count"), Some("12"), "{headers:?}");
        // The response: the filter saw the status and removed `Server`; the router says how
        // long the app took.
        assert_eq!(answer.header("x-status-seen"), Some("200"));
        assert_eq!(answer.header("server"), None, "{:?}", answer.headers);
        assert!(answer.header("x-envoy-upstream-service-time").is_some_and(|t| t.parse::<u64>().is_ok()));
        proxy.stop().await;
        app.shutdown().await;
    }

    async fn properties_are_encoded_as_envoy_encodes_them(host: Host) {
        let (proxy, app, seen) = start(host, "headers").await;
        let hex = |text: &str| text.bytes().map(|b| format!("{b:02x}")).collect::<String>();
        let client = HttpClient::new();
        let answer = client.request(Method::POST, &proxy.url("/sized"), &[], b"eleven byte".to_vec()).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        let (_, headers) = last_seen(&seen);
        let raw = |name: &str| value(&headers, name).unwrap_or_default().to_string();
        // Integers are 8 bytes, little-endian: the declared content-length here.
        assert_eq!(raw("x-raw-request-size"), "0b00000000000000");
        // A time is nanoseconds since the epoch, as an integer.
        let time = u64::from_str_radix(&raw("x-raw-request-time"), 16).map(u64::swap_bytes);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        assert!(time.is_ok_and(|t| now.abs_diff(t) < 60_000_000_000), "{} is now", raw("x-raw-request-time"));
        // A boolean is one byte: plain HTTP, no client certificate.
        assert_eq!(raw("x-raw-connection-mtls"), "00");
        // Strings are their bytes: the route's cluster, and our plugin's root and VM id.
        assert_eq!(raw("x-raw-cluster-name"), hex("app"));
        assert_eq!(raw("x-raw-root-id"), hex("ory-proxy"));
        assert_eq!(raw("x-raw-vm-id"), hex("ory-proxy"));
        // On the way back: where the response came from, and the cluster still.
        assert_eq!(answer.header("x-raw-code-details"), Some(hex("via_upstream").as_str()));
        assert_eq!(answer.header("x-raw-cluster-name"), Some(hex("app").as_str()));
        // Without a content-length, the size is what of the body has arrived: nothing yet.
        client.get(&proxy.url("/unsized"), &[]).await.unwrap();
        let (_, headers) = last_seen(&seen);
        assert_eq!(value(&headers, "x-raw-request-size"), Some("0000000000000000"));
        proxy.stop().await;
        app.shutdown().await;
    }

    async fn the_connection_id_names_the_connection(host: Host) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (proxy, app, seen) = start(host, "headers").await;
        // Two requests on one connection (the second closes it), then one on another.
        let on_one_connection = |paths: &[&str]| {
            let mut requests = String::new();
            for (index, path) in paths.iter().enumerate() {
                let close = if index + 1 == paths.len() { "connection: close\r\n" } else { "" };
                requests.push_str(&format!("GET {path} HTTP/1.1\r\nhost: {}\r\n{close}\r\n", proxy.addr));
            }
            async move {
                let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
                stream.write_all(requests.as_bytes()).await.unwrap();
                let mut answers = Vec::new();
                tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut answers))
                    .await
                    .expect("the proxy answers and closes")
                    .unwrap();
            }
        };
        on_one_connection(&["/first", "/again"]).await;
        on_one_connection(&["/other"]).await;
        let id_of = |path: &str| {
            let seen = seen.lock().unwrap();
            let (_, headers) = seen.iter().find(|(seen_path, _)| seen_path == path).expect("the app was reached");
            value(headers, "x-connection-id").map(str::to_string)
        };
        let (first, again, other) = (id_of("/first"), id_of("/again"), id_of("/other"));
        assert!(first.as_deref().is_some_and(|id| id.parse::<u64>().is_ok()), "{first:?}");
        assert_eq!(first, again, "one connection, one id");
        assert_ne!(first, other, "another connection, another id");
        proxy.stop().await;
        app.shutdown().await;
    }

    async fn a_changed_path_is_where_the_request_goes(host: Host) {
        let (proxy, app, seen) = start(host, "headers").await;
        let answer = HttpClient::new().get(&proxy.url("/rewrite-me"), &[]).await.unwrap();
        assert_eq!(answer.text(), "app saw /rewritten");
        assert_eq!(last_seen(&seen).0, "/rewritten");
        proxy.stop().await;
        app.shutdown().await;
    }

    async fn local_replies_answer_without_the_upstream(host: Host) {
        let (proxy, app, seen) = start(host, "headers").await;
        let client = HttpClient::new();
        let answer = client.get(&proxy.url("/local"), &[]).await.unwrap();
        assert_eq!(answer.status.as_u16(), 418);
        assert_eq!(answer.header("x-local"), Some("yes"));
        assert_eq!(answer.text(), "short and stout");
        assert_eq!(answer.header("content-type"), Some("text/plain"), "a body without a type is text");
        // The reply still ran through the filter's response callback.
        assert_eq!(answer.header("x-status-seen"), Some("418"));
        // A reply followed by Continue: still not sent upstream.
        let answer = client.get(&proxy.url("/local-continue"), &[]).await.unwrap();
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        assert_eq!(answer.text(), "denied");
        assert!(seen.lock().unwrap().is_empty(), "{:?}", seen.lock().unwrap());
        proxy.stop().await;
        app.shutdown().await;
    }

    async fn a_local_reply_from_the_response_callback_replaces_the_answer(host: Host) {
        let (proxy, app, seen) = start(host, "headers").await;
        let (client, url) = (HttpClient::new(), proxy.url("/reply-on-response"));
        let answer = tokio::time::timeout(std::time::Duration::from_secs(10), client.get(&url, &[]))
            .await
            .expect("the reply reaches the client (the stream does not stay paused)")
            .unwrap();
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.header("x-local"), Some("response"));
        assert_eq!(answer.text(), "replaced the answer");
        assert_eq!(answer.header("server"), None, "nothing of the app's answer is left");
        assert_eq!(seen.lock().unwrap().len(), 1, "the app was asked once");
        proxy.stop().await;
        app.shutdown().await;
    }

    async fn bodies_are_replaced_wrapped_and_extended(host: Host) {
        let (proxy, app, _seen) = start(host, "bodies").await;
        let client = HttpClient::new();
        let upper = client.request(Method::POST, &proxy.url("/upper"), &[], b"make me loud".to_vec()).await.unwrap();
        assert_eq!(upper.text(), "MAKE ME LOUD", "the request body was replaced whole");
        let wrapped = client.get(&proxy.url("/wrap"), &[]).await.unwrap();
        assert_eq!(wrapped.text(), "<app saw /wrap>");
        let edges = client.get(&proxy.url("/edges"), &[]).await.unwrap();
        // Once per chunk: Envoy may end a body with an empty chunk of its own, which the filter
        // brackets too.
        assert_eq!(edges.text().trim_end_matches("[]"), "[app saw /edges]");
        let plain = client.get(&proxy.url("/plain"), &[]).await.unwrap();
        assert_eq!(plain.text(), "app saw /plain");
        proxy.stop().await;
        app.shutdown().await;
    }

    async fn calls_to_a_cluster_and_to_no_cluster(host: Host) {
        let (proxy, app, seen) = start(host, "callouts").await;
        let client = HttpClient::new();
        let answer = client.get(&proxy.url("/call?cluster=app"), &[]).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        let (_, headers) = last_seen(&seen);
        assert_eq!(value(&headers, "x-check"), Some("checked by the app"), "the call's answer, then the request");
        let took = value(&headers, "x-call-service-time").unwrap_or_default();
        assert!(took.parse::<u64>().is_ok(), "the call's answer says how long the upstream took: {took:?}");
        let refused = client.get(&proxy.url("/call?cluster=nope"), &[]).await.unwrap();
        assert_eq!(refused.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(refused.text(), "dispatch refused: BadArgument");
        proxy.stop().await;
        app.shutdown().await;
    }

    async fn a_call_to_an_upstream_that_is_down_is_answered_503_by_the_host(host: Host) {
        let (proxy, app, _seen) = start(host, "callouts").await;
        app.shutdown().await;
        let answer = HttpClient::new().get(&proxy.url("/call?cluster=app"), &[]).await.unwrap();
        // The filter answers 502 and names the status its call got.
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.text());
        assert_eq!(answer.header("x-call-status"), Some("503"), "{}", answer.text());
        proxy.stop().await;
    }

    async fn a_grpc_call_to_a_missing_cluster_is_refused(host: Host) {
        let (proxy, app, _seen) = start(host, "callouts").await;
        let answer = HttpClient::new().get(&proxy.url("/grpc?cluster=nope"), &[]).await.unwrap();
        assert_eq!(answer.text(), "grpc refused: ParseFailure", "{}", answer.status);
        proxy.stop().await;
        app.shutdown().await;
    }

    async fn shared_data_is_one_store_for_every_worker(host: Host) {
        let (proxy, app, _seen) = start(host, "callouts").await;
        // A new connection for each request, so that both workers take part.
        let get = |path: String| async move { HttpClient::new().get(&path, &[]).await.unwrap().text() };
        assert_eq!(get(proxy.url("/shared/set?key=k&value=first")).await, "stored");
        for _ in 0..6 {
            let read = get(proxy.url("/shared/get?key=k")).await;
            assert!(read.starts_with("first@"), "{read}");
        }
        let read = get(proxy.url("/shared/get?key=k")).await;
        let cas = read.rsplit_once('@').unwrap().1.to_string();
        assert_eq!(get(proxy.url("/shared/set?key=k&value=second&cas=999999")).await, "cas mismatch");
        assert_eq!(get(proxy.url(&format!("/shared/set?key=k&value=second&cas={cas}"))).await, "stored");
        assert!(get(proxy.url("/shared/get?key=k")).await.starts_with("second@"));
        assert_eq!(get(proxy.url("/shared/get?key=never-set")).await, "missing");
        proxy.stop().await;
        app.shutdown().await;
    }
}
