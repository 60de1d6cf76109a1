//! Drives a filter request by request without sockets: headers in, callbacks run, HTTP calls
//! answered by the test, effects out. Used by the host's own tests and by the filter's tests
//! inside wasmtime.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::env::HostEnv;
use super::exchange::{Exchange, Out, Step};
use super::types::{Effect, HeaderList, HttpCallRequest, HttpCallResponse, StreamInfo};
use super::vm::{Plugin, PluginSpec, Vm, VmError};

/// What one exchange has produced so far, as seen by the upstream and by the client.
#[derive(Debug, Default, Clone)]
pub struct Recorded {
    /// The request headers that went upstream, once they did.
    pub upstream_headers: Option<HeaderList>,
    pub upstream_body: Vec<u8>,
    pub upstream_complete: bool,
    /// The response headers that reached the client, once they did.
    pub response_headers: Option<HeaderList>,
    pub response_body: Vec<u8>,
    pub response_complete: bool,
    /// The filter answered itself.
    pub replied: bool,
    pub reset: bool,
    pub failed: Option<(u16, &'static str)>,
    /// What the filter set under `access_log.*`, once the exchange finished.
    pub annotations: Vec<(String, String)>,
}

impl Recorded {
    /// The status the client got, if headers reached it.
    pub fn status(&self) -> Option<u16> {
        self.response_headers.as_ref()?.get_str(":status")?.parse().ok()
    }

    /// A response header the client got.
    pub fn response_header(&self, name: &str) -> Option<&str> {
        self.response_headers.as_ref()?.get_str(name)
    }

    /// A request header the upstream got.
    pub fn upstream_header(&self, name: &str) -> Option<&str> {
        self.upstream_headers.as_ref()?.get_str(name)
    }
}

/// One VM of a plugin, driven by hand.
pub struct Harness {
    plugin: Plugin,
    pub vm: Vm,
    exchanges: HashMap<u32, (Exchange, Recorded)>,
    finished: HashMap<u32, Recorded>,
    calls: Vec<HttpCallRequest>,
    tick_period: Option<Duration>,
    queue_ready: Vec<(usize, u32, u32)>,
    max_buffer: usize,
}

impl Harness {
    pub fn new(wasm: &[u8], spec: PluginSpec, env: Arc<HostEnv>) -> anyhow::Result<Harness> {
        Harness::from_plugin(Plugin::load(wasm, spec, env)?, 0)
    }

    /// VM number `number` of an already loaded plugin.
    pub fn from_plugin(plugin: Plugin, number: usize) -> anyhow::Result<Harness> {
        let vm = plugin.start_vm(number)?;
        let mut harness = Harness {
            plugin,
            vm,
            exchanges: HashMap::new(),
            finished: HashMap::new(),
            calls: Vec::new(),
            tick_period: None,
            queue_ready: Vec::new(),
            max_buffer: 1 << 20,
        };
        let effects = harness.vm.take_effects();
        harness.route(effects);
        Ok(harness)
    }

    /// Another VM of the same plugin, numbered `number`: Envoy's next worker. It shares the
    /// compiled module and the [`HostEnv`] (shared data, queues, metrics) with this one.
    pub fn worker(&self, number: usize) -> anyhow::Result<Harness> {
        Harness::from_plugin(self.plugin.clone(), number)
    }

    /// The loaded plugin (e.g. to [`Plugin::start_deadline_ticker`]).
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// A harness with this configuration and these cluster names, and its own shared state.
    pub fn with_config(wasm: &[u8], configuration: &[u8], clusters: &[&str]) -> anyhow::Result<Harness> {
        let spec = PluginSpec {
            name: "test".into(),
            vm_id: "test".into(),
            configuration: configuration.to_vec(),
            clusters: clusters.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        };
        Harness::new(wasm, spec, HostEnv::new())
    }

    pub fn env(&self) -> &Arc<HostEnv> {
        self.plugin.env()
    }

    pub fn set_max_buffer(&mut self, bytes: usize) {
        self.max_buffer = bytes;
    }

