//! The session and token cache, kept in proxy-wasm shared data so that every VM of a process (Envoy
//! runs one per worker) shares it. (Concurrent requests of one VM share one whoami call by
//! `coalesce`.)
//!
//! Shape: a direct-mapped table of `slots` shared-data keys. An entry lives in the slot
//! `hash mod slots` and carries its full credentials hash, so a collision is a miss and the newer
//! entry evicts the older one. Shared data in ABI 0.2.1 cannot delete keys, so the key count is
//! bounded by the slot count and the bytes by `slots × max_entry_bytes`; entries past their
//! `expires_at` read as absent, are overwritten by the next store and can be emptied by `sweep`.
//!
//! Everything here is pure over the `SharedStore` trait; the glue implements it with
//! `get_shared_data`/`set_shared_data`.

use sha2::{Digest, Sha256};

use crate::session::{Credentials, Session};

/// How long an active session is trusted without asking Ory again.
pub const DEFAULT_SESSION_TTL_MS: u64 = 5_000;
/// How long "no session" (or "second factor required") is remembered.
pub const DEFAULT_NEGATIVE_TTL_MS: u64 = 1_000;
/// How long a logout blocks caching an active session for the same credentials: longer than any
/// whoami call can take, so a call that started before the logout cannot store its answer.
pub const DEFAULT_TOMBSTONE_TTL_MS: u64 = 30_000;
/// A cached JWT is re-signed once this share of its lifetime is spent.
pub const DEFAULT_RESIGN_PERCENT: u64 = 80;
/// A JWT handed out has at least this many seconds left, when its lifetime is long enough for that
/// to leave room for reuse (more than twice this).
pub const DEFAULT_MIN_JWT_REMAINING_SECS: u64 = 10;
/// Larger entries are not cached (the session is then asked for every time).
pub const DEFAULT_MAX_ENTRY_BYTES: usize = 64 * 1024;
/// Shared-data keys used by the cache.
pub const DEFAULT_SLOTS: u32 = 4096;

/// First bytes of every entry: a magic and the format version. Entries of another version (another
/// build of the filter sharing the data) read as misses.
const ENTRY_MAGIC: [u8; 4] = *b"OPC\x01";

/// The cache's tunables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePolicy {
    /// Prefix of every shared-data key; see `namespace_for`.
    pub namespace: String,
    pub slots: u32,
    pub max_entry_bytes: usize,
    pub session_ttl_ms: u64,
    pub negative_ttl_ms: u64,
    pub tombstone_ttl_ms: u64,
    pub resign_percent: u64,
    pub min_jwt_remaining_secs: u64,
}

impl Default for CachePolicy {
    fn default() -> CachePolicy {
        CachePolicy {
            namespace: namespace_for(&[]),
            slots: DEFAULT_SLOTS,
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            session_ttl_ms: DEFAULT_SESSION_TTL_MS,
            negative_ttl_ms: DEFAULT_NEGATIVE_TTL_MS,
            tombstone_ttl_ms: DEFAULT_TOMBSTONE_TTL_MS,
            resign_percent: DEFAULT_RESIGN_PERCENT,
            min_jwt_remaining_secs: DEFAULT_MIN_JWT_REMAINING_SECS,
        }
    }
}

