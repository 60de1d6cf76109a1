//! Plain data the host exchanges with whoever drives it: header lists, actions, effects.

use std::time::Duration;

/// An ordered header list with lower-case names, as proxy-wasm sees it. Pseudo-headers
/// (`:method`, `:path`, `:authority`, `:scheme`, `:status`) travel in the same list.
/// Values are bytes: HTTP allows values that are not UTF-8, and the host must not mangle them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderList(pub Vec<(String, Vec<u8>)>);

impl HeaderList {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_pairs<K: AsRef<str>, V: AsRef<[u8]>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        let mut list = Self::new();
        for (name, value) in pairs {
            list.add(name.as_ref(), value.as_ref());
        }
        list
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first value of `name`, as the proxy-wasm `get_header_map_value` call answers.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn get_all(&self, name: &str) -> impl Iterator<Item = &[u8]> {
        self.0.iter().filter(move |(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    pub fn add(&mut self, name: &str, value: &[u8]) {
        self.0.push((name.to_ascii_lowercase(), value.to_vec()));
    }

    /// Replaces every value of `name` with `value`, at the end of the list: Envoy's `setCopy`
    /// (remove, then add), so a filter sees the same order in both hosts.
    pub fn set(&mut self, name: &str, value: &[u8]) {
        self.remove(name);
        self.0.push((name.to_ascii_lowercase(), value.to_vec()));
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    /// The proxy-wasm wire form: u32 count, then (u32 name length, u32 value length) per pair,
    /// then each name and value followed by a NUL byte; all little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let size = 4 + self.0.iter().map(|(k, v)| 8 + k.len() + v.len() + 2).sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&(self.0.len() as u32).to_le_bytes());
        for (k, v) in &self.0 {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in &self.0 {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out
    }

    /// Parses the wire form; `None` when the bytes are not a well-formed map.
    pub fn decode(bytes: &[u8]) -> Option<HeaderList> {
        if bytes.is_empty() {
            return Some(HeaderList::new());
        }
        let read_u32 = |at: usize| -> Option<usize> {
            let raw: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
            Some(u32::from_le_bytes(raw) as usize)
        };
        let count = read_u32(0)?;
        // Each pair needs at least 10 bytes: refuse counts the buffer cannot hold before allocating.
        if count > bytes.len() / 10 + 1 {
            return None;
        }
        let mut sizes = Vec::with_capacity(count);
        for i in 0..count {
            sizes.push((read_u32(4 + i * 8)?, read_u32(8 + i * 8)?));
        }
        let mut at = 4 + count * 8;
        let mut list = HeaderList::new();
        for (key_len, value_len) in sizes {
            let key = bytes.get(at..at + key_len)?;
            at += key_len + 1;
            let value = bytes.get(at..at + value_len)?;
            at += value_len + 1;
            if at > bytes.len() {
                return None;
            }
            list.add(std::str::from_utf8(key).ok()?, value);
        }
        Some(list)
    }
}

/// What a filter callback asks of the stream: go on, or wait (the ABI's `proxy_action_t`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue = 0,
    /// Stop iteration; in a body callback, also buffer what has arrived so far.
    Pause = 1,
}

impl TryFrom<u32> for Action {
    /// The number a callback returned, when it is not an action.
    type Error = u32;

    fn try_from(number: u32) -> Result<Action, u32> {
        match number {
            0 => Ok(Action::Continue),
            1 => Ok(Action::Pause),
            other => Err(other),
        }
    }
}

/// The two halves of an HTTP stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

/// A response the filter made itself (`proxy_send_local_response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub details: String,
    pub headers: HeaderList,
    pub body: Vec<u8>,
}

/// An outgoing call a filter dispatched with `proxy_http_call`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCallRequest {
    pub token: u32,
    pub cluster: String,
    pub headers: HeaderList,
    pub body: Vec<u8>,
    pub trailers: HeaderList,
    pub timeout: Duration,
}

/// The answer to an [`HttpCallRequest`]. A call that failed (no connection, reset) is answered
/// with `None` instead; the filter then sees zero headers, as in Envoy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpCallResponse {
    pub headers: HeaderList,
    pub body: Vec<u8>,
    pub trailers: HeaderList,
}

impl HttpCallResponse {
    pub fn new(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Self {
        let mut list = HeaderList::new();
        list.add(":status", status.to_string().as_bytes());
        for (k, v) in headers {
            list.add(k, v.as_bytes());
        }
        HttpCallResponse { headers: list, body: body.into(), trailers: HeaderList::new() }
    }

    /// What Envoy hands a filter when its call timed out.
    pub fn timeout() -> Self {
        Self::local(504, "upstream request timeout".to_string())
    }

    /// What Envoy hands a filter when its call found no upstream to answer it (a refused
    /// connection, a reset before the response headers): a 503 of its own naming the reason.
    pub fn unreachable(reason: &str) -> Self {
        Self::local(503, format!("upstream connect error or disconnect/reset before headers. reset reason: {reason}"))
    }

    /// An answer the host makes itself, framed as Envoy frames its local replies.
    fn local(status: u16, body: String) -> Self {
        let length = body.len().to_string();
        Self::new(status, &[("content-length", &length), ("content-type", "text/plain")], body)
    }
}

/// Work a filter asked for during a callback. Effects are collected while wasm runs and acted
/// upon only after the callback returns: the SDKs are not re-entrant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `proxy_continue_stream`: resume a paused stream.
    Continue { context: u32, direction: Direction },
    /// `proxy_close_stream`: reset the stream.
    Close { context: u32, direction: Direction },
    /// `proxy_send_local_response`: answer the stream with this response instead.
    LocalReply { context: u32, reply: LocalReply },
    /// `proxy_http_call`: the driver must perform it and answer with `on_http_call_response`.
    HttpCall(HttpCallRequest),
    /// `proxy_set_tick_period_milliseconds`: `None` stops the timer.
    TickPeriod(Option<Duration>),
    /// Data was enqueued on a queue owned by VM `vm`: it must get `on_queue_ready`.
    QueueReady { vm: usize, context: u32, queue: u32 },
}

/// Facts about the connection a stream arrived on, for `proxy_get_property`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamInfo {
    pub source: Option<std::net::SocketAddr>,
    pub destination: Option<std::net::SocketAddr>,
    pub protocol: String,
    /// The same for every stream of one downstream connection, and unique among them
    /// (`connection.id`).
    pub connection_id: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_map_round_trips_through_the_wire_form() {
        let list = HeaderList::from_pairs([(":path", "/a?b"), ("x-two", "1"), ("x-two", "2"), ("empty", "")]);
        assert_eq!(HeaderList::decode(&list.encode()), Some(list));
    }

