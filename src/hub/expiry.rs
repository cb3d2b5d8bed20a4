//! When connections' identities expire: an index of close deadlines (unix seconds), ordered by
//! deadline, that the shared heartbeat timer ([`super::heartbeat`]) reads on every tick, so that
//! a connection is closed with 4001 about a second after its deadline without a timer of its own.
//!
//! A connection whose identity never expires (`u64::MAX`, as backend-minted tickets have) is not
//! in the index at all, and costs nothing here. A connection that expires has one entry, kept in
//! step with its [`Subscriber::expires`](super::Subscriber) under the index's lock: a refresh
//! moves it, the connection's end removes it. So the index holds at most one entry per open
//! connection, and a tick with nothing due costs one lock and one look at the first entry.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;

use super::Subscriber;

/// The deadline of a connection that never expires.
pub(crate) const NEVER: u64 = u64::MAX;

/// When a connection whose identity expires at `expires_at` (unix seconds; [`NEVER`]: never)
/// must close, `leeway` seconds later (the JWT's clock leeway): never for [`NEVER`].
pub(crate) fn close_deadline(expires_at: u64, leeway: u64) -> u64 {
    expires_at.saturating_add(leeway)
}

/// Whether a connection with `deadline` is due to close at unix second `now`: once `now` is past
/// it, as a JWT is refused once `now > exp + leeway`; never for [`NEVER`].
pub(crate) fn is_due(deadline: u64, now: u64) -> bool {
    deadline != NEVER && now > deadline
}

/// The close deadlines of the connections that have one, as (deadline, connection id).
#[derive(Default)]
pub(crate) struct Expiries {
    /// Held for a few B-tree operations, never across `.await`.
    index: Mutex<BTreeSet<(u64, u64)>>,
}

impl Expiries {
    /// Sets `sub`'s close deadline (unix seconds; [`NEVER`]: none), replacing the one it had.
    pub(crate) fn set(&self, sub: &Subscriber, deadline: u64) {
        let mut index = self.index.lock();
        // Under the lock, so that the index and the atomic change together.
        let old = sub.expires.swap(deadline, Ordering::Relaxed);
        if old != NEVER {
            index.remove(&(old, sub.id));
        }
        if deadline != NEVER {
            index.insert((deadline, sub.id));
        }
    }

    /// Forgets `sub` (its connection ended).
    pub(crate) fn remove(&self, sub: &Subscriber) {
        self.set(sub, NEVER);
    }

    /// Takes out the connections due at unix second `now` and returns their ids. The caller
    /// closes them (after checking that no refresh moved them meanwhile: [`still_due`]).
    pub(crate) fn take_due(&self, now: u64) -> Vec<u64> {
        let mut index = self.index.lock();
        let mut due = Vec::new();
        while let Some(&(deadline, id)) = index.first() {
            if !is_due(deadline, now) {
                break;
            }
            index.pop_first();
            due.push(id);
        }
        due
    }

    /// Number of connections with a deadline.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.index.lock().len()
    }
}

/// Whether `sub`, taken out of the index as due, is still due at `now` (a refresh may have
/// moved its deadline between [`Expiries::take_due`] and the close).
pub(crate) fn still_due(sub: &Subscriber, now: u64) -> bool {
    is_due(sub.expires.load(Ordering::Relaxed), now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;
    use crate::protocol::{CloseCode, Codec};

    #[test]
    fn the_deadline_adds_the_leeway_and_never_stays_never() {
        assert_eq!(close_deadline(1_000, 30), 1_030);
        assert_eq!(close_deadline(1_000, 0), 1_000);
        assert_eq!(close_deadline(NEVER, 30), NEVER);
        assert_eq!(close_deadline(NEVER - 1, 30), NEVER);
    }

    #[test]
    fn due_only_once_past_the_deadline_and_never_for_never() {
        assert!(!is_due(1_030, 1_029));
        assert!(!is_due(1_030, 1_030));
        assert!(is_due(1_030, 1_031));
        assert!(!is_due(NEVER, NEVER));
        assert!(!is_due(NEVER, 0));
    }

    #[test]
    fn the_sweep_closes_a_connection_with_4001_once_past_its_deadline() {
        let hub = Hub::new(1 << 20);
        let s = hub.connect(Codec::Json);
        hub.set_expiry(&s, 100);
        assert_eq!(hub.expire_due(100), 0);
        assert!(!s.outbox.is_closing());
        assert_eq!(hub.expire_due(101), 1);
        assert_eq!(
            s.outbox.close_code(),
            Some(CloseCode::SessionExpired.code())
        );
        // Taken out: the next sweeps do not visit it again.
        assert_eq!(hub.expiries.len(), 0);
        assert_eq!(hub.expire_due(200), 0);
    }

    #[test]
    fn a_connection_that_never_expires_is_not_in_the_index() {
        let hub = Hub::new(1 << 20);
        let s = hub.connect(Codec::Json);
        hub.set_expiry(&s, NEVER);
        assert_eq!(hub.expiries.len(), 0);
        assert_eq!(hub.expire_due(NEVER - 1), 0);
        assert!(!s.outbox.is_closing());
    }

    #[test]
    fn a_refresh_moves_the_deadline_later_or_earlier_or_to_never() {
        let hub = Hub::new(1 << 20);
        let s = hub.connect(Codec::Json);
        hub.set_expiry(&s, 100);
        hub.set_expiry(&s, 200);
        assert_eq!(hub.expiries.len(), 1, "one entry per connection");
        assert_eq!(hub.expire_due(150), 0, "the old deadline no longer counts");
        hub.set_expiry(&s, 120);
        assert_eq!(hub.expire_due(150), 1, "an earlier deadline counts at once");

        let t = hub.connect(Codec::Json);
        hub.set_expiry(&t, 100);
        hub.set_expiry(&t, NEVER);
        assert_eq!(hub.expiries.len(), 0);
        assert_eq!(hub.expire_due(NEVER - 1), 0);
        assert!(!t.outbox.is_closing());
    }

    #[test]
    fn a_refresh_between_taking_and_closing_keeps_the_connection() {
        let hub = Hub::new(1 << 20);
        let s = hub.connect(Codec::Json);
        hub.set_expiry(&s, 100);
        assert_eq!(hub.expiries.take_due(101), vec![s.id]);
        hub.set_expiry(&s, 500);
        assert!(!still_due(&s, 101));
        assert!(still_due(&s, 501));
    }

    #[test]
    fn only_the_connections_past_their_deadline_are_closed() {
        let hub = Hub::new(1 << 20);
        let conns: Vec<_> = (0..5).map(|_| hub.connect(Codec::Json)).collect();
        for (i, s) in conns.iter().enumerate() {
            hub.set_expiry(s, 100 + i as u64);
        }
        assert_eq!(hub.expire_due(102), 2);
        let closing: Vec<bool> = conns.iter().map(|s| s.outbox.is_closing()).collect();
        assert_eq!(closing, [true, true, false, false, false]);
        assert_eq!(hub.expiries.len(), 3);
    }

    #[test]
    fn a_connection_that_ended_leaves_the_index() {
        let hub = Hub::new(1 << 20);
        let s = hub.connect(Codec::Json);
        hub.set_expiry(&s, 100);
        hub.disconnect(s.id);
        assert_eq!(hub.expiries.len(), 0);
        assert_eq!(hub.expire_due(101), 0);
    }
}