/// A key prefix that separates filter configurations sharing one VM id: pass everything a cached
/// JWT depends on (Ory URL, audience, signing key id, JWT lifetime), so that a configuration never
/// serves a token another one signed.
pub fn namespace_for(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    format!("ory-proxy/session/{}/", hex(&digest[..8]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The SHA-256 of a request's session credentials: the cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CredsHash(pub [u8; 32]);

impl CredsHash {
    /// Hashes the credentials: the session cookies (only those: [`Credentials::from_headers`]
    /// leaves the others out, so analytics or CSRF cookies do not split the cache),
    /// `X-Session-Token` and a bearer `Authorization`.
    pub fn of(creds: &Credentials) -> CredsHash {
        let mut hasher = Sha256::new();
        hasher.update(b"ory-proxy credentials v2\0");
        // Every field is tagged and length-prefixed so that no two credential sets hash alike by
        // moving bytes between fields.
        let mut field = |tag: u8, value: &[u8]| {
            hasher.update([tag]);
            hasher.update((value.len() as u64).to_le_bytes());
            hasher.update(value);
        };
        if let Some(cookie) = &creds.cookie {
            field(b'c', cookie.as_bytes());
        }
        if let Some(token) = &creds.session_token {
            field(b't', token.as_bytes());
        }
        if let Some(authorization) = &creds.authorization {
            field(b'a', authorization.as_bytes());
        }
        CredsHash(hasher.finalize().into())
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    fn slot(&self, slots: u32) -> u32 {
        let low = u64::from_le_bytes([
            self.0[0], self.0[1], self.0[2], self.0[3], self.0[4], self.0[5], self.0[6], self.0[7],
        ]);
        (low % u64::from(slots.max(1))) as u32
    }
}

/// The shared-data key of the slot a hash lives in.
pub fn slot_key(policy: &CachePolicy, hash: &CredsHash) -> String {
    format!("{}{:x}", policy.namespace, hash.slot(policy.slots))
}

/// What the cache needs from proxy-wasm shared data.
pub trait SharedStore {
    /// The value and its CAS number, or None when the key was never set.
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Sets the value if `cas` is 0 or still the key's CAS number (a new key ignores `cas`).
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// Someone else wrote the key since we read it.
    CasMismatch,
    Other,
}

/// A cached active session with the JWT signed for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Positive {
    pub session_json: Vec<u8>,
    pub identity_id: String,
    pub jwt: String,
    /// The JWT's `iat` and `exp`, in Unix seconds.
    pub jwt_iat: u64,
    pub jwt_exp: u64,
}

/// A cached refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Negative {
    NoSession,
    Aal2Required { redirect_browser_to: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Positive(Positive),
    Negative(Negative),
    /// Written by a logout: the credentials must be asked about again, and an answer to a call
    /// that raced with the logout must not be cached.
    Tombstone,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    hash: CredsHash,
    written_at_ms: u64,
    expires_at_ms: u64,
    entry: Entry,
}

/// What the cache knows about some credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheLookup {
    /// An active session and a JWT that may be used as is.
    Fresh(Positive),
    /// The session is still trusted but the JWT is past its re-sign point: sign a new one for
    /// `session_json` and store it.
    NeedsResign(Positive),
    /// Ory recently said no.
    Negative(Negative),
    /// Ask Ory. `previous` is the expired entry for the same credentials whose JWT is still young:
    /// if Ory returns the same session body, `reusable_jwt` lets the caller keep that JWT instead
    /// of signing.
    Miss { previous: Option<Positive> },
}

/// Why an answer was not cached. None of these is an error for the request: it just goes on
/// without caching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    TooLarge,
    /// Another VM wrote the slot between our read and write.
    Conflict,
    /// A logout for these credentials is recent.
    LoggedOut,
    Store,
}

/// The Unix second from which a JWT should be replaced rather than handed out.
pub fn resign_at(policy: &CachePolicy, jwt_iat: u64, jwt_exp: u64) -> u64 {
    let lifetime = jwt_exp.saturating_sub(jwt_iat);
    let by_share = jwt_iat.saturating_add(lifetime.saturating_mul(policy.resign_percent.min(100)) / 100);
    if lifetime > policy.min_jwt_remaining_secs.saturating_mul(2) {
        by_share.min(jwt_exp - policy.min_jwt_remaining_secs)
    } else {
        by_share
    }
}

fn jwt_is_young(policy: &CachePolicy, positive: &Positive, now_ms: u64) -> bool {
    now_ms / 1000 < resign_at(policy, positive.jwt_iat, positive.jwt_exp)
}

/// Looks the credentials up. Undecodable slots, other credentials in the slot, expired entries and
/// tombstones are all misses.
pub fn lookup(store: &impl SharedStore, policy: &CachePolicy, hash: &CredsHash, now_ms: u64) -> CacheLookup {
    let Some((bytes, _cas)) = store.get(&slot_key(policy, hash)) else {
        return CacheLookup::Miss { previous: None };
    };
    let Some(stored) = decode(&bytes) else {
        return CacheLookup::Miss { previous: None };
    };
    if stored.hash != *hash {
        return CacheLookup::Miss { previous: None };
    }
    let live = now_ms < stored.expires_at_ms;
    match stored.entry {
        Entry::Positive(positive) if live => {
            if jwt_is_young(policy, &positive, now_ms) {
                CacheLookup::Fresh(positive)
            } else {
                CacheLookup::NeedsResign(positive)
            }
        }
        Entry::Positive(positive) if jwt_is_young(policy, &positive, now_ms) => {
            CacheLookup::Miss { previous: Some(positive) }
        }
        Entry::Negative(negative) if live => CacheLookup::Negative(negative),
        _ => CacheLookup::Miss { previous: None },
    }
}

/// The previous JWT, when Ory has just confirmed the very session it was signed for and it is
/// still young; otherwise the caller signs a new one.
pub fn reusable_jwt<'a>(
    policy: &CachePolicy,
    previous: Option<&'a Positive>,
    session: &Session,
    now_ms: u64,
) -> Option<&'a str> {
    let previous = previous?;
    let same = previous.session_json == session.json && previous.identity_id == session.identity_id;
    (same && jwt_is_young(policy, previous, now_ms)).then_some(previous.jwt.as_str())
}

