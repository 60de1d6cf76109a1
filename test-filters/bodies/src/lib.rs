//! Test filter: request and response bodies — pause to accumulate, replace, prepend, append.
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
        Some(Box::new(Bodies { path: String::new(), chunks: 0 }))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Bodies {
    path: String,
    chunks: usize,
}
impl Context for Bodies {}
impl HttpContext for Bodies {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        self.path = self.get_http_request_header(":path").unwrap_or_default();
        if self.path == "/upper" {
            self.set_http_request_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if self.path != "/upper" {
            return Action::Continue;
        }
        // Accumulate the whole body, then replace it.
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        self.set_http_request_body(0, size, &body.to_ascii_uppercase());
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if self.path == "/wrap" || self.path == "/edges" {
            self.set_http_response_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        self.chunks += 1;
        match self.path.as_str() {
            "/wrap" if !end_of_stream => Action::Pause,
            "/wrap" => {
                let body = self.get_http_response_body(0, size).unwrap_or_default();
                let wrapped = [b"<".as_slice(), &body, b">"].concat();
                self.set_http_response_body(0, size, &wrapped);
                Action::Continue
            }
            "/edges" => {
                // Prepend and append without touching the middle: what Envoy allows.
                self.set_http_response_body(0, 0, b"[");
                self.set_http_response_body(size + 1, 0, b"]");
                Action::Continue
            }
            _ => Action::Continue,
        }
    }

    fn on_log(&mut self) {
        proxy_wasm::hostcalls::log(proxy_wasm::types::LogLevel::Info, &format!("response chunks {}", self.chunks)).ok();
    }
}
