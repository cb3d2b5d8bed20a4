//! One-time connection tickets: a short random string that stands for an [`Identity`] for a few
//! seconds and can be redeemed exactly once, so that long-lived tokens never appear in URLs.
//!
//! [`Tickets`] issues and redeems; a [`TicketStore`] keeps them. Stores only ever see a
//! [`TicketKey`] (the SHA-256 of the ticket), never the ticket itself. [`MemoryTicketStore`] is
//! the single-node store; a cluster uses a shared store (Redis) behind the same trait.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::{AuthError, Identity};

/// Random bytes in a ticket (256 bits).
const TICKET_BYTES: usize = 32;
/// Length of a ticket: 32 bytes in base64url without padding.
pub const TICKET_LEN: usize = 43;

/// The SHA-256 of a ticket string: what stores keep, so that tickets are never stored in clear.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TicketKey(pub [u8; 32]);

impl TicketKey {
    /// The key of `ticket`.
    pub fn of(ticket: &str) -> TicketKey {
        TicketKey(Sha256::digest(ticket.as_bytes()).into())
    }
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Enough to tell keys apart in logs; the key is a hash, but there is no need for all of it.
        write!(
            f,
            "TicketKey({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// Where tickets live between issue and redemption.
pub trait TicketStore: Send + Sync + 'static {
    /// Stores `identity` under `key` for `ttl`.
    fn put(
        &self,
        key: TicketKey,
        identity: Identity,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), AuthError>>;

    /// Atomically redeems: the first call wins; later calls get [`AuthError::TicketUsed`] (while
    /// the tombstone lives, i.e. until the ticket would have expired); unknown ->
    /// [`AuthError::InvalidTicket`]; past ttl -> [`AuthError::TicketExpired`].
    fn take(&self, key: TicketKey) -> BoxFuture<'_, Result<Identity, AuthError>>;
}

/// How long an expired or used ticket is remembered, so that late use gets a precise error.
pub const REMEMBER_EXPIRED: Duration = Duration::from_secs(60);

/// A monotonic clock, replaceable in tests.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

enum State {
    /// Issued, not redeemed yet.
    Live(Identity),
    /// Redeemed: a tombstone, so that reuse says `ticket_used`.
    Redeemed,
}

struct Entry {
    state: State,
    /// When the ticket stops being redeemable.
    expires: Instant,
    /// When the entry is dropped: [`REMEMBER_EXPIRED`] (or `ttl`, if longer) after `expires`, so
    /// that a late redeem says `ticket_expired` rather than `invalid_ticket`.
    forget: Instant,
}

struct Inner {
    map: HashMap<TicketKey, Entry>,
    /// The next `put` at or after this instant sweeps the map.
    next_sweep: Instant,
}

/// The in-process ticket store, for a single node.
///
/// Memory is bounded: an entry (live ticket or tombstone) is dropped at the first sweep after
/// `ttl + max(ttl, 60 s)` from its `put`, and `put` sweeps the whole map at most once per `ttl`.
/// So the map holds at most the tickets issued in the last `2 × ttl + max(ttl, 60 s)` (about
/// 2 minutes with the default 30 s ttl), whatever the redemption pattern. Each entry is visited by at most three sweeps, so sweeping
/// costs O(1) per `put`, amortised. The lock is held only for map operations, never across an
/// `.await`: both methods do their work synchronously and return a ready future.
pub struct MemoryTicketStore {
    inner: Mutex<Inner>,
    clock: Clock,
}

impl Default for MemoryTicketStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryTicketStore {
    /// An empty store on the real clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(Instant::now))
    }

    /// An empty store reading time from `clock` (for tests).
    pub fn with_clock(clock: Clock) -> Self {
        let now = clock();
        MemoryTicketStore {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                next_sweep: now,
            }),
            clock,
        }
    }

    /// Number of entries (live tickets, tombstones, and expired ones not swept yet).
    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    /// True when the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn put_now(&self, key: TicketKey, identity: Identity, ttl: Duration) {
        let now = (self.clock)();
        let expires = now + ttl;
        let entry = Entry {
            state: State::Live(identity),
            expires,
            forget: expires + ttl.max(REMEMBER_EXPIRED),
        };
        let mut inner = self.inner.lock();
        if now >= inner.next_sweep {
            inner.map.retain(|_, e| e.forget > now);
            inner.next_sweep = now + ttl;
        }
        inner.map.insert(key, entry);
    }

    fn take_now(&self, key: TicketKey) -> Result<Identity, AuthError> {
        let now = (self.clock)();
        let mut inner = self.inner.lock();
        let Some(entry) = inner.map.get_mut(&key) else {
            return Err(AuthError::InvalidTicket);
        };
        if now >= entry.forget {
            inner.map.remove(&key);
            return Err(AuthError::InvalidTicket);
        }
        if now >= entry.expires {
            return Err(AuthError::TicketExpired);
        }
        match std::mem::replace(&mut entry.state, State::Redeemed) {
            State::Live(identity) => Ok(identity),
            State::Redeemed => Err(AuthError::TicketUsed),
        }
    }
}