/// Caches an active session and its JWT for `session_ttl_ms`.
pub fn store_positive(
    store: &impl SharedStore,
    policy: &CachePolicy,
    hash: &CredsHash,
    positive: Positive,
    now_ms: u64,
) -> Result<(), NotStored> {
    let stored = Stored {
        hash: *hash,
        written_at_ms: now_ms,
        expires_at_ms: now_ms.saturating_add(policy.session_ttl_ms),
        entry: Entry::Positive(positive),
    };
    write(store, policy, &stored, |current| {
        // A live tombstone for the same credentials means a logout happened while this answer
        // may have been on its way: trusting it could resurrect a revoked session.
        let logged_out = current.is_some_and(|current| {
            current.hash == *hash && current.entry == Entry::Tombstone && now_ms < current.expires_at_ms
        });
        if logged_out { Err(NotStored::LoggedOut) } else { Ok(()) }
    })
}

/// Caches a refusal for `negative_ttl_ms`. A live tombstone for the same credentials is kept
/// instead: it already makes the next request ask Ory.
pub fn store_negative(
    store: &impl SharedStore,
    policy: &CachePolicy,
    hash: &CredsHash,
    negative: Negative,
    now_ms: u64,
) -> Result<(), NotStored> {
    let stored = Stored {
        hash: *hash,
        written_at_ms: now_ms,
        expires_at_ms: now_ms.saturating_add(policy.negative_ttl_ms),
        entry: Entry::Negative(negative),
    };
    write(store, policy, &stored, |current| {
        let tombstone = current.is_some_and(|current| {
            current.hash == *hash && current.entry == Entry::Tombstone && now_ms < current.expires_at_ms
        });
        if tombstone { Err(NotStored::LoggedOut) } else { Ok(()) }
    })
}

/// Forgets the credentials (a logout went through the proxy): writes a tombstone unconditionally,
/// whatever the slot held.
pub fn evict(store: &impl SharedStore, policy: &CachePolicy, hash: &CredsHash, now_ms: u64) -> Result<(), NotStored> {
    let stored = Stored {
        hash: *hash,
        written_at_ms: now_ms,
        expires_at_ms: now_ms.saturating_add(policy.tombstone_ttl_ms),
        entry: Entry::Tombstone,
    };
    let bytes = encode(&stored);
    store.set(&slot_key(policy, hash), &bytes, 0).map_err(|_| NotStored::Store)
}

fn write(
    store: &impl SharedStore,
    policy: &CachePolicy,
    stored: &Stored,
    allowed: impl FnOnce(Option<&Stored>) -> Result<(), NotStored>,
) -> Result<(), NotStored> {
    let bytes = encode(stored);
    if bytes.len() > policy.max_entry_bytes {
        return Err(NotStored::TooLarge);
    }
    let key = slot_key(policy, &stored.hash);
    // Read first, for the CAS number and to see a tombstone; write only if nobody wrote since.
    let (current, cas) = match store.get(&key) {
        Some((current, cas)) => (decode(&current), cas),
        None => (None, 0),
    };
    allowed(current.as_ref())?;
    store.set(&key, &bytes, cas).map_err(|err| match err {
        StoreError::CasMismatch => NotStored::Conflict,
        StoreError::Other => NotStored::Store,
    })
}

