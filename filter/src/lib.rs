//! The ory-proxy filter.
//!
//! This file is glue: it wires the proxy-wasm callbacks to the decisions made by plain functions
//! in the modules beside it, which are unit-tested natively and again inside the runner's host.

pub mod cache;
pub mod check;
pub mod coalesce;
pub mod config;
pub mod cors;
pub mod decide;
pub mod endpoints;
pub mod entry;
pub mod forwarded;
pub mod headers;
pub mod load;
pub mod metrics;
pub mod negotiate;
pub mod origin;
pub mod paths;
pub mod reply;
pub mod rewrite;
pub mod session;
pub mod token;
pub mod upgrade;

/// The filter's version, shown by `ory-proxy --version` for the embedded module.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A callback makes many small allocations that live until it returns (header names and values,
/// edits, cache entries): with wasi-libc's dlmalloc about a third of the filter's time on a cached
/// request (perf, in the runner). Talc serves them faster: 1.5–3.5 % more requests a second through
/// the runner, open path and cached session alike (A/B on one machine).
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

#[cfg(target_arch = "wasm32")]
mod glue {
    //! The proxy-wasm side: one root context per VM (the configuration, the VM's table of whoami
    //! calls in flight, and the tick that sweeps the cache, releases open paths that waited long
    //! enough and asks again for requests whose caller went away) and one HTTP context per
    //! request. This file reads headers, calls the host and carries out what the modules decide:
    //! `decide` for requests and responses, `check` and `coalesce` for the session check.

    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;
    use std::time::UNIX_EPOCH;

    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};

    use crate::cache::{self, CredsHash, SharedStore, StoreError};
    use crate::check::{self, Cached};
    use crate::coalesce::{self, Ask, Caller, Coalescer, Question, Resolution};
    use crate::config::{Config, OryConfig};
    use crate::decide::{self, AppRequest, BodyCoding, RequestDecision, ResponseContext, SessionAction};
    use crate::endpoints;
    use crate::entry::SessionResult;
    use crate::headers::{HeaderEdit, header};
    use crate::load;
    use crate::metrics::{self, Counter};
    use crate::origin::{Origin, proxy_origin};
    use crate::reply::LocalResponse;
    use crate::session::{Credentials, WhoamiOutcome, classify_whoami, whoami_request_headers};
    use crate::upgrade;

    /// Cache slots looked at per sweep (one sweep every `load::SLOW_TICK`).
    const SWEEP_SLOTS_PER_TICK: u32 = 64;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> { Box::new(Root::new(context_id)) });
    }}

    /// The filter's metrics as the host knows them (ids are the host's), and when each whoami
    /// call still out was made.
    #[derive(Default)]
    struct Metrics {
        counters: HashMap<Counter, u32>,
        whoami_duration: Option<u32>,
        whoami_started: RefCell<HashMap<u32, u64>>,
    }

    impl Metrics {
        /// Defines every metric with the host (which keeps them across VMs).
        fn define() -> Metrics {
            let counters = Counter::ALL
                .iter()
                .filter_map(|&counter| {
                    hostcalls::define_metric(MetricType::Counter, counter.name()).ok().map(|id| (counter, id))
                })
                .collect();
            let whoami_duration = hostcalls::define_metric(MetricType::Histogram, metrics::WHOAMI_DURATION_MS).ok();
            Metrics { counters, whoami_duration, whoami_started: RefCell::default() }
        }

        fn count(&self, counter: Counter) {
            if let Some(&id) = self.counters.get(&counter) {
                let _ = hostcalls::increment_metric(id, 1);
            }
        }

        fn call_made(&self, token: u32, now_ms: u64) {
            self.whoami_started.borrow_mut().insert(token, now_ms);
        }

        /// A whoami call's answer arrived (`token`: the call's; none when it could not be made):
        /// its outcome and how long it took.
        fn call_answered(&self, token: Option<u32>, outcome: &WhoamiOutcome, now_ms: u64) {
            self.count(metrics::whoami_outcome(outcome));
            let started = token.and_then(|token| self.whoami_started.borrow_mut().remove(&token));
            if let (Some(started), Some(id)) = (started, self.whoami_duration) {
                let _ = hostcalls::record_metric(id, now_ms.saturating_sub(started));
            }
        }
    }

    /// Per-VM state shared by the root context and every request of the VM.
    #[derive(Default)]
    struct VmState {
        /// The whoami calls in flight and the requests paused for them, each with its flow (to
        /// resume it from whichever context the answer comes to).
        calls: Coalescer<Rc<RefCell<Flow>>>,
        sweep_cursor: u32,
        last_sweep_ms: u64,
    }

    /// What one request's callbacks need to remember.
    #[derive(Default)]
    struct Flow {
        /// The request asked to open a WebSocket: the one protocol switch let through.
        websocket: bool,
        path: Path,
    }

    /// The way the request took, with what its response needs.
    #[derive(Default)]
    enum Path {
        /// Not decided (no request headers seen), or no Ory configured: responses pass as they are.
        #[default]
        Passing,
        /// The filter answered itself: an endpoint, a refusal, or the session check's reply (with
        /// the session refresh's cookies from Ory's answer, if any).
        Local { seen: Seen, refresh_cookies: Vec<String> },
        /// A CORS preflight the filter answered: its CORS headers stay.
        Preflight { seen: Seen },
        /// Under `/.ory/`, on its way to Ory.
        Ory {
            seen: Seen,
            /// The path Ory is asked for (see `decide::OryRequest`).
            routed: String,
            /// The credentials of a logout, evicted again when its response comes.
            logout: Option<CredsHash>,
            /// Set by the response headers when the body is to be rewritten.
            body: Option<OryBody>,
        },
        /// For the app, paused (or about to be) until its session is known.
        CheckingSession { seen: Seen, app: AppRequest },
        /// Sent on to the app after the session check, with the session refresh's cookies.
        App { seen: Seen, refresh_cookies: Vec<String> },
    }

    /// What the response callbacks need of the request headers, read once.
    struct Seen {
        /// The proxy origin the client used.
        origin: Origin,
        /// The request's `Origin` header.
        request_origin: Option<String>,
        method: String,
    }

    /// An Ory response body to rewrite once it is all there, as the edited headers describe it.
    struct OryBody {
        coding: BodyCoding,
        /// The response was counted as rewritten already (for its headers).
        counted: bool,
    }

    impl Path {
        /// What `decide::decide_response` needs; None when the response passes untouched.
        fn response_context(&self) -> Option<ResponseContext<'_>> {
            let (seen, preflight, local, ory_routed, refresh_cookies): (_, _, _, _, &[String]) = match self {
                Path::Passing => return None,
                Path::Local { seen, refresh_cookies } => (seen, false, true, None, refresh_cookies),
                Path::Preflight { seen } => (seen, true, true, None, &[]),
                Path::Ory { seen, routed, .. } => (seen, false, false, Some(routed.as_str()), &[]),
                Path::CheckingSession { seen, .. } => (seen, false, false, None, &[]),
                Path::App { seen, refresh_cookies } => (seen, false, false, None, refresh_cookies),
            };
            Some(ResponseContext {
                origin: &seen.origin,
                request_origin: seen.request_origin.as_deref(),
                method: &seen.method,
                preflight,
                local,
                ory_routed,
                refresh_cookies,
            })
        }
    }

    struct Root {
        id: u32,
        config: Option<Rc<Config>>,
        vm: Rc<RefCell<VmState>>,
        metrics: Rc<Metrics>,
    }

    impl Root {
        fn new(id: u32) -> Root {
            Root { id, config: None, vm: Rc::new(RefCell::new(VmState::default())), metrics: Rc::default() }
        }
    }

    impl Context for Root {
        fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _trailers: usize) {
            let Some(config) = self.config.clone() else { return };
            let Some(ory) = config.ory.as_ref() else { return };
            let Some(resolution) = self.vm.borrow_mut().calls.answered(Caller::Root, token_id) else { return };
            let answer = read_call_response(num_headers, body_size);
            resolve(&config, ory, &self.metrics, Some(token_id), resolution, answer, self.id);
        }
    }

    impl RootContext for Root {
        fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
            let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
                .ok()
                .flatten()
                .unwrap_or_default();
            match Config::from_json(&bytes) {
                Ok(config) => {
                    let mode = match &config.ory {
                        Some(ory) => format!("Ory at {} (cluster {})", ory.issuer, ory.cluster),
                        None => "JWKS only (no Ory configured)".to_string(),
                    };
                    let source = match &config.signing_key_env {
                        Some(name) => format!(" (from the environment variable {name})"),
                        None => String::new(),
                    };
                    log::info!("configured: {mode}; signing key id {}{source}", config.signing_key.kid());
                    if let Some(ory) = &config.ory {
                        let _ = hostcalls::set_tick_period(load::tick_period(&ory.load));
                        self.metrics = Rc::new(Metrics::define());
                    }
                    self.config = Some(Rc::new(config));
                    true
                }
                Err(err) => {
                    log::error!("{err}");
                    false
                }
            }
        }

        fn on_tick(&mut self) {
            let Some(config) = self.config.clone() else { return };
            let Some(ory) = config.ory.as_ref() else { return };
            let now = now_ms();
            {
                let mut vm = self.vm.borrow_mut();
                if load::slow_work_due(vm.last_sweep_ms, now) {
                    vm.sweep_cursor = cache::sweep(&HostStore, &ory.cache, vm.sweep_cursor, SWEEP_SLOTS_PER_TICK, now);
                    vm.last_sweep_ms = now;
                }
            }
            let released = self.vm.borrow_mut().calls.release_overdue(now);
            if !released.is_empty() {
                let result = coalesce::overdue_result(&ory.load);
                for (id, flow) in released {
                    settle(ory, &self.metrics, id, &flow, &result, &[]);
                }
                let _ = hostcalls::set_effective_context(self.id);
            }
            let metrics = &self.metrics;
            let failed = self.vm.borrow_mut().calls.redispatch(|creds| dispatch_whoami(ory, metrics, creds, now));
            for (resolution, why) in failed {
                resolve(&config, ory, metrics, None, resolution, CallAnswer::failed(why), self.id);
            }
        }

        fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
            let config = self.config.clone()?;
            let (vm, metrics) = (self.vm.clone(), self.metrics.clone());
            Some(Box::new(Request { id: context_id, config, vm, metrics, flow: Rc::default() }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    /// One per HTTP request.
    struct Request {
        id: u32,
        config: Rc<Config>,
        vm: Rc<RefCell<VmState>>,
        metrics: Rc<Metrics>,
        flow: Rc<RefCell<Flow>>,
    }

    impl Context for Request {
        fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _trailers: usize) {
            let Some(ory) = self.config.ory.as_ref() else { return };
            let Some(resolution) = self.vm.borrow_mut().calls.answered(Caller::Request(self.id), token_id) else {
                return;
            };
            let answer = read_call_response(num_headers, body_size);
            resolve(&self.config, ory, &self.metrics, Some(token_id), resolution, answer, self.id);
        }

        fn on_done(&mut self) -> bool {
            self.vm.borrow_mut().calls.gone(self.id);
            true
        }
    }

    impl HttpContext for Request {
        fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
            let headers = read_map(MapType::HttpRequestHeaders);
            self.flow.borrow_mut().websocket = upgrade::asks_for_websocket(&headers);
            let method = header(&headers, ":method").unwrap_or_default();
            let path = header(&headers, ":path").unwrap_or_default();
            let config = self.config.clone();
            let asked = endpoints::Asked {
                method,
                path,
                if_none_match: header(&headers, "if-none-match"),
                now_unix: now_ms() / 1000,
            };
            let Some(ory) = config.ory.as_ref() else {
                // JWKS only.
                return match endpoints::answer(&config, asked) {
                    Some(response) => send_reply(&response),
                    None => Action::Continue,
                };
            };
            let seen = Seen {
                origin: proxy_origin(
                    header(&headers, ":scheme"),
                    header(&headers, ":authority"),
                    &ory.public_origin,
                    &ory.proxy_names,
                ),
                request_origin: header(&headers, "origin").map(str::to_string),
                method: method.to_string(),
            };
            if let Some(response) = endpoints::answer(&config, asked) {
                self.flow.borrow_mut().path = Path::Local { seen, refresh_cookies: Vec::new() };
                return send_reply(&response);
            }
            let client = hostcalls::get_property(vec!["source", "address"])
                .ok()
                .flatten()
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
            match decide::decide_request(ory, seen.origin.clone(), &headers, client.as_deref()) {
                RequestDecision::Reply(response) => {
                    self.flow.borrow_mut().path = Path::Local { seen, refresh_cookies: Vec::new() };
                    send_reply(&response)
                }
                RequestDecision::Preflight(response) => {
                    self.flow.borrow_mut().path = Path::Preflight { seen };
                    send_reply(&response)
                }
                RequestDecision::Ory(request) => {
                    apply_edits(MapType::HttpRequestHeaders, &request.edits);
                    let logout =
                        request.logout.then(|| Credentials::from_headers(&headers, &ory.session_cookie_prefixes));
                    let logout = logout.filter(|creds| !creds.is_empty()).map(|creds| {
                        let hash = CredsHash::of(&creds);
                        evict(ory, &hash);
                        hash
                    });
                    self.flow.borrow_mut().path = Path::Ory { seen, routed: request.routed, logout, body: None };
                    Action::Continue
                }
                RequestDecision::App(mut request) => {
                    apply_edits(MapType::HttpRequestHeaders, &std::mem::take(&mut request.edits));
                    self.check_session(ory, seen, request)
                }
            }
        }

        fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
            let headers = read_map(MapType::HttpResponseHeaders);
            if let Some(refusal) = upgrade::refused_switch(self.flow.borrow().websocket, &headers) {
                log::warn!("refused a protocol switch nobody asked for");
                return send_reply(&refusal);
            }
            let Some(ory) = self.config.ory.as_ref() else { return Action::Continue };
            let mut flow = self.flow.borrow_mut();
            let Some(context) = flow.path.response_context() else { return Action::Continue };
            if let Path::Ory { logout: Some(hash), .. } = &flow.path {
                evict(ory, hash);
            }
            let decision = decide::decide_response(ory, &context, &headers);
            if decision.moved_ory_headers {
                self.metrics.count(Counter::OryResponsesRewritten);
            }
            apply_edits(MapType::HttpResponseHeaders, &decision.edits);
            if let (Some(coding), Path::Ory { body, .. }) = (decision.rewrite_body, &mut flow.path) {
                *body = Some(OryBody { coding, counted: decision.moved_ory_headers });
            }
            Action::Continue
        }

        fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
            let Some(ory) = self.config.ory.as_ref() else { return Action::Continue };
            let flow = self.flow.borrow();
            let Path::Ory { seen, body: Some(rewrite), .. } = &flow.path else { return Action::Continue };
            if !end_of_stream {
                // Buffer until the whole body is there; the host accumulates it.
                return Action::Pause;
            }
            let body =
                hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size).ok().flatten().unwrap_or_default();
            if let Some(rewritten) = decide::rewrite_ory_body(
                ory,
                &seen.origin,
                &body,
                rewrite.coding.content_type.as_deref(),
                rewrite.coding.content_encoding.as_deref(),
            ) {
                if !rewrite.counted {
                    self.metrics.count(Counter::OryResponsesRewritten);
                }
                if let Err(status) = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &rewritten) {
                    log::warn!("could not replace the Ory response body: {status:?}");
                }
            }
            Action::Continue
        }
    }

    impl Request {
        /// The session check of an app request: the cache, then Ory (one whoami call per
        /// credentials in flight, shared by the requests that need it).
        fn check_session(&mut self, ory: &OryConfig, seen: Seen, mut request: AppRequest) -> Action {
            let creds = std::mem::take(&mut request.credentials);
            let protected = request.protected;
            self.flow.borrow_mut().path = Path::CheckingSession { seen, app: request };
            if creds.is_empty() {
                // Nothing Ory could know the client by: no session, without asking.
                return self.finish(ory, &SessionResult::NoSession);
            }
            let hash = CredsHash::of(&creds);
            let now = now_ms();
            let previous = match check::cached(ory, &self.config.signing_key, &HostStore, &hash, now) {
                Cached::Known(result) => {
                    self.metrics.count(Counter::SessionCacheHits);
                    return self.finish(ory, &result);
                }
                Cached::Resigned(result) => {
                    self.metrics.count(Counter::SessionCacheHits);
                    self.metrics.count(Counter::TokensSigned);
                    return self.finish(ory, &result);
                }
                Cached::Ask { previous } => previous,
            };
            self.metrics.count(Counter::SessionCacheMisses);
            let question = Question { request: self.id, hash, creds, previous, protected, resume: self.flow.clone() };
            let metrics = &self.metrics;
            let asked = self
                .vm
                .borrow_mut()
                .calls
                .ask(&ory.load, question, now, |creds| dispatch_whoami(ory, metrics, creds, now));
            match asked {
                Ask::Joined | Ask::Called => Action::Pause,
                Ask::Busy(why) => {
                    if protected {
                        log::warn!("not asking Ory about a protected request: {why}");
                    }
                    self.finish(ory, &SessionResult::Unavailable(why))
                }
                Ask::Failed(why) => {
                    self.metrics.count(Counter::WhoamiFailed);
                    log::warn!("{why}");
                    self.finish(ory, &SessionResult::Unavailable(why))
                }
            }
        }

        /// Carries out the session decision for this request, inside its own callback.
        fn finish(&mut self, ory: &OryConfig, result: &SessionResult) -> Action {
            let Some(action) = conclude(ory, &self.metrics, &mut self.flow.borrow_mut(), result, &[]) else {
                return Action::Continue;
            };
            match action {
                SessionAction::Continue { authorization } => {
                    if let Some(value) = authorization {
                        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, "authorization", Some(&value));
                    }
                    Action::Continue
                }
                SessionAction::Reply(response) => send_reply(&response),
            }
        }
    }

    /// A whoami answer as read from the host.
    struct CallAnswer {
        outcome: WhoamiOutcome,
        set_cookies: Vec<String>,
    }

    impl CallAnswer {
        fn failed(why: String) -> CallAnswer {
            CallAnswer { outcome: WhoamiOutcome::Unavailable(why), set_cookies: Vec::new() }
        }
    }

    fn read_call_response(num_headers: usize, body_size: usize) -> CallAnswer {
        if num_headers == 0 {
            return CallAnswer::failed("the whoami call failed (no connection to Ory)".to_string());
        }
        let headers = read_map(MapType::HttpCallResponseHeaders);
        let status = header(&headers, ":status").and_then(|status| status.trim().parse().ok());
        let body =
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default();
        let set_cookies = headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, value)| value.clone())
            .collect();
        CallAnswer { outcome: classify_whoami(status, &body), set_cookies }
    }

    /// Turns a whoami answer into the result for every request of its round, caches it, and
    /// resumes (or answers) each of them. `current` is the context the host is running now.
    fn resolve(
        config: &Config,
        ory: &OryConfig,
        metrics: &Metrics,
        token: Option<u32>,
        resolution: Resolution<Rc<RefCell<Flow>>>,
        answer: CallAnswer,
        current: u32,
    ) {
        let previous = resolution.previous.as_ref();
        let now = now_ms();
        metrics.call_answered(token, &answer.outcome, now);
        let answered =
            check::answered(ory, &config.signing_key, &HostStore, &resolution.hash, answer.outcome, previous, now);
        if answered.signed {
            metrics.count(Counter::TokensSigned);
        }
        for (id, flow) in resolution.resumed {
            settle(ory, metrics, id, &flow, &answered.result, &answer.set_cookies);
        }
        let _ = hostcalls::set_effective_context(current);
    }

    /// Resumes (or answers) the paused request `id` with its session result, from whichever
    /// context the host is running: the caller restores the effective context afterwards.
    fn settle(
        ory: &OryConfig,
        metrics: &Metrics,
        id: u32,
        flow: &Rc<RefCell<Flow>>,
        result: &SessionResult,
        set_cookies: &[String],
    ) {
        if hostcalls::set_effective_context(id).is_err() {
            return;
        }
        let Some(action) = conclude(ory, metrics, &mut flow.borrow_mut(), result, set_cookies) else { return };
        match action {
            SessionAction::Continue { authorization } => {
                if let Some(value) = authorization {
                    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, "authorization", Some(&value));
                }
                let _ = hostcalls::resume_http_request();
            }
            SessionAction::Reply(response) => {
                send_reply(&response);
            }
        }
    }

    /// Ends a request's session check with `result` (in the request's own context): the decision,
    /// the path it takes from here, a warning when an unprotected request goes on without a JWT,
    /// and the result noted for hosts that keep an access log (the runner does). None when the
    /// request is not checking a session.
    fn conclude(
        ory: &OryConfig,
        metrics: &Metrics,
        flow: &mut Flow,
        result: &SessionResult,
        set_cookies: &[String],
    ) -> Option<SessionAction> {
        let (seen, request) = match std::mem::take(&mut flow.path) {
            Path::CheckingSession { seen, app } => (seen, app),
            other => {
                flow.path = other;
                return None;
            }
        };
        let _ = hostcalls::set_property(vec!["access_log", "session"], Some(result.label().as_bytes()));
        if let SessionResult::Unavailable(why) | SessionResult::Failed(why) = result
            && !request.protected
        {
            log::warn!("session check failed, continuing without a JWT: {why}");
        }
        let action = decide::session_action(ory, &request, result);
        metrics.count(metrics::request_outcome(result, &action));
        let refresh_cookies = set_cookies.to_vec();
        flow.path = match action {
            SessionAction::Continue { .. } => Path::App { seen, refresh_cookies },
            SessionAction::Reply(_) => Path::Local { seen, refresh_cookies },
        };
        Some(action)
    }

    fn dispatch_whoami(ory: &OryConfig, metrics: &Metrics, creds: &Credentials, now_ms: u64) -> Result<u32, String> {
        let headers = whoami_request_headers(&ory.target.authority(), ory.target.base_path(), creds);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let token = hostcalls::dispatch_http_call(&ory.cluster, headers, None, vec![], ory.whoami_timeout)
            .map_err(|status| format!("the whoami call to cluster {:?} could not be made: {status:?}", ory.cluster))?;
        metrics.call_made(token, now_ms);
        Ok(token)
    }

    fn evict(ory: &OryConfig, hash: &CredsHash) {
        if cache::evict(&HostStore, &ory.cache, hash, now_ms()).is_err() {
            log::warn!("could not evict a logged-out session from the cache");
        }
    }

    /// Answers the current request locally.
    fn send_reply(response: &LocalResponse) -> Action {
        let headers: Vec<(&str, &str)> = response.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let body = (!response.body.is_empty()).then_some(response.body.as_slice());
        if let Err(status) = hostcalls::send_http_response(response.status, headers, body) {
            log::error!("could not send a local response: {status:?}");
        }
        Action::Pause
    }

    /// A header map as text (values that are not UTF-8 are read lossily; they are written back
    /// only if the decision changes them).
    fn read_map(map: MapType) -> Vec<(String, String)> {
        hostcalls::get_map_bytes(map)
            .unwrap_or_default()
            .into_iter()
            // Valid UTF-8 (nearly always) keeps its buffer; anything else is read lossily.
            .map(|(name, value)| {
                let value = String::from_utf8(value)
                    .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned());
                (name, value)
            })
            .collect()
    }

    fn apply_edits(map: MapType, edits: &[HeaderEdit]) {
        for edit in edits {
            let result = match edit {
                HeaderEdit::Remove(name) => hostcalls::remove_map_value(map, name),
                HeaderEdit::Set(name, value) => hostcalls::set_map_value(map, name, Some(value)),
                HeaderEdit::Add(name, value) => hostcalls::add_map_value(map, name, value),
            };
            if let Err(status) = result {
                log::warn!("header edit {edit:?} failed: {status:?}");
            }
        }
    }

    fn now_ms() -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|now| now.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    /// The cache's store: proxy-wasm shared data, shared by every VM of the process.
    struct HostStore;

    impl SharedStore for HostStore {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            match hostcalls::get_shared_data(key) {
                Ok((Some(value), cas)) => Some((value, cas.unwrap_or(0))),
                Ok((None, Some(cas))) => Some((Vec::new(), cas)),
                _ => None,
            }
        }

        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
            match hostcalls::set_shared_data(key, Some(value), (cas != 0).then_some(cas)) {
                Ok(()) => Ok(()),
                Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
                Err(_) => Err(StoreError::Other),
            }
        }
    }
}