    #[test]
    fn wire_form_matches_the_spec_layout() {
        let list = HeaderList::from_pairs([("ab", "c")]);
        assert_eq!(list.encode(), [1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, b'a', b'b', 0, b'c', 0]);
    }

    #[test]
    fn truncated_or_lying_maps_are_refused() {
        let encoded = HeaderList::from_pairs([("name", "value")]).encode();
        for cut in 1..encoded.len() {
            assert_eq!(HeaderList::decode(&encoded[..cut]), None, "cut at {cut}");
        }
        assert_eq!(HeaderList::decode(&[0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn set_replaces_all_values_at_the_end() {
        let mut list = HeaderList::from_pairs([("a", "1"), ("b", "1"), ("a", "2")]);
        list.set("A", b"3");
        assert_eq!(list, HeaderList::from_pairs([("b", "1"), ("a", "3")]));
    }
}

/// Properties of the header-map codec over arbitrary input (`make fuzz`: more `PROPTEST_CASES`).
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::HeaderList;

    fn cases() -> ProptestConfig {
        let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(512);
        ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
    }

    proptest! {
        #![proptest_config(cases())]

        /// What a filter hands over is what the host reads, pair for pair and in order.
        #[test]
        fn decoding_an_encoded_map_gives_it_back(
            pairs in prop::collection::vec(("[a-z:][a-z0-9-]{0,12}", prop::collection::vec(any::<u8>(), 0..24)), 0..12),
        ) {
            let list = HeaderList(pairs);
            prop_assert_eq!(HeaderList::decode(&list.encode()).map(|decoded| decoded.0), Some(list.0.clone()));
        }

        /// Bytes from a filter are untrusted: any of them decode or are refused, without a panic
        /// and without allocating for a count the bytes cannot hold.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = HeaderList::decode(&bytes);
        }

        #[test]
        fn a_huge_count_in_a_short_buffer_is_refused(count in 64u32.., tail in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = count.to_le_bytes().to_vec();
            bytes.extend(tail);
            prop_assert!(HeaderList::decode(&bytes).is_none());
        }
    }
}
