//! `ory-standin`: the Ory stand-in, a development and test tool (not Ory).

use clap::Parser;
use ory_proxy_tests::standin::{Standin, StandinCli};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = StandinCli::parse().into_config()?;
    let standin = Standin::start(config).await?;
    eprintln!(
        "Ory stand-in (development and test tool, not Ory) on {} — public URL {}, cookie {}",
        standin.listen_url(),
        standin.url(),
        standin.cookie_name()
    );
    ory_proxy_tests::util::shutdown_signal().await;
    standin.shutdown().await;
    Ok(())
}
