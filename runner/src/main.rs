use std::process::ExitCode;

use clap::Parser as _;
use ory_proxy::cli::{CertCommand, Cli, Command, DoctorArgs, EnvoyArgs, KeyCommand, LocalArgs, RunArgs, ServeArgs};
use ory_proxy::deployment::{self, Placement, Plan, signing_key_file};
use ory_proxy::{home, local, tls, trust};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    // Accepting connections, signals and start-up: the requests themselves are served by the
    // filter's worker threads, each on a runtime of its own.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Local(args) => runtime.block_on(run_local(args)),
        Command::Run(args) => runtime.block_on(run_filter(args)),
        Command::EnvoyConfig(args) => runtime.block_on(envoy_config(&args)),
        Command::Cert(command) => run_cert(command),
        Command::Key(command) => run_key(command),
        Command::Doctor(args) => runtime.block_on(doctor(&args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info,hyper=warn",
        (false, 1) => "debug,hyper=info,wasmtime=info,cranelift=info",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_env("ORY_PROXY_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr).init();
}

async fn run_local(args: LocalArgs) -> anyhow::Result<()> {
    let deployment = deployment::resolve(&args).await?;
    let plan = deployment.plan()?;
    let wasm = match &args.filter {
        Some(path) => {
            tracing::warn!(
                "{} is handed ory-proxy's configuration and the JWT signing key (in its environment, \
                 {}): run only a module you trust with the key; `ory-proxy run` runs other filters without it",
                path.display(),
                deployment::SIGNING_KEY_ENV
            );
            std::borrow::Cow::Owned(read_module(path)?)
        }
        None => std::borrow::Cow::Borrowed(local::EMBEDDED_FILTER),
    };
    let (proxy, ca) = start(&plan, &wasm, &args.serve).await?;
    let address = proxy.local_addr()?;
    let public = plan.public_url.as_str().trim_end_matches('/');
    println!("ory-proxy is running.");
    println!("  Open your app at   {public}/");
    if args.public_url.is_some() {
        println!("  Listening on       {address} (the public URL has to lead here)");
    }
    announce_certificate(ca.as_ref(), &args.serve)?;
    println!("  Your app           {}", deployment.upstream);
    match &deployment.ory_url {
        Some(ory) => println!("  Ory                {ory} (under {public}/.ory/)"),
        None => println!("  Ory                not configured (set --sdk-url or ORY_SDK_URL)"),
    }
    let protection = &deployment.protection;
    if !protection.is_empty() {
        let rules: Vec<String> = protection
            .prefixes
            .iter()
            .map(|p| format!("{p}*"))
            .chain(protection.globs.iter().cloned())
            .chain(protection.regexes.iter().map(|r| format!("/{r}/")))
            .collect();
        println!("  Protected paths    {}", rules.join(", "));
    }
    println!("  JWT public keys    {public}/.ory/jwks.json");
    serve_until_stopped(proxy, &plan, &args.serve).await
}

/// `ory-proxy run`: anybody's filter, as Envoy would run it.
async fn run_filter(args: RunArgs) -> anyhow::Result<()> {
    let plan = deployment::resolve_run(&args)?;
    let wasm = read_module(&args.filter)?;
    let name = args.filter.display();
    if plan.plugin.placement == Placement::Service {
        let service = local::start_service(&plan, &wasm)?;
        println!("{name} is running as a service (one VM, no listener). Press Ctrl-C to stop.");
        shutdown_signal().await;
        drop(service);
        return Ok(());
    }
    let (proxy, ca) = start(&plan, &wasm, &args.serve).await?;
    let public = plan.public_url.as_str().trim_end_matches('/');
    println!("{name} is running.");
    println!("  Open it at         {public}/");
    announce_certificate(ca.as_ref(), &args.serve)?;
    for cluster in &plan.clusters {
        println!("  Cluster            {} = {}", cluster.name, cluster.url.as_str().trim_end_matches('/'));
    }
    for route in &plan.routes {
        println!("  Route              {} to {}", route.prefix, route.cluster);
    }
    serve_until_stopped(proxy, &plan, &args.serve).await
}

/// Starts `plan` with `wasm`, serving HTTPS from the local CA unless --no-https.
async fn start(
    plan: &Plan,
    wasm: &[u8],
    serve: &ServeArgs,
) -> anyhow::Result<(ory_proxy::proxy::Proxy, Option<tls::LocalCa>)> {
    let (ca, tls) = local_tls(serve, plan)?;
    let proxy = local::start_with_tls(plan, wasm, tls).await?;
    let address = proxy.local_addr()?;
    if deployment::is_public(&address) {
        tracing::warn!("listening on {address}: other machines can reach this proxy");
    }
    Ok((proxy, ca))
}

/// The end of the banner (metrics, clusters not up yet), the browser, and serving until Ctrl-C.
async fn serve_until_stopped(proxy: ory_proxy::proxy::Proxy, plan: &Plan, serve: &ServeArgs) -> anyhow::Result<()> {
    if let Some(metrics) = proxy.metrics_addr() {
        println!("  Metrics            http://{metrics}/metrics (health: /healthz, /readyz)");
    }
    for (cluster, why) in local::unreachable_clusters(plan).await {
        println!("  warning            {cluster} cannot be reached yet ({why}); requests to it get 503 until it can");
    }
    println!("Press Ctrl-C to stop.");
    if !serve.no_open {
        open_browser(format!("{}/", plan.public_url.as_str().trim_end_matches('/')));
    }
    proxy.serve(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

fn read_module(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("--filter {}: {e}", path.display()))
}

/// The local CA and the TLS configuration serving with it; neither with `--no-https`.
fn local_tls(
    serve: &ServeArgs,
    plan: &Plan,
) -> anyhow::Result<(Option<tls::LocalCa>, Option<std::sync::Arc<rustls::ServerConfig>>)> {
    if serve.no_https {
        return Ok((None, None));
    }
    let ca = tls::LocalCa::load_or_create(&home::dir()?)?;
    let config = ca.server_config(&deployment::proxy_names(&plan.listen, &plan.public_url))?;
    Ok((Some(ca), Some(config)))
}

/// Says which CA issued the certificate, and installs it where browsers look unless told not to.
fn announce_certificate(ca: Option<&tls::LocalCa>, serve: &ServeArgs) -> anyhow::Result<()> {
    let Some(ca) = ca else { return Ok(()) };
    println!("  HTTPS certificate  issued by {}{}", ca.cert_path().display(), if ca.created() { " (new)" } else { "" });
    if !serve.dont_install_cert {
        // Runs certutil, sudo and the like: a moment at start-up, before anything is served.
        print!("{}", trust::install(ca, &home::dir()?, &trust::TrustEnv::from_system()));
    }
    Ok(())
}

async fn envoy_config(args: &EnvoyArgs) -> anyhow::Result<()> {
    let plan = deployment::resolve_for_envoy(args).await?;
    let yaml = ory_proxy::envoy::bootstrap_yaml(&plan, &args.options());
    if ory_proxy::envoy::uses_demo_key(&plan) {
        tracing::warn!("signing with the published demo key: fine on a laptop, never anywhere else");
    }
    let hint = ory_proxy::envoy::start_hint(&plan, &signing_key_file(&args.local)?, args.output.as_deref());
    match &args.output {
        Some(path) => {
            home::write_private(path, yaml.as_bytes())?;
            match hint {
                None => eprintln!("wrote {} (it holds the signing key: keep it secret)", path.display()),
                Some(_) => eprintln!("wrote {}", path.display()),
            }
        }
        None => print!("{yaml}"),
    }
    if let Some(hint) = hint {
        eprintln!("{hint}");
    }
    Ok(())
}

/// Opens `url` in the default browser, in the background (some browsers' launchers wait);
/// failing is a hint, not an error.
fn open_browser(url: String) {
    tokio::task::spawn_blocking(move || {
        if let Err(error) = webbrowser::open(&url) {
            println!("hint: could not open a browser ({error}); open {url} yourself");
        }
    });
}

fn run_cert(command: CertCommand) -> anyhow::Result<()> {
    let home = home::dir()?;
    match command {
        CertCommand::Path => {
            let ca = tls::LocalCa::load_or_create(&home)?;
            println!("{}", ca.cert_path().display());
        }
        CertCommand::Uninstall => {
            let cert = home.join(tls::CA_CERT_FILE);
            let ca = if cert.exists() { Some(tls::LocalCa::load_or_create(&home)?) } else { None };
            let report = trust::uninstall(ca.as_ref(), &home, &trust::TrustEnv::from_system());
            if report.outcomes.is_empty() {
                println!("The local CA is not installed anywhere ory-proxy knows of.");
            }
            print!("{report}");
            if report.failures().next().is_some() {
                anyhow::bail!("the local CA could not be removed from every store");
            }
        }
    }
    Ok(())
}

async fn doctor(args: &DoctorArgs) -> anyhow::Result<()> {
    let findings = ory_proxy::doctor::examine(args).await;
    for finding in &findings {
        println!("{finding}");
    }
    let failed = findings.iter().filter(|finding| finding.verdict == ory_proxy::doctor::Verdict::Fail).count();
    match failed {
        0 => Ok(()),
        1 => anyhow::bail!("1 thing to fix"),
        n => anyhow::bail!("{n} things to fix"),
    }
}

fn run_key(command: KeyCommand) -> anyhow::Result<()> {
    let home = home::dir()?;
    let window =
        deployment::previous_key_window(std::time::Duration::from_secs(ory_proxy::deployment::DEFAULT_JWT_TTL_SECONDS));
    match command {
        KeyCommand::Rotate => {
            let (new, retired) = home::rotate(&home)?;
            println!("New signing key {} in {}", new.kid(), home.join(home::SIGNING_KEY_FILE).display());
            match retired {
                Some(old) => println!(
                    "The previous key {} is kept in {}: the JWKS publishes it beside the new one for {} from now \
                     (with the default --jwt-ttl), then only the new key.",
                    old.kid(),
                    home.join(home::PREVIOUS_KEY_FILE).display(),
                    humantime::format_duration(window)
                ),
                None => println!("There was no key before it."),
            }
            println!("Restart ory-proxy to sign with it; for Envoy, make the configuration again with envoy-config.");
        }
        KeyCommand::List => {
            let path = home.join(home::SIGNING_KEY_FILE);
            if !path.exists() {
                println!("No signing key yet in {}: the first `ory-proxy local` makes one.", home.display());
                return Ok(());
            }
            let (_, current) = home::kept_signing_key(&home)?;
            let made = std::fs::metadata(&path).and_then(|meta| meta.modified()).ok();
            println!("current   {}  made {} ago   {}", current.kid(), age(made), path.display());
            if let Some(previous) = home::kept_previous_key(&home)? {
                let retired = previous.retired.elapsed().unwrap_or_default();
                let state = match window.checked_sub(retired) {
                    Some(left) => format!("still in the JWKS for {}", humantime::format_duration(round(left))),
                    None => "no longer in the JWKS".to_string(),
                };
                println!(
                    "previous  {}  retired {} ago, {state} (with the default --jwt-ttl)   {}",
                    previous.key.kid(),
                    age(Some(previous.retired)),
                    home.join(home::PREVIOUS_KEY_FILE).display()
                );
            }
        }
    }
    Ok(())
}

fn round(duration: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_secs(duration.as_secs())
}

/// How long ago `when` was, to the second.
fn age(when: Option<std::time::SystemTime>) -> String {
    match when.and_then(|when| when.elapsed().ok()) {
        Some(elapsed) => humantime::format_duration(round(elapsed)).to_string(),
        None => "an unknown time".to_string(),
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}
