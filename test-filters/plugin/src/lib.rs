//! Test filter: what a plugin is told about itself (its name, root id and VM id, its plugin and
//! VM configuration, its environment), as an HTTP filter (`/identity` answers with it) and as a root-only service
//! (root id `service`: every 100 ms it calls the cluster `backend` with the same facts).
#![cfg(target_arch = "wasm32")]

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { identity: Rc::default() }) });
}}

/// Everything the host told the plugin, as header pairs.
#[derive(Default)]
struct Identity(Vec<(&'static str, String)>);

struct Root {
    identity: Rc<Identity>,
}

fn text(value: Option<Vec<u8>>) -> String {
    value.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_else(|| "missing".into())
}

impl Context for Root {}
impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let root_id = text(self.get_property(vec!["plugin_root_id"]));
        let identity = vec![
            ("x-plugin-name", text(self.get_property(vec!["plugin_name"]))),
            ("x-root-id", root_id.clone()),
            ("x-vm-id", text(self.get_property(vec!["plugin_vm_id"]))),
            ("x-configuration", text(self.get_plugin_configuration())),
            ("x-vm-configuration", text(self.get_vm_configuration())),
            // Through WASI, as std reads it: what the host put into the VM's environment.
            (
                "x-environment",
                std::env::vars().map(|(name, value)| format!("{name}={value}")).collect::<Vec<_>>().join(","),
            ),
        ];
        self.identity = Rc::new(Identity(identity));
        if root_id == "service" {
            self.set_tick_period(Duration::from_millis(100));
        }
        true
    }

    fn on_tick(&mut self) {
        let mut headers = vec![(":method", "GET"), (":path", "/from-service"), (":authority", "backend")];
        headers.extend(self.identity.0.iter().map(|(name, value)| (*name, value.as_str())));
        let _ = self.dispatch_http_call("backend", headers, None, vec![], Duration::from_secs(1));
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream { identity: self.identity.clone(), context_id }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    identity: Rc<Identity>,
    /// Numbered by the VM, from 2 (the root context is 1): it tells VMs apart.
    context_id: u32,
}

impl Context for Stream {}
impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if self.get_http_request_header(":path").as_deref() == Some("/identity") {
            let context_id = self.context_id.to_string();
            let mut headers: Vec<(&str, &str)> =
                self.identity.0.iter().map(|(name, value)| (*name, value.as_str())).collect();
            headers.push(("x-context-id", &context_id));
            self.send_http_response(200, headers, Some(b"identity"));
            return Action::Pause;
        }
        Action::Continue
    }
}