    /// Starts a fresh VM in place of the current one (after a trap, say).
    pub fn replace_vm(&mut self) -> anyhow::Result<()> {
        self.vm = self.plugin.start_vm(self.vm.number())?;
        self.exchanges.clear();
        // What the new VM asked for while starting (its timer, say) is carried out as in `new`.
        let effects = self.vm.take_effects();
        self.route(effects);
        Ok(())
    }

    /// Sends a request: headers, then `body` (if any) as one chunk that ends the stream.
    pub fn request(&mut self, headers: &[(&str, &str)], body: &[u8]) -> Result<u32, VmError> {
        let id = self.open(headers, body.is_empty())?;
        if !body.is_empty() {
            self.request_data(id, body, true)?;
        }
        Ok(id)
    }

    /// Sends request headers with a body to follow through [`Harness::request_data`].
    pub fn start_request(&mut self, headers: &[(&str, &str)]) -> Result<u32, VmError> {
        self.open(headers, false)
    }

    fn open(&mut self, headers: &[(&str, &str)], end: bool) -> Result<u32, VmError> {
        let info = StreamInfo {
            source: "127.0.0.1:50000".parse().ok(),
            destination: "127.0.0.1:4000".parse().ok(),
            protocol: "HTTP/1.1".into(),
            connection_id: Some(1),
        };
        let (exchange, step) = Exchange::open(&mut self.vm, info, self.max_buffer)?;
        let id = exchange.context();
        self.exchanges.insert(id, (exchange, Recorded::default()));
        self.record(id, step);
        let headers = HeaderList::from_pairs(headers.iter().copied());
        let step = self.with_exchange(id, |exchange, vm| exchange.request_headers(vm, headers, end))?;
        self.record(id, step);
        Ok(id)
    }

    /// Sends more request body.
    pub fn request_data(&mut self, id: u32, data: &[u8], end: bool) -> Result<(), VmError> {
        let step = self.with_exchange(id, |exchange, vm| exchange.request_data(vm, data, end))?;
        self.record(id, step);
        Ok(())
    }

    /// The upstream answers: headers, then `body` as one chunk that ends the stream.
    pub fn respond(&mut self, id: u32, status: u16, headers: &[(&str, &str)], body: &[u8]) -> Result<(), VmError> {
        self.response_head(id, status, headers, body.is_empty())?;
        if !body.is_empty() {
            self.response_data(id, body, true)?;
        }
        Ok(())
    }

    /// The upstream answers with headers; the body follows through [`Harness::response_data`].
    pub fn start_response(&mut self, id: u32, status: u16, headers: &[(&str, &str)]) -> Result<(), VmError> {
        self.response_head(id, status, headers, false)
    }

    fn response_head(&mut self, id: u32, status: u16, headers: &[(&str, &str)], end: bool) -> Result<(), VmError> {
        let mut list = HeaderList::new();
        list.add(":status", status.to_string().as_bytes());
        for (name, value) in headers {
            list.add(name, value.as_bytes());
        }
        let step = self.with_exchange(id, |exchange, vm| exchange.response_headers(vm, list, end))?;
        self.record(id, step);
        Ok(())
    }

    /// The upstream sends more response body.
    pub fn response_data(&mut self, id: u32, data: &[u8], end: bool) -> Result<(), VmError> {
        let step = self.with_exchange(id, |exchange, vm| exchange.response_data(vm, data, end))?;
        self.record(id, step);
        Ok(())
    }

    /// Ends the exchange (`on_log`, `on_done`, `on_delete`) and returns what it recorded.
    pub fn finish(&mut self, id: u32) -> Result<Recorded, VmError> {
        let (exchange, mut recorded) = self.exchanges.remove(&id).ok_or(VmError::UnknownContext(id))?;
        let step = exchange.finish(&mut self.vm)?;
        recorded.annotations = step.annotations;
        self.route(step.others);
        self.finished.insert(id, recorded.clone());
        Ok(recorded)
    }

