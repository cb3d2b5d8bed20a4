//! Admission by the numbers: every TCP connection counts against `max_connections` on the node
//! and against `max_connections_per_ip` and `connection_rate_per_ip` for its client address, and
//! `POST /v1/tickets` against a rate per address and per user. Counts are released when the
//! connection's [`Permit`] drops.
//!
//! An IPv6 client is counted by its /64 (one subscriber's whole allocation), so rotating through
//! its own addresses gives an attacker nothing. The tables hold an entry per address seen lately:
//! an entry goes when its address has no connection open and its bucket is full again; when a
//! table reaches its bound anyway, new addresses are refused (429) until entries age out.
//!
//! Owns no sockets: the accept loop and the handlers ask, and turn a refusal into a response.

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::config::limits::Limits;

/// Why a connection or a ticket is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The node holds `max_connections` (503).
    NodeFull(usize),
    /// The address holds `max_connections_per_ip` (429).
    AddressFull(usize),
    /// The address or user is over its rate; try again after this many seconds (429).
    TooFast(u64),
}

/// A client address as counted: an IPv4 address, or an IPv6 /64. Held by every connection's
/// [`Permit`], so kept small (16 bytes, 8-aligned: a `u128` would align every connection's task
/// to 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpKey {
    /// An IPv4 address.
    V4(u32),
    /// The first 64 bits of an IPv6 address.
    V6(u64),
}

impl IpKey {
    /// The key of `ip` (IPv4-mapped IPv6 counts as IPv4).
    pub fn of(ip: IpAddr) -> IpKey {
        match ip.to_canonical() {
            IpAddr::V4(a) => IpKey::V4(u32::from(a)),
            IpAddr::V6(a) => IpKey::V6((u128::from(a) >> 64) as u64),
        }
    }
}

/// A token bucket holding up to `2 * rate` tokens.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f32,
    last: Instant,
}

impl Bucket {
    fn full(rate: u32) -> Bucket {
        Bucket {
            tokens: 2.0 * rate as f32,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, rate: u32, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f32();
        self.tokens = (self.tokens + dt * rate as f32).min(2.0 * rate as f32);
        self.last = now;
    }

    /// Takes a token, or says how many seconds until one is there.
    fn take(&mut self, rate: u32, now: Instant) -> Result<(), u64> {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - self.tokens) / rate as f32).ceil() as u64).max(1))
        }
    }

    fn is_full(&self, rate: u32, now: Instant) -> bool {
        let mut b = *self;
        b.refill(rate, now);
        b.tokens >= 2.0 * rate as f32
    }
}

/// How often a full table may be swept: a sweep visits every entry, so an attacker with many
/// addresses must not be able to cause one per new connection.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Allows a sweep at most once per [`SWEEP_EVERY`].
#[derive(Default)]
struct Sweeps {
    /// When the last sweep ran. Plain lock, held only to read and set it.
    last: parking_lot::Mutex<Option<Instant>>,
}

impl Sweeps {
    /// True when a sweep may run now (and records that it does).
    fn due(&self, now: Instant) -> bool {
        let mut last = self.last.lock();
        match *last {
            Some(at) if now.duration_since(at) < SWEEP_EVERY => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }
}

/// Token buckets by key (an address, a user), in a bounded table.
pub struct Buckets<K: Eq + Hash> {
    rate: u32,
    /// Sharded; an entry is never held across `.await` (nothing here awaits).
    table: DashMap<K, Bucket>,
    /// Most entries; at the bound, full buckets are swept (at most once a second), and new
    /// keys refused while none is.
    cap: usize,
    sweeps: Sweeps,
}

impl<K: Eq + Hash + Clone> Buckets<K> {
    /// `rate` per second, a burst of twice that, at most `cap` keys tracked.
    pub fn new(rate: u32, cap: usize) -> Buckets<K> {
        Buckets {
            rate,
            table: DashMap::new(),
            cap,
            sweeps: Sweeps::default(),
        }
    }

