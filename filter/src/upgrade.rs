//! Protocol switches. Once an app answers `101 Switching Protocols`, the connection is a tunnel:
//! every later byte on it passes the proxy unseen, with no session check and no JWT. So the
//! only switch let through is the one the filter saw asked for and let through itself: a
//! WebSocket, answered with `Upgrade: websocket`. Hosts differ here (Envoy 1.40 passes an
//! upstream's `101` to the client even when the request asked for no switch), so the filter
//! decides itself.

use crate::headers::header;
use crate::reply::{LocalResponse, error_reply};

/// Whether `value`, a comma-separated list of tokens, holds `token` (case-insensitively).
fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|value| value.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Whether a request asks to open a WebSocket (`Connection: upgrade`, `Upgrade: websocket`).
pub fn asks_for_websocket(request: &[(String, String)]) -> bool {
    has_token(header(request, "connection"), "upgrade") && has_token(header(request, "upgrade"), "websocket")
}

/// The answer that replaces an upstream's response, when that response switches protocols
/// without the request having asked for a WebSocket, or to something else.
pub fn refused_switch(asked_for_websocket: bool, response: &[(String, String)]) -> Option<LocalResponse> {
    if header(response, ":status") != Some("101") {
        return None;
    }
    if asked_for_websocket && has_token(header(response, "upgrade"), "websocket") {
        return None;
    }
    let reason = "the upstream switched protocols without being asked to";
    Some(error_reply(502, reason, "The upstream answered wrongly"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::tests::h;

    #[test]
    fn only_a_websocket_asked_for_may_switch() {
        let websocket = h(&[("connection", "keep-alive, Upgrade"), ("upgrade", "WebSocket")]);
        assert!(asks_for_websocket(&websocket));
        assert!(!asks_for_websocket(&h(&[("connection", "upgrade"), ("upgrade", "h2c")])));
        assert!(!asks_for_websocket(&h(&[("upgrade", "websocket")])), "Connection must name the upgrade");

        let switched = h(&[(":status", "101"), ("upgrade", "websocket"), ("connection", "upgrade")]);
        assert!(refused_switch(true, &switched).is_none());
        assert_eq!(refused_switch(false, &switched).map(|r| r.status), Some(502), "nobody asked");
        let to_h2c = h(&[(":status", "101"), ("upgrade", "h2c")]);
        assert_eq!(refused_switch(true, &to_h2c).map(|r| r.status), Some(502), "not what was asked");
        assert!(refused_switch(false, &h(&[(":status", "200")])).is_none());
    }
}
