//! State every VM of a process shares, as in Envoy: shared data, shared queues, metrics, the clock.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::abi::types::MetricType;

/// Where `proxy_get_current_time_nanoseconds` reads the time. Tests move a manual clock forward
/// instead of sleeping.
#[derive(Clone, Default)]
pub struct Clock {
    offset_nanos: Arc<AtomicI64>,
}

impl Clock {
    pub fn now(&self) -> SystemTime {
        let offset = self.offset_nanos.load(Ordering::Relaxed);
        let real = SystemTime::now();
        if offset >= 0 {
            real + Duration::from_nanos(offset as u64)
        } else {
            real - Duration::from_nanos(offset.unsigned_abs())
        }
    }

    pub fn unix_nanos(&self) -> u64 {
        self.now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
    }

    /// Moves this clock (and every VM reading it) forward.
    pub fn advance(&self, by: Duration) {
        self.offset_nanos.fetch_add(by.as_nanos() as i64, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Metric {
    name: String,
    kind: MetricType,
    value: u64,
    /// Histograms: how many values, their sum, and how many fell at or below each bound.
    samples: u64,
    sum: u64,
    buckets: Vec<u64>,
}

/// Envoy's default histogram bucket bounds, so that both hosts report the same buckets.
pub const HISTOGRAM_BOUNDS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

/// A metric as it stands, for exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSnapshot {
    pub name: String,
    pub kind: MetricType,
    /// A counter's or gauge's value; a histogram's last value.
    pub value: u64,
    /// Histograms: the count of values at or below each of [`HISTOGRAM_BOUNDS`] (cumulative),
    /// how many values there were, and their sum.
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum: u64,
}

#[derive(Debug)]
struct Queue {
    vm_id: String,
    name: String,
    owner_vm: usize,
    owner_context: u32,
    items: VecDeque<Vec<u8>>,
}

#[derive(Default)]
struct State {
    shared_data: HashMap<String, (Vec<u8>, u32)>,
    shared_data_bytes: usize,
    queues: Vec<Queue>,
    metrics: Vec<Metric>,
}

/// Limits that keep a misbehaving filter from exhausting the process through shared state.
#[derive(Debug, Clone)]
pub struct EnvLimits {
    pub shared_data_bytes: usize,
    pub queue_items: usize,
}

impl Default for EnvLimits {
    fn default() -> Self {
        EnvLimits { shared_data_bytes: 64 << 20, queue_items: 10_000 }
    }
}

/// Why a shared-data write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetError {
    CasMismatch,
    TooLarge,
}

/// Process-wide host state. One per loaded plugin; every VM of that plugin holds an `Arc` to it.
#[derive(Default)]
pub struct HostEnv {
    state: Mutex<State>,
    pub clock: Clock,
    pub limits: EnvLimits,
}

impl HostEnv {
    pub fn new() -> Arc<HostEnv> {
        Arc::new(HostEnv::default())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that matters
        // more than stopping the proxy would, so keep serving.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The value and its CAS number.
    pub fn get_shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.state().shared_data.get(key).cloned()
    }

    /// Writes `value` unless `cas` is non-zero and differs from the stored CAS number. A new key
    /// ignores `cas`, as in Envoy.
    pub fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SetError> {
        let mut state = self.state();
        let old_len = state.shared_data.get(key).map(|(v, _)| key.len() + v.len()).unwrap_or(0);
        let new_total = state.shared_data_bytes - old_len + key.len() + value.len();
        if new_total > self.limits.shared_data_bytes {
            return Err(SetError::TooLarge);
        }
        match state.shared_data.get_mut(key) {
            Some((_, stored_cas)) if cas != 0 && cas != *stored_cas => Err(SetError::CasMismatch),
            Some(entry) => {
                entry.0 = value.to_vec();
                entry.1 = entry.1.wrapping_add(1).max(1);
                state.shared_data_bytes = new_total;
                Ok(())
            }
            None => {
                state.shared_data.insert(key.to_string(), (value.to_vec(), 1));
                state.shared_data_bytes = new_total;
                Ok(())
            }
        }
    }

    pub fn shared_data_len(&self) -> usize {
        self.state().shared_data.len()
    }

    /// Registers (or finds) the queue `name` of `vm_id`; the registering VM and context own it.
    pub fn register_queue(&self, vm_id: &str, name: &str, owner_vm: usize, owner_context: u32) -> u32 {
        let mut state = self.state();
        if let Some(index) = state.queues.iter().position(|q| q.vm_id == vm_id && q.name == name) {
            let queue = &mut state.queues[index];
            queue.owner_vm = owner_vm;
            queue.owner_context = owner_context;
            return index as u32 + 1;
        }
        state.queues.push(Queue {
            vm_id: vm_id.to_string(),
            name: name.to_string(),
            owner_vm,
            owner_context,
            items: VecDeque::new(),
        });
        state.queues.len() as u32
    }

    pub fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        let state = self.state();
        state.queues.iter().position(|q| q.vm_id == vm_id && q.name == name).map(|i| i as u32 + 1)
    }

