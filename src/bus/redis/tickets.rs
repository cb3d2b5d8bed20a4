//! Tickets in Redis, for a cluster: minted on one node, redeemed once on any node. Tickets are
//! stored only as their SHA-256 (hex) in the key. Redemption is one script on that one key:
//! it reads the ticket and marks it used in the same atomic step (the value gets a `u` in
//! front, the key keeps its expiry), so of any number of nodes racing for a ticket exactly one
//! wins and every other one sees it used. The key lives as long as the memory store keeps an
//! entry (`ttl + max(ttl, 60 s)`), and a redeemed ticket answers as there: `ticket_used` until
//! the ticket would have expired, `ticket_expired` after, then `invalid_ticket`. It shares the
//! bus's command connection ([`Commands`]), which the bus keeps usable; the bus builds it
//! ([`super::RedisBus::ticket_store`]), so no Redis type leaves `bus/redis/`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::Commands;
use crate::auth::ticket::REMEMBER_EXPIRED;

use futures_util::future::BoxFuture;

use crate::auth::{AuthError, Grants, Identity, RawGrants, TicketKey, TicketStore};

/// Redeems the ticket at `KEYS[1]`: its stored value, and from then on the value marked used
/// (`u` + value, same expiry). A used ticket answers its marked value; an unknown one nil.
const REDEEM: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 1) ~= 'u' then
  redis.call('SET', KEYS[1], 'u' .. v, 'KEEPTTL')
end
return v
";

/// The ticket store over Redis.
pub(crate) struct RedisTicketStore {
    /// The bus's command connection; the current one is taken for each call.
    conn: Commands,
    prefix: String,
    /// [`REDEEM`], run by its SHA (loaded again when Redis lost it).
    redeem: redis::Script,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    user: String,
    grants: RawGrants,
    /// The JWT's `exp`.
    exp: u64,
    /// When the ticket stops being redeemable, unix milliseconds.
    until_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn hex(key: &TicketKey) -> String {
    key.0.iter().map(|b| format!("{b:02x}")).collect()
}

fn store_error(e: redis::RedisError) -> AuthError {
    AuthError::StoreUnavailable(Box::new(e))
}

impl RedisTicketStore {
    /// A store on `conn`, with keys `<prefix>ticket:<sha256 hex>`.
    pub(crate) fn new(conn: Commands, prefix: &str) -> RedisTicketStore {
        RedisTicketStore {
            conn,
            prefix: prefix.to_owned(),
            redeem: redis::Script::new(REDEEM),
        }
    }

    fn key(&self, key: &TicketKey) -> String {
        format!("{}ticket:{}", self.prefix, hex(key))
    }
}

impl TicketStore for RedisTicketStore {
    fn put(
        &self,
        key: TicketKey,
        identity: Identity,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), AuthError>> {
        let mut c = self.conn.get();
        let k = self.key(&key);
        Box::pin(async move {
            let stored = Stored {
                user: identity.user.to_string(),
                grants: identity.grants.to_raw(),
                exp: identity.expires_at,
                until_ms: now_ms() + ttl.as_millis() as u64,
            };
            let value = serde_json::to_string(&stored).expect("tickets serialise");
            // Kept past its expiry, so that a late redeem says `ticket_expired`.
            let keep = (ttl + ttl.max(REMEMBER_EXPIRED)).as_millis() as u64;
            let _: () = redis::cmd("SET")
                .arg(&k)
                .arg(value)
                .arg("PX")
                .arg(keep)
                .query_async(&mut c)
                .await
                .map_err(store_error)?;
            Ok(())
        })
    }

    fn take(&self, key: TicketKey) -> BoxFuture<'_, Result<Identity, AuthError>> {
        let mut c = self.conn.get();
        let k = self.key(&key);
        Box::pin(async move {
            let got: Option<String> = self
                .redeem
                .key(&k)
                .invoke_async(&mut c)
                .await
                .map_err(store_error)?;
            let Some(value) = got else {
                return Err(AuthError::InvalidTicket);
            };
            let (used, value) = match value.strip_prefix('u') {
                Some(v) => (true, v),
                None => (false, value.as_str()),
            };
            let stored: Stored =
                serde_json::from_str(value).map_err(|_| AuthError::InvalidTicket)?;
            if now_ms() >= stored.until_ms {
                return Err(AuthError::TicketExpired);
            }
            if used {
                return Err(AuthError::TicketUsed);
            }
            Ok(Identity {
                user: Arc::from(stored.user),
                grants: Arc::new(Grants::from_raw(&stored.grants)?),
                expires_at: stored.exp,
            })
        })
    }
}
