//! What the filter counts for operators: the names (the same in every host: Envoy's
//! `/stats/prometheus` and the runner's `--metrics-addr` show them as they are here) and which
//! one an event counts in. The glue defines them with the host and bumps them.

use crate::decide::SessionAction;
use crate::entry::SessionResult;
use crate::session::WhoamiOutcome;

/// The filter's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    /// App requests that went on with a session (and its JWT).
    RequestsWithSession,
    /// App requests that went on without one (open paths).
    RequestsWithoutSession,
    /// Browsers sent to log in (or to a second factor).
    LoginRedirects,
    /// API clients refused for want of a session: 401 (or 403 for a second factor).
    Unauthorized,
    /// Protected requests refused because the session could not be checked.
    FailedClosed,
    SessionCacheHits,
    SessionCacheMisses,
    WhoamiActive,
    WhoamiNoSession,
    WhoamiAal2Required,
    /// Whoami calls that failed or got an answer that is not Ory's.
    WhoamiFailed,
    TokensSigned,
    /// Ory responses whose redirects, cookies or body were rewritten for the proxy's origin.
    OryResponsesRewritten,
}

impl Counter {
    pub const ALL: [Counter; 13] = [
        Counter::RequestsWithSession,
        Counter::RequestsWithoutSession,
        Counter::LoginRedirects,
        Counter::Unauthorized,
        Counter::FailedClosed,
        Counter::SessionCacheHits,
        Counter::SessionCacheMisses,
        Counter::WhoamiActive,
        Counter::WhoamiNoSession,
        Counter::WhoamiAal2Required,
        Counter::WhoamiFailed,
        Counter::TokensSigned,
        Counter::OryResponsesRewritten,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Counter::RequestsWithSession => "ory_proxy_requests_with_session_total",
            Counter::RequestsWithoutSession => "ory_proxy_requests_without_session_total",
            Counter::LoginRedirects => "ory_proxy_login_redirects_total",
            Counter::Unauthorized => "ory_proxy_unauthorized_total",
            Counter::FailedClosed => "ory_proxy_failed_closed_total",
            Counter::SessionCacheHits => "ory_proxy_session_cache_hits_total",
            Counter::SessionCacheMisses => "ory_proxy_session_cache_misses_total",
            Counter::WhoamiActive => "ory_proxy_whoami_active_total",
            Counter::WhoamiNoSession => "ory_proxy_whoami_no_session_total",
            Counter::WhoamiAal2Required => "ory_proxy_whoami_aal2_required_total",
            Counter::WhoamiFailed => "ory_proxy_whoami_failed_total",
            Counter::TokensSigned => "ory_proxy_tokens_signed_total",
            Counter::OryResponsesRewritten => "ory_proxy_ory_responses_rewritten_total",
        }
    }
}

/// How long whoami calls take, in milliseconds (a histogram).
pub const WHOAMI_DURATION_MS: &str = "ory_proxy_whoami_duration_ms";

/// The counter of an app request's outcome, from what was decided for it.
pub fn request_outcome(result: &SessionResult, action: &SessionAction) -> Counter {
    match action {
        SessionAction::Continue { .. } if matches!(result, SessionResult::Active { .. }) => {
            Counter::RequestsWithSession
        }
        SessionAction::Continue { .. } => Counter::RequestsWithoutSession,
        SessionAction::Reply(response) => match response.status {
            300..=399 => Counter::LoginRedirects,
            401 | 403 => Counter::Unauthorized,
            _ => Counter::FailedClosed,
        },
    }
}

/// The counter of a whoami call's outcome.
pub fn whoami_outcome(outcome: &WhoamiOutcome) -> Counter {
    match outcome {
        WhoamiOutcome::Active(_) => Counter::WhoamiActive,
        WhoamiOutcome::NoSession => Counter::WhoamiNoSession,
        WhoamiOutcome::Aal2Required { .. } => Counter::WhoamiAal2Required,
        WhoamiOutcome::Unavailable(_) => Counter::WhoamiFailed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::LocalResponse;

    fn reply(status: u32) -> SessionAction {
        SessionAction::Reply(LocalResponse { status, headers: Vec::new(), body: Vec::new() })
    }

    #[test]
    fn each_outcome_counts_once_where_an_operator_looks_for_it() {
        let active = SessionResult::Active { jwt: Some("t".into()) };
        let go_on = SessionAction::Continue { authorization: None };
        assert_eq!(request_outcome(&active, &go_on), Counter::RequestsWithSession);
        assert_eq!(request_outcome(&SessionResult::NoSession, &go_on), Counter::RequestsWithoutSession);
        assert_eq!(request_outcome(&SessionResult::NoSession, &reply(303)), Counter::LoginRedirects);
        assert_eq!(request_outcome(&SessionResult::NoSession, &reply(401)), Counter::Unauthorized);
        let down = SessionResult::Unavailable("down".into());
        assert_eq!(request_outcome(&down, &reply(502)), Counter::FailedClosed);
        assert_eq!(whoami_outcome(&WhoamiOutcome::Unavailable("x".into())), Counter::WhoamiFailed);
    }

    #[test]
    fn names_are_distinct_prometheus_names() {
        let mut names: Vec<&str> = Counter::ALL.iter().map(|counter| counter.name()).collect();
        names.push(WHOAMI_DURATION_MS);
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count);
        for name in names {
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{name}");
        }
    }
}
