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
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate() => {}
    }
    standin.shutdown().await;
    Ok(())
}

#[cfg(unix)]
async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}

#[cfg(not(unix))]
async fn terminate() {
    std::future::pending::<()>().await
}
