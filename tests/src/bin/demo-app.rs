//! `demo-app`: the app behind ory-proxy in the demo.

use clap::Parser;
use ory_proxy_tests::demo_app::{DemoApp, DemoAppCli};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let app = DemoApp::start(DemoAppCli::parse().into_config()).await?;
    eprintln!("demo app on {}", app.url());
    ory_proxy_tests::util::shutdown_signal().await;
    app.shutdown().await;
    Ok(())
}
