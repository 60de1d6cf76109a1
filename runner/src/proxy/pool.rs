//! The filter's VMs: one per worker thread, as Envoy runs them. Each worker is an OS thread with
//! its own single-threaded runtime that owns one VM and serves the connections handed to it, so
//! wasm runs on the thread of the request it serves, never behind a lock another thread waits on.
//! Whatever a callback asks for afterwards (an HTTP call, a timer, a stream's next step) is
//! carried out on the same thread; only a shared-queue wake-up for another VM crosses threads.

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use tokio::sync::{mpsc, watch};

use super::client::Clusters;
use super::stats::RunnerStats;
use proxy_wasm_host::{Effect, Exchange, Plugin, Step, StreamInfo, Vm, VmError};

/// How many VMs, and how much a paused filter may make the host buffer.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    pub workers: usize,
    pub max_buffer: usize,
}

impl Default for PoolOptions {
    fn default() -> Self {
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        PoolOptions { workers, max_buffer: 16 << 20 }
    }
}

/// Something an exchange must hear about while it waits.
#[derive(Debug)]
pub enum Signal {
    Effect(Effect),
    /// The VM trapped and was replaced: this exchange's context is gone.
    VmFailed,
}

/// Why the filter could not handle a step.
#[derive(Debug, thiserror::Error)]
pub enum FilterFailure {
    #[error("{0}")]
    Vm(#[from] VmError),
    #[error("the filter VM was replaced while this request was in flight")]
    Replaced,
}

/// Work for a worker, made on another thread and run on the worker's.
pub type Job = Box<dyn FnOnce(Rc<Worker>) -> LocalBoxFuture<'static, ()> + Send>;

enum Command {
    Run(Job),
    /// Another VM enqueued to a queue this VM watches.
    QueueReady {
        context: u32,
        queue: u32,
    },
}

/// What every worker shares: the plugin (to restart a VM), the clusters (each worker makes its
/// own connection pool), and a way to reach the other workers.
struct Common {
    plugin: Plugin,
    clusters: Clusters,
    max_buffer: usize,
    stats: Arc<RunnerStats>,
    /// Weak, so that the workers stop once the [`FilterPool`] holding the strong ends is gone.
    workers: Vec<mpsc::WeakUnboundedSender<Command>>,
}

/// The handle to every worker: hands them connections, and stops them when dropped (a worker
/// leaves its loop once no handle is left, and what still runs on it ends with its runtime; the
/// server drains its connections before it lets the pool go).
pub struct FilterPool {
    workers: Vec<mpsc::UnboundedSender<Command>>,
    next: AtomicUsize,
    stats: Arc<RunnerStats>,
    plugin: Plugin,
}

impl FilterPool {
    /// Starts every VM (so a filter that refuses its configuration stops start-up), then a
    /// worker thread for each.
    pub fn start(plugin: Plugin, clusters: Clusters, options: PoolOptions) -> anyhow::Result<Arc<FilterPool>> {
        let count = options.workers.max(1);
        let mut started = Vec::with_capacity(count);
        for number in 0..count {
            let mut vm = plugin.start_vm(number)?;
            let effects = vm.take_effects();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            started.push((vm, effects, runtime));
        }
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..count).map(|_| mpsc::unbounded_channel()).unzip();
        let stats = Arc::new(RunnerStats::default());
        let common = Arc::new(Common {
            plugin: plugin.clone(),
            clusters,
            max_buffer: options.max_buffer,
            stats: stats.clone(),
            workers: senders.iter().map(mpsc::UnboundedSender::downgrade).collect(),
        });
        for (number, ((vm, effects, runtime), commands)) in started.into_iter().zip(receivers).enumerate() {
            let common = common.clone();
            std::thread::Builder::new()
                .name(format!("ory-proxy-worker-{number}"))
                .spawn(move || Worker::serve(number, vm, effects, common, runtime, commands))?;
        }
        Ok(Arc::new(FilterPool { workers: senders, next: AtomicUsize::new(0), stats, plugin }))
    }

    /// The counts of the proxy this pool serves.
    pub fn stats(&self) -> &Arc<RunnerStats> {
        &self.stats
    }

