//! The filter's VMs: one per worker, as Envoy runs them. Each VM sits behind a lock that is held
//! only while wasm runs; whatever a callback asks for afterwards is carried out here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::client::Clusters;
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

struct SlotState {
    vm: Vm,
    generation: u64,
    /// Where effects for each open exchange go.
    listeners: HashMap<u32, mpsc::UnboundedSender<Signal>>,
}

struct Slot {
    state: Mutex<SlotState>,
    tick: watch::Sender<Option<Duration>>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// All VMs of the filter, the clusters their calls go to, and the work they ask for.
pub struct FilterPool {
    plugin: Plugin,
    slots: Vec<Slot>,
    next: AtomicUsize,
    clusters: Clusters,
    max_buffer: usize,
}

/// An exchange's place in the pool: which VM holds its context, and its signal inbox.
pub struct Lease {
    slot: usize,
    generation: u64,
    context: u32,
    pub signals: mpsc::UnboundedReceiver<Signal>,
}

impl FilterPool {
    /// Starts every VM (so a filter that refuses its configuration stops start-up) and their
    /// timers. Must run inside a tokio runtime.
    pub fn start(plugin: Plugin, clusters: Clusters, options: PoolOptions) -> anyhow::Result<Arc<FilterPool>> {
        let mut slots = Vec::new();
        let mut initial = Vec::new();
        for number in 0..options.workers.max(1) {
            let mut vm = plugin.start_vm(number)?;
            initial.push(vm.take_effects());
            let (tick, _) = watch::channel(None);
            slots.push(Slot { state: Mutex::new(SlotState { vm, generation: 0, listeners: HashMap::new() }), tick });
        }
        let pool =
            Arc::new(FilterPool { plugin, slots, next: AtomicUsize::new(0), clusters, max_buffer: options.max_buffer });
        for (slot, effects) in initial.into_iter().enumerate() {
            pool.spawn_ticker(slot);
            pool.route(slot, 0, effects);
        }
        Ok(pool)
    }

    pub fn clusters(&self) -> &Clusters {
        &self.clusters
    }

    /// Opens an exchange on the next VM, round robin.
    pub fn open(self: &Arc<Self>, info: StreamInfo) -> Result<(Lease, Exchange), FilterFailure> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut state = self.slots[slot].lock();
        let generation = state.generation;
        let opened = Exchange::open(&mut state.vm, info, self.max_buffer);
        let (exchange, step) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                drop(state);
                self.replace_vm(slot, generation, &error);
                return Err(error.into());
            }
        };
        let (sender, signals) = mpsc::unbounded_channel();
        state.listeners.insert(exchange.context(), sender);
        drop(state);
        self.route(slot, generation, step.others);
        Ok((Lease { slot, generation, context: exchange.context(), signals }, exchange))
    }

    /// Runs one step of an exchange on its VM and carries out the effects meant for others.
    pub fn run(
        self: &Arc<Self>,
        lease: &Lease,
        step: impl FnOnce(&mut Vm) -> Result<Step, VmError>,
    ) -> Result<Step, FilterFailure> {
        let mut state = self.slots[lease.slot].lock();
        if state.generation != lease.generation {
            return Err(FilterFailure::Replaced);
        }
        match step(&mut state.vm) {
            Ok(mut step) => {
                drop(state);
                let others = std::mem::take(&mut step.others);
                self.route(lease.slot, lease.generation, others);
                Ok(step)
            }
            Err(error @ VmError::UnknownContext(_)) => Err(error.into()),
            Err(error) => {
                drop(state);
                self.replace_vm(lease.slot, lease.generation, &error);
                Err(error.into())
            }
        }
    }

    /// Ends an exchange: `on_log`, `on_done`, `on_delete`, and no more signals. Answers the
    /// filter's annotations for the access log.
    pub fn close(self: &Arc<Self>, lease: &Lease, exchange: Exchange) -> Vec<(String, String)> {
        let annotations = match self.run(lease, |vm| exchange.finish(vm)) {
            Ok(step) => step.annotations,
            Err(error) => {
                tracing::debug!(%error, "finishing the exchange");
                Vec::new()
            }
        };
        let mut state = self.slots[lease.slot].lock();
        if state.generation == lease.generation {
            state.listeners.remove(&lease.context);
        }
        annotations
    }

    /// A trapped VM is useless: start a fresh one in its place and tell every exchange it held.
    fn replace_vm(self: &Arc<Self>, slot: usize, generation: u64, error: &VmError) {
        let mut state = self.slots[slot].lock();
        if state.generation != generation {
            return;
        }
        tracing::error!(vm = slot, "{error}; starting a fresh filter VM");
        match self.plugin.start_vm(slot) {
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
                self.route(slot, generation, effects);
            }
            Err(start) => tracing::error!(vm = slot, "the filter VM could not be restarted: {start:#}"),
        }
    }

    /// Carries out effects: stream effects go to their exchange, calls to their cluster, timers
    /// and queue notifications to their VM.
    fn route(self: &Arc<Self>, slot: usize, generation: u64, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::HttpCall(call) => {
                    let pool = self.clone();
                    tokio::spawn(async move {
                        let token = call.token;
                        let answer = pool.clusters.call(call).await;
                        pool.deliver(slot, generation, move |vm| vm.on_http_call_response(token, answer));
                    });
                }
                Effect::TickPeriod(period) => {
                    self.slots[slot].tick.send_replace(period);
                }
                Effect::QueueReady { vm, context, queue } => {
                    if vm < self.slots.len() {
                        let pool = self.clone();
                        let target_generation = self.slots[vm].lock().generation;
                        tokio::spawn(async move {
                            pool.deliver(vm, target_generation, move |v| v.on_queue_ready(context, queue));
                        });
                    }
                }
                Effect::Continue { context, .. }
                | Effect::LocalReply { context, .. }
                | Effect::Close { context, .. } => {
                    let state = self.slots[slot].lock();
                    if state.generation == generation
                        && let Some(listener) = state.listeners.get(&context)
                    {
                        let _ = listener.send(Signal::Effect(effect));
                    }
                }
            }
        }
    }

    /// Runs a root-context callback (call answer, tick, queue) on VM `slot`.
    fn deliver(self: &Arc<Self>, slot: usize, generation: u64, call: impl FnOnce(&mut Vm) -> Result<(), VmError>) {
        let mut state = self.slots[slot].lock();
        if state.generation != generation {
            return;
        }
        match call(&mut state.vm) {
            Ok(()) => {
                let effects = state.vm.take_effects();
                drop(state);
                self.route(slot, generation, effects);
            }
            Err(error) => {
                drop(state);
                self.replace_vm(slot, generation, &error);
            }
        }
    }

    fn spawn_ticker(self: &Arc<Self>, slot: usize) {
        let weak = Arc::downgrade(self);
        let mut period = self.slots[slot].tick.subscribe();
        tokio::spawn(async move {
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
                                let Some(pool) = weak.upgrade() else { return };
                                let generation = pool.slots[slot].lock().generation;
                                pool.deliver(slot, generation, |vm| vm.on_tick());
                            }
                        }
                    }
                }
            }
        });
    }
}
