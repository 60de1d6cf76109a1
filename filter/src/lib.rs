//! The ory-proxy filter.
//!
//! This file is glue: it wires the proxy-wasm callbacks to the decisions made by plain functions
//! in the modules beside it, which are unit-tested natively and again inside the runner's host.

pub mod cache;
pub mod config;
pub mod cors;
pub mod decide;
pub mod endpoints;
pub mod entry;
pub mod forwarded;
pub mod headers;
pub mod load;
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

#[cfg(target_arch = "wasm32")]
mod glue {
    //! The proxy-wasm side: one root context per VM (configuration, the per-VM table of whoami
    //! calls in flight, the tick that sweeps the cache and lets open paths stop waiting) and one
    //! HTTP context per request. Decisions are made in
    //! `decide` and the modules it builds on; this file reads headers, calls the host and carries
    //! the plans out.

    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;
    use std::time::UNIX_EPOCH;

    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, Status};

    use crate::cache::{self, CacheLookup, CredsHash, InFlight, Joined, Negative, Positive, SharedStore, StoreError};
    use crate::config::{Config, OryConfig};
    use crate::decide::{self, AppRequest, RequestDecision, ResponseContext, SessionAction};
    use crate::endpoints;
    use crate::entry::{self, SessionResult};
    use crate::headers::{self, HeaderEdit, header};
    use crate::load::{self, Admission};
    use crate::origin::{Origin, proxy_origin};
    use crate::reply::LocalResponse;
    use crate::session::{Credentials, Session, WhoamiOutcome, classify_whoami, whoami_request_headers};
    use crate::upgrade;

    /// Cache slots looked at per sweep (one sweep every `load::SLOW_TICK`).
    const SWEEP_SLOTS_PER_TICK: u32 = 64;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> { Box::new(Root::new(context_id)) });
    }}

    /// Per-VM state shared by the root context and every request of the VM.
    #[derive(Default)]
    struct VmState {
        inflight: InFlight,
        /// The whoami call in flight per credentials.
        pending: HashMap<CredsHash, Pending>,
        /// Requests paused until a whoami answer, by context id.
        waiting: HashMap<u32, Rc<RefCell<Flow>>>,
        /// Calls the root context made (for requests whose own caller went away), by token.
        root_calls: HashMap<u32, CredsHash>,
        sweep_cursor: u32,
        last_sweep_ms: u64,
    }

    struct Pending {
        creds: Credentials,
        /// The expired cache entry whose JWT may be reused if Ory confirms the same session.
        previous: Option<Positive>,
        /// The request whose context made the call; None once it went away (the root then asks
        /// again on its next tick, for the requests still waiting).
        caller: Option<u32>,
        root_token: Option<u32>,
    }

    /// What one request's callbacks need to remember.
    #[derive(Default)]
    struct Flow {
        origin: Option<Origin>,
        request_origin: Option<String>,
        method: String,
        preflight: bool,
        local: bool,
        ory_routed: Option<String>,
        /// Credentials of a logout request, evicted again when its response comes.
        logout: Option<CredsHash>,
        app: Option<AppRequest>,
        refresh_cookies: Vec<String>,
        /// Paused for the whoami answer about these credentials.
        waiting_on: Option<CredsHash>,
        /// When an open path stops waiting and goes on without a JWT (ms; see `load`).
        deadline_ms: Option<u64>,
        /// The whoami call this request made (its answer comes to this context, and still fills
        /// the cache after the request stopped waiting).
        calling: Option<CredsHash>,
        rewrite_body: bool,
        content_type: Option<String>,
        content_encoding: Option<String>,
        /// The request asked to open a WebSocket: the one protocol switch let through.
        websocket: bool,
    }

    struct Root {
        id: u32,
        config: Option<Rc<Config>>,
        vm: Rc<RefCell<VmState>>,
    }

    impl Root {
        fn new(id: u32) -> Root {
            Root { id, config: None, vm: Rc::new(RefCell::new(VmState::default())) }
        }

        /// Open paths that waited their time for Ory go on without a JWT; the calls they wait
        /// for stay out, for the others and for the cache.
        fn release_overdue(&self, ory: &OryConfig, now: u64) {
            let due = {
                let vm = self.vm.borrow();
                load::overdue(vm.waiting.iter().map(|(id, flow)| (*id, flow.borrow().deadline_ms)), now)
            };
            if due.is_empty() {
                return;
            }
            let wait = ory.load.open_path_wait.as_millis();
            let result =
                SessionResult::Unavailable(format!("Ory did not answer within the open-path wait ({wait} ms)"));
            for id in due {
                let flow = {
                    let mut vm = self.vm.borrow_mut();
                    let Some(flow) = vm.waiting.remove(&id) else { continue };
                    if let Some(hash) = flow.borrow_mut().waiting_on.take() {
                        vm.inflight.leave(&hash, id);
                    }
                    flow
                };
                flow.borrow_mut().deadline_ms = None;
                settle(ory, id, &flow, &result, &[]);
            }
            let _ = hostcalls::set_effective_context(self.id);
        }
    }

    impl Context for Root {
        fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _trailers: usize) {
            let Some(ory) = self.config.as_ref().and_then(|config| config.ory.as_ref()) else { return };
            let Some(hash) = self.vm.borrow_mut().root_calls.remove(&token_id) else { return };
            let answer = read_call_response(num_headers, body_size);
            let config = self.config.clone();
            if let Some(config) = config {
                resolve(&config, ory, &self.vm, hash, answer, self.id);
            }
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
            self.release_overdue(ory, now);
            // Requests still waiting for a call whose caller went away: ask again, from here.
            let orphans: Vec<(CredsHash, Credentials)> = self
                .vm
                .borrow()
                .pending
                .iter()
                .filter(|(_, pending)| pending.caller.is_none() && pending.root_token.is_none())
                .map(|(hash, pending)| (*hash, pending.creds.clone()))
                .collect();
            for (hash, creds) in orphans {
                match dispatch_whoami(ory, &creds) {
                    Ok(token) => {
                        let mut vm = self.vm.borrow_mut();
                        vm.root_calls.insert(token, hash);
                        if let Some(pending) = vm.pending.get_mut(&hash) {
                            pending.root_token = Some(token);
                        }
                    }
                    Err(why) => {
                        resolve(&config, ory, &self.vm, hash, CallAnswer::failed(why), self.id);
                    }
                }
            }
        }

        fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
            let config = self.config.clone()?;
            Some(Box::new(Request { id: context_id, config, vm: self.vm.clone(), flow: Rc::default() }))
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
        flow: Rc<RefCell<Flow>>,
    }

    impl Context for Request {
        fn on_http_call_response(&mut self, _token_id: u32, num_headers: usize, body_size: usize, _trailers: usize) {
            let Some(ory) = self.config.ory.as_ref() else { return };
            let Some(hash) = self.flow.borrow_mut().calling.take() else { return };
            // Only the call still pending for these credentials counts (the root may have asked
            // again after this request went away, or the answer came already).
            let current = self.vm.borrow().pending.get(&hash).is_some_and(|pending| pending.caller == Some(self.id));
            if !current {
                return;
            }
            let answer = read_call_response(num_headers, body_size);
            resolve(&self.config, ory, &self.vm, hash, answer, self.id);
        }

        fn on_done(&mut self) -> bool {
            let (waiting_on, calling) = {
                let mut flow = self.flow.borrow_mut();
                (flow.waiting_on.take(), flow.calling.take())
            };
            let Some(hash) = waiting_on.or(calling) else { return true };
            let mut vm = self.vm.borrow_mut();
            if waiting_on.is_some() {
                vm.waiting.remove(&self.id);
                vm.inflight.leave(&hash, self.id);
            }
            let still_waiting = vm.waiting.values().any(|flow| flow.borrow().waiting_on == Some(hash));
            let caller = vm.pending.get(&hash).and_then(|pending| pending.caller);
            if still_waiting {
                if caller == Some(self.id)
                    && let Some(pending) = vm.pending.get_mut(&hash)
                {
                    // Hosts cancel a gone request's calls: the root asks again for the others.
                    pending.caller = None;
                }
            } else if caller.is_none_or(|caller| caller == self.id) {
                // Nobody needs the answer and no live request will get it: the call is over
                // (it no longer counts against the bound), and the next request asks afresh.
                vm.inflight.complete(&hash);
                vm.pending.remove(&hash);
            }
            true
        }
    }

    impl HttpContext for Request {
        fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
            let headers = read_map(MapType::HttpRequestHeaders);
            self.flow.borrow_mut().websocket = upgrade::asks_for_websocket(&headers);
            let method = header(&headers, ":method").unwrap_or_default().to_string();
            let path = header(&headers, ":path").unwrap_or_default().to_string();
            let config = self.config.clone();
            let Some(ory) = config.ory.as_ref() else {
                // JWKS only.
                return match endpoints::answer(&self.config, &method, &path) {
                    Some(response) => {
                        self.flow.borrow_mut().local = true;
                        send_reply(&response)
                    }
                    None => Action::Continue,
                };
            };
            {
                let mut flow = self.flow.borrow_mut();
                flow.origin = Some(proxy_origin(
                    header(&headers, ":scheme"),
                    header(&headers, ":authority"),
                    &ory.public_origin,
                    &ory.proxy_names,
                ));
                flow.request_origin = header(&headers, "origin").map(str::to_string);
                flow.method = method.clone();
            }
            if let Some(response) = endpoints::answer(&self.config, &method, &path) {
                self.flow.borrow_mut().local = true;
                return send_reply(&response);
            }
            let client = hostcalls::get_property(vec!["source", "address"])
                .ok()
                .flatten()
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
            match decide::decide_request(ory, &headers, client.as_deref()) {
                RequestDecision::Reply(response) => {
                    self.flow.borrow_mut().local = true;
                    send_reply(&response)
                }
                RequestDecision::Preflight(response) => {
                    let mut flow = self.flow.borrow_mut();
                    flow.local = true;
                    flow.preflight = true;
                    drop(flow);
                    send_reply(&response)
                }
                RequestDecision::Ory(request) => {
                    apply_edits(MapType::HttpRequestHeaders, &headers, &request.headers);
                    let mut flow = self.flow.borrow_mut();
                    flow.ory_routed = Some(request.routed);
                    if request.logout {
                        let creds = Credentials::from_headers(&headers, &ory.session_cookie_prefixes);
                        if !creds.is_empty() {
                            let hash = CredsHash::of(&creds);
                            evict(ory, &hash);
                            flow.logout = Some(hash);
                        }
                    }
                    Action::Continue
                }
                RequestDecision::App(request) => {
                    apply_edits(MapType::HttpRequestHeaders, &headers, &request.headers);
                    self.check_session(ory, request)
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
            let Some(origin) = flow.origin.clone() else { return Action::Continue };
            if let Some(hash) = flow.logout {
                evict(ory, &hash);
            }
            let context = ResponseContext {
                origin: &origin,
                request_origin: flow.request_origin.as_deref(),
                method: &flow.method,
                preflight: flow.preflight,
                local: flow.local,
                ory_routed: flow.ory_routed.as_deref(),
                refresh_cookies: &flow.refresh_cookies,
            };
            let decision = decide::decide_response(ory, &context, &headers);
            apply_edits(MapType::HttpResponseHeaders, &headers, &decision.headers);
            if decision.rewrite_body {
                flow.rewrite_body = true;
                flow.content_type = header(&decision.headers, "content-type").map(str::to_string);
                flow.content_encoding = header(&decision.headers, "content-encoding").map(str::to_string);
            }
            Action::Continue
        }

        fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
            let Some(ory) = self.config.ory.as_ref() else { return Action::Continue };
            let flow = self.flow.borrow();
            if !flow.rewrite_body {
                return Action::Continue;
            }
            if !end_of_stream {
                // Buffer until the whole body is there; the host accumulates it.
                return Action::Pause;
            }
            let Some(origin) = flow.origin.as_ref() else { return Action::Continue };
            let body =
                hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size).ok().flatten().unwrap_or_default();
            if let Some(rewritten) = decide::rewrite_ory_body(
                ory,
                origin,
                &body,
                flow.content_type.as_deref(),
                flow.content_encoding.as_deref(),
            ) && let Err(status) = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &rewritten)
            {
                log::warn!("could not replace the Ory response body: {status:?}");
            }
            Action::Continue
        }
    }

    impl Request {
        /// The session check of an app request: cache, then one whoami call per credentials.
        fn check_session(&mut self, ory: &OryConfig, request: AppRequest) -> Action {
            let creds = decide::session_credentials(ory, &request);
            let protected = request.protected;
            self.flow.borrow_mut().app = Some(request);
            if creds.is_empty() {
                // Nothing Ory could know the client by: no session, without asking.
                return self.finish(ory, &SessionResult::NoSession);
            }
            let hash = CredsHash::of(&creds);
            let now = now_ms();
            let result = match cache::lookup(&HostStore, &ory.cache, &hash, now) {
                CacheLookup::Fresh(entry) => entry::active_result(ory, &entry),
                CacheLookup::NeedsResign(entry) if !ory.jwt.enabled => entry::active_result(ory, &entry),
                CacheLookup::NeedsResign(entry) => {
                    let session = Session { json: entry.session_json, identity_id: entry.identity_id };
                    match entry::active_entry(ory, &self.config.signing_key, &session, None, now) {
                        Ok(entry) => {
                            let result = entry::active_result(ory, &entry);
                            let _ = cache::store_positive(&HostStore, &ory.cache, &hash, entry, now);
                            result
                        }
                        Err(why) => SessionResult::Failed(why),
                    }
                }
                CacheLookup::Negative(Negative::NoSession) => SessionResult::NoSession,
                CacheLookup::Negative(Negative::Aal2Required { redirect_browser_to }) => {
                    SessionResult::Aal2Required { redirect_browser_to }
                }
                CacheLookup::Miss { previous } => return self.ask_ory(ory, hash, creds, previous, protected, now),
            };
            self.finish(ory, &result)
        }

        /// Joins the whoami call in flight for these credentials, makes it, or (with the VM's
        /// calls at their bound) goes on without asking. Open paths wait only so long.
        fn ask_ory(
            &mut self,
            ory: &OryConfig,
            hash: CredsHash,
            creds: Credentials,
            previous: Option<Positive>,
            protected: bool,
            now: u64,
        ) -> Action {
            let admission = {
                let vm = self.vm.borrow();
                load::admit(&ory.load, vm.inflight.is_pending(&hash), vm.inflight.len())
            };
            if admission == Admission::Busy {
                let why = format!(
                    "{} whoami calls are already in flight in this VM (the most it makes at once)",
                    ory.load.max_concurrent_whoami
                );
                if protected {
                    log::warn!("not asking Ory about a protected request: {why}");
                }
                return self.finish(ory, &SessionResult::Unavailable(why));
            }
            {
                let mut flow = self.flow.borrow_mut();
                flow.waiting_on = Some(hash);
                flow.deadline_ms = load::wait_deadline(&ory.load, protected, now);
            }
            let joined = {
                let mut vm = self.vm.borrow_mut();
                vm.waiting.insert(self.id, self.flow.clone());
                vm.inflight.join(hash, self.id)
            };
            if joined == Joined::Waiting {
                return Action::Pause;
            }
            match dispatch_whoami(ory, &creds) {
                Ok(_token) => {
                    let pending = Pending { creds, previous, caller: Some(self.id), root_token: None };
                    self.vm.borrow_mut().pending.insert(hash, pending);
                    self.flow.borrow_mut().calling = Some(hash);
                    Action::Pause
                }
                Err(why) => {
                    {
                        let mut vm = self.vm.borrow_mut();
                        vm.inflight.complete(&hash);
                        vm.waiting.remove(&self.id);
                    }
                    {
                        let mut flow = self.flow.borrow_mut();
                        flow.waiting_on = None;
                        flow.deadline_ms = None;
                    }
                    log::warn!("{why}");
                    self.finish(ory, &SessionResult::Unavailable(why))
                }
            }
        }

        /// Carries out the session decision for this request, inside its own callback.
        fn finish(&mut self, ory: &OryConfig, result: &SessionResult) -> Action {
            let Some(action) = session_action_for(ory, &self.flow.borrow(), result) else { return Action::Continue };
            match action {
                SessionAction::Continue { authorization } => {
                    if let Some(value) = authorization {
                        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, "authorization", Some(&value));
                    }
                    Action::Continue
                }
                SessionAction::Reply(response) => {
                    self.flow.borrow_mut().local = true;
                    send_reply(&response)
                }
            }
        }
    }

    /// A whoami answer as read from the host.
    struct CallAnswer {
        status: Option<u16>,
        body: Vec<u8>,
        set_cookies: Vec<String>,
        failure: Option<String>,
    }

    impl CallAnswer {
        fn failed(why: String) -> CallAnswer {
            CallAnswer { status: None, body: Vec::new(), set_cookies: Vec::new(), failure: Some(why) }
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
        CallAnswer { status, body, set_cookies, failure: None }
    }

    /// Turns a whoami answer into the result for every request waiting on it, caches it, and
    /// resumes (or answers) each of them. `current` is the context the host is running now.
    fn resolve(
        config: &Config,
        ory: &OryConfig,
        vm: &Rc<RefCell<VmState>>,
        hash: CredsHash,
        answer: CallAnswer,
        current: u32,
    ) {
        let (waiters, pending) = {
            let mut vm = vm.borrow_mut();
            (vm.inflight.complete(&hash), vm.pending.remove(&hash))
        };
        if let Some(token) = pending.as_ref().and_then(|pending| pending.root_token) {
            vm.borrow_mut().root_calls.remove(&token);
        }
        let now = now_ms();
        let outcome = match answer.failure {
            Some(why) => WhoamiOutcome::Unavailable(why),
            None => classify_whoami(answer.status, &answer.body),
        };
        let result = match outcome {
            WhoamiOutcome::Active(session) => {
                let previous = pending.as_ref().and_then(|pending| pending.previous.as_ref());
                match entry::active_entry(ory, &config.signing_key, &session, previous, now) {
                    Ok(entry) => {
                        let result = entry::active_result(ory, &entry);
                        let _ = cache::store_positive(&HostStore, &ory.cache, &hash, entry, now);
                        result
                    }
                    Err(why) => SessionResult::Failed(why),
                }
            }
            WhoamiOutcome::NoSession => {
                let _ = cache::store_negative(&HostStore, &ory.cache, &hash, Negative::NoSession, now);
                SessionResult::NoSession
            }
            WhoamiOutcome::Aal2Required { redirect_browser_to } => {
                let negative = Negative::Aal2Required { redirect_browser_to: redirect_browser_to.clone() };
                let _ = cache::store_negative(&HostStore, &ory.cache, &hash, negative, now);
                SessionResult::Aal2Required { redirect_browser_to }
            }
            WhoamiOutcome::Unavailable(why) => {
                log::warn!("Ory could not be asked about a session: {why}");
                SessionResult::Unavailable(why)
            }
        };
        for id in waiters {
            let Some(flow) = vm.borrow_mut().waiting.remove(&id) else { continue };
            {
                let mut flow = flow.borrow_mut();
                flow.waiting_on = None;
                flow.deadline_ms = None;
            }
            settle(ory, id, &flow, &result, &answer.set_cookies);
        }
        let _ = hostcalls::set_effective_context(current);
    }

    /// Resumes (or answers) the paused request `id` with its session result, from whichever
    /// context the host is running: the caller restores the effective context afterwards.
    fn settle(ory: &OryConfig, id: u32, flow: &Rc<RefCell<Flow>>, result: &SessionResult, set_cookies: &[String]) {
        if hostcalls::set_effective_context(id).is_err() {
            return;
        }
        let action = {
            let mut flow = flow.borrow_mut();
            flow.refresh_cookies.extend(set_cookies.iter().cloned());
            let Some(action) = session_action_for(ory, &flow, result) else { return };
            action
        };
        match action {
            SessionAction::Continue { authorization } => {
                if let Some(value) = authorization {
                    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, "authorization", Some(&value));
                }
                let _ = hostcalls::resume_http_request();
            }
            SessionAction::Reply(response) => {
                flow.borrow_mut().local = true;
                send_reply(&response);
            }
        }
    }

    /// What a request does with the session check's result (in the request's own context): the
    /// decision, a warning when an unprotected request goes on without a JWT, and the result
    /// noted for hosts that keep an access log (the runner does).
    fn session_action_for(ory: &OryConfig, flow: &Flow, result: &SessionResult) -> Option<SessionAction> {
        let request = flow.app.as_ref()?;
        let _ = hostcalls::set_property(vec!["access_log", "session"], Some(result.label().as_bytes()));
        if let SessionResult::Unavailable(why) | SessionResult::Failed(why) = result
            && !request.protected
        {
            log::warn!("session check failed, continuing without a JWT: {why}");
        }
        Some(decide::session_action(ory, request, result))
    }

    fn dispatch_whoami(ory: &OryConfig, creds: &Credentials) -> Result<u32, String> {
        let headers = whoami_request_headers(&ory.target.authority(), ory.target.base_path(), creds);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        hostcalls::dispatch_http_call(&ory.cluster, headers, None, vec![], ory.whoami_timeout)
            .map_err(|status| format!("the whoami call to cluster {:?} could not be made: {status:?}", ory.cluster))
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
            .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
            .collect()
    }

    fn apply_edits(map: MapType, before: &[(String, String)], after: &[(String, String)]) {
        for edit in headers::header_edits(before, after) {
            let result = match &edit {
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