/// Empties up to `count` slots from `from_slot` on whose entries can no longer be used (expired,
/// and for sessions, their JWT too old to reuse), giving their bytes back. Slots written in a
/// format we cannot read are left alone: another build of the filter may own them. Returns the
/// slot to continue from next time, so that a timer can walk the table a little at a time.
pub fn sweep(store: &impl SharedStore, policy: &CachePolicy, from_slot: u32, count: u32, now_ms: u64) -> u32 {
    let slots = policy.slots.max(1);
    let mut slot = from_slot % slots;
    for _ in 0..count.min(slots) {
        let key = format!("{}{:x}", policy.namespace, slot);
        if let Some((bytes, cas)) = store.get(&key)
            && let Some(stored) = decode(&bytes)
            && reclaimable(policy, &stored, now_ms)
        {
            // CAS: if another VM has just stored a fresh entry, keep it.
            let _ = store.set(&key, &[], cas);
        }
        slot = (slot + 1) % slots;
    }
    slot
}

fn reclaimable(policy: &CachePolicy, stored: &Stored, now_ms: u64) -> bool {
    if now_ms < stored.expires_at_ms {
        return false;
    }
    match &stored.entry {
        // An expired session's JWT may still be reused after Ory confirms the session.
        Entry::Positive(positive) => !jwt_is_young(policy, positive, now_ms),
        _ => true,
    }
}

// Entry encoding, version 1 (integers little-endian):
//   magic "OPC\x01" | kind u8 | credentials hash [32] | written_at_ms u64 | expires_at_ms u64 | body
//   kind 1 positive: jwt_iat u64 | jwt_exp u64 | identity_id str | jwt str | session_json bytes
//   kind 2 no session: (empty)
//   kind 3 second factor required: has_redirect u8 | redirect str (when has_redirect = 1)
//   kind 4 tombstone: (empty)
// where str and bytes are u32 length + bytes (str is UTF-8). Nothing may follow the body.
const KIND_POSITIVE: u8 = 1;
const KIND_NO_SESSION: u8 = 2;
const KIND_AAL2: u8 = 3;
const KIND_TOMBSTONE: u8 = 4;

fn encode(stored: &Stored) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&ENTRY_MAGIC);
    let kind = match &stored.entry {
        Entry::Positive(_) => KIND_POSITIVE,
        Entry::Negative(Negative::NoSession) => KIND_NO_SESSION,
        Entry::Negative(Negative::Aal2Required { .. }) => KIND_AAL2,
        Entry::Tombstone => KIND_TOMBSTONE,
    };
    out.push(kind);
    out.extend_from_slice(&stored.hash.0);
    out.extend_from_slice(&stored.written_at_ms.to_le_bytes());
    out.extend_from_slice(&stored.expires_at_ms.to_le_bytes());
    let bytes = |out: &mut Vec<u8>, value: &[u8]| {
        // Entries are capped far below 4 GiB (max_entry_bytes) before they are stored; saturating
        // keeps an absurd input from wrapping into a valid-looking length.
        out.extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(value);
    };
    match &stored.entry {
        Entry::Positive(positive) => {
            out.extend_from_slice(&positive.jwt_iat.to_le_bytes());
            out.extend_from_slice(&positive.jwt_exp.to_le_bytes());
            bytes(&mut out, positive.identity_id.as_bytes());
            bytes(&mut out, positive.jwt.as_bytes());
            bytes(&mut out, &positive.session_json);
        }
        Entry::Negative(Negative::Aal2Required { redirect_browser_to }) => match redirect_browser_to {
            Some(to) => {
                out.push(1);
                bytes(&mut out, to.as_bytes());
            }
            None => out.push(0),
        },
        Entry::Negative(Negative::NoSession) | Entry::Tombstone => {}
    }
    out
}

/// A bounds-checked reader: any short or malformed input yields None.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_le_bytes)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u32()?).ok()?;
        self.take(len)
    }

    fn string(&mut self) -> Option<String> {
        std::str::from_utf8(self.bytes()?).ok().map(str::to_string)
    }
}

