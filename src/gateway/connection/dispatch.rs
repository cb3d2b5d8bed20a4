//! What each request of a client does: `sub`, `unsub`, `pub`, `presence` and `send`, each checked
//! against the connection's grants first, and `refresh` (in `identity`), which replaces them.
//! `send` runs in a task of its own (on the gateway's tracker, so that a drain waits for it): a
//! slow backend must not stall the connection.

use crate::protocol::codec::OkFields;
use crate::protocol::frame::Member;
use crate::protocol::{ErrorCode, Request};

use super::Session;

impl Session {
    /// Does what `req` asks, within the connection's grants; every outcome is an answer on
    /// the connection (`ok`, `error`, or for `send` the service's `reply` later).
    pub(super) async fn request(&mut self, req: Request) {
        let grants = self.identity.grants.clone();
        match req {
            Request::Sub { id, topic, since } => {
                if !grants.can_subscribe(topic.as_str()) {
                    let msg = format!("your grants do not allow subscribing to {topic:?}");
                    return self.error(Some(id), ErrorCode::Forbidden, &msg);
                }
                if self.topics.contains(&topic) {
                    let msg = "already subscribed to this topic";
                    return self.error(Some(id), ErrorCode::AlreadySubscribed, msg);
                }
                let max = self.gw.config.max_subscriptions;
                if self.topics.len() >= max {
                    let msg = format!("subscription limit ({max}) reached on this connection");
                    return self.error(Some(id), ErrorCode::Forbidden, &msg);
                }
                self.subscribe(Some(id), topic, since).await;
            }
            Request::Unsub { id, topic } => {
                if self.topics.contains(&topic) {
                    let user = &self.identity.user;
                    let recorded = self.gw.events.unsubscribed(&self.conn, user, &topic).await;
                    if let Err(e) = recorded {
                        // Still subscribed: the backend must never miss an unsubscribe.
                        return self.error(Some(id), e.code(), &e.to_string());
                    }
                }
                self.unsubscribe(id, topic).await
            }
            Request::Pub { id, topic, data } => {
                if !grants.can_publish(topic.as_str()) {
                    let msg = format!("your grants do not allow publishing to {topic:?}");
                    return self.error(Some(id), ErrorCode::Forbidden, &msg);
                }
                match self.gw.bus.publish(&topic, data).await {
                    Ok(p) => {
                        self.gw.metrics.published_client.increment(1);
                        let f = OkFields {
                            offset: Some(p.offset),
                            epoch: Some(&p.epoch),
                            recovered: None,
                            expires_at: None,
                        };
                        self.reply(self.codec.ok(id, f));
                    }
                    Err(e) => self.error(Some(id), e.code(), &e.to_string()),
                }
            }
            Request::Presence { id, topic } => {
                if !grants.can_subscribe(topic.as_str()) {
                    let msg = format!("your grants do not allow subscribing to {topic:?}");
                    return self.error(Some(id), ErrorCode::Forbidden, &msg);
                }
                if !self.gw.config.presence_enabled(topic.as_str()) {
                    let msg = format!("presence is not enabled for {topic:?} (presence_topics)");
                    return self.error(Some(id), ErrorCode::BadRequest, &msg);
                }
                match self.gw.bus.presence(&topic).await {
                    Ok(list) => {
                        let members: Vec<Member> = list
                            .into_iter()
                            .map(|(conn, user)| Member { user, conn })
                            .collect();
                        self.reply(self.codec.ok_presence(id, &members));
                    }
                    Err(e) => self.error(Some(id), e.code(), &e.to_string()),
                }
            }
            Request::Send { id, to, data } => {
                if !grants.can_send(&to) {
                    let msg = format!("your grants do not allow sending to {to:?}");
                    return self.error(Some(id), ErrorCode::Forbidden, &msg);
                }
                // In its own task: a slow backend must not stall this connection's other traffic.
                // Bounded by the service's max_concurrency (overloaded at once beyond it).
                let (gw, sub, codec) = (self.gw.clone(), self.sub.clone(), self.codec);
                let (user, conn, headers) = (
                    self.identity.user.clone(),
                    self.conn.clone(),
                    self.forwarded.clone(),
                );
                self.gw.tracker.spawn(async move {
                    let out = crate::proxy::Outgoing {
                        id,
                        user: &user,
                        conn: &conn,
                        data: &data,
                        headers: &headers,
                    };
                    let frame = match gw.proxy.send(&to, out).await {
                        Ok(reply) => codec.reply(id, &reply),
                        Err(e) => codec.error(Some(id), e.code(), &e.to_string(), e.status()),
                    };
                    sub.push(frame);
                });
            }
            Request::Refresh { id, ticket } => self.refresh(id, &ticket.0).await,
        }
    }
}
