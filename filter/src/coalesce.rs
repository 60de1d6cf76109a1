//! How concurrent requests with the same credentials share one whoami call, per VM.
//!
//! A *round* is one asking of Ory about one set of credentials. It begins when a request finds
//! nothing usable in the cache and no round out for its credentials (the request makes the call),
//! and ends when the answer comes (every request still waiting gets it), when the call cannot be
//! made, or when nobody is left who would get the answer. While a round is out, requests with the
//! same credentials join it instead of calling. The rounds out count against the VM's bound on
//! whoami calls (`load::admit`).
//!
//! A call belongs to the context that made it: the host delivers the answer there and cancels the
//! call when that request ends. So when the calling request goes away while others still wait,
//! the round is *orphaned* and the root context asks again on its next tick
//! ([`Coalescer::redispatch`]); an answer to the cancelled call that arrives anyway is ignored. A
//! root call whose waiters all went away before its answer came still has its answer cached.
//!
//! Open paths wait only until their deadline (`load::wait_deadline`); on the tick, those past it
//! are released to go on with [`overdue_result`] ([`Coalescer::release_overdue`]). Their round
//! stays out: if the released request made the call, its answer still resolves the round for the
//! others and fills the cache, for as long as that request lives.
//!
//! Everything here is pure. The glue tells it what happened (a request asks, an answer arrives, a
//! request ends, a tick), passes a closure that dispatches a call and returns its token, and
//! carries out what comes back. `W` is what the glue needs to resume a paused request; it is
//! handed back with the request's context id.

use std::collections::HashMap;

use crate::cache::{CredsHash, Positive};
use crate::entry::SessionResult;
use crate::load::{self, Admission, LoadPolicy};
use crate::session::Credentials;

/// The context a call was made from; its answer arrives there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Caller {
    /// The HTTP context of the request (by id) that asked first.
    Request(u32),
    /// The root context, asking again for a round whose caller went away.
    Root,
}

/// A call out: where its answer arrives, and the host's token for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Call {
    by: Caller,
    token: u32,
}

#[derive(Debug)]
struct Round {
    /// Kept to ask again if the caller goes away.
    creds: Credentials,
    /// The expired cache entry whose JWT may be reused if Ory confirms the same session.
    previous: Option<Positive>,
    /// The requests paused for the answer, in the order they asked.
    waiting: Vec<u32>,
    /// The call whose answer resolves the round; None once its caller went away, until the root
    /// asks again.
    call: Option<Call>,
}

#[derive(Debug)]
struct Waiter<W> {
    hash: CredsHash,
    /// When an open path stops waiting (ms); None for protected paths, which wait for the answer.
    deadline_ms: Option<u64>,
    resume: W,
}

/// A request that needs Ory's answer about its credentials.
#[derive(Debug)]
pub struct Question<W> {
    /// The request's context id.
    pub request: u32,
    pub hash: CredsHash,
    pub creds: Credentials,
    /// See [`crate::cache::CacheLookup::Miss`].
    pub previous: Option<Positive>,
    /// Protected paths wait for the answer; open ones only until their deadline.
    pub protected: bool,
    /// Handed back when the request is to be resumed.
    pub resume: W,
}

/// What became of a [`Question`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// A call for the same credentials is out: the request pauses for its answer.
    Joined,
    /// The request made the call and pauses for the answer.
    Called,
    /// The VM's calls are at their bound: the request goes on without asking (the text says why).
    Busy(String),
    /// The call could not be made: the request goes on without an answer (the text says why).
    Failed(String),
}

/// An answer's round, ended: the answer is about `hash`; resume `resumed` with it.
#[derive(Debug)]
pub struct Resolution<W> {
    pub hash: CredsHash,
    /// What the question that began the round offered for reuse.
    pub previous: Option<Positive>,
    /// The requests that were waiting, in the order they asked, with their resume handles.
    /// Empty when nobody waits any more: the answer is then only cached.
    pub resumed: Vec<(u32, W)>,
}