    /// Takes a token for `key`; `Err(seconds)` to wait when there is none.
    pub fn take(&self, key: &K) -> Result<(), u64> {
        let now = Instant::now();
        if let Some(mut b) = self.table.get_mut(key) {
            return b.take(self.rate, now);
        }
        if self.table.len() >= self.cap {
            if self.sweeps.due(now) {
                self.table.retain(|_, b| !b.is_full(self.rate, now));
            }
            if self.table.len() >= self.cap {
                return Err(1);
            }
        }
        let mut b = Bucket::full(self.rate);
        let r = b.take(self.rate, now);
        self.table.insert(key.clone(), b);
        r
    }
}

/// One address's connections and its bucket of new ones.
#[derive(Debug)]
struct Address {
    open: usize,
    bucket: Bucket,
}

/// The node's connection accounting.
pub struct ConnLimits {
    max: usize,
    per_ip: usize,
    rate: u32,
    /// How long a write may stall before its connection is dropped ([`super::guarded`]).
    pub write_timeout: Duration,
    /// Open TCP connections on this node.
    open: AtomicUsize,
    /// Per client address; sharded, never held across `.await`.
    addresses: DashMap<IpKey, Address>,
    /// Most addresses tracked at once; at the bound, idle ones are swept at most once a second.
    cap: usize,
    sweeps: Sweeps,
}

impl ConnLimits {
    /// The accounting for `max_connections` and `limits`.
    pub fn new(max_connections: usize, limits: &Limits) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            max: max_connections,
            per_ip: limits.max_connections_per_ip,
            rate: limits.connection_rate_per_ip,
            write_timeout: limits.write_timeout,
            open: AtomicUsize::new(0),
            addresses: DashMap::new(),
            cap: max_connections.saturating_add(100_000),
            sweeps: Sweeps::default(),
        })
    }

    /// Counts a new TCP connection on the node.
    pub fn admit(self: &Arc<Self>) -> Result<Permit, Refusal> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::NodeFull(self.max));
        }
        Ok(Permit {
            limits: self.clone(),
            node: true,
            address: None,
        })
    }

    /// Counts a connection for client address `ip` only: one that a trusted proxy named per
    /// request (`X-Forwarded-For`), whose TCP connection is the proxy's and already counted.
    pub fn admit_forwarded(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        let mut p = Permit {
            limits: self.clone(),
            node: false,
            address: None,
        };
        self.admit_address(&mut p, ip)?;
        Ok(p)
    }

    /// Counts `permit`'s connection for client address `ip` too (once per permit).
    pub fn admit_address(&self, permit: &mut Permit, ip: IpAddr) -> Result<(), Refusal> {
        debug_assert!(permit.address.is_none());
        let key = IpKey::of(ip);
        let now = Instant::now();
        if !self.addresses.contains_key(&key) && self.addresses.len() >= self.cap {
            if self.sweeps.due(now) {
                self.addresses
                    .retain(|_, a| a.open > 0 || !a.bucket.is_full(self.rate, now));
            }
            if self.addresses.len() >= self.cap {
                return Err(Refusal::TooFast(1));
            }
        }
        let mut a = self.addresses.entry(key).or_insert_with(|| Address {
            open: 0,
            bucket: Bucket::full(self.rate),
        });
        if a.open >= self.per_ip {
            return Err(Refusal::AddressFull(self.per_ip));
        }
        a.bucket.take(self.rate, now).map_err(Refusal::TooFast)?;
        a.open += 1;
        permit.address = Some(key);
        Ok(())
    }

    /// Open TCP connections on this node.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn release(&self, node: bool, address: Option<IpKey>) {
        if node {
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
        let Some(key) = address else { return };
        let now = Instant::now();
        self.addresses.remove_if_mut(&key, |_, a| {
            a.open -= 1;
            a.open == 0 && a.bucket.is_full(self.rate, now)
        });
    }
}

