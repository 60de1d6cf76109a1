//! How much Ory is asked, and how long a request waits for it.
//!
//! Which requests cost a whoami call at all is decided by [`crate::session::Credentials`]: only
//! those carrying something Ory could know (a session cookie, `X-Session-Token`, a bearer token).
//! This module bounds the rest:
//!
//! - **Calls in flight, per VM.** Each VM (Envoy runs one per worker; the runner one per worker
//!   thread) has at most `max_concurrent_whoami` whoami calls out at once. A request whose
//!   credentials already have a call out joins it and costs nothing; a request that would need a
//!   new call beyond the bound is not asked about: a protected path fails closed as when Ory cannot
//!   be asked (502), an open path goes on without a JWT. So a flood of distinct session cookies
//!   costs Ory at most `max_concurrent_whoami × VMs` calls at a time.
//! - **Waiting on open paths.** An open path waits at most `open_path_wait` for the answer, then
//!   goes on without a JWT, as it would if Ory had failed. The call itself is not abandoned: while
//!   the request that made it lives, its answer still fills the cache for the next request.
//!   Protected paths wait for the answer (bounded by the whoami timeout): they cannot go on
//!   without one.
//!
//! The host gives no per-request timers, so the glue checks the deadlines of waiting requests on
//! the root context's tick; [`tick_period`] makes that tick fine enough for the wait.

use std::time::Duration;

/// Whoami calls one VM may have in flight at once.
pub const DEFAULT_MAX_CONCURRENT_WHOAMI: u32 = 32;
/// How long an open path waits for a whoami answer before it goes on without a JWT.
pub const DEFAULT_OPEN_PATH_WAIT_MS: u64 = 300;
/// The root context's tick when nothing asks for a finer one (the cache sweep's pace).
pub const SLOW_TICK: Duration = Duration::from_secs(1);
/// The finest tick asked for, whatever the wait.
const FINEST_TICK: Duration = Duration::from_millis(10);

/// The load settings of a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadPolicy {
    pub max_concurrent_whoami: u32,
    pub open_path_wait: Duration,
}

impl Default for LoadPolicy {
    fn default() -> LoadPolicy {
        LoadPolicy {
            max_concurrent_whoami: DEFAULT_MAX_CONCURRENT_WHOAMI,
            open_path_wait: Duration::from_millis(DEFAULT_OPEN_PATH_WAIT_MS),
        }
    }
}

/// What a request that needs Ory's answer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A call for the same credentials is out: wait for its answer, at no cost.
    Join,
    /// Make the call.
    Call,
    /// The VM's calls are at the bound: do not ask (the session is unknown).
    Busy,
}

/// Decides whether a request may ask Ory: `already_asking` says a call for its credentials is
/// out, `in_flight` how many calls the VM has out.
pub fn admit(policy: &LoadPolicy, already_asking: bool, in_flight: usize) -> Admission {
    if already_asking {
        Admission::Join
    } else if in_flight >= policy.max_concurrent_whoami as usize {
        Admission::Busy
    } else {
        Admission::Call
    }
}

/// Until when (ms) a paused request waits for the answer: open paths until `now + wait`;
/// protected ones until the answer comes (`None`).
pub fn wait_deadline(policy: &LoadPolicy, protected: bool, now_ms: u64) -> Option<u64> {
    if protected {
        return None;
    }
    let wait = u64::try_from(policy.open_path_wait.as_millis()).unwrap_or(u64::MAX);
    Some(now_ms.saturating_add(wait))
}

/// The waiting requests whose deadline has come, in id order.
pub fn overdue(waiting: impl IntoIterator<Item = (u32, Option<u64>)>, now_ms: u64) -> Vec<u32> {
    let mut due: Vec<u32> =
        waiting.into_iter().filter(|(_, deadline)| deadline.is_some_and(|at| at <= now_ms)).map(|(id, _)| id).collect();
    due.sort_unstable();
    due
}

/// The tick that checks deadlines: a quarter of the wait, so that an open path waits at most a
/// quarter longer than asked; never finer than 10 ms, never slower than [`SLOW_TICK`].
pub fn tick_period(policy: &LoadPolicy) -> Duration {
    (policy.open_path_wait / 4).clamp(FINEST_TICK, SLOW_TICK)
}

/// Whether the slow, periodic work (the cache sweep) is due at `now_ms`, last done at `last_ms`.
pub fn slow_work_due(last_ms: u64, now_ms: u64) -> bool {
    now_ms.saturating_sub(last_ms) >= u64::try_from(SLOW_TICK.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max: u32, wait_ms: u64) -> LoadPolicy {
        LoadPolicy { max_concurrent_whoami: max, open_path_wait: Duration::from_millis(wait_ms) }
    }

    #[test]
    fn joining_is_free_and_new_calls_stop_at_the_bound() {
        let policy = policy(2, 300);
        assert_eq!(admit(&policy, false, 0), Admission::Call);
        assert_eq!(admit(&policy, false, 1), Admission::Call);
        assert_eq!(admit(&policy, false, 2), Admission::Busy);
        assert_eq!(admit(&policy, false, 50), Admission::Busy);
        assert_eq!(admit(&policy, true, 2), Admission::Join, "a call already out costs Ory nothing more");
        assert_eq!(admit(&policy, true, 0), Admission::Join);
        assert_eq!(admit(&LoadPolicy { max_concurrent_whoami: 0, ..policy }, false, 0), Admission::Busy);
    }

    #[test]
    fn open_paths_wait_briefly_and_protected_ones_for_the_answer() {
        let policy = policy(32, 300);
        assert_eq!(wait_deadline(&policy, false, 1_000), Some(1_300));
        assert_eq!(wait_deadline(&policy, true, 1_000), None);
        assert_eq!(wait_deadline(&policy, false, u64::MAX - 1), Some(u64::MAX));
    }

    #[test]
    fn overdue_requests_are_the_open_ones_past_their_deadline() {
        let waiting = [(7, Some(1_300)), (3, Some(1_000)), (5, None), (9, Some(1_301)), (1, Some(999))];
        assert_eq!(overdue(waiting, 1_300), vec![1, 3, 7]);
        assert_eq!(overdue(waiting, 0), Vec::<u32>::new());
        assert_eq!(overdue(waiting, u64::MAX), vec![1, 3, 7, 9], "protected requests are never overdue");
    }

    #[test]
    fn the_tick_follows_the_wait_within_bounds() {
        assert_eq!(tick_period(&policy(32, 300)), Duration::from_millis(75));
        assert_eq!(tick_period(&policy(32, 1)), Duration::from_millis(10));
        assert_eq!(tick_period(&policy(32, 60_000)), SLOW_TICK);
        assert_eq!(tick_period(&LoadPolicy::default()), Duration::from_millis(DEFAULT_OPEN_PATH_WAIT_MS / 4));
        assert!(!slow_work_due(1_000, 1_999));
        assert!(slow_work_due(1_000, 2_000));
        assert!(slow_work_due(0, 5_000));
        assert!(!slow_work_due(5_000, 4_000), "a clock going back does not hurry the sweep");
    }
}
