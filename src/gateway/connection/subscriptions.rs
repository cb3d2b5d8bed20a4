//! The subscriptions of one connection: subscribe with gapless catch-up (registered first, the
//! replay read and streamed a page at a time as the outbox drains, then live), unsubscribe, and
//! closing them all when the connection ends. The hub holds live messages while a replay is
//! queued, so nothing is missed or repeated between the two.

use super::Session;
use crate::hub::Subscribed;
use crate::metrics::Recovery;
use crate::protocol::codec::OkFields;
use crate::protocol::{CloseCode, ErrorCode, Message, Position, Topic};

/// A subscription whose missed messages are still being queued, a page at a time.
pub(super) struct Replaying {
    topic: Topic,
    /// The page being queued.
    rest: std::collections::VecDeque<Message>,
    /// The last position queued so far.
    floor: Option<Position>,
    /// The topic's latest offset when the replay started: pages are read until `floor` is
    /// there (live messages from then on are held by the hub).
    until: u64,
    /// It answers a `since` (a recovery, counted by its outcome when it ends).
    recovering: bool,
}

impl Session {
    /// Queues more of the replays in progress while the outbox has room, reading their next
    /// page when one is queued; a replay that is done goes live (its held messages follow,
    /// without gap or duplicate). A replay whose next page cannot be read exactly (the history
    /// moved on, or the bus is down) closes the connection with 1012: the client resumes with
    /// `since` from what it got, and learns the truth then, never a gap.
    pub(super) async fn feed_replays(&mut self) {
        let room = self.sub.outbox_limit() / 2;
        while let Some(r) = self.replays.first_mut() {
            while self.sub.outbox.pending_bytes() < room {
                let Some(m) = r.rest.pop_front() else { break };
                self.sub.push(self.codec.msg(&m));
                r.floor = Some(Position {
                    offset: m.offset,
                    epoch: m.epoch.clone(),
                });
            }
            if !r.rest.is_empty() {
                return;
            }
            let more = match &r.floor {
                Some(floor) if floor.offset < r.until => Some(floor.clone()),
                _ => None,
            };
            if let Some(after) = more {
                if self.sub.outbox.pending_bytes() >= room {
                    return;
                }
                let topic = r.topic.clone();
                match self.gw.bus.replay_more(&topic, &after).await {
                    Ok(Some(page)) if !page.is_empty() => {
                        self.gw.metrics.replay_pages.increment(1);
                        if let Some(r) = self.replays.first_mut() {
                            r.rest = page.into();
                        }
                        continue;
                    }
                    Ok(_) | Err(_) => {
                        tracing::debug!("{topic:?}: the replay's next page cannot be read");
                        let failed = self.replays.drain(..).filter(|r| r.recovering).count();
                        for _ in 0..failed {
                            self.gw.metrics.recovery(Recovery::Failed);
                        }
                        self.sub.outbox.close(CloseCode::Restarting);
                        return;
                    }
                }
            }
            let r = self.replays.remove(0);
            if r.recovering {
                self.gw.metrics.recovery(Recovery::Exact);
            }
            self.gw.hub.go_live(&r.topic, self.sub.id, r.floor);
        }
    }

    pub(super) async fn unsubscribe(&mut self, id: u64, topic: Topic) {
        if self.end_subscription(&topic).await {
            self.reply(self.codec.ok(id, OkFields::default()));
        } else {
            let msg = "not subscribed to this topic";
            self.error(Some(id), ErrorCode::NotSubscribed, msg)
        }
    }

    /// Ends the subscription to `topic` (the hub, the bus's interest and presence let go of it,
    /// and a replay in progress stops); false when there was none. Nothing is sent to the client.
    pub(super) async fn end_subscription(&mut self, topic: &Topic) -> bool {
        if !self.gw.hub.unsubscribe(topic, self.sub.id) {
            return false;
        }
        self.gw.unwatch(topic).await;
        if self.gw.config.presence_enabled(topic.as_str()) {
            let user = &self.identity.user;
            let _ = self.gw.bus.presence_leave(topic, &self.conn, user).await;
        }
        self.topics.retain(|t| t != topic);
        self.replays.retain(|r| r.topic != *topic);
        true
    }

