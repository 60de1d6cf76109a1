//! Starting a plan: load the filter, start its VMs, bind the listener.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::deployment::{Placement, Plan};
use crate::proxy::{Clusters, FilterPool, Limits, ObserveOptions, PoolOptions, Proxy, ServeOptions};
use proxy_wasm_host::{HostEnv, ModuleBytes, Plugin, PluginSpec};

/// The filter built with this binary.
pub static EMBEDDED_FILTER: &[u8] = include_bytes!(env!("ORY_PROXY_FILTER_WASM_PATH"));

/// The SHA-256 of [`EMBEDDED_FILTER`], computed by the build script.
const EMBEDDED_FILTER_SHA256: &[u8; 32] = include_bytes!(concat!(env!("OUT_DIR"), "/ory_proxy_filter.wasm.sha256"));

/// `wasm` with its digest. The embedded module's is known from the build: a start that finds its
/// compiled code cached reads none of its pages (it stays out of memory).
fn module_bytes(wasm: &[u8]) -> ModuleBytes<'_> {
    if std::ptr::eq(wasm, EMBEDDED_FILTER) {
        ModuleBytes::with_digest(wasm, *EMBEDDED_FILTER_SHA256)
    } else {
        ModuleBytes::new(wasm)
    }
}

/// The most one filter callback may run before the host interrupts it.
const CALLBACK_DEADLINE: Duration = Duration::from_secs(2);

/// Loads the filter with the plan's configuration. A filter that refuses the configuration is
/// an error carrying the filter's own explanation.
pub fn load_filter(plan: &Plan, wasm: &[u8]) -> anyhow::Result<Plugin> {
    let plugin = &plan.plugin;
    let spec = PluginSpec {
        name: plugin.name.clone(),
        root_id: plugin.root_id.clone(),
        vm_id: plugin.vm_id.clone(),
        configuration: plan.filter_configuration().into_bytes(),
        vm_configuration: plugin.vm_configuration.clone().into_bytes(),
        environment: plugin.environment.clone(),
        clusters: plan.cluster_names(),
        callback_deadline: Some(CALLBACK_DEADLINE),
        ..PluginSpec::default()
    };
    let code_cache = crate::home::code_cache_dir();
    let plugin = Plugin::load_cached(module_bytes(wasm), spec, HostEnv::new(), code_cache.as_deref())
        .context("loading the filter")?;
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
    anyhow::ensure!(
        plan.plugin.placement == Placement::HttpFilter,
        "a service has no listener: start it with start_service"
    );
    let plugin = load_filter(plan, wasm)?;
    let clusters = Clusters::new(plan.clusters.clone(), plan.upstream_ca_file.as_deref())?;
    let defaults = PoolOptions::default();
    let options = PoolOptions { workers: plan.workers.unwrap_or(defaults.workers), ..defaults };
    let pool = FilterPool::start(plugin, clusters, options).context("starting the filter")?;
    let limits = Limits { max_connections: fit_descriptor_limit(plan.limits.max_connections), ..plan.limits };
    let observe = plan.metrics_addr.map(|listen| ObserveOptions {
        listen,
        ready_clusters: plan.clusters.iter().filter(|c| plan.ready_clusters.contains(&c.name)).cloned().collect(),
    });
    let options = ServeOptions { listen: plan.listen, limits, tls, observe, ..ServeOptions::default() };
    Proxy::bind(pool, plan.routes.clone(), options).await
}

/// Starts a root-only plugin (Envoy's wasm service): one VM, whose root context ticks, calls
/// clusters and uses shared data and queues, and no listener. It runs until the pool is dropped.
pub fn start_service(plan: &Plan, wasm: &[u8]) -> anyhow::Result<Arc<FilterPool>> {
    anyhow::ensure!(
        plan.plugin.placement == Placement::Service,
        "an HTTP filter needs a listener: start it with start"
    );
    let plugin = load_filter(plan, wasm)?;
    let clusters = Clusters::new(plan.clusters.clone(), plan.upstream_ca_file.as_deref())?;
    // One VM, as Envoy runs a singleton service on its main thread.
    let options = PoolOptions { workers: 1, ..PoolOptions::default() };
    FilterPool::start(plugin, clusters, options).context("starting the service")
}

/// The clusters that do not accept a connection right now, with the reason: worth a warning at
/// start-up (an app that starts later is normal, so this is not an error).
pub async fn unreachable_clusters(plan: &Plan) -> Vec<(String, String)> {
    let checks = plan.clusters.iter().map(|cluster| async move {
        cluster.unreachable(Duration::from_secs(3)).await.map(|why| (cluster.label(), why))
    });
    futures_util::future::join_all(checks).await.into_iter().flatten().collect()
}

/// Descriptors kept free for everything but client connections (the listener, logs, the
/// module, trust stores).
const SPARE_DESCRIPTORS: u64 = 64;

/// Raises the soft limit on open files to the hard one, as far as `max_connections` needs (a
/// client connection and, for one in four, an upstream one: upstream connections are pooled),
/// and returns how many connections fit. With
/// the limit reached, accepting fails and new clients wait in the backlog instead of being
/// refused; keeping the connection cap below it avoids that.
#[cfg(unix)]
fn fit_descriptor_limit(max_connections: usize) -> usize {
    let wanted = (max_connections as u64).saturating_mul(5) / 4 + SPARE_DESCRIPTORS;
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return max_connections;
    }
    if limit.rlim_cur < wanted {
        let raised = libc::rlimit { rlim_cur: wanted.min(limit.rlim_max), rlim_max: limit.rlim_max };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = raised.rlim_cur;
        }
    }
    let fits = usize::try_from(limit.rlim_cur.saturating_sub(SPARE_DESCRIPTORS) * 4 / 5).unwrap_or(usize::MAX);
    if fits < max_connections {
        tracing::warn!(
            "the open-file limit ({}) allows {fits} connections, not --max-connections {max_connections}: \
             serving at most {fits} (raise it with `ulimit -n`)",
            limit.rlim_cur
        );
        return fits.max(1);
    }
    max_connections
}

#[cfg(not(unix))]
fn fit_descriptor_limit(max_connections: usize) -> usize {
    max_connections
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    #[test]
    fn the_embedded_filter_is_named_by_the_digest_of_its_bytes() {
        let digest: [u8; 32] = sha2::Sha256::digest(EMBEDDED_FILTER).into();
        assert_eq!(EMBEDDED_FILTER_SHA256, &digest, "the build script's digest is of the module embedded");
        assert_eq!(module_bytes(EMBEDDED_FILTER).digest(), &digest);
        // Any other bytes (a copy, a --filter file) are hashed as they come.
        let copy = EMBEDDED_FILTER.to_vec();
        assert_eq!(module_bytes(&copy).digest(), &digest);
        assert_ne!(module_bytes(b"\0asm\x01\0\0\0").digest(), &digest);
    }
}