/// One TCP connection's place in the counts; released when dropped.
pub struct Permit {
    limits: Arc<ConnLimits>,
    /// Counts against `max_connections` (a TCP connection of its own).
    node: bool,
    /// The client address it counts against, once admitted for one.
    address: Option<IpKey>,
}

impl Permit {
    /// The accounting it belongs to.
    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limits.release(self.node, self.address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_ip: usize, rate: u32) -> Arc<ConnLimits> {
        let l = Limits {
            write_timeout: Duration::from_secs(10),
            max_connections_per_ip: per_ip,
            connection_rate_per_ip: rate,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            ticket_rate_per_ip: 1,
            ticket_rate_per_user: 1,
        };
        ConnLimits::new(max, &l)
    }

    #[test]
    fn the_node_bound_counts_every_connection_and_frees_on_drop() {
        let l = limits(2, 10, 100);
        let a = l.admit().unwrap();
        let _b = l.admit().unwrap();
        assert_eq!(l.admit().err(), Some(Refusal::NodeFull(2)));
        drop(a);
        assert!(l.admit().is_ok());
    }

    #[test]
    fn an_address_over_its_bound_is_refused_and_others_are_not() {
        let l = limits(100, 2, 100);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut p = l.admit().unwrap();
            l.admit_address(&mut p, ip).unwrap();
            held.push(p);
        }
        let mut p = l.admit().unwrap();
        assert_eq!(l.admit_address(&mut p, ip), Err(Refusal::AddressFull(2)));
        let mut q = l.admit().unwrap();
        assert!(
            l.admit_address(&mut q, "192.0.2.2".parse().unwrap())
                .is_ok()
        );
        held.pop();
        let mut r = l.admit().unwrap();
        assert!(l.admit_address(&mut r, ip).is_ok(), "a freed place is free");
    }

    #[test]
    fn an_address_over_its_rate_is_told_when_to_retry() {
        let l = limits(1000, 1000, 5);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        // A burst of twice the rate passes, even when each connection closes at once.
        for _ in 0..10 {
            let mut p = l.admit().unwrap();
            l.admit_address(&mut p, ip).unwrap();
        }
        let mut p = l.admit().unwrap();
        assert_eq!(l.admit_address(&mut p, ip), Err(Refusal::TooFast(1)));
    }

    #[test]
    fn a_permit_stays_small_and_8_aligned() {
        assert_eq!(std::mem::size_of::<Option<IpKey>>(), 16);
        assert_eq!(std::mem::align_of::<Permit>(), 8);
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let a = IpKey::of("2001:db8:1:2::1".parse().unwrap());
        let b = IpKey::of("2001:db8:1:2:ffff::9".parse().unwrap());
        let c = IpKey::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        let v4 = IpKey::of("10.0.0.1".parse().unwrap());
        let mapped = IpKey::of("::ffff:10.0.0.1".parse().unwrap());
        assert_eq!(v4, mapped);
    }

    #[test]
    fn buckets_refuse_past_the_burst_and_stay_bounded() {
        let b: Buckets<u32> = Buckets::new(1, 3);
        assert!(b.take(&1).is_ok());
        assert!(b.take(&1).is_ok());
        assert_eq!(b.take(&1), Err(1));
        assert!(b.take(&2).is_ok());
        assert!(b.take(&3).is_ok());
        // Full table, no full bucket to sweep: a new key waits.
        assert_eq!(b.take(&4), Err(1));
    }

    #[test]
    fn a_full_table_is_swept_at_most_once_a_second_however_many_new_keys_come() {
        let s = Sweeps::default();
        let t0 = Instant::now();
        assert!(s.due(t0));
        for ms in [0, 1, 500, 999] {
            assert!(
                !s.due(t0 + Duration::from_millis(ms)),
                "{ms} ms after a sweep"
            );
        }
        assert!(s.due(t0 + Duration::from_millis(1000)));
        assert!(!s.due(t0 + Duration::from_millis(1001)));
    }
}
