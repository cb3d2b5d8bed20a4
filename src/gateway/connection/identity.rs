//! A connection's identity over time: when it expires, as a close deadline in the hub's expiry
//! index, which the shared heartbeat timer enforces with 4001.

use super::Session;
use crate::auth::Identity;
use crate::hub::expiry::close_deadline;

impl Session {
    /// Makes `identity`'s expiry the connection's: it closes with 4001 once the expiry plus the
    /// JWT leeway has passed (never for an identity without expiry).
    pub(super) fn arm_expiry(&self, identity: &Identity) {
        let leeway = self.gw.config.jwt_leeway.as_secs();
        let deadline = close_deadline(identity.expires_at, leeway);
        self.gw.hub.set_expiry(&self.sub, deadline);
    }
}
