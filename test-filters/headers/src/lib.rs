//! Test filter: header maps, pseudo-headers, properties and local replies.
#![cfg(target_arch = "wasm32")]

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;
impl Context for Root {}
impl RootContext for Root {
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Headers { path: String::new() }))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Headers {
    path: String,
}
impl Context for Headers {}
impl HttpContext for Headers {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        self.path = path.clone();
        if path == "/local" {
            self.send_http_response(418, vec![("x-local", "yes")], Some(b"short and stout"));
            return Action::Pause;
        }
        if path == "/local-continue" {
            // A reply, then Continue: the host must still not send the request upstream.
            self.send_http_response(403, vec![("x-local", "continue")], Some(b"denied"));
            return Action::Continue;
        }
        // Echo what the host showed us, so a test can check pseudo-headers and properties.
        let count = self.get_http_request_headers().len().to_string();
        self.set_http_request_header("x-count", Some(&count));
        for (name, echo) in [(":method", "x-method"), (":authority", "x-authority"), (":scheme", "x-scheme")] {
            let value = self.get_http_request_header(name).unwrap_or_default();
            self.add_http_request_header(echo, &value);
        }
        let properties = [
            (vec!["source", "address"], "x-source"),
            (vec!["plugin_name"], "x-plugin"),
            (vec!["request", "query"], "x-query"),
            (vec!["request", "useragent"], "x-useragent"),
            (vec!["request", "referer"], "x-referer"),
        ];
        for (path, echo) in properties {
            let value = self.get_property(path).map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
            self.add_http_request_header(echo, &value);
        }
        // Raw, as hex: how the host encodes each kind of value is part of what is compared.
        let raw = [
            (vec!["request", "time"], "x-raw-request-time"),
            (vec!["request", "size"], "x-raw-request-size"),
            (vec!["connection", "mtls"], "x-raw-connection-mtls"),
            (vec!["xds", "cluster_name"], "x-raw-cluster-name"),
            (vec!["plugin_root_id"], "x-raw-root-id"),
            (vec!["plugin_vm_id"], "x-raw-vm-id"),
        ];
        for (path, echo) in raw {
            self.add_http_request_header(echo, &raw_property(self.get_property(path)));
        }
        let connection = self.get_property(vec!["connection", "id"]).and_then(|bytes| bytes.try_into().ok());
        let connection = connection.map(u64::from_le_bytes).map(|id| id.to_string()).unwrap_or_default();
        self.add_http_request_header("x-connection-id", &connection);
        // WASI's clocks, as `std::time` reads them.
        let realtime = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.add_http_request_header("x-wasi-realtime-ns", &realtime.as_nanos().to_string());
        self.set_http_request_header("x-remove-me", None);
        self.set_http_request_header("x-replace", Some("replaced"));
        // Where a replaced header ends up: Envoy removes it and adds it again, at the end.
        let last = self.get_http_request_headers().last().map(|(name, _)| name.clone()).unwrap_or_default();
        self.add_http_request_header("x-last-after-replace", &last);
        self.add_http_request_header("x-added", "one");
        self.add_http_request_header("x-added", "two");
        if path.starts_with("/rewrite") {
            self.set_http_request_header(":path", Some("/rewritten"));
        }
        if path == "/replace-all" {
            self.set_http_request_headers(vec![(":method", "GET"), (":path", "/all"), (":authority", "replaced")]);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if self.path == "/reply-on-response" {
            // Replaces the app's answer: the host must send this one, and not run this callback
            // again for it (which would pause it for good).
            self.send_http_response(503, vec![("x-local", "response")], Some(b"replaced the answer"));
            return Action::Pause;
        }
        for (path, echo) in [
            (vec!["response", "code_details"], "x-raw-code-details"),
            (vec!["xds", "cluster_name"], "x-raw-cluster-name"),
        ] {
            self.set_http_response_header(echo, Some(&raw_property(self.get_property(path))));
        }
        let status = self.get_http_response_header(":status").unwrap_or_default();
        self.set_http_response_header("x-status-seen", Some(&status));
        self.set_http_response_header("server", None);
        Action::Continue
    }
}

/// A property's bytes as hex, or `missing`.
fn raw_property(value: Option<Vec<u8>>) -> String {
    match value {
        Some(bytes) => bytes.iter().map(|byte| format!("{byte:02x}")).collect(),
        None => "missing".to_string(),
    }
}
