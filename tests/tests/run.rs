//! `ory-proxy run`: anybody's filter with what an Envoy configuration would give it. Each plan is
//! made from the command line, as a user types it, and runs in the runner and in a real Envoy.

mod common;

use std::time::Duration;

use common::app::RecordingApp;
use common::host::{Filter, Proxy, Service, run_plan};
use http::StatusCode;
use ory_proxy_tests::http::HttpClient;

/// An app that says who it is: `checked by <name>` at `/check`, `<name> saw <path>` elsewhere.
async fn app(name: &'static str) -> RecordingApp {
    RecordingApp::answering(move |uri| match uri {
        "/check" => format!("checked by {name}"),
        _ => format!("{name} saw {uri}"),
    })
    .await
}

fn url(app: &RecordingApp) -> String {
    format!("http://{}", app.addr())
}

both_hosts! {
    async fn the_plugin_is_told_what_the_flags_say(host: Host) {
        let app = app("app").await;
        let vm_config = std::env::temp_dir().join(format!("ory-proxy-run-vm-config-{}-{host:?}", std::process::id()));
        std::fs::write(&vm_config, "vm settings from a file").unwrap();
        let plan = run_plan(
            Filter::Test("plugin"),
            &[
                "--upstream", &url(&app),
                "--plugin-name", "echo",
                "--root-id", "identity",
                "--vm-id", "vm-a",
                "--filter-config", r#"{"plugin":true}"#,
                "--vm-config", &format!("@{}", vm_config.display()),
                "--vm-env", "GREETING=hello",
            ],
        );
        let proxy = Proxy::start_plan(host, &plan, Filter::Test("plugin")).await;
        let client = HttpClient::new();
        let answer = client.get(&proxy.url("/identity"), &[]).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_eq!(answer.header("x-plugin-name"), Some("echo"));
        assert_eq!(answer.header("x-root-id"), Some("identity"));
        assert_eq!(answer.header("x-vm-id"), Some("vm-a"));
        assert_eq!(answer.header("x-configuration"), Some(r#"{"plugin":true}"#));
        assert_eq!(answer.header("x-vm-configuration"), Some("vm settings from a file"));
        assert_eq!(answer.header("x-environment"), Some("GREETING=hello"), "only what --vm-env gives");
        let passed = client.get(&proxy.url("/other"), &[]).await.unwrap();
        assert_eq!(passed.text(), "app saw /other");
        proxy.stop().await;
        app.stop().await;
        std::fs::remove_file(&vm_config).unwrap();
    }

    async fn one_worker_is_one_vm_for_every_connection(host: Host) {
        let app = app("app").await;
        let plan = run_plan(Filter::Test("plugin"), &["--upstream", &url(&app), "--concurrency", "1"]);
        let proxy = Proxy::start_plan(host, &plan, Filter::Test("plugin")).await;
        let mut ids = Vec::new();
        for _ in 0..4 {
            // A client of its own each time: a new connection, which two workers would share out.
            let answer = HttpClient::new().get(&proxy.url("/identity"), &[]).await.unwrap();
            ids.push(answer.header("x-context-id").unwrap_or_default().parse::<u32>().unwrap());
        }
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "one VM numbers every stream: {ids:?}");
        proxy.stop().await;
        app.stop().await;
    }

    async fn unset_names_and_configurations_are_empty_as_in_envoy(host: Host) {
        let app = app("app").await;
        let plan = run_plan(Filter::Test("plugin"), &["--upstream", &url(&app)]);
        assert_eq!(plan.signing_key(), None, "nothing of ory-proxy's reaches the filter");
        let proxy = Proxy::start_plan(host, &plan, Filter::Test("plugin")).await;
        let answer = HttpClient::new().get(&proxy.url("/identity"), &[]).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        // Empty is not there at all: the properties are not found, the buffers empty.
        for name in ["x-plugin-name", "x-root-id", "x-vm-id", "x-configuration", "x-vm-configuration"] {
            assert_eq!(answer.header(name), Some("missing"), "{name}: {:?}", answer.headers);
        }
        assert_eq!(answer.header("x-environment"), Some(""), "no environment at all");
        proxy.stop().await;
        app.stop().await;
    }

    async fn a_filter_calls_the_clusters_it_is_given_and_routes_lead_to_them(host: Host) {
        let main = app("main").await;
        let backend = app("backend").await;
        let backend_cluster = format!("backend={}", url(&backend));
        let plan = run_plan(
            Filter::Test("callouts"),
            &["--upstream", &url(&main), "--cluster", &backend_cluster, "--route", "/backend/=backend"],
        );
        let proxy = Proxy::start_plan(host, &plan, Filter::Test("callouts")).await;
        let client = HttpClient::new();
        let answer = client.get(&proxy.url("/call?cluster=backend"), &[]).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        let (path, headers) = main.seen.lock().unwrap().last().cloned().expect("the upstream was reached");
        assert_eq!(path, "/call?cluster=backend");
        assert_eq!(headers.get("x-check").and_then(|v| v.to_str().ok()), Some("checked by backend"));
        let answer = client.get(&proxy.url("/call?cluster=upstream"), &[]).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "the upstream is a cluster too: {}", answer.text());
        let refused = client.get(&proxy.url("/call?cluster=nope"), &[]).await.unwrap();
        assert_eq!(refused.text(), "dispatch refused: BadArgument");
        let routed = client.get(&proxy.url("/backend/page"), &[]).await.unwrap();
        assert_eq!(routed.text(), "backend saw /backend/page");
        assert_eq!(backend.seen.lock().unwrap().len(), 2, "one call, one routed request");
        // The call, as Envoy's client sends it: marked internal, with the time it was given.
        let (path, call) = backend.seen.lock().unwrap()[0].clone();
        assert_eq!(path, "/check");
        assert_eq!(call.get("x-envoy-internal").and_then(|v| v.to_str().ok()), Some("true"));
        assert_eq!(call.get("x-envoy-expected-rq-timeout-ms").and_then(|v| v.to_str().ok()), Some("500"));
        proxy.stop().await;
        main.stop().await;
        backend.stop().await;
    }

    async fn a_service_runs_its_root_context_without_a_listener(host: Host) {
        let backend = app("backend").await;
        let backend_cluster = format!("backend={}", url(&backend));
        let plan = run_plan(
            Filter::Test("plugin"),
            &[
                "--service",
                "--root-id", "service",
                "--plugin-name", "ticker",
                "--cluster", &backend_cluster,
                "--filter-config", "service settings",
                "--vm-config", "service vm settings",
            ],
        );
        assert!(plan.routes.is_empty());
        let service = Service::start(host, &plan, Filter::Test("plugin")).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let call = loop {
            if let Some(call) = backend.seen.lock().unwrap().first().cloned() {
                break call;
            }
            assert!(std::time::Instant::now() < deadline, "the service's ticks never called the backend");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (path, headers) = call;
        assert_eq!(path, "/from-service");
        let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        assert_eq!(value("x-plugin-name").as_deref(), Some("ticker"));
        assert_eq!(value("x-root-id").as_deref(), Some("service"));
        assert_eq!(value("x-configuration").as_deref(), Some("service settings"));
        assert_eq!(value("x-vm-configuration").as_deref(), Some("service vm settings"));
        service.stop();
        backend.stop().await;
    }
}

#[test]
fn flags_that_cannot_make_a_plan_are_clear_errors() {
    let cli = |args: &[&str]| {
        let command = [&["ory-proxy", "run", "--filter", "f.wasm", "--no-https"][..], args].concat();
        <ory_proxy::cli::Cli as clap::Parser>::try_parse_from(command)
    };
    let plan = |args: &[&str]| {
        let Ok(ory_proxy::cli::Cli { command: ory_proxy::cli::Command::Run(run), .. }) = cli(args) else {
            panic!("{args:?} parse")
        };
        ory_proxy::deployment::resolve_run(&run).map(|_| ()).map_err(|error| format!("{error:#}"))
    };
    let error = plan(&[]).unwrap_err();
    assert!(error.contains("--upstream") && error.contains("--route"), "{error}");
    let error = plan(&["--route", "/api=api"]).unwrap_err();
    assert!(error.contains("no cluster api") && error.contains("--cluster api=URL"), "{error}");
    let error = plan(&["--upstream", "http://127.0.0.1:1", "--cluster", "upstream=http://127.0.0.1:2"]).unwrap_err();
    assert!(error.contains("--upstream makes it"), "{error}");
    let error = plan(&["--upstream", "http://127.0.0.1:1", "--route", "/=upstream"]).unwrap_err();
    assert!(error.contains("a second route for /"), "{error}");
    let error = plan(&["--upstream", "http://127.0.0.1:1", "--filter-config", "@/nonexistent/config"]).unwrap_err();
    assert!(error.contains("--filter-config @/nonexistent/config"), "{error}");
    for (bad, flag) in [
        (&["--cluster", "backend"][..], "--cluster"),
        (&["--cluster", "back end=http://x"], "--cluster"),
        (&["--cluster", "b=http://x/path"], "--cluster"),
        (&["--route", "api=backend"], "--route"),
        (&["--vm-env", "NOVALUE"], "--vm-env"),
        (&["--service", "--upstream", "http://x"], "--upstream"),
        (&["--service", "--metrics-addr", "127.0.0.1:9901"], "--metrics-addr"),
    ] {
        let error = cli(bad).unwrap_err().to_string();
        assert!(error.contains(flag), "{bad:?}: {error}");
    }
}
