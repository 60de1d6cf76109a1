//! `--metrics-addr`: what an operator watches, on an address of its own. `/metrics` has the
//! filter's metrics (by the names the filter gave them, as Envoy's `/stats/prometheus` shows them)
//! and the runner's own, in the Prometheus text format; `/healthz` says the process serves;
//! `/readyz` says whether the filter is configured (always, once this answers: the proxy serves
//! only after every VM accepted its configuration) and the clusters the plan needs can be reached.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy_wasm_host::{HISTOGRAM_BOUNDS, HostEnv, MetricSnapshot, MetricType};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Cluster;
use super::stats::{RunnerStats, Stat};

/// Where to serve, and what readiness needs.
#[derive(Debug, Clone)]
pub struct ObserveOptions {
    pub listen: SocketAddr,
    /// Clusters that must accept a connection for `/readyz` to say ready.
    pub ready_clusters: Vec<Cluster>,
}

/// A bound metrics listener with what it reports.
pub struct Observer {
    listener: TcpListener,
    env: Arc<HostEnv>,
    stats: Arc<RunnerStats>,
    ready_clusters: Arc<[Cluster]>,
}

impl Observer {
    pub async fn bind(
        options: &ObserveOptions,
        env: Arc<HostEnv>,
        stats: Arc<RunnerStats>,
    ) -> anyhow::Result<Observer> {
        let listener = TcpListener::bind(options.listen)
            .await
            .map_err(|error| anyhow::anyhow!("--metrics-addr {}: cannot listen there: {error}", options.listen))?;
        Ok(Observer { listener, env, stats, ready_clusters: options.ready_clusters.clone().into() })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Answers until `stop` turns true.
    pub async fn serve(self, mut stop: watch::Receiver<bool>) {
        loop {
            let (stream, _) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = async { let _ = stop.wait_for(|stop| *stop).await; } => return,
            };
            let (env, stats, clusters) = (self.env.clone(), self.stats.clone(), self.ready_clusters.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let (env, stats, clusters) = (env.clone(), stats.clone(), clusters.clone());
                    async move {
                        Ok::<_, std::convert::Infallible>(answer(request.uri().path(), &env, &stats, &clusters).await)
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    }
}

async fn answer(path: &str, env: &HostEnv, stats: &RunnerStats, clusters: &[Cluster]) -> Response<Full<Bytes>> {
    match path {
        "/metrics" => {
            text(StatusCode::OK, "text/plain; version=0.0.4", prometheus_text(&env.metrics(), &stats.snapshot()))
        }
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => match unreachable(clusters).await {
            None => text(StatusCode::OK, "text/plain", "ready\n".into()),
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {why}\n")),
        },
        _ => text(StatusCode::NOT_FOUND, "text/plain", "/metrics, /healthz or /readyz\n".into()),
    }
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, value);
    }
    response
}

/// The first cluster that does not accept a connection within a second, and why.
async fn unreachable(clusters: &[Cluster]) -> Option<String> {
    for cluster in clusters {
        if let Some(why) = cluster.unreachable(Duration::from_secs(1)).await {
            return Some(format!("{} cannot be reached: {why}", cluster.label()));
        }
    }
    None
}

/// The Prometheus text exposition format (version 0.0.4) of the filter's metrics and the
/// runner's. Histograms use Envoy's default buckets.
pub fn prometheus_text(metrics: &[MetricSnapshot], stats: &[Stat]) -> String {
    let mut out = String::new();
    for metric in metrics {
        let name = &metric.name;
        match metric.kind {
            MetricType::Counter => out.push_str(&format!("# TYPE {name} counter\n{name} {}\n", metric.value)),
            MetricType::Gauge => out.push_str(&format!("# TYPE {name} gauge\n{name} {}\n", metric.value)),
            MetricType::Histogram => {
                out.push_str(&format!("# TYPE {name} histogram\n"));
                for (bound, count) in HISTOGRAM_BOUNDS.iter().zip(&metric.buckets) {
                    out.push_str(&format!("{name}_bucket{{le=\"{bound}\"}} {count}\n"));
                }
                out.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {}\n", metric.count));
                out.push_str(&format!("{name}_sum {}\n{name}_count {}\n", metric.sum, metric.count));
            }
        }
    }
    for stat in stats {
        let kind = if stat.gauge { "gauge" } else { "counter" };
        out.push_str(&format!(
            "# HELP {} {}\n# TYPE {} {kind}\n{} {}\n",
            stat.name, stat.help, stat.name, stat.name, stat.value
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_has_types_values_and_cumulative_buckets() {
        let env = HostEnv::new();
        let counter = env.define_metric(MetricType::Counter, "requests_total");
        let histogram = env.define_metric(MetricType::Histogram, "duration_ms");
        env.increment_metric(counter, 3);
        for value in [0, 7, 7000] {
            env.record_metric(histogram, value);
        }
        let text = prometheus_text(&env.metrics(), &RunnerStats::default().snapshot());
        assert!(text.contains("# TYPE requests_total counter\nrequests_total 3\n"), "{text}");
        assert!(text.contains("duration_ms_bucket{le=\"0.5\"} 1\n"), "{text}");
        assert!(text.contains("duration_ms_bucket{le=\"10\"} 2\n"), "{text}");
        assert!(text.contains("duration_ms_bucket{le=\"10000\"} 3\n"), "{text}");
        assert!(
            text.contains("duration_ms_bucket{le=\"+Inf\"} 3\nduration_ms_sum 7007\nduration_ms_count 3\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE ory_proxy_runner_connections_active gauge\n"), "{text}");
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("name value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