impl TicketStore for MemoryTicketStore {
    fn put(
        &self,
        key: TicketKey,
        identity: Identity,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), AuthError>> {
        self.put_now(key, identity, ttl);
        Box::pin(std::future::ready(Ok(())))
    }

    fn take(&self, key: TicketKey) -> BoxFuture<'_, Result<Identity, AuthError>> {
        Box::pin(std::future::ready(self.take_now(key)))
    }
}

/// Issues and redeems tickets against a store.
#[derive(Clone)]
pub struct Tickets {
    store: Arc<dyn TicketStore>,
    ttl: Duration,
}

impl fmt::Debug for Tickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tickets").field("ttl", &self.ttl).finish()
    }
}

impl Tickets {
    /// Tickets valid for `ttl`, kept in `store`.
    pub fn new(store: Arc<dyn TicketStore>, ttl: Duration) -> Self {
        Tickets { store, ttl }
    }

    /// How long a ticket stays redeemable (the `expires_in` of `POST /v1/tickets`).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new ticket for `identity`: 32 random bytes as base64url without padding (43 chars).
    pub async fn issue(&self, identity: Identity) -> Result<String, AuthError> {
        self.issue_for(identity, self.ttl).await
    }

    /// A new ticket for `identity`, redeemable for `ttl` (at most [`Tickets::ttl`]).
    pub async fn issue_for(&self, identity: Identity, ttl: Duration) -> Result<String, AuthError> {
        let ttl = ttl.min(self.ttl);
        let mut bytes = [0u8; TICKET_BYTES];
        getrandom::fill(&mut bytes).map_err(AuthError::Random)?;
        let ticket = URL_SAFE_NO_PAD.encode(bytes);
        self.store
            .put(TicketKey::of(&ticket), identity, ttl)
            .await?;
        Ok(ticket)
    }

    /// Redeems `ticket` (the `?ticket=` parameter), once.
    pub async fn redeem(&self, ticket: Option<&str>) -> Result<Identity, AuthError> {
        let ticket = match ticket {
            None | Some("") => return Err(AuthError::MissingTicket),
            Some(t) => t,
        };
        if !is_well_formed(ticket) {
            return Err(AuthError::MalformedTicket);
        }
        self.store.take(TicketKey::of(ticket)).await
    }
}