    /// Appends to a queue; answers the owner to notify, or `None` for an unknown queue.
    pub fn enqueue(&self, queue: u32, item: &[u8]) -> Option<Result<(usize, u32), ()>> {
        let limit = self.limits.queue_items;
        let mut state = self.state();
        let queue = state.queues.get_mut((queue as usize).checked_sub(1)?)?;
        if queue.items.len() >= limit {
            return Some(Err(()));
        }
        queue.items.push_back(item.to_vec());
        Some(Ok((queue.owner_vm, queue.owner_context)))
    }

    /// `None` for an unknown queue, `Some(None)` when it is empty.
    pub fn dequeue(&self, queue: u32) -> Option<Option<Vec<u8>>> {
        let mut state = self.state();
        let queue = state.queues.get_mut((queue as usize).checked_sub(1)?)?;
        Some(queue.items.pop_front())
    }

    /// Defines a metric, or finds the one of that name: ids are process-wide, as in Envoy.
    pub fn define_metric(&self, kind: MetricType, name: &str) -> u32 {
        let mut state = self.state();
        if let Some(index) = state.metrics.iter().position(|m| m.name == name && m.kind == kind) {
            return index as u32 + 1;
        }
        let buckets = if kind == MetricType::Histogram { vec![0; HISTOGRAM_BOUNDS.len()] } else { Vec::new() };
        state.metrics.push(Metric { name: name.to_string(), kind, value: 0, samples: 0, sum: 0, buckets });
        state.metrics.len() as u32
    }

    fn with_metric<T>(&self, id: u32, f: impl FnOnce(&mut Metric) -> T) -> Option<T> {
        let mut state = self.state();
        let metric = state.metrics.get_mut((id as usize).checked_sub(1)?)?;
        Some(f(metric))
    }

    /// `None` for an unknown metric, `Some(false)` when the kind cannot be incremented.
    pub fn increment_metric(&self, id: u32, offset: i64) -> Option<bool> {
        self.with_metric(id, |m| match m.kind {
            MetricType::Histogram => false,
            MetricType::Counter | MetricType::Gauge => {
                m.value = m.value.saturating_add_signed(offset);
                true
            }
        })
    }

    pub fn record_metric(&self, id: u32, value: u64) -> Option<()> {
        self.with_metric(id, |m| match m.kind {
            MetricType::Counter => m.value = m.value.saturating_add(value),
            MetricType::Gauge => m.value = value,
            MetricType::Histogram => {
                m.value = value;
                m.samples += 1;
                m.sum = m.sum.saturating_add(value);
                for (count, bound) in m.buckets.iter_mut().zip(HISTOGRAM_BOUNDS) {
                    if value as f64 <= bound {
                        *count += 1;
                    }
                }
            }
        })
    }

    pub fn get_metric(&self, id: u32) -> Option<u64> {
        self.with_metric(id, |m| m.value)
    }

    /// Every metric the filter defined, in the order it defined them.
    pub fn metrics(&self) -> Vec<MetricSnapshot> {
        let state = self.state();
        let snapshot = |m: &Metric| MetricSnapshot {
            name: m.name.clone(),
            kind: m.kind,
            value: m.value,
            buckets: m.buckets.clone(),
            count: m.samples,
            sum: m.sum,
        };
        state.metrics.iter().map(snapshot).collect()
    }

    /// A metric's value by name, for tests and diagnostics.
    pub fn metric(&self, name: &str) -> Option<u64> {
        self.state().metrics.iter().find(|m| m.name == name).map(|m| m.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_data_cas_follows_envoy() {
        let env = HostEnv::default();
        assert_eq!(env.get_shared_data("k"), None);
        env.set_shared_data("k", b"1", 99).expect("a new key ignores CAS");
        let (_, cas) = env.get_shared_data("k").unwrap();
        assert_eq!(env.set_shared_data("k", b"2", cas + 1), Err(SetError::CasMismatch));
        env.set_shared_data("k", b"2", cas).unwrap();
        assert_eq!(env.set_shared_data("k", b"3", cas), Err(SetError::CasMismatch), "CAS moved on");
        env.set_shared_data("k", b"4", 0).expect("CAS 0 is unconditional");
        assert_eq!(env.get_shared_data("k").unwrap().0, b"4");
    }

    #[test]
    fn shared_data_is_bounded() {
        let env = HostEnv { limits: EnvLimits { shared_data_bytes: 10, queue_items: 1 }, ..Default::default() };
        env.set_shared_data("k", b"12345", 0).unwrap();
        assert_eq!(env.set_shared_data("j", b"123456", 0), Err(SetError::TooLarge));
        env.set_shared_data("k", b"12345678", 0).expect("replacing frees the old value first");
    }

    #[test]
    fn manual_clock_moves_forward() {
        let clock = Clock::default();
        let before = clock.unix_nanos();
        clock.advance(Duration::from_secs(3600));
        assert!(clock.unix_nanos() >= before + 3_600_000_000_000);
    }
}
