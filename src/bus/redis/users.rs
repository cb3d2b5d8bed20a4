//! What goes to one user wherever the user is connected, on the user's channel
//! (`<prefix>{user:<user>}:direct`, subscribed by every node that holds a connection of the user
//! and only by those): directed messages (`herald_publish_user`) and disconnect orders
//! (`herald_disconnect`, `POST /v1/disconnect`).
//!
//! Why a disconnect order travels on the user's channel rather than on a channel of its own or
//! one every node subscribes to: it reaches exactly the nodes that hold a connection of the user
//! (Redis's answer to PUBLISH counts them, and `POST /v1/disconnect` reports it), it costs no
//! subscription beyond the one each node already keeps per connected user, and nothing on the
//! path of topic messages changes (the push callback tells user channels apart only after a
//! topic's envelope did not parse; there an order is one comparison of its first bytes). Its
//! payload, `!disconnect` or `!disconnect:<conn>`, holds no space, so no directed message
//! (`<from> <data>`, always with one) can be taken for an order, and a node of an older version
//! ignores it rather than deliver it as a broken `direct` frame.

use super::{RedisBus, fcall};
use crate::bus::{BoxFuture, BusError, Direct, Directs, Disconnect};

impl Directs for RedisBus {
    fn publish_direct(&self, d: Direct) -> BoxFuture<'_, Result<(), BusError>> {
        let mut c = self.cmd.get();
        Box::pin(async move {
            self.check_reachable()?;
            let mut cmd = fcall("herald_publish_user", &*d.user);
            cmd.arg(&d.data[..]);
            if let Some(from) = &d.from {
                cmd.arg(&**from);
            }
            let _: i64 = cmd.query_async(&mut c).await.map_err(|e| self.failed(e))?;
            Ok(())
        })
    }

    fn disconnect(&self, order: Disconnect) -> BoxFuture<'_, Result<usize, BusError>> {
        let mut c = self.cmd.get();
        Box::pin(async move {
            self.check_reachable()?;
            let mut cmd = fcall("herald_disconnect", &*order.user);
            if let Some(conn) = &order.conn {
                cmd.arg(&**conn);
            }
            let nodes: usize = cmd.query_async(&mut c).await.map_err(|e| self.failed(e))?;
            Ok(nodes)
        })
    }
}