    /// Subscribes with gapless catch-up: registered first (live messages are held), then the
    /// replay is read, then `ok`, the replay (streamed as the outbox drains) and the held
    /// messages are queued in order.
    pub(super) async fn subscribe(
        &mut self,
        id: Option<u64>,
        topic: Topic,
        since: Option<Position>,
    ) {
        match self.gw.hub.subscribe(&topic, &self.sub) {
            Subscribed::Already => {
                let msg = "already subscribed to this topic";
                self.error(id, ErrorCode::AlreadySubscribed, msg);
                return;
            }
            Subscribed::Added => {}
        }
        // Live first (held by the hub until catch-up ends), then the replay: no gap between them.
        if let Err(e) = self.gw.watch(&topic).await {
            self.gw.hub.unsubscribe(&topic, self.sub.id);
            self.error(id, e.code(), &e.to_string());
            return;
        }
        match self.gw.bus.replay(&topic, since.as_ref()).await {
            Ok(r) => {
                let user = &self.identity.user;
                if let Err(e) = self.gw.events.subscribed(&self.conn, user, &topic).await {
                    // Not subscribed after all: the backend must never miss a subscribe.
                    if self.gw.hub.unsubscribe(&topic, self.sub.id) {
                        self.gw.unwatch(&topic).await;
                    }
                    self.error(id, e.code(), &e.to_string());
                    return;
                }
                if let Some(id) = id {
                    let ok = OkFields {
                        offset: Some(r.latest.offset),
                        epoch: Some(&r.latest.epoch),
                        recovered: since.as_ref().map(|_| r.messages.is_some()),
                        expires_at: None,
                    };
                    self.reply(self.codec.ok(id, ok));
                }
                // A recovery is exact once its whole replay is queued (counted then), or not.
                let recovering = since.is_some();
                match r.messages {
                    Some(m) if !m.is_empty() => {
                        self.gw.metrics.replay_pages.increment(1);
                        self.replays.push(Replaying {
                            topic: topic.clone(),
                            rest: m.into(),
                            floor: since,
                            until: r.latest.offset,
                            recovering,
                        })
                    }
                    Some(_) => {
                        if recovering {
                            self.gw.metrics.recovery(Recovery::Exact);
                        }
                        self.gw.hub.go_live(&topic, self.sub.id, since);
                    }
                    None => {
                        if recovering {
                            self.gw.metrics.recovery(Recovery::NotRecovered);
                        }
                        let start = Some(r.latest);
                        self.gw.hub.go_live(&topic, self.sub.id, start);
                    }
                }
                if self.gw.config.presence_enabled(topic.as_str()) {
                    let user = &self.identity.user;
                    if let Err(e) = self.gw.bus.presence_join(&topic, &self.conn, user).await {
                        // Subscribed, but others will not see this connection in presence.
                        let msg =
                            format!("subscribed to {topic:?}, but presence is not updated: {e}");
                        self.error(None, e.code(), &msg);
                    }
                }
                // Room for one at first (most connections hold a topic or two; growth doubles
                // from there), not the four a first push would reserve.
                self.topics
                    .reserve_exact(usize::from(self.topics.is_empty()));
                self.topics.push(self.gw.hub.shared_name(&topic));
                self.feed_replays().await;
            }
            Err(e) => {
                if since.is_some() {
                    self.gw.metrics.recovery(Recovery::Failed);
                }
                if self.gw.hub.unsubscribe(&topic, self.sub.id) {
                    self.gw.unwatch(&topic).await;
                }
                self.error(id, e.code(), &e.to_string());
            }
        }
    }

    /// Ends every subscription, the user's directed messages and the hub's record of the
    /// connection, when it closes (`user_watched`: the bus watches the user's channel for it).
    pub(super) async fn close_all(&mut self, user_watched: bool) {
        let (gw, id) = (self.gw.clone(), self.sub.id);
        for t in std::mem::take(&mut self.topics) {
            if gw.hub.unsubscribe(&t, id) {
                gw.unwatch(&t).await;
            }
            if gw.config.presence_enabled(t.as_str()) {
                let _ = gw
                    .bus
                    .presence_leave(&t, &self.conn, &self.identity.user)
                    .await;
            }
        }
        gw.hub.detach_user(&self.identity.user, &self.sub);
        if user_watched {
            gw.unwatch_user(&self.identity.user).await;
        }
        gw.hub.disconnect(id);
    }
}