    /// What exchange `id` has produced so far.
    pub fn recorded(&self, id: u32) -> &Recorded {
        static EMPTY: std::sync::OnceLock<Recorded> = std::sync::OnceLock::new();
        self.exchanges
            .get(&id)
            .map(|(_, recorded)| recorded)
            .or_else(|| self.finished.get(&id))
            .unwrap_or_else(|| EMPTY.get_or_init(Recorded::default))
    }

    /// The HTTP calls dispatched since the last look.
    pub fn take_http_calls(&mut self) -> Vec<HttpCallRequest> {
        std::mem::take(&mut self.calls)
    }

    /// Answers call `token` (`None`: it failed) and carries out what the filter then asks.
    pub fn answer(&mut self, token: u32, response: Option<HttpCallResponse>) -> Result<(), VmError> {
        self.vm.on_http_call_response(token, response)?;
        let effects = self.vm.take_effects();
        self.route(effects);
        Ok(())
    }

    /// Answers call `token` as Envoy does when it timed out.
    pub fn time_out(&mut self, token: u32) -> Result<(), VmError> {
        self.answer(token, Some(HttpCallResponse::timeout()))
    }

    /// The tick period the filter asked for.
    pub fn tick_period(&self) -> Option<Duration> {
        self.tick_period
    }

    /// Fires the timer once.
    pub fn tick(&mut self) -> Result<(), VmError> {
        self.vm.on_tick()?;
        let effects = self.vm.take_effects();
        self.route(effects);
        Ok(())
    }

    /// Queue notifications produced so far, as (vm, context, queue).
    pub fn take_queue_ready(&mut self) -> Vec<(usize, u32, u32)> {
        std::mem::take(&mut self.queue_ready)
    }

    fn with_exchange(
        &mut self,
        id: u32,
        f: impl FnOnce(&mut Exchange, &mut Vm) -> Result<Step, VmError>,
    ) -> Result<Step, VmError> {
        let (exchange, _) = self.exchanges.get_mut(&id).ok_or(VmError::UnknownContext(id))?;
        f(exchange, &mut self.vm)
    }

    fn record(&mut self, id: u32, step: Step) {
        if let Some((_, recorded)) = self.exchanges.get_mut(&id) {
            for out in step.out {
                match out {
                    Out::RequestHeaders(headers, end) => {
                        recorded.upstream_headers = Some(headers);
                        recorded.upstream_complete |= end;
                    }
                    Out::RequestData(data, end) => {
                        recorded.upstream_body.extend_from_slice(&data);
                        recorded.upstream_complete |= end;
                    }
                    Out::Replied { .. } => recorded.replied = true,
                    Out::ResponseHeaders(headers, end) => {
                        recorded.response_headers = Some(headers);
                        recorded.response_complete |= end;
                    }
                    Out::ResponseData(data, end) => {
                        recorded.response_body.extend_from_slice(&data);
                        recorded.response_complete |= end;
                    }
                    Out::Reset => recorded.reset = true,
                    Out::Fail(status, why) => recorded.failed = Some((status, why)),
                }
            }
        }
        self.route(step.others);
    }

    /// Carries out effects that are not one exchange's own.
    fn route(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::HttpCall(call) => self.calls.push(call),
                Effect::TickPeriod(period) => self.tick_period = period,
                Effect::QueueReady { vm, context, queue } => self.queue_ready.push((vm, context, queue)),
                Effect::Continue { context, .. }
                | Effect::LocalReply { context, .. }
                | Effect::Close { context, .. } => {
                    let step = match self.exchanges.get_mut(&context) {
                        Some((exchange, _)) => exchange.apply(&mut self.vm, effect),
                        None => continue,
                    };
                    match step {
                        Ok(step) => self.record(context, step),
                        Err(error) => {
                            if let Some((_, recorded)) = self.exchanges.get_mut(&context) {
                                recorded.failed = Some((503, "the filter failed"));
                            }
                            tracing::error!("{error}");
                        }
                    }
                }
            }
        }
    }
}