/// The per-VM table of rounds and of the requests paused for them.
#[derive(Debug)]
pub struct Coalescer<W> {
    rounds: HashMap<CredsHash, Round>,
    waiters: HashMap<u32, Waiter<W>>,
    /// Calls whose answer counts, to the credentials they ask about. Root calls stay here after
    /// their round ended (their answer is still cached); request calls leave with their request.
    calls: HashMap<Call, CredsHash>,
}

impl<W> Default for Coalescer<W> {
    fn default() -> Coalescer<W> {
        Coalescer { rounds: HashMap::new(), waiters: HashMap::new(), calls: HashMap::new() }
    }
}

/// The result an open path goes on with once it has waited its time for Ory.
pub fn overdue_result(policy: &LoadPolicy) -> SessionResult {
    let wait = policy.open_path_wait.as_millis();
    SessionResult::Unavailable(format!("Ory did not answer within the open-path wait ({wait} ms)"))
}

impl<W> Coalescer<W> {
    pub fn new() -> Coalescer<W> {
        Coalescer::default()
    }

    /// A request asks Ory about its credentials (the cache knew nothing usable): it joins the
    /// round out for them, or begins one by calling `dispatch` (which returns the call's token),
    /// or, with the VM's calls at their bound, is turned away.
    pub fn ask(
        &mut self,
        policy: &LoadPolicy,
        question: Question<W>,
        now_ms: u64,
        dispatch: impl FnOnce(&Credentials) -> Result<u32, String>,
    ) -> Ask {
        let Question { request, hash, creds, previous, protected, resume } = question;
        match load::admit(policy, self.rounds.contains_key(&hash), self.rounds.len()) {
            Admission::Busy => Ask::Busy(format!(
                "{} whoami calls are already in flight in this VM (the most it makes at once)",
                policy.max_concurrent_whoami
            )),
            Admission::Join => {
                if let Some(round) = self.rounds.get_mut(&hash)
                    && !round.waiting.contains(&request)
                {
                    round.waiting.push(request);
                }
                self.pause(request, hash, load::wait_deadline(policy, protected, now_ms), resume);
                Ask::Joined
            }
            Admission::Call => match dispatch(&creds) {
                Ok(token) => {
                    let call = Call { by: Caller::Request(request), token };
                    self.calls.insert(call, hash);
                    self.rounds.insert(hash, Round { creds, previous, waiting: vec![request], call: Some(call) });
                    self.pause(request, hash, load::wait_deadline(policy, protected, now_ms), resume);
                    Ask::Called
                }
                Err(why) => Ask::Failed(why),
            },
        }
    }

    fn pause(&mut self, request: u32, hash: CredsHash, deadline_ms: Option<u64>, resume: W) {
        self.waiters.insert(request, Waiter { hash, deadline_ms, resume });
    }

    /// The answer to the call `token` made from `by` arrived. None when it no longer counts (its
    /// request went away, or it is not a call of ours): read nothing, do nothing.
    pub fn answered(&mut self, by: Caller, token: u32) -> Option<Resolution<W>> {
        let call = Call { by, token };
        let hash = self.calls.remove(&call)?;
        if self.rounds.get(&hash).and_then(|round| round.call) != Some(call) {
            // A root call whose round ended meanwhile: nobody to resume, the answer is cached.
            return Some(Resolution { hash, previous: None, resumed: Vec::new() });
        }
        let round = self.rounds.remove(&hash)?;
        Some(Resolution { hash, previous: round.previous, resumed: self.take_waiters(round.waiting) })
    }

    fn take_waiters(&mut self, ids: Vec<u32>) -> Vec<(u32, W)> {
        ids.into_iter().filter_map(|id| self.waiters.remove(&id).map(|waiter| (id, waiter.resume))).collect()
    }