fn is_well_formed(ticket: &str) -> bool {
    ticket.len() == TICKET_LEN
        && ticket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Grants;
    use std::sync::atomic::{AtomicU64, Ordering};

    const TTL: Duration = Duration::from_secs(30);

    fn identity(user: &str) -> Identity {
        Identity {
            user: user.into(),
            grants: Arc::new(Grants::all()),
            expires_at: 0,
        }
    }

    /// A clock that moves only when told to.
    fn manual_clock() -> (Clock, Arc<AtomicU64>) {
        let base = Instant::now();
        let millis = Arc::new(AtomicU64::new(0));
        let m = millis.clone();
        let clock: Clock = Arc::new(move || base + Duration::from_millis(m.load(Ordering::SeqCst)));
        (clock, millis)
    }

    fn advance(millis: &AtomicU64, by: Duration) {
        millis.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    #[tokio::test]
    async fn a_ticket_is_43_base64url_chars_and_redeems_to_its_identity() {
        let tickets = Tickets::new(Arc::new(MemoryTicketStore::new()), TTL);
        let t = tickets.issue(identity("alice")).await.unwrap();
        assert_eq!(t.len(), TICKET_LEN);
        assert!(is_well_formed(&t));
        let id = tickets.redeem(Some(&t)).await.unwrap();
        assert_eq!(&*id.user, "alice");
    }

    #[tokio::test]
    async fn tickets_are_distinct() {
        let tickets = Tickets::new(Arc::new(MemoryTicketStore::new()), TTL);
        let a = tickets.issue(identity("a")).await.unwrap();
        let b = tickets.issue(identity("a")).await.unwrap();
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn a_reused_ticket_is_ticket_used() {
        let tickets = Tickets::new(Arc::new(MemoryTicketStore::new()), TTL);
        let t = tickets.issue(identity("alice")).await.unwrap();
        tickets.redeem(Some(&t)).await.unwrap();
        let err = tickets.redeem(Some(&t)).await.unwrap_err();
        assert_eq!(err.code(), "ticket_used");
        assert_eq!(err.status(), 401);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_redeems_of_one_ticket_yield_exactly_one_identity() {
        let tickets = Arc::new(Tickets::new(Arc::new(MemoryTicketStore::new()), TTL));
        for _ in 0..20 {
            let t = Arc::new(tickets.issue(identity("alice")).await.unwrap());
            let tasks: Vec<_> = (0..32)
                .map(|_| {
                    let (tickets, t) = (tickets.clone(), t.clone());
                    tokio::spawn(async move { tickets.redeem(Some(&t)).await })
                })
                .collect();
            let mut ok = 0;
            for task in tasks {
                match task.await.unwrap() {
                    Ok(_) => ok += 1,
                    Err(e) => assert_eq!(e.code(), "ticket_used"),
                }
            }
            assert_eq!(ok, 1);
        }
    }

    #[tokio::test]
    async fn a_ticket_past_its_ttl_is_ticket_expired_then_unknown() {
        let (clock, millis) = manual_clock();
        let tickets = Tickets::new(Arc::new(MemoryTicketStore::with_clock(clock)), TTL);
        let t = tickets.issue(identity("alice")).await.unwrap();
        advance(&millis, TTL);
        assert_eq!(
            tickets.redeem(Some(&t)).await.unwrap_err().code(),
            "ticket_expired"
        );
        advance(&millis, REMEMBER_EXPIRED);
        assert_eq!(
            tickets.redeem(Some(&t)).await.unwrap_err().code(),
            "invalid_ticket"
        );
    }

    #[tokio::test]
    async fn a_ticket_expires_on_the_real_clock() {
        let tickets = Tickets::new(
            Arc::new(MemoryTicketStore::new()),
            Duration::from_millis(50),
        );
        let t = tickets.issue(identity("alice")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(
            tickets.redeem(Some(&t)).await.unwrap_err().code(),
            "ticket_expired"
        );
    }

    #[tokio::test]
    async fn a_used_ticket_stays_used_until_it_would_have_expired() {
        let (clock, millis) = manual_clock();
        let tickets = Tickets::new(Arc::new(MemoryTicketStore::with_clock(clock)), TTL);
        let t = tickets.issue(identity("alice")).await.unwrap();
        tickets.redeem(Some(&t)).await.unwrap();
        advance(&millis, TTL - Duration::from_millis(1));
        assert_eq!(
            tickets.redeem(Some(&t)).await.unwrap_err().code(),
            "ticket_used"
        );
        advance(&millis, Duration::from_millis(1));
        assert_eq!(
            tickets.redeem(Some(&t)).await.unwrap_err().code(),
            "ticket_expired"
        );
    }

    #[tokio::test]
    async fn missing_and_malformed_tickets_are_refused_before_the_store() {
        let tickets = Tickets::new(Arc::new(MemoryTicketStore::new()), TTL);
        for t in [None, Some("")] {
            assert_eq!(
                tickets.redeem(t).await.unwrap_err().code(),
                "missing_ticket"
            );
        }
        let long = "a".repeat(44);
        let short = "a".repeat(42);
        let bad_char = format!("{}+", "a".repeat(42));
        for t in [long.as_str(), short.as_str(), bad_char.as_str(), "é"] {
            let err = tickets.redeem(Some(t)).await.unwrap_err();
            assert_eq!(err.code(), "invalid_ticket", "{t:?}");
            assert!(!err.to_string().contains(t));
        }
        let unknown = "a".repeat(43);
        assert_eq!(
            tickets.redeem(Some(&unknown)).await.unwrap_err().code(),
            "invalid_ticket"
        );
    }

    #[tokio::test]
    async fn the_store_keeps_only_hashes() {
        let store = Arc::new(MemoryTicketStore::new());
        let tickets = Tickets::new(store.clone(), TTL);
        let t = tickets.issue(identity("alice")).await.unwrap();
        let inner = store.inner.lock();
        assert_eq!(inner.map.len(), 1);
        assert!(inner.map.contains_key(&TicketKey::of(&t)));
    }

    #[tokio::test]
    async fn the_memory_store_sweeps_old_entries_on_put() {
        let (clock, millis) = manual_clock();
        let store = Arc::new(MemoryTicketStore::with_clock(clock));
        let tickets = Tickets::new(store.clone(), TTL);
        for i in 0..100 {
            let t = tickets.issue(identity("a")).await.unwrap();
            if i % 2 == 0 {
                tickets.redeem(Some(&t)).await.unwrap();
            }
        }
        assert_eq!(store.len(), 100);
        // Past every entry's retention (ttl + 60 s) and the sweep interval: the next put sweeps.
        advance(&millis, TTL + REMEMBER_EXPIRED);
        tickets.issue(identity("b")).await.unwrap();
        assert_eq!(store.len(), 1);
    }

    #[tokio::test]
    async fn the_memory_store_stays_bounded_under_steady_issue() {
        let (clock, millis) = manual_clock();
        let store = Arc::new(MemoryTicketStore::with_clock(clock));
        let tickets = Tickets::new(store.clone(), TTL);
        // 10 tickets per second for 10 minutes, none redeemed.
        for _ in 0..6000 {
            tickets.issue(identity("a")).await.unwrap();
            advance(&millis, Duration::from_millis(100));
            // At most the tickets issued in the last 2 × ttl + 60 s.
            assert!(store.len() <= (2 * 30 + 60) * 10 + 1, "{}", store.len());
        }
    }
}
