//! A loaded plugin and its VMs: compile once, instantiate per worker, call the filter's exports.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use sha2::Digest as _;
use wasmtime::error::Context as _;
use wasmtime::{Config, Engine, ExternType, InstancePre, Linker, Store, StoreLimits, StoreLimitsBuilder, TypedFunc};

use super::abi;
use super::code_cache;
use super::env::HostEnv;
use super::types::{Action, Effect, HeaderList, HttpCallResponse, StreamInfo};

/// How a plugin is set up, in Envoy's terms.
#[derive(Debug, Clone, Default)]
pub struct PluginSpec {
    /// `plugin_name`: names the plugin in logs.
    pub name: String,
    /// `plugin_root_id`: which root context the module should make (Go and C++ SDK filters
    /// choose theirs by it). Envoy's default is empty, as here.
    pub root_id: String,
    /// `plugin_vm_id`, also the namespace of shared queues.
    pub vm_id: String,
    /// Handed to `on_configure`.
    pub configuration: Vec<u8>,
    /// Handed to `on_vm_start`.
    pub vm_configuration: Vec<u8>,
    /// The environment variables every VM sees through WASI `environ_get`, as Envoy's
    /// `vm_config.environment_variables` gives them (the host's own environment is never passed).
    pub environment: Vec<(String, String)>,
    /// Cluster names `proxy_http_call` may use; any other is refused with BAD_ARGUMENT.
    pub clusters: Vec<String>,
    /// The most a single callback may run before it is interrupted (needs [`Plugin::start_deadline_ticker`]).
    pub callback_deadline: Option<Duration>,
    /// Linear memory ceiling per VM.
    pub max_memory_bytes: usize,
}