    /// The request `request` ended (answered, or its client went away). If it made a call that
    /// others still wait for, the round is orphaned (the host cancels the call) and the root asks
    /// again on its next tick; if nobody waits and no live request's call is out, the round ends
    /// and the next request with these credentials asks afresh.
    pub fn gone(&mut self, request: u32) {
        let waited = self.waiters.remove(&request).map(|waiter| waiter.hash);
        let made = |round: &Round| matches!(round.call, Some(Call { by: Caller::Request(id), .. }) if id == request);
        let Some(hash) = waited.or_else(|| self.rounds.iter().find(|(_, round)| made(round)).map(|(hash, _)| *hash))
        else {
            return;
        };
        let Some(round) = self.rounds.get_mut(&hash) else { return };
        round.waiting.retain(|&id| id != request);
        let made_it = made(round);
        if !round.waiting.is_empty() {
            if made_it && let Some(call) = round.call.take() {
                self.calls.remove(&call);
            }
            return;
        }
        let other_request_calling = matches!(round.call, Some(Call { by: Caller::Request(_), .. })) && !made_it;
        if other_request_calling {
            // That request went on without waiting; its answer still fills the cache.
            return;
        }
        if let Some(round) = self.rounds.remove(&hash)
            && made_it
            && let Some(call) = round.call
        {
            self.calls.remove(&call);
        }
    }

    /// Open paths whose deadline has come stop waiting, in id order; the glue resumes them with
    /// [`overdue_result`]. Their rounds stay out, for the others and for the cache.
    pub fn release_overdue(&mut self, now_ms: u64) -> Vec<(u32, W)> {
        let due = load::overdue(self.waiters.iter().map(|(id, waiter)| (*id, waiter.deadline_ms)), now_ms);
        let mut released = Vec::with_capacity(due.len());
        for id in due {
            let Some(waiter) = self.waiters.remove(&id) else { continue };
            if let Some(round) = self.rounds.get_mut(&waiter.hash) {
                round.waiting.retain(|&waiting| waiting != id);
            }
            released.push((id, waiter.resume));
        }
        released
    }

    /// From the root context's tick: asks again, by `dispatch`, for every orphaned round. A
    /// round whose call cannot be made ends, with the reason: the glue resumes its waiters as
    /// when Ory could not be asked.
    pub fn redispatch(
        &mut self,
        mut dispatch: impl FnMut(&Credentials) -> Result<u32, String>,
    ) -> Vec<(Resolution<W>, String)> {
        let orphaned: Vec<CredsHash> =
            self.rounds.iter().filter(|(_, round)| round.call.is_none()).map(|(hash, _)| *hash).collect();
        let mut failed = Vec::new();
        for hash in orphaned {
            let Some(round) = self.rounds.get_mut(&hash) else { continue };
            match dispatch(&round.creds) {
                Ok(token) => {
                    let call = Call { by: Caller::Root, token };
                    round.call = Some(call);
                    self.calls.insert(call, hash);
                }
                Err(why) => {
                    let Some(round) = self.rounds.remove(&hash) else { continue };
                    let resumed = self.take_waiters(round.waiting);
                    failed.push((Resolution { hash, previous: round.previous, resumed }, why));
                }
            }
        }
        failed
    }

    /// Rounds out (what counts against the VM's bound).
    pub fn rounds(&self) -> usize {
        self.rounds.len()
    }