fn decode(bytes: &[u8]) -> Option<Stored> {
    let mut reader = Reader(bytes);
    if reader.take(4)? != ENTRY_MAGIC {
        return None;
    }
    let kind = reader.u8()?;
    let hash = CredsHash(reader.take(32)?.try_into().ok()?);
    let written_at_ms = reader.u64()?;
    let expires_at_ms = reader.u64()?;
    let entry = match kind {
        KIND_POSITIVE => {
            let jwt_iat = reader.u64()?;
            let jwt_exp = reader.u64()?;
            let identity_id = reader.string()?;
            let jwt = reader.string()?;
            let session_json = reader.bytes()?.to_vec();
            Entry::Positive(Positive { session_json, identity_id, jwt, jwt_iat, jwt_exp })
        }
        KIND_NO_SESSION => Entry::Negative(Negative::NoSession),
        KIND_AAL2 => {
            let redirect_browser_to = match reader.u8()? {
                0 => None,
                1 => Some(reader.string()?),
                _ => return None,
            };
            Entry::Negative(Negative::Aal2Required { redirect_browser_to })
        }
        KIND_TOMBSTONE => Entry::Tombstone,
        _ => return None,
    };
    if !reader.0.is_empty() {
        return None;
    }
    Some(Stored { hash, written_at_ms, expires_at_ms, entry })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use super::*;
    use crate::session::DEFAULT_SESSION_COOKIE_PREFIXES;

    /// Shared data as the ABI describes it: CAS numbers start at 1 and grow with every write; 0
    /// means unconditional; a new key ignores the CAS given.
    #[derive(Default)]
    pub(crate) struct MemoryStore {
        data: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        next_cas: RefCell<u32>,
    }

    impl SharedStore for MemoryStore {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.data.borrow().get(key).cloned()
        }

        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
            let mut data = self.data.borrow_mut();
            if let Some((_, current)) = data.get(key)
                && cas != 0
                && cas != *current
            {
                return Err(StoreError::CasMismatch);
            }
            let mut next = self.next_cas.borrow_mut();
            *next += 1;
            data.insert(key.to_string(), (value.to_vec(), *next));
            Ok(())
        }
    }

    impl MemoryStore {
        fn keys(&self) -> usize {
            self.data.borrow().len()
        }

        fn bytes(&self) -> usize {
            self.data.borrow().values().map(|(value, _)| value.len()).sum()
        }
    }

    /// A store whose every write loses a race with another VM.
    struct RacingStore(MemoryStore);

    impl SharedStore for RacingStore {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.0.get(key)
        }

        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
            // Another VM writes the key just before us.
            self.0.set(key, b"someone else", 0)?;
            self.0.set(key, value, cas)
        }
    }

    /// The credentials of a request with this Cookie header.
    fn creds(cookie: &str) -> Credentials {
        Credentials::from_headers(&[("cookie", cookie)], DEFAULT_SESSION_COOKIE_PREFIXES)
    }

    fn hash(cookie: &str) -> CredsHash {
        CredsHash::of(&creds(cookie))
    }

    /// A session whose JWT was signed at `iat` seconds with a 60 s lifetime.
    fn positive(iat: u64) -> Positive {
        Positive {
            session_json: br#"{"active":true,"identity":{"id":"u1"}}"#.to_vec(),
            identity_id: "u1".to_string(),
            jwt: format!("jwt-{iat}"),
            jwt_iat: iat,
            jwt_exp: iat + 60,
        }
    }

    const T0: u64 = 1_700_000_000_000; // ms

    #[test]
    fn only_session_credentials_make_the_key() {
        let base = hash("ory_session_abc=s1; _ga=1");
        assert_eq!(base, hash("_ga=2; ory_session_abc=s1; csrf_token_x=y"), "other cookies do not split the cache");
        assert_ne!(base, hash("ory_session_abc=s2; _ga=1"));
        assert_ne!(base, hash("ory_kratos_session=s1"));
        let with_token = Credentials { session_token: Some("t".to_string()), ..creds("ory_session_abc=s1") };
        let with_auth = Credentials { authorization: Some("t".to_string()), ..creds("ory_session_abc=s1") };
        let token = CredsHash::of(&with_token);
        let auth = CredsHash::of(&with_auth);
        assert_ne!(token, base);
        assert_ne!(auth, base);
        assert_ne!(token, auth, "the same bytes in another header are other credentials");
        // Cookies Ory does not know are no credentials at all: every such request is the same
        // (empty) set, which the glue never asks Ory about.
        assert!(creds("sid=alice").is_empty());
        assert_eq!(hash("sid=alice"), CredsHash::of(&Credentials::default()));
        assert_eq!(base.to_hex().len(), 64);
    }

    #[test]
    fn hit_and_miss() {
        let (store, policy) = (MemoryStore::default(), CachePolicy::default());
        let h = hash("ory_kratos_session=a");
        assert_eq!(lookup(&store, &policy, &h, T0), CacheLookup::Miss { previous: None });
        store_positive(&store, &policy, &h, positive(T0 / 1000), T0).unwrap();
        assert_eq!(lookup(&store, &policy, &h, T0 + 100), CacheLookup::Fresh(positive(T0 / 1000)));
        assert_eq!(
            lookup(&store, &policy, &hash("ory_kratos_session=b"), T0 + 100),
            CacheLookup::Miss { previous: None }
        );
    }

    #[test]
    fn expiry_asks_again_but_offers_the_young_jwt() {
        let (store, policy) = (MemoryStore::default(), CachePolicy::default());
        let h = hash("ory_kratos_session=a");
        store_positive(&store, &policy, &h, positive(T0 / 1000), T0).unwrap();
        let at = T0 + DEFAULT_SESSION_TTL_MS - 1;
        assert!(matches!(lookup(&store, &policy, &h, at), CacheLookup::Fresh(_)));
        let after = T0 + DEFAULT_SESSION_TTL_MS;
        let CacheLookup::Miss { previous } = lookup(&store, &policy, &h, after) else { panic!("expected a miss") };
        let previous = previous.expect("the JWT is still young");

        // Ory confirms the same session: the JWT is reused; another body means a new JWT.
        let same = Session { json: previous.session_json.clone(), identity_id: "u1".to_string() };
        assert_eq!(reusable_jwt(&policy, Some(&previous), &same, after), Some(previous.jwt.as_str()));
        let changed = Session { json: br#"{"active":true,"identity":{"id":"u1"},"x":1}"#.to_vec(), ..same.clone() };
        assert_eq!(reusable_jwt(&policy, Some(&previous), &changed, after), None);
        assert_eq!(reusable_jwt(&policy, None, &same, after), None);
        // Once the JWT itself is old, the expired entry offers nothing.
        assert_eq!(lookup(&store, &policy, &h, T0 + 48_000), CacheLookup::Miss { previous: None });
        assert_eq!(reusable_jwt(&policy, Some(&previous), &same, T0 + 48_000), None);
    }

    #[test]
    fn resign_threshold() {
        let policy = CachePolicy::default();
        // 60 s: 80 % is 48 s, which leaves 12 s (more than the 10 s minimum).
        assert_eq!(resign_at(&policy, 1000, 1060), 1048);
        // 30 s: 80 % would leave 6 s, so re-sign at 20 s to leave 10.
        assert_eq!(resign_at(&policy, 1000, 1030), 1020);
        // 5 s: too short to keep 10 s back; 80 % it is.
        assert_eq!(resign_at(&policy, 1000, 1005), 1004);
        assert_eq!(resign_at(&policy, 1000, 1000), 1000);

        let store = MemoryStore::default();
        let policy = CachePolicy { session_ttl_ms: 120_000, ..CachePolicy::default() };
        let h = hash("ory_kratos_session=a");
        store_positive(&store, &policy, &h, positive(T0 / 1000), T0).unwrap();
        assert!(matches!(lookup(&store, &policy, &h, T0 + 47_999), CacheLookup::Fresh(_)));
        assert_eq!(lookup(&store, &policy, &h, T0 + 48_000), CacheLookup::NeedsResign(positive(T0 / 1000)));
        // Re-signed: fresh again.
        store_positive(&store, &policy, &h, positive(T0 / 1000 + 48), T0 + 48_000).unwrap();
        assert!(matches!(lookup(&store, &policy, &h, T0 + 48_001), CacheLookup::Fresh(_)));
    }

    #[test]
    fn negative_answers_are_cached_briefly() {
        let (store, policy) = (MemoryStore::default(), CachePolicy::default());
        let h = hash("ory_kratos_session=bad");
        store_negative(&store, &policy, &h, Negative::NoSession, T0).unwrap();
        assert_eq!(lookup(&store, &policy, &h, T0 + 999), CacheLookup::Negative(Negative::NoSession));
        assert_eq!(lookup(&store, &policy, &h, T0 + 1000), CacheLookup::Miss { previous: None });

        let aal2 = Negative::Aal2Required { redirect_browser_to: Some("https://ory/login?aal=aal2".to_string()) };
        store_negative(&store, &policy, &h, aal2.clone(), T0).unwrap();
        assert_eq!(lookup(&store, &policy, &h, T0 + 1), CacheLookup::Negative(aal2));
        let bare = Negative::Aal2Required { redirect_browser_to: None };
        store_negative(&store, &policy, &h, bare.clone(), T0).unwrap();
        assert_eq!(lookup(&store, &policy, &h, T0 + 1), CacheLookup::Negative(bare));
    }

    #[test]
    fn collision_is_a_miss_and_the_newer_entry_wins() {
        let store = MemoryStore::default();
        let policy = CachePolicy { slots: 1, ..CachePolicy::default() };
        let (a, b) = (hash("ory_kratos_session=a"), hash("ory_kratos_session=b"));
        assert_eq!(slot_key(&policy, &a), slot_key(&policy, &b));
        store_positive(&store, &policy, &a, positive(T0 / 1000), T0).unwrap();
        assert_eq!(lookup(&store, &policy, &b, T0), CacheLookup::Miss { previous: None }, "b never sees a's session");
        store_positive(&store, &policy, &b, positive(T0 / 1000), T0).unwrap();
        assert_eq!(lookup(&store, &policy, &a, T0), CacheLookup::Miss { previous: None });
        assert!(matches!(lookup(&store, &policy, &b, T0), CacheLookup::Fresh(_)));
    }

    #[test]
    fn keys_and_bytes_are_bounded() {
        let store = MemoryStore::default();
        let policy = CachePolicy { slots: 16, max_entry_bytes: 1024, ..CachePolicy::default() };
        for i in 0..500 {
            let _ = store_positive(&store, &policy, &hash(&format!("ory_kratos_session={i}")), positive(T0 / 1000), T0);
        }
        assert!(store.keys() <= 16);
        assert!(store.bytes() <= 16 * 1024);
    }

    #[test]
    fn oversized_entries_are_not_cached() {
        let store = MemoryStore::default();
        let policy = CachePolicy { max_entry_bytes: 256, ..CachePolicy::default() };
        let h = hash("ory_kratos_session=a");
        let big = Positive { session_json: vec![b' '; 300], ..positive(T0 / 1000) };
        assert_eq!(store_positive(&store, &policy, &h, big, T0), Err(NotStored::TooLarge));
        assert_eq!(lookup(&store, &policy, &h, T0), CacheLookup::Miss { previous: None });
        assert_eq!(store.keys(), 0);
    }

    #[test]
    fn logout_leaves_a_tombstone_that_outlives_a_racing_answer() {
        let (store, policy) = (MemoryStore::default(), CachePolicy::default());
        let h = hash("ory_kratos_session=a");
        store_positive(&store, &policy, &h, positive(T0 / 1000), T0).unwrap();
        evict(&store, &policy, &h, T0 + 10).unwrap();
        assert_eq!(
            lookup(&store, &policy, &h, T0 + 11),
            CacheLookup::Miss { previous: None },
            "the next request asks Ory"
        );
        // A whoami answer that was already on its way is not cached, nor is a refusal.
        assert_eq!(store_positive(&store, &policy, &h, positive(T0 / 1000), T0 + 20), Err(NotStored::LoggedOut));
        assert_eq!(store_negative(&store, &policy, &h, Negative::NoSession, T0 + 20), Err(NotStored::LoggedOut));
        assert_eq!(lookup(&store, &policy, &h, T0 + 21), CacheLookup::Miss { previous: None });
        // Other credentials in the same slot are not held back by it.
        let one = CachePolicy { slots: 1, ..policy.clone() };
        evict(&store, &one, &h, T0).unwrap();
        store_positive(&store, &one, &hash("ory_kratos_session=b"), positive(T0 / 1000), T0 + 1).unwrap();
        // After the tombstone's life, caching resumes.
        let later = T0 + 10 + DEFAULT_TOMBSTONE_TTL_MS;
        store_positive(&store, &policy, &h, positive(later / 1000), later).unwrap();
        assert!(matches!(lookup(&store, &policy, &h, later + 1), CacheLookup::Fresh(_)));
    }

    #[test]
    fn garbage_and_foreign_entries_are_misses() {
        let (store, policy) = (MemoryStore::default(), CachePolicy::default());
        let h = hash("ory_kratos_session=a");
        let key = slot_key(&policy, &h);
        let good = encode(&Stored {
            hash: h,
            written_at_ms: T0,
            expires_at_ms: T0 + 5000,
            entry: Entry::Positive(positive(T0 / 1000)),
        });
        let mut wrong_version = good.clone();
        wrong_version[3] = 2;
        let mut bad_kind = good.clone();
        bad_kind[4] = 9;
        let mut trailing = good.clone();
        trailing.push(0);
        let mut long_length = good.clone();
        let session_len_at = good.len() - positive(0).session_json.len() - 4;
        long_length[session_len_at..session_len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            b"{\"json\":true}".to_vec(),
            good[..good.len() - 1].to_vec(),
            good[..10].to_vec(),
            wrong_version,
            bad_kind,
            trailing,
            long_length,
        ];
        for bytes in cases {
            store.set(&key, &bytes, 0).unwrap();
            assert_eq!(lookup(&store, &policy, &h, T0), CacheLookup::Miss { previous: None }, "{bytes:?}");
            // And the next answer simply overwrites it.
            store_positive(&store, &policy, &h, positive(T0 / 1000), T0).unwrap();
            assert!(matches!(lookup(&store, &policy, &h, T0), CacheLookup::Fresh(_)));
        }
        store.set(&key, &good, 0).unwrap();
        assert!(matches!(lookup(&store, &policy, &h, T0), CacheLookup::Fresh(_)));
    }

    #[test]
    fn encoding_round_trips_every_kind() {
        let h = hash("ory_kratos_session=a");
        let entries = [
            Entry::Positive(positive(7)),
            Entry::Negative(Negative::NoSession),
            Entry::Negative(Negative::Aal2Required { redirect_browser_to: None }),
            Entry::Negative(Negative::Aal2Required { redirect_browser_to: Some("é".to_string()) }),
            Entry::Tombstone,
        ];
        for entry in entries {
            let stored = Stored { hash: h, written_at_ms: 1, expires_at_ms: 2, entry };
            assert_eq!(decode(&encode(&stored)), Some(stored));
        }
    }

    #[test]
    fn a_lost_race_just_does_not_cache() {
        let store = RacingStore(MemoryStore::default());
        let policy = CachePolicy::default();
        let h = hash("ory_kratos_session=a");
        // First write to a new key ignores CAS, so make the key exist first.
        store.0.set(&slot_key(&policy, &h), b"old", 0).unwrap();
        assert_eq!(store_positive(&store, &policy, &h, positive(T0 / 1000), T0), Err(NotStored::Conflict));
        assert_eq!(store_negative(&store, &policy, &h, Negative::NoSession, T0), Err(NotStored::Conflict));
        assert_eq!(lookup(&store, &policy, &h, T0), CacheLookup::Miss { previous: None });
        // Eviction is unconditional and still lands.
        evict(&store.0, &policy, &h, T0).unwrap();
    }

    #[test]
    fn sweep_reclaims_only_what_is_dead() {
        let store = MemoryStore::default();
        let policy = CachePolicy { slots: 8, ..CachePolicy::default() };
        let sessions: Vec<CredsHash> = (0..40).map(|i| hash(&format!("ory_kratos_session={i}"))).collect();
        for h in &sessions {
            store_positive(&store, &policy, h, positive(T0 / 1000), T0).unwrap();
        }
        store.set(&format!("{}{:x}", policy.namespace, 7), b"another build's entry", 0).unwrap();
        let before = store.bytes();
        // Expired sessions whose JWT could still be reused are kept.
        assert_eq!(sweep(&store, &policy, 0, 8, T0 + DEFAULT_SESSION_TTL_MS), 0);
        assert_eq!(store.bytes(), before);
        // Walking a few slots at a time, continuing where it stopped.
        let dead = T0 + 60_000;
        assert_eq!(sweep(&store, &policy, 0, 3, dead), 3);
        assert_eq!(sweep(&store, &policy, 3, 100, dead), 3, "never more than one round");
        assert_eq!(store.bytes(), b"another build's entry".len(), "foreign entries are left alone");
        assert!(store.keys() <= 8);
        for h in &sessions {
            assert_eq!(lookup(&store, &policy, h, dead), CacheLookup::Miss { previous: None });
        }
    }

    #[test]
    fn namespaces_separate_configurations() {
        let a = CachePolicy {
            namespace: namespace_for(&["https://a.oryapis.com", "", "kid1", "60"]),
            ..CachePolicy::default()
        };
        let b = CachePolicy {
            namespace: namespace_for(&["https://a.oryapis.com", "aud", "kid1", "60"]),
            ..CachePolicy::default()
        };
        assert_ne!(a.namespace, b.namespace);
        assert_ne!(namespace_for(&["ab", "c"]), namespace_for(&["a", "bc"]));
        let store = MemoryStore::default();
        let h = hash("ory_kratos_session=a");
        store_positive(&store, &a, &h, positive(T0 / 1000), T0).unwrap();
        assert_eq!(lookup(&store, &b, &h, T0), CacheLookup::Miss { previous: None });
    }
}