    /// The plugin its VMs run (its metrics are in the plugin's host environment).
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// Runs `job` on the next worker, round robin. `false`: no worker could take it.
    pub fn dispatch(&self, job: Job) -> bool {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut job = job;
        for offset in 0..self.workers.len() {
            let worker = &self.workers[(start + offset) % self.workers.len()];
            match worker.send(Command::Run(job)) {
                Ok(()) => return true,
                Err(mpsc::error::SendError(Command::Run(returned))) => job = returned,
                Err(_) => return false,
            }
        }
        false
    }
}

struct VmState {
    vm: Vm,
    generation: u64,
    /// Where effects for each open exchange go.
    listeners: HashMap<u32, mpsc::UnboundedSender<Signal>>,
}

/// One worker's VM and what it asks for; lives on the worker's thread only.
pub struct Worker {
    number: usize,
    common: Arc<Common>,
    /// The clusters, with this worker's own connection pool.
    clusters: Clusters,
    state: RefCell<VmState>,
    tick: watch::Sender<Option<Duration>>,
}

/// An exchange's place in its worker: the VM generation that holds its context, and its inbox.
pub struct Lease {
    generation: u64,
    context: u32,
    pub signals: mpsc::UnboundedReceiver<Signal>,
}

impl Worker {
    fn serve(
        number: usize,
        vm: Vm,
        effects: Vec<Effect>,
        common: Arc<Common>,
        runtime: tokio::runtime::Runtime,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async move {
            let (tick, _) = watch::channel(None);
            let state = RefCell::new(VmState { vm, generation: 0, listeners: HashMap::new() });
            let clusters = common.clusters.with_own_pool();
            let worker = Rc::new(Worker { number, common, clusters, state, tick });
            worker.spawn_ticker();
            worker.route(0, effects);
            while let Some(command) = commands.recv().await {
                match command {
                    Command::Run(job) => {
                        tokio::task::spawn_local(job(worker.clone()));
                    }
                    Command::QueueReady { context, queue } => {
                        let generation = worker.state.borrow().generation;
                        worker.deliver(generation, move |vm| vm.on_queue_ready(context, queue));
                    }
                }
            }
        });
        // Dropping the LocalSet and the runtime ends what is left: the pool is gone, and the
        // server has drained (or given up on) its connections before letting it go.
    }

    pub fn clusters(&self) -> &Clusters {
        &self.clusters
    }

    pub fn stats(&self) -> &RunnerStats {
        &self.common.stats
    }

    /// Opens an exchange on this worker's VM.
    pub fn open(self: &Rc<Self>, info: StreamInfo) -> Result<(Lease, Exchange), FilterFailure> {
        let mut state = self.state.borrow_mut();
        let generation = state.generation;
        let opened = guarded(|| Exchange::open(&mut state.vm, info, self.common.max_buffer));
        let (exchange, step) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                drop(state);
                self.replace_vm(generation, &error);
                return Err(error.into());
            }
        };
        let (sender, signals) = mpsc::unbounded_channel();
        state.listeners.insert(exchange.context(), sender);
        drop(state);
        self.route(generation, step.others);
        Ok((Lease { generation, context: exchange.context(), signals }, exchange))
    }

    /// Runs one step of an exchange on the VM and carries out the effects meant for others.
    pub fn run(
        self: &Rc<Self>,
        lease: &Lease,
        step: impl FnOnce(&mut Vm) -> Result<Step, VmError>,
    ) -> Result<Step, FilterFailure> {
        let mut state = self.state.borrow_mut();
        if state.generation != lease.generation {
            return Err(FilterFailure::Replaced);
        }
        match guarded(|| step(&mut state.vm)) {
            Ok(mut step) => {
                drop(state);
                let others = std::mem::take(&mut step.others);
                self.route(lease.generation, others);
                Ok(step)
            }
            Err(error @ VmError::UnknownContext(_)) => Err(error.into()),
            Err(error) => {
                drop(state);
                self.replace_vm(lease.generation, &error);
                Err(error.into())
            }
        }
    }

    /// Ends an exchange: `on_log`, `on_done`, `on_delete`, and no more signals. Answers the
    /// filter's annotations for the access log.
    pub fn close(self: &Rc<Self>, lease: &Lease, exchange: Exchange) -> Vec<(String, String)> {
        let annotations = match self.run(lease, |vm| exchange.finish(vm)) {
            Ok(step) => step.annotations,
            Err(error) => {
                tracing::debug!(%error, "finishing the exchange");
                Vec::new()
            }
        };
        let mut state = self.state.borrow_mut();
        if state.generation == lease.generation {
            state.listeners.remove(&lease.context);
        }
        annotations
    }

    /// A trapped VM is useless: start a fresh one in its place and tell every exchange it held.
    fn replace_vm(self: &Rc<Self>, generation: u64, error: &VmError) {
        let mut state = self.state.borrow_mut();
        if state.generation != generation {
            return;
        }
        tracing::error!(vm = self.number, "{error}; starting a fresh filter VM");
        self.common.stats.vm_restart();
        match self.common.plugin.start_vm(self.number) {
            Ok(mut vm) => {
                let effects = vm.take_effects();
                state.vm = vm;
                state.generation += 1;
                for (_, listener) in state.listeners.drain() {
                    let _ = listener.send(Signal::VmFailed);
                }
                let generation = state.generation;
                drop(state);
                // The new VM's start-up may ask for a timer: honour it.
                self.route(generation, effects);
            }
            Err(start) => tracing::error!(vm = self.number, "the filter VM could not be restarted: {start:#}"),
        }
    }

    /// Carries out effects: stream effects go to their exchange, calls to their cluster, timers
    /// to this VM's ticker and queue wake-ups to their VM.
    fn route(self: &Rc<Self>, generation: u64, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::HttpCall(call) => {
                    let worker = self.clone();
                    tokio::task::spawn_local(async move {
                        let token = call.token;
                        let answer = worker.clusters.call(call).await;
                        worker.deliver(generation, move |vm| vm.on_http_call_response(token, answer));
                    });
                }
                Effect::TickPeriod(period) => {
                    self.tick.send_replace(period);
                }
                Effect::QueueReady { vm, context, queue } if vm == self.number => {
                    let worker = self.clone();
                    // Later, not from inside the callback that enqueued.
                    tokio::task::spawn_local(async move {
                        let generation = worker.state.borrow().generation;
                        worker.deliver(generation, move |v| v.on_queue_ready(context, queue));
                    });
                }
                Effect::QueueReady { vm, context, queue } => {
                    if let Some(other) = self.common.workers.get(vm).and_then(mpsc::WeakUnboundedSender::upgrade) {
                        let _ = other.send(Command::QueueReady { context, queue });
                    }
                }
                Effect::Continue { context, .. }
                | Effect::LocalReply { context, .. }
                | Effect::Close { context, .. } => {
                    let state = self.state.borrow();
                    if state.generation == generation
                        && let Some(listener) = state.listeners.get(&context)
                    {
                        let _ = listener.send(Signal::Effect(effect));
                    }
                }
            }
        }
    }

    /// Runs a root-context callback (call answer, tick, queue) on the VM, if it is still the
    /// generation that asked for it.
    fn deliver(self: &Rc<Self>, generation: u64, call: impl FnOnce(&mut Vm) -> Result<(), VmError>) {
        let mut state = self.state.borrow_mut();
        if state.generation != generation {
            return;
        }
        match guarded(|| call(&mut state.vm)) {
            Ok(()) => {
                let effects = state.vm.take_effects();
                drop(state);
                self.route(generation, effects);
            }
            Err(error) => {
                drop(state);
                self.replace_vm(generation, &error);
            }
        }
    }

    fn spawn_ticker(self: &Rc<Self>) {
        let worker: Weak<Worker> = Rc::downgrade(self);
        let mut period = self.tick.subscribe();
        tokio::task::spawn_local(async move {
            loop {
                let current = *period.borrow_and_update();
                match current {
                    None => {
                        if period.changed().await.is_err() {
                            return;
                        }
                    }
                    Some(every) => {
                        tokio::select! {
                            changed = period.changed() => if changed.is_err() { return },
                            _ = tokio::time::sleep(every) => {
                                let Some(worker) = worker.upgrade() else { return };
                                let generation = worker.state.borrow().generation;
                                worker.deliver(generation, |vm| vm.on_tick());
                            }
                        }
                    }
                }
            }
        });
    }
}

/// Runs a VM call; a panic in the host's code under it counts as a trap of the VM (which is then
/// replaced) rather than ending the worker's task with the VM half-way through a callback.
fn guarded<T>(call: impl FnOnce() -> Result<T, VmError>) -> Result<T, VmError> {
    std::panic::catch_unwind(AssertUnwindSafe(call)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|text| text.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_string());
        Err(VmError::Trap { callback: "a host call", message: format!("the host panicked: {message}") })
    })
}
