//! Starting a plan: load the filter, start its VMs, bind the listener.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::host::{HostEnv, Plugin, PluginSpec};
use crate::plan::{FILTER_NAME, Plan};
use crate::proxy::{Clusters, FilterPool, PoolOptions, Proxy, ServeOptions};

/// The filter built with this binary.
pub const EMBEDDED_FILTER: &[u8] = include_bytes!(env!("ORY_PROXY_FILTER_WASM_PATH"));

/// Where the build put the host's own test filters (for tests only).
#[doc(hidden)]
pub const TEST_FILTERS_DIR: &str = env!("ORY_PROXY_TEST_FILTERS_DIR");

/// The most one filter callback may run before the host interrupts it.
const CALLBACK_DEADLINE: Duration = Duration::from_secs(2);

/// Loads the filter with the plan's configuration. A filter that refuses the configuration is
/// an error carrying the filter's own explanation.
pub fn load_filter(plan: &Plan, wasm: &[u8]) -> anyhow::Result<Plugin> {
    let spec = PluginSpec {
        name: FILTER_NAME.into(),
        vm_id: FILTER_NAME.into(),
        configuration: plan.filter_configuration().into_bytes(),
        environment: plan.vm_environment.clone(),
        clusters: plan.cluster_names(),
        callback_deadline: Some(CALLBACK_DEADLINE),
        ..PluginSpec::default()
    };
    let plugin = Plugin::load(wasm, spec, HostEnv::new()).context("loading the filter")?;
    plugin.start_deadline_ticker();
    Ok(plugin)
}

/// Loads the filter, starts its VMs and binds the listener: everything that can fail at
/// start-up fails here, before anything is served. Serves plain HTTP only.
pub async fn start(plan: &Plan, wasm: &[u8]) -> anyhow::Result<Proxy> {
    start_with_tls(plan, wasm, None).await
}

/// [`start`], serving HTTPS with `tls` beside plain HTTP on the same port (see
/// [`crate::tls::LocalCa::server_config`]).
pub async fn start_with_tls(plan: &Plan, wasm: &[u8], tls: Option<Arc<rustls::ServerConfig>>) -> anyhow::Result<Proxy> {
    let plugin = load_filter(plan, wasm)?;
    let clusters = Clusters::new(plan.clusters.clone(), plan.upstream_ca_file.as_deref())?;
    let pool = FilterPool::start(plugin, clusters, PoolOptions::default()).context("starting the filter")?;
    let options = ServeOptions { listen: plan.listen, limits: plan.limits, tls, ..ServeOptions::default() };
    Proxy::bind(pool, plan.routes.clone(), options).await
}

/// The clusters that do not accept a connection right now, with the reason: worth a warning at
/// start-up (an app that starts later is normal, so this is not an error).
pub async fn unreachable_clusters(plan: &Plan) -> Vec<(String, String)> {
    let checks = plan.clusters.iter().map(|cluster| async move {
        let host = cluster.url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = cluster.url.port_or_known_default().unwrap_or(80);
        let attempt =
            tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect((host.as_str(), port)));
        let problem = match attempt.await {
            Ok(Ok(_)) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some("no answer within 3s".to_string()),
        };
        problem.map(|why| (format!("{} ({})", cluster.name, cluster.url.as_str().trim_end_matches('/')), why))
    });
    futures_util::future::join_all(checks).await.into_iter().flatten().collect()
}