/// Why a call into a VM failed. Every variant but `UnknownContext` leaves the VM unusable: the
/// driver replaces it and keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("the filter trapped in {callback}: {message}")]
    Trap { callback: &'static str, message: String },
    #[error("the filter returned {value} from {callback}, which is not a proxy-wasm action")]
    BadReturn { callback: &'static str, value: u32 },
    #[error("this filter VM failed earlier and has to be replaced")]
    Failed,
    #[error("no stream context {0} in this VM")]
    UnknownContext(u32),
}

const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A callback's deadline in epoch ticks from now; far away (but without overflowing the engine's
/// epoch counter) when there is none.
fn deadline_ticks(spec: &PluginSpec) -> u64 {
    match spec.callback_deadline {
        Some(deadline) => (deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64,
        None => u64::MAX / 2,
    }
}

/// A filter module's bytes and their SHA-256, which names its compiled code (in this process and
/// in the code cache on disk).
#[derive(Debug, Clone, Copy)]
pub struct ModuleBytes<'a> {
    wasm: &'a [u8],
    digest: [u8; 32],
}

impl<'a> ModuleBytes<'a> {
    pub fn new(wasm: &'a [u8]) -> ModuleBytes<'a> {
        ModuleBytes { wasm, digest: sha2::Sha256::digest(wasm).into() }
    }

    /// With the digest computed earlier (when a module embedded in a binary was built): a start
    /// that finds the compiled code cached then never reads the module's pages. `digest` must be
    /// the SHA-256 of `wasm`.
    pub fn with_digest(wasm: &'a [u8], digest: [u8; 32]) -> ModuleBytes<'a> {
        ModuleBytes { wasm, digest }
    }

    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }
}

/// A compiled filter module with everything needed to start VMs from it. Clones share the
/// compiled code, the engine and the [`HostEnv`].
#[derive(Clone)]
pub struct Plugin {
    compiled: Compiled,
    spec: Arc<PluginSpec>,
    env: Arc<HostEnv>,
}

/// A module compiled and linked once, shared by every plugin loaded from the same bytes.
#[derive(Clone)]
struct Compiled {
    engine: Engine,
    pre: InstancePre<VmState>,
}

/// The process's one engine (its configuration never varies), made at first use.
fn engine() -> anyhow::Result<Engine> {
    static ENGINE: std::sync::OnceLock<Engine> = std::sync::OnceLock::new();
    if let Some(engine) = ENGINE.get() {
        return Ok(engine.clone());
    }
    let mut config = Config::new();
    config.epoch_interruption(true);
    // For `perf report` to name the filter's functions: compiled code is listed in
    // /tmp/perf-<pid>.map.
    if std::env::var_os("PROXY_WASM_HOST_PERF_MAP").is_some_and(|v| !v.is_empty()) {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let engine = Engine::new(&config).context("creating the wasm engine")?;
    Ok(ENGINE.get_or_init(|| engine).clone())
}

/// Whether a thread already advances the engine's epoch (one is enough; two would halve every
/// deadline).
static TICKING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Modules compiled in this process, by the SHA-256 of their bytes: compiling costs seconds,
/// and one process may start several proxies from the same filter.
static COMPILED: std::sync::Mutex<Vec<([u8; 32], Compiled)>> = std::sync::Mutex::new(Vec::new());

impl Plugin {
    /// Compiles and links a module (once per process for the same bytes). Fails with a clear
    /// message when the module is not a proxy-wasm ABI v0.2.1 filter or imports a host function
    /// this host does not provide.
    pub fn load(wasm: &[u8], spec: PluginSpec, env: Arc<HostEnv>) -> anyhow::Result<Plugin> {
        Plugin::load_cached(ModuleBytes::new(wasm), spec, env, None)
    }

    /// [`Plugin::load`], keeping the compiled code in `code_cache` between runs: a later start
    /// maps it instead of compiling (milliseconds instead of seconds). Only this host may write
    /// that directory; a file it cannot use is compiled again and replaced.
    pub fn load_cached(
        module: ModuleBytes<'_>,
        spec: PluginSpec,
        env: Arc<HostEnv>,
        code_cache: Option<&Path>,
    ) -> anyhow::Result<Plugin> {
        let ModuleBytes { wasm, digest } = module;
        // Held while compiling, so that concurrent loads of one module compile it once.
        let mut cache = COMPILED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let compiled = match cache.iter().find(|(known, _)| *known == digest) {
            Some((_, compiled)) => compiled.clone(),
            None => {
                let compiled = Compiled::new(wasm, &digest, code_cache)?;
                cache.push((digest, compiled.clone()));
                compiled
            }
        };
        Ok(Plugin { compiled, spec: Arc::new(spec), env })
    }
}

impl Compiled {
    fn new(wasm: &[u8], digest: &[u8; 32], code_cache: Option<&Path>) -> anyhow::Result<Compiled> {
        let engine = engine()?;
        let module = match code_cache {
            Some(dir) => code_cache::module(&engine, wasm, digest, dir)?,
            None => code_cache::compile(&engine, wasm)?,
        };

        let exports: Vec<&str> = module.exports().map(|e| e.name()).collect();
        if !exports.contains(&"proxy_abi_version_0_2_1") {
            bail!("the filter does not export proxy_abi_version_0_2_1: this host speaks proxy-wasm ABI v0.2.1 only");
        }
        for required in ["memory", "proxy_on_context_create"] {
            if !exports.contains(&required) {
                bail!("the filter does not export `{required}`, which every proxy-wasm filter has");
            }
        }
        if !exports.contains(&"proxy_on_memory_allocate") && !exports.contains(&"malloc") {
            bail!("the filter exports neither `proxy_on_memory_allocate` nor `malloc`: the host cannot hand it data");
        }

        let mut linker = Linker::new(&engine);
        abi::link(&mut linker)?;
        let mut missing = Vec::new();
        let mut probe = Store::new(&engine, VmState::placeholder());
        for import in module.imports() {
            if linker.get_by_import(&mut probe, &import).is_some() {
                continue;
            }
            match (import.module(), import.ty()) {
                // WASI is large and filters touch little of it: anything else answers ENOSYS.
                (abi::WASI, ExternType::Func(ty)) => abi::link_unsupported_wasi(&mut linker, import.name(), ty)?,
                (module_name, _) => missing.push(format!("{module_name}.{}", import.name())),
            }
        }
        if !missing.is_empty() {
            bail!("the filter imports {}, which this proxy-wasm ABI v0.2.1 host does not provide", missing.join(", "));
        }
        let pre = linker.instantiate_pre(&module).context("linking the filter")?;
        Ok(Compiled { engine, pre })
    }
}

impl Plugin {
    pub fn env(&self) -> &Arc<HostEnv> {
        &self.env
    }

    pub fn spec(&self) -> &PluginSpec {
        &self.spec
    }

    /// Lets `callback_deadline` interrupt runaway callbacks: a background thread advances the
    /// engine's epoch. Without it, callbacks are never interrupted.
    pub fn start_deadline_ticker(&self) {
        if TICKING.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let engine = self.compiled.engine.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .ok();
    }

    /// Starts VM number `number`: instantiate, initialise, create the root context, then
    /// `on_vm_start` and `on_configure`. A filter that refuses its configuration is an error that
    /// carries what the filter logged.
    pub fn start_vm(&self, number: usize) -> anyhow::Result<Vm> {
        let state = VmState::new(self.spec.clone(), self.env.clone(), number);
        let mut store = Store::new(&self.compiled.engine, state);
        store.limiter(|state| &mut state.limits);
        // Relative to the engine's current epoch: `u64::MAX` would overflow once the deadline
        // ticker has run, so a replacement VM could not even be instantiated.
        store.set_epoch_deadline(deadline_ticks(&self.spec));
        let instance = self.compiled.pre.instantiate(&mut store).context("instantiating the filter")?;
        let exports = Exports::find(&instance, &mut store)?;
        store.data_mut().guest = GuestHandles::find(&instance, &mut store)?;
        let mut vm = Vm { store, exports, root: 1, next_context: 2, number, failed: false };

        for start in ["_initialize", "main"] {
            if let Ok(func) = instance.get_typed_func::<(), ()>(&mut vm.store, start) {
                vm.guarded(start, |store| func.call(store, ())).map_err(anyhow::Error::from)?;
            }
        }
        let create = vm.exports.on_context_create.clone();
        let root = vm.root;
        vm.guarded("proxy_on_context_create", |store| create.call(store, (root, 0)))?;

        let vm_config_size = self.spec.vm_configuration.len() as u32;
        vm.store.data_mut().phase = Phase::VmStart;
        let started = match vm.exports.on_vm_start.clone() {
            Some(func) => vm.guarded("proxy_on_vm_start", |store| func.call(store, (root, vm_config_size)))?,
            None => 1,
        };
        if started == 0 {
            bail!("the filter refused to start (on_vm_start returned false){}", vm.recent_errors());
        }
        let config_size = self.spec.configuration.len() as u32;
        vm.store.data_mut().phase = Phase::Configure;
        let configured = match vm.exports.on_configure.clone() {
            Some(func) => vm.guarded("proxy_on_configure", |store| func.call(store, (root, config_size)))?,
            None => 1,
        };
        vm.store.data_mut().phase = Phase::Running;
        if configured == 0 {
            bail!("the filter rejected its configuration{}", vm.recent_errors());
        }
        Ok(vm)
    }
}

/// Which configuration buffer the filter may read right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    VmStart,
    Configure,
    Running,
}

/// The request and response of one HTTP stream, as the filter sees and edits them.
#[derive(Debug, Default, Clone)]
pub struct StreamData {
    pub info: StreamInfo,
    /// When the stream began (`request.time`).
    pub started: Option<std::time::SystemTime>,
    /// Request body bytes that arrived from the client so far (`request.size` without a
    /// `content-length`).
    pub request_body_received: u64,
    /// The cluster the stream is routed to (`xds.cluster_name`): the host's route for the
    /// request as it is now.
    pub cluster: Option<String>,
    /// How the response came about (`response.code_details`): `via_upstream`, or the details of
    /// the filter's local reply.
    pub response_code_details: Option<String>,
    pub request_headers: HeaderList,
    pub request_body: Vec<u8>,
    pub request_trailers: HeaderList,
    pub response_headers: HeaderList,
    pub response_body: Vec<u8>,
    pub response_trailers: HeaderList,
    pub(crate) properties: HashMap<String, Vec<u8>>,
}

impl StreamData {
    /// Properties the filter set whose names start with `prefix`, without it, sorted.
    pub fn properties_under(&self, prefix: &str) -> Vec<(String, String)> {
        let mut found: Vec<(String, String)> = self
            .properties
            .iter()
            .filter_map(|(key, value)| {
                let name = key.strip_prefix(prefix)?;
                Some((name.to_string(), String::from_utf8_lossy(value).into_owned()))
            })
            .collect();
        found.sort();
        found
    }
}

/// Host-side state of one VM, reachable from every host function.
pub(crate) struct VmState {
    pub spec: Arc<PluginSpec>,
    pub env: Arc<HostEnv>,
    pub number: usize,
    pub root: u32,
    /// The context host calls act on (`proxy_set_effective_context` can change it).
    pub effective: u32,
    pub phase: Phase,
    pub streams: HashMap<u32, StreamData>,
    pub root_properties: HashMap<String, Vec<u8>>,
    /// The answer being delivered by `on_http_call_response`.
    pub call_response: Option<HttpCallResponse>,
    /// Which context dispatched each outstanding call.
    pub calls: HashMap<u32, u32>,
    pub next_token: u32,
    pub effects: Vec<Effect>,
    /// The last few error lines the filter logged or printed, to explain a failure.
    pub recent_errors: Vec<String>,
    pub started: Instant,
    pub limits: StoreLimits,
    pub guest: GuestHandles,
}

/// The exports host calls use, found once the instance exists (before any of its code runs).
#[derive(Default)]
pub(crate) struct GuestHandles {
    pub memory: Option<wasmtime::Memory>,
    /// `proxy_on_memory_allocate`, or `malloc` for filters that only export that.
    pub allocate: Option<TypedFunc<u32, u32>>,
}

impl GuestHandles {
    fn find(instance: &wasmtime::Instance, store: &mut Store<VmState>) -> anyhow::Result<GuestHandles> {
        let memory = instance.get_memory(&mut *store, "memory");
        let allocator = instance
            .get_func(&mut *store, "proxy_on_memory_allocate")
            .or_else(|| instance.get_func(&mut *store, "malloc"));
        let allocate = match allocator {
            Some(func) => Some(func.typed(&*store).context("the filter's allocator has the wrong signature")?),
            None => None,
        };
        Ok(GuestHandles { memory, allocate })
    }
}

impl VmState {
    fn new(spec: Arc<PluginSpec>, env: Arc<HostEnv>, number: usize) -> VmState {
        let max_memory = if spec.max_memory_bytes == 0 { 256 << 20 } else { spec.max_memory_bytes };
        VmState {
            spec,
            env,
            number,
            root: 1,
            effective: 1,
            phase: Phase::Running,
            streams: HashMap::new(),
            root_properties: HashMap::new(),
            call_response: None,
            calls: HashMap::new(),
            next_token: 1,
            effects: Vec::new(),
            recent_errors: Vec::new(),
            started: Instant::now(),
            limits: StoreLimitsBuilder::new().memory_size(max_memory).instances(1).build(),
            guest: GuestHandles::default(),
        }
    }

    /// Only for asking the linker which imports it has.
    fn placeholder() -> VmState {
        VmState::new(Arc::new(PluginSpec::default()), HostEnv::new(), 0)
    }

    pub fn remember_error(&mut self, line: String) {
        const KEEP: usize = 8;
        if self.recent_errors.len() == KEEP {
            self.recent_errors.remove(0);
        }
        self.recent_errors.push(line);
    }
}

type Callback3 = TypedFunc<(u32, u32, u32), u32>;
type Callback2 = TypedFunc<(u32, u32), u32>;
/// `proxy_on_http_call_response(context, token, headers, body size, trailers)`.
type CallResponseCallback = TypedFunc<(u32, u32, u32, u32, u32), ()>;

/// The filter's exports, looked up once per VM.
struct Exports {
    on_context_create: TypedFunc<(u32, u32), ()>,
    on_vm_start: Option<Callback2>,
    on_configure: Option<Callback2>,
    on_request_headers: Option<Callback3>,
    on_request_body: Option<Callback3>,
    on_request_trailers: Option<Callback2>,
    on_response_headers: Option<Callback3>,
    on_response_body: Option<Callback3>,
    on_response_trailers: Option<Callback2>,
    on_log: Option<TypedFunc<u32, ()>>,
    on_done: Option<TypedFunc<u32, u32>>,
    on_delete: Option<TypedFunc<u32, ()>>,
    on_tick: Option<TypedFunc<u32, ()>>,
    on_queue_ready: Option<TypedFunc<(u32, u32), ()>>,
    on_http_call_response: Option<CallResponseCallback>,
}

impl Exports {
    fn find(instance: &wasmtime::Instance, store: &mut Store<VmState>) -> anyhow::Result<Exports> {
        macro_rules! optional {
            ($name:literal) => {
                match instance.get_func(&mut *store, $name) {
                    Some(func) => Some(
                        func.typed(&*store)
                            .with_context(|| format!("the filter's `{}` has the wrong signature", $name))?,
                    ),
                    None => None,
                }
            };
        }
        Ok(Exports {
            on_context_create: instance
                .get_typed_func(&mut *store, "proxy_on_context_create")
                .context("the filter's `proxy_on_context_create` has the wrong signature")?,
            on_vm_start: optional!("proxy_on_vm_start"),
            on_configure: optional!("proxy_on_configure"),
            on_request_headers: optional!("proxy_on_request_headers"),
            on_request_body: optional!("proxy_on_request_body"),
            on_request_trailers: optional!("proxy_on_request_trailers"),
            on_response_headers: optional!("proxy_on_response_headers"),
            on_response_body: optional!("proxy_on_response_body"),
            on_response_trailers: optional!("proxy_on_response_trailers"),
            on_log: optional!("proxy_on_log"),
            on_done: optional!("proxy_on_done"),
            on_delete: optional!("proxy_on_delete"),
            on_tick: optional!("proxy_on_tick"),
            on_queue_ready: optional!("proxy_on_queue_ready"),
            on_http_call_response: optional!("proxy_on_http_call_response"),
        })
    }
}

/// One instance of the filter: Envoy's VM per worker. Not thread-safe; the driver serialises
/// access. Every method runs wasm synchronously and leaves effects to [`Vm::take_effects`].
pub struct Vm {
    store: Store<VmState>,
    exports: Exports,
    root: u32,
    next_context: u32,
    number: usize,
    failed: bool,
}

impl Vm {
    pub fn number(&self) -> usize {
        self.number
    }

    pub fn is_failed(&self) -> bool {
        self.failed
    }

    fn recent_errors(&self) -> String {
        let errors = &self.store.data().recent_errors;
        if errors.is_empty() { String::new() } else { format!(": {}", errors.join("; ")) }
    }

    /// Runs one call into wasm with the deadline armed, turning a trap into a [`VmError`] that
    /// says what the filter printed before dying.
    fn guarded<T>(
        &mut self,
        callback: &'static str,
        call: impl FnOnce(&mut Store<VmState>) -> wasmtime::Result<T>,
    ) -> Result<T, VmError> {
        if self.failed {
            return Err(VmError::Failed);
        }
        let ticks = deadline_ticks(&self.store.data().spec);
        self.store.set_epoch_deadline(ticks);
        self.store.data_mut().recent_errors.clear();
        match call(&mut self.store) {
            Ok(value) => Ok(value),
            Err(error) => {
                self.failed = true;
                let mut message = match error.downcast_ref::<wasmtime::Trap>() {
                    Some(wasmtime::Trap::Interrupt) => "the callback ran past its deadline".to_string(),
                    Some(trap) => trap.to_string(),
                    None => format!("{error:#}"),
                };
                message.push_str(&self.recent_errors());
                Err(VmError::Trap { callback, message })
            }
        }
    }

    fn set_effective(&mut self, context: u32) {
        self.store.data_mut().effective = context;
    }

    fn action(callback: &'static str, value: u32) -> Result<Action, VmError> {
        Action::try_from(value).map_err(|value| VmError::BadReturn { callback, value })
    }

    /// Creates a stream context for a new HTTP request.
    pub fn create_stream(&mut self, info: StreamInfo) -> Result<u32, VmError> {
        let context = self.next_context;
        self.next_context += 1;
        let stream = StreamData { info, started: Some(std::time::SystemTime::now()), ..Default::default() };
        self.store.data_mut().streams.insert(context, stream);
        self.set_effective(context);
        let create = self.exports.on_context_create.clone();
        let root = self.root;
        self.guarded("proxy_on_context_create", |store| create.call(store, (context, root)))?;
        Ok(context)
    }

    pub fn stream(&self, context: u32) -> Option<&StreamData> {
        self.store.data().streams.get(&context)
    }

    pub fn stream_mut(&mut self, context: u32) -> Result<&mut StreamData, VmError> {
        self.store.data_mut().streams.get_mut(&context).ok_or(VmError::UnknownContext(context))
    }

    fn stream_callback(
        &mut self,
        name: &'static str,
        func: Option<Callback3>,
        context: u32,
        size: usize,
        end_of_stream: bool,
    ) -> Result<Action, VmError> {
        let Some(func) = func else { return Ok(Action::Continue) };
        self.set_effective(context);
        let value = self.guarded(name, |store| func.call(store, (context, size as u32, end_of_stream as u32)))?;
        Self::action(name, value).inspect_err(|_| self.failed = true)
    }

    /// Runs `on_request_headers` over the stream's request headers (set them first).
    pub fn on_request_headers(&mut self, context: u32, end_of_stream: bool) -> Result<Action, VmError> {
        let count = self.stream_mut(context)?.request_headers.len();
        let func = self.exports.on_request_headers.clone();
        self.stream_callback("proxy_on_request_headers", func, context, count, end_of_stream)
    }

    /// Runs `on_request_body` over the stream's buffered request body.
    pub fn on_request_body(&mut self, context: u32, end_of_stream: bool) -> Result<Action, VmError> {
        let size = self.stream_mut(context)?.request_body.len();
        let func = self.exports.on_request_body.clone();
        self.stream_callback("proxy_on_request_body", func, context, size, end_of_stream)
    }

    pub fn on_request_trailers(&mut self, context: u32) -> Result<Action, VmError> {
        let count = self.stream_mut(context)?.request_trailers.len();
        let func = self.exports.on_request_trailers.clone();
        self.trailers_callback("proxy_on_request_trailers", func, context, count)
    }

    fn trailers_callback(
        &mut self,
        name: &'static str,
        func: Option<Callback2>,
        context: u32,
        count: usize,
    ) -> Result<Action, VmError> {
        let Some(func) = func else { return Ok(Action::Continue) };
        self.set_effective(context);
        let value = self.guarded(name, |store| func.call(store, (context, count as u32)))?;
        Self::action(name, value).inspect_err(|_| self.failed = true)
    }

    pub fn on_response_headers(&mut self, context: u32, end_of_stream: bool) -> Result<Action, VmError> {
        let count = self.stream_mut(context)?.response_headers.len();
        let func = self.exports.on_response_headers.clone();
        self.stream_callback("proxy_on_response_headers", func, context, count, end_of_stream)
    }

    pub fn on_response_body(&mut self, context: u32, end_of_stream: bool) -> Result<Action, VmError> {
        let size = self.stream_mut(context)?.response_body.len();
        let func = self.exports.on_response_body.clone();
        self.stream_callback("proxy_on_response_body", func, context, size, end_of_stream)
    }

    pub fn on_response_trailers(&mut self, context: u32) -> Result<Action, VmError> {
        let count = self.stream_mut(context)?.response_trailers.len();
        let func = self.exports.on_response_trailers.clone();
        self.trailers_callback("proxy_on_response_trailers", func, context, count)
    }

    /// Ends a stream: `on_log`, `on_done`, `on_delete`. Calls it still had outstanding are
    /// forgotten, so their answers are never delivered to a deleted context.
    pub fn finish_stream(&mut self, context: u32) -> Result<(), VmError> {
        if !self.store.data().streams.contains_key(&context) {
            return Err(VmError::UnknownContext(context));
        }
        self.set_effective(context);
        let result = self.run_finish(context);
        let state = self.store.data_mut();
        state.streams.remove(&context);
        state.calls.retain(|_, owner| *owner != context);
        result
    }

    fn run_finish(&mut self, context: u32) -> Result<(), VmError> {
        if let Some(func) = self.exports.on_log.clone() {
            self.guarded("proxy_on_log", |store| func.call(store, context))?;
        }
        if let Some(func) = self.exports.on_done.clone() {
            self.guarded("proxy_on_done", |store| func.call(store, context))?;
        }
        if let Some(func) = self.exports.on_delete.clone() {
            self.guarded("proxy_on_delete", |store| func.call(store, context))?;
        }
        Ok(())
    }

    /// Delivers the answer to call `token` (`None`: the call failed). Answers for calls whose
    /// context is gone are dropped, as Envoy cancels them.
    pub fn on_http_call_response(&mut self, token: u32, response: Option<HttpCallResponse>) -> Result<(), VmError> {
        let Some(context) = self.store.data_mut().calls.remove(&token) else { return Ok(()) };
        let Some(func) = self.exports.on_http_call_response.clone() else { return Ok(()) };
        let response = response.unwrap_or_default();
        let sizes = (response.headers.len() as u32, response.body.len() as u32, response.trailers.len() as u32);
        self.store.data_mut().call_response = Some(response);
        self.set_effective(context);
        let result = self.guarded("proxy_on_http_call_response", |store| {
            func.call(store, (context, token, sizes.0, sizes.1, sizes.2))
        });
        self.store.data_mut().call_response = None;
        result
    }

    pub fn on_tick(&mut self) -> Result<(), VmError> {
        let Some(func) = self.exports.on_tick.clone() else { return Ok(()) };
        let root = self.root;
        self.set_effective(root);
        self.guarded("proxy_on_tick", |store| func.call(store, root))
    }

    pub fn on_queue_ready(&mut self, context: u32, queue: u32) -> Result<(), VmError> {
        let Some(func) = self.exports.on_queue_ready.clone() else { return Ok(()) };
        self.set_effective(context);
        self.guarded("proxy_on_queue_ready", |store| func.call(store, (context, queue)))
    }

    /// The effects requested since the last call, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.store.data_mut().effects)
    }

    /// True when the last call asked for a local reply on `context` that is not carried out yet.
    pub fn local_reply_pending(&self, context: u32) -> bool {
        self.store
            .data()
            .effects
            .iter()
            .any(|effect| matches!(effect, Effect::LocalReply { context: c, .. } if *c == context))
    }

    /// Outstanding `proxy_http_call`s of this VM.
    pub fn pending_calls(&self) -> usize {
        self.store.data().calls.len()
    }
}
