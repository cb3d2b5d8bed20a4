//! A connection's identity over time: when it expires (a close deadline in the hub's expiry index,
//! which the shared heartbeat timer enforces with 4001), and the in-band `refresh` that replaces
//! its grants and expiry with those of a fresh ticket of the same user. Subscriptions the new
//! grants no longer allow end, each with an `unsubscribed` push, before the `ok`.

use super::Session;
use crate::auth::Identity;
use crate::hub::expiry::{NEVER, close_deadline};
use crate::protocol::codec::OkFields;
use crate::protocol::{ErrorCode, Topic};

/// When `identity` expires (unix seconds), as `welcome` and the `ok` of a refresh show it;
/// `None` when it never does.
pub(super) fn expires_at(identity: &Identity) -> Option<u64> {
    (identity.expires_at != NEVER).then_some(identity.expires_at)
}

impl Session {
    /// Makes `identity`'s expiry the connection's: it closes with 4001 once the expiry plus the
    /// JWT leeway has passed (never for an identity without expiry).
    pub(super) fn arm_expiry(&self, identity: &Identity) {
        let leeway = self.gw.config.jwt_leeway.as_secs();
        let deadline = close_deadline(identity.expires_at, leeway);
        self.gw.hub.set_expiry(&self.sub, deadline);
    }

    /// `refresh`: redeems `ticket` (once, as an upgrade does); a ticket of another user is
    /// `forbidden` and changes nothing. Otherwise the subscriptions the new grants no longer
    /// allow end (each recorded as an unsubscribe, then pushed as `unsubscribed`), the new grants
    /// and expiry replace the old, and the `ok` says when the connection now expires.
    pub(super) async fn refresh(&mut self, id: u64, ticket: &str) {
        let fresh = match self.gw.tickets.redeem(Some(ticket)).await {
            Ok(identity) => identity,
            Err(e) => return self.error(Some(id), e.frame_code(), &e.to_string()),
        };
        if fresh.user != self.identity.user {
            let msg = format!(
                "this ticket is for another user; a refresh keeps the connection's user, {:?}",
                crate::auth::quote(&self.identity.user)
            );
            return self.error(Some(id), ErrorCode::Forbidden, &msg);
        }
        let ended: Vec<Topic> = self
            .topics
            .iter()
            .filter(|t| !fresh.grants.can_subscribe(t.as_str()))
            .cloned()
            .collect();
        for topic in ended {
            let user = &self.identity.user;
            if let Err(e) = self.gw.events.unsubscribed(&self.conn, user, &topic).await {
                // The backend must never miss an unsubscribe: this one stays, and so do the old
                // grants (the ones ended so far were recorded, and their pushes are queued).
                let msg = format!("the refresh was not applied: {e}");
                return self.error(Some(id), e.code(), &msg);
            }
            if self.end_subscription(&topic).await {
                let frame = self
                    .codec
                    .unsubscribed(topic.as_str(), ErrorCode::Forbidden);
                self.reply(frame);
            }
        }
        self.arm_expiry(&fresh);
        self.identity.grants = fresh.grants;
        self.identity.expires_at = fresh.expires_at;
        let ok = OkFields {
            expires_at: expires_at(&self.identity),
            ..OkFields::default()
        };
        self.reply(self.codec.ok(id, ok));
    }
}