    /// Whether the request is paused for an answer.
    pub fn is_waiting(&self, request: u32) -> bool {
        self.waiters.contains_key(&request)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::session::DEFAULT_SESSION_COOKIE_PREFIXES;

    const NOW: u64 = 1_000_000;

    fn creds(cookie: &str) -> Credentials {
        Credentials::from_headers(&[("cookie", cookie)], DEFAULT_SESSION_COOKIE_PREFIXES)
    }

    fn policy() -> LoadPolicy {
        LoadPolicy { max_concurrent_whoami: 2, open_path_wait: Duration::from_millis(300) }
    }

    /// The whoami calls a test makes, and the tokens they get (1, 2, …).
    #[derive(Default)]
    struct Host {
        calls: Vec<Credentials>,
        fail: bool,
    }

    impl Host {
        fn dispatch(&mut self, creds: &Credentials) -> Result<u32, String> {
            if self.fail {
                return Err("no cluster".to_string());
            }
            self.calls.push(creds.clone());
            Ok(u32::try_from(self.calls.len()).unwrap())
        }
    }

    /// Request `id` asks about the session cookie `cookie`; the resume handle is its id.
    fn ask(calls: &mut Coalescer<u32>, host: &mut Host, id: u32, cookie: &str, protected: bool, now: u64) -> Ask {
        let creds = creds(cookie);
        let question =
            Question { request: id, hash: CredsHash::of(&creds), creds, previous: None, protected, resume: id };
        calls.ask(&policy(), question, now, |creds| host.dispatch(creds))
    }

    fn ids(resumed: &[(u32, u32)]) -> Vec<u32> {
        resumed
            .iter()
            .map(|(id, resume)| {
                assert_eq!(id, resume, "each request gets its own handle back");
                *id
            })
            .collect()
    }

    #[test]
    fn many_waiters_share_one_call_and_its_answer() {
        let (mut calls, mut host) = (Coalescer::new(), Host::default());
        assert_eq!(ask(&mut calls, &mut host, 1, "ory_kratos_session=a", true, NOW), Ask::Called);
        for id in 2..=5 {
            assert_eq!(ask(&mut calls, &mut host, id, "ory_kratos_session=a", id % 2 == 0, NOW), Ask::Joined);
        }
        assert_eq!(ask(&mut calls, &mut host, 6, "ory_kratos_session=b", true, NOW), Ask::Called);
        assert_eq!(host.calls, [creds("ory_kratos_session=a"), creds("ory_kratos_session=b")], "one call per session");
        assert_eq!(calls.rounds(), 2);

        let resolution = calls.answered(Caller::Request(1), 1).expect("the caller's answer counts");
        assert_eq!(resolution.hash, CredsHash::of(&creds("ory_kratos_session=a")));
        assert_eq!(ids(&resolution.resumed), [1, 2, 3, 4, 5], "every waiter, in the order they asked");
        assert!((1..=5).all(|id| !calls.is_waiting(id)));
        assert!(calls.is_waiting(6), "the other session still waits for its own call");
        assert!(calls.answered(Caller::Request(1), 1).is_none(), "an answer counts once");
        // The round is over: the next request with these credentials asks afresh.
        assert_eq!(ask(&mut calls, &mut host, 7, "ory_kratos_session=a", true, NOW), Ask::Called);
        assert_eq!(host.calls.len(), 3);
        assert_eq!(ids(&calls.answered(Caller::Request(6), 2).unwrap().resumed), [6]);
    }

    /// What the table of calls in flight did before it became this module, in its terms.
    #[test]
    fn in_flight_calls_are_shared() {
        let (mut calls, mut host) = (Coalescer::new(), Host::default());
        assert_eq!(ask(&mut calls, &mut host, 1, "ory_kratos_session=a", true, NOW), Ask::Called);
        assert_eq!(ask(&mut calls, &mut host, 2, "ory_kratos_session=a", true, NOW), Ask::Joined);
        assert_eq!(ask(&mut calls, &mut host, 3, "ory_kratos_session=a", true, NOW), Ask::Joined);
        assert_eq!(
            ask(&mut calls, &mut host, 3, "ory_kratos_session=a", true, NOW),
            Ask::Joined,
            "asking twice is harmless"
        );
        assert_eq!(ask(&mut calls, &mut host, 4, "ory_kratos_session=b", false, NOW), Ask::Called);
        assert_eq!(calls.rounds(), 2);
        calls.gone(2);
        assert_eq!(ids(&calls.answered(Caller::Request(1), 1).unwrap().resumed), [1, 3]);
        assert_eq!(calls.rounds(), 1);
        assert!(calls.answered(Caller::Request(1), 1).is_none());
        assert_eq!(
            ask(&mut calls, &mut host, 5, "ory_kratos_session=a", true, NOW),
            Ask::Called,
            "a new round after the answer"
        );
        // Everyone stopped waiting, but the call is still out: a newcomer waits for it.
        assert_eq!(ids(&calls.release_overdue(NOW + 300)), [4]);
        assert_eq!(ask(&mut calls, &mut host, 6, "ory_kratos_session=b", true, NOW + 300), Ask::Joined);
        assert_eq!(ids(&calls.answered(Caller::Request(4), 2).unwrap().resumed), [6]);
        assert_eq!(ids(&calls.answered(Caller::Request(5), 3).unwrap().resumed), [5]);
        assert_eq!(calls.rounds(), 0);
    }

    #[test]
    fn the_first_asker_offers_the_previous_jwt_to_the_round() {
        let (mut calls, mut host) = (Coalescer::new(), Host::default());
        let creds = creds("ory_kratos_session=a");
        let previous = Positive {
            session_json: b"{}".to_vec(),
            identity_id: "u1".to_string(),
            jwt: "jwt".to_string(),
            jwt_iat: 1,
            jwt_exp: 61,
        };
        let question = Question {
            request: 1,
            hash: CredsHash::of(&creds),
            creds,
            previous: Some(previous.clone()),
            protected: true,
            resume: 1,
        };
        assert_eq!(calls.ask(&policy(), question, NOW, |creds| host.dispatch(creds)), Ask::Called);
        assert_eq!(calls.answered(Caller::Request(1), 1).unwrap().previous, Some(previous));
    }

    #[test]
    fn when_the_caller_goes_away_the_root_asks_again_for_those_still_waiting() {
        let (mut calls, mut host) = (Coalescer::new(), Host::default());
        assert_eq!(ask(&mut calls, &mut host, 1, "ory_kratos_session=a", true, NOW), Ask::Called);
        assert_eq!(ask(&mut calls, &mut host, 2, "ory_kratos_session=a", true, NOW), Ask::Joined);
        assert_eq!(ask(&mut calls, &mut host, 3, "ory_kratos_session=a", true, NOW), Ask::Joined);
        calls.gone(1);
        // Hosts cancel a gone request's calls; an answer arriving anyway is ignored.
        assert!(calls.answered(Caller::Request(1), 1).is_none());
        assert!(calls.is_waiting(2) && calls.is_waiting(3));
        // Meanwhile another request joins the orphaned round instead of calling.
        assert_eq!(ask(&mut calls, &mut host, 4, "ory_kratos_session=a", true, NOW), Ask::Joined);
        assert_eq!(host.calls.len(), 1);

        assert!(calls.redispatch(|creds| host.dispatch(creds)).is_empty());
        assert_eq!(host.calls, [creds("ory_kratos_session=a"), creds("ory_kratos_session=a")]);
        assert!(calls.redispatch(|creds| host.dispatch(creds)).is_empty(), "asked once: the root's call is out");
        assert_eq!(host.calls.len(), 2);
        calls.gone(3);
        assert!(calls.answered(Caller::Request(2), 2).is_none(), "the root made call 2");
        let resolution = calls.answered(Caller::Root, 2).expect("the root's answer resolves the round");
        assert_eq!(ids(&resolution.resumed), [2, 4]);
        assert_eq!(calls.rounds(), 0);
    }

    #[test]
    fn a_root_call_that_cannot_be_made_ends_the_round_for_its_waiters() {
        let (mut calls, mut host) = (Coalescer::new(), Host::default());
        ask(&mut calls, &mut host, 1, "ory_kratos_session=a", true, NOW);
        ask(&mut calls, &mut host, 2, "ory_kratos_session=a", true, NOW);
        calls.gone(1);
        host.fail = true;
        let failed = calls.redispatch(|creds| host.dispatch(creds));
        assert_eq!(failed.len(), 1);
        let (resolution, why) = &failed[0];
        assert_eq!(ids(&resolution.resumed), [2]);
        assert_eq!(why, "no cluster");
        assert_eq!(calls.rounds(), 0);
        assert!(!calls.is_waiting(2));
    }

    #[test]
    fn a_root_answer_after_everyone_left_is_only_cached() {
        let (mut calls, mut host) = (Coalescer::new(), Host::default());
        ask(&mut calls, &mut host, 1, "ory_kratos_session=a", true, NOW);
        ask(&mut calls, &mut host, 2, "ory_kratos_session=a", true, NOW);
        calls.gone(1);
        calls.redispatch(|creds| host.dispatch(creds));
        calls.gone(2);
        assert_eq!(calls.rounds(), 0, "nobody waits: the round is over");
        // A new round for the same credentials has a call of its own.
        assert_eq!(ask(&mut calls, &mut host, 3, "ory_kratos_session=a", true, NOW), Ask::Called);
        let stale = calls.answered(Caller::Root, 2).expect("still an answer about these credentials");
        assert_eq!(stale.hash, CredsHash::of(&creds("ory_kratos_session=a")));
        assert!(stale.resumed.is_empty());
        assert!(calls.is_waiting(3), "the new round waits for its own call");
        assert_eq!(ids(&calls.answered(Caller::Request(3), 3).unwrap().resumed), [3]);
    }

    #[test]
    fn overdue_open_paths_are_released_while_the_call_stays_out() {
        let (mut calls, mut host) = (Coalescer::new(), Host::default());
        assert_eq!(ask(&mut calls, &mut host, 1, "ory_kratos_session=a", false, NOW), Ask::Called);
        assert_eq!(ask(&mut calls, &mut host, 2, "ory_kratos_session=a", true, NOW), Ask::Joined);
        assert_eq!(ask(&mut calls, &mut host, 3, "ory_kratos_session=a", false, NOW + 100), Ask::Joined);
        assert!(calls.release_overdue(NOW + 299).is_empty(), "still within the wait");
        assert_eq!(ids(&calls.release_overdue(NOW + 300)), [1]);
        assert_eq!(
            overdue_result(&policy()),
            SessionResult::Unavailable("Ory did not answer within the open-path wait (300 ms)".to_string())
        );
        assert_eq!(ids(&calls.release_overdue(NOW + 10_000)), [3], "protected paths are never overdue");
        assert!(calls.is_waiting(2));
        // The call is still out: a newcomer joins it, and the released caller's answer counts.
        assert_eq!(ask(&mut calls, &mut host, 4, "ory_kratos_session=a", true, NOW + 10_000), Ask::Joined);
        assert_eq!(host.calls.len(), 1);
        let resolution = calls.answered(Caller::Request(1), 1).expect("the released caller's answer");
        assert_eq!(ids(&resolution.resumed), [2, 4]);
    }

    #[test]
    fn a_released_caller_that_finishes_frees_its_call() {
        let (mut calls, mut host) = (Coalescer::new(), Host::default());
        ask(&mut calls, &mut host, 1, "ory_kratos_session=a", false, NOW);
        assert_eq!(ids(&calls.release_overdue(NOW + 300)), [1]);
        assert_eq!(calls.rounds(), 1, "while it lives its call counts against the bound");
        calls.gone(1);
        assert_eq!(calls.rounds(), 0);
        assert!(calls.answered(Caller::Request(1), 1).is_none());
        assert!(calls.redispatch(|creds| host.dispatch(creds)).is_empty());
        assert_eq!(host.calls.len(), 1, "nobody waited: no call again");
    }

    #[test]
    fn a_released_caller_keeps_its_round_for_a_later_joiner_and_goes_away() {
        let (mut calls, mut host) = (Coalescer::new(), Host::default());
        ask(&mut calls, &mut host, 1, "ory_kratos_session=a", false, NOW);
        calls.release_overdue(NOW + 300);
        assert_eq!(ask(&mut calls, &mut host, 2, "ory_kratos_session=a", true, NOW + 300), Ask::Joined);
        calls.gone(2);
        assert_eq!(calls.rounds(), 1, "the released caller's call is still out, for the cache");
        assert!(calls.answered(Caller::Request(1), 1).unwrap().resumed.is_empty());
    }

    #[test]
    fn waiters_going_away_leave_the_call_to_the_others_and_the_last_one_ends_it() {
        let (mut calls, mut host) = (Coalescer::new(), Host::default());
        ask(&mut calls, &mut host, 1, "ory_kratos_session=a", true, NOW);
        ask(&mut calls, &mut host, 2, "ory_kratos_session=a", true, NOW);
        ask(&mut calls, &mut host, 3, "ory_kratos_session=a", true, NOW);
        calls.gone(2);
        calls.gone(99);
        assert_eq!(ids(&calls.answered(Caller::Request(1), 1).unwrap().resumed), [1, 3]);

        // The only request goes away: the next one asks afresh instead of waiting forever.
        ask(&mut calls, &mut host, 4, "ory_kratos_session=a", true, NOW);
        calls.gone(4);
        assert_eq!(calls.rounds(), 0);
        assert!(calls.answered(Caller::Request(4), 2).is_none());
        assert_eq!(ask(&mut calls, &mut host, 5, "ory_kratos_session=a", true, NOW), Ask::Called);
        assert_eq!(host.calls.len(), 3);
        // A request that was resumed and then ends changes nothing.
        calls.answered(Caller::Request(5), 3);
        ask(&mut calls, &mut host, 6, "ory_kratos_session=a", true, NOW);
        calls.gone(5);
        assert!(calls.is_waiting(6));
        assert_eq!(ids(&calls.answered(Caller::Request(6), 4).unwrap().resumed), [6]);
    }

    #[test]
    fn calls_stop_at_the_bound_and_joining_is_free() {
        let (mut calls, mut host) = (Coalescer::new(), Host::default());
        assert_eq!(ask(&mut calls, &mut host, 1, "ory_kratos_session=a", true, NOW), Ask::Called);
        assert_eq!(ask(&mut calls, &mut host, 2, "ory_kratos_session=b", true, NOW), Ask::Called);
        assert_eq!(
            ask(&mut calls, &mut host, 3, "ory_kratos_session=c", true, NOW),
            Ask::Busy("2 whoami calls are already in flight in this VM (the most it makes at once)".to_string())
        );
        assert!(!calls.is_waiting(3));
        assert_eq!(ask(&mut calls, &mut host, 4, "ory_kratos_session=a", true, NOW), Ask::Joined);
        assert_eq!(host.calls.len(), 2);
        calls.answered(Caller::Request(2), 2);
        assert_eq!(ask(&mut calls, &mut host, 5, "ory_kratos_session=c", true, NOW), Ask::Called);
    }

    #[test]
    fn a_call_that_cannot_be_made_leaves_nothing_behind() {
        let (mut calls, mut host) = (Coalescer::new(), Host { fail: true, ..Host::default() });
        assert_eq!(
            ask(&mut calls, &mut host, 1, "ory_kratos_session=a", true, NOW),
            Ask::Failed("no cluster".to_string())
        );
        assert!(!calls.is_waiting(1));
        assert_eq!(calls.rounds(), 0);
        host.fail = false;
        assert_eq!(ask(&mut calls, &mut host, 2, "ory_kratos_session=a", true, NOW), Ask::Called);
    }
}
