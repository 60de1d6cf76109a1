//! The ory-proxy filter.
//!
//! This file is glue: it wires the proxy-wasm callbacks to the decisions made by plain functions
//! in the modules beside it, which are unit-tested natively and again inside the runner's host.

pub mod cache;
pub mod config;
pub mod cors;
pub mod endpoints;
pub mod forwarded;
pub mod negotiate;
pub mod origin;
pub mod paths;
pub mod rewrite;
pub mod session;
pub mod token;

/// The filter's version, shown by `ory-proxy --version` for the embedded module.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(target_arch = "wasm32")]
mod glue {
    use std::rc::Rc;

    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel};

    use crate::config::Config;
    use crate::endpoints;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: None }) });
    }}

    /// One per VM: holds the configuration every request of this VM shares.
    struct Root {
        config: Option<Rc<Config>>,
    }

    impl Context for Root {}

    impl RootContext for Root {
        fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
            let bytes = self.get_plugin_configuration().unwrap_or_default();
            match Config::from_json(&bytes) {
                Ok(config) => {
                    log::info(&format!("configured; signing key id {}", config.signing_key.kid()));
                    self.config = Some(Rc::new(config));
                    true
                }
                Err(err) => {
                    log::error(&err.to_string());
                    false
                }
            }
        }

        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            let config = self.config.clone()?;
            Some(Box::new(Request { config }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    /// One per HTTP request.
    struct Request {
        config: Rc<Config>,
    }

    impl Context for Request {}

    impl HttpContext for Request {
        fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
            let method = self.get_http_request_header(":method").unwrap_or_default();
            let path = self.get_http_request_header(":path").unwrap_or_default();
            match endpoints::answer(&self.config, &method, &path) {
                Some(response) => {
                    let headers = response.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    self.send_http_response(response.status, headers, Some(&response.body));
                    Action::Pause
                }
                None => Action::Continue,
            }
        }
    }

    mod log {
        use proxy_wasm::hostcalls;
        use proxy_wasm::types::LogLevel;

        pub fn info(message: &str) {
            let _ = hostcalls::log(LogLevel::Info, message);
        }

        pub fn error(message: &str) {
            let _ = hostcalls::log(LogLevel::Error, message);
        }
    }
}
