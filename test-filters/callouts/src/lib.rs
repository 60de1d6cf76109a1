//! Test filter: everything outside one stream — HTTP calls, shared data with CAS, shared queues,
//! timers and metrics.
#![cfg(target_arch = "wasm32")]

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MetricType, Status};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { queue: 0, metric: 0 }) });
}}

struct Root {
    queue: u32,
    metric: u32,
}

impl Context for Root {}
impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        self.set_tick_period(Duration::from_millis(250));
        self.queue = hostcalls::register_shared_queue("events").unwrap_or(0);
        self.metric = hostcalls::define_metric(MetricType::Counter, "callouts_requests").unwrap_or(0);
        true
    }

    fn on_tick(&mut self) {
        let (ticks, cas) = self.get_shared_data("ticks");
        let next = ticks.map(|t| t[0] + 1).unwrap_or(1);
        self.set_shared_data("ticks", Some(&[next]), cas).ok();
    }

    fn on_queue_ready(&mut self, queue: u32) {
        let mut all = Vec::new();
        while let Ok(Some(item)) = hostcalls::dequeue_shared_queue(queue) {
            all.extend_from_slice(&item);
            all.push(b',');
        }
        self.set_shared_data("queue-drained", Some(&all), None).ok();
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        hostcalls::increment_metric(self.metric, 1).ok();
        Some(Box::new(Callout))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Callout;

fn query_value<'a>(path: &'a str, key: &str) -> Option<&'a str> {
    let query = path.split_once('?')?.1;
    query.split('&').find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

impl Context for Callout {
    fn on_grpc_call_response(&mut self, _: u32, status_code: u32, _: usize) {
        self.send_http_response(502, vec![], Some(format!("grpc answered {status_code}").as_bytes()));
    }

    fn on_http_call_response(&mut self, _: u32, num_headers: usize, body_size: usize, _: usize) {
        if num_headers == 0 {
            self.send_http_response(503, vec![], Some(b"call failed"));
            return;
        }
        let status = self.get_http_call_response_header(":status").unwrap_or_default();
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        match status.as_str() {
            "200" => {
                self.set_http_request_header("x-check", Some(&String::from_utf8_lossy(&body)));
                let took = self.get_http_call_response_header("x-envoy-upstream-service-time").unwrap_or_default();
                self.set_http_request_header("x-call-service-time", Some(&took));
                self.resume_http_request();
            }
            other => {
                let message = format!("check answered {other}");
                self.send_http_response(502, vec![("x-call-status", other)], Some(message.as_bytes()));
            }
        }
    }
}

impl HttpContext for Callout {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let value = |key| query_value(&path, key).unwrap_or_default().to_string();
        if path.starts_with("/call") {
            let cluster = query_value(&path, "cluster").unwrap_or("backend").to_string();
            let headers = vec![(":method", "GET"), (":path", "/check"), (":authority", "backend.local")];
            return match self.dispatch_http_call(&cluster, headers, None, vec![], Duration::from_millis(500)) {
                Ok(_) => Action::Pause,
                Err(status) => {
                    self.send_http_response(500, vec![], Some(format!("dispatch refused: {status:?}").as_bytes()));
                    Action::Pause
                }
            };
        }
        if path.starts_with("/grpc") {
            let cluster = query_value(&path, "cluster").unwrap_or("nope").to_string();
            let timeout = Duration::from_millis(500);
            return match self.dispatch_grpc_call(&cluster, "test.Service", "Call", vec![], Some(b"hi"), timeout) {
                Ok(_) => Action::Pause,
                Err(status) => {
                    self.send_http_response(500, vec![], Some(format!("grpc refused: {status:?}").as_bytes()));
                    Action::Pause
                }
            };
        }
        if path.starts_with("/shared/set") {
            let cas = value("cas").parse::<u32>().ok();
            let answer = match self.set_shared_data(&value("key"), Some(value("value").as_bytes()), cas) {
                Ok(()) => "stored".to_string(),
                Err(Status::CasMismatch) => "cas mismatch".to_string(),
                Err(other) => format!("{other:?}"),
            };
            self.send_http_response(200, vec![], Some(answer.as_bytes()));
            return Action::Pause;
        }
        if path.starts_with("/shared/get") {
            let answer = match self.get_shared_data(&value("key")) {
                (Some(data), Some(cas)) => format!("{}@{cas}", String::from_utf8_lossy(&data)),
                _ => "missing".to_string(),
            };
            self.send_http_response(200, vec![], Some(answer.as_bytes()));
            return Action::Pause;
        }
        if path.starts_with("/queue/push") {
            let answer = match hostcalls::resolve_shared_queue(&value("vm"), "events") {
                Ok(Some(queue)) => match hostcalls::enqueue_shared_queue(queue, Some(value("value").as_bytes())) {
                    Ok(()) => "queued".to_string(),
                    Err(status) => format!("{status:?}"),
                },
                Ok(None) => "no such queue".to_string(),
                Err(status) => format!("{status:?}"),
            };
            self.send_http_response(200, vec![], Some(answer.as_bytes()));
            return Action::Pause;
        }
        if path.starts_with("/metric") {
            let id = hostcalls::define_metric(MetricType::Counter, "callouts_requests").unwrap_or(0);
            let count = hostcalls::get_metric(id).unwrap_or(0).to_string();
            self.send_http_response(200, vec![], Some(count.as_bytes()));
            return Action::Pause;
        }
        Action::Continue
    }
}
