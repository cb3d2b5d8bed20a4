// A node restarted mid-stream (SIGTERM, then started again on the same port) while a publisher
// publishes: the client is closed with 1012, reconnects with a new ticket, resubscribes with
// `since` and ends with every offset, in order, exactly once. With Redis the history survives the
// restart; with the in-process bus it cannot, and the client says so with a gap event.
import { test } from "node:test";
import assert from "node:assert/strict";

import { Node, startRedis, jwt, ticketsFor, publishMany } from "../harness/herald.js";
import { testClient } from "../harness/client.js";
import { Collector, assertContiguous, nextEvent } from "../harness/wait.js";

test("a node restarted mid-stream: every offset, in order, exactly once", async (t) => {
  const redis = await startRedis();
  t.after(() => redis.stop());
  const node = await Node.start({ HERALD_REDIS_URL: redis.url, HERALD_NODE_ID: "restarted" });
  t.after(() => node.kill());

  const getTicket = ticketsFor(jwt("alice"));
  const { client, events } = testClient({ url: node.wsUrl, getTicket });
  t.after(() => client.close());
  const c = new Collector();
  const sub = client.subscribe("feed.restart", c.handler);
  await sub.ready;

  const N = 300;
  let restarted;
  const published = publishMany(() => node, "feed.restart", N, {
    onPublished: (seq) => {
      // Mid-stream: once the client has read some, restart the node while publishing goes on.
      if (seq === 60) restarted = c.until((x) => x.messages.length >= 30, 10_000, "30 messages before the restart").then(() => node.restart());
    },
  });
  const offsets = await published;
  await restarted;
  const last = Math.max(...offsets);
  await c.until((x) => x.last?.offset >= last, 20_000, `every offset up to ${last}`);

  assertContiguous(assert, c.offsets, 1, last);
  assert.deepEqual(new Set(c.messages.map((m) => m.data.seq)).size, N, "every published message arrived");
  assert.ok(events.disconnected.some((d) => d.code === 1012), `a 1012 close: ${JSON.stringify(events.disconnected)}`);
  assert.ok(events.connected.length >= 2, "reconnected");
  assert.ok(events.subscribed.some((s) => s.recovered === true), "resubscribed with since and recovered");
  assert.deepEqual(events.gap, [], "no gap");
  assert.ok(getTicket.calls.length >= 2, "a new ticket for the reconnect");
});

test("a node without Redis restarted: the lost history is reported as a gap, never hidden", async (t) => {
  const node = await Node.start({ HERALD_NODE_ID: "alone" });
  t.after(() => node.kill());
  const { client, events } = testClient({ url: node.wsUrl, getTicket: ticketsFor(jwt("bob")) });
  t.after(() => client.close());
  const c = new Collector();
  await client.subscribe("feed.local", c.handler).ready;
  await publishMany(() => node, "feed.local", 5);
  await c.until((x) => x.messages.length === 5, 10_000, "5 messages");

  const gap = nextEvent(client, "gap", () => true, 20_000);
  await node.restart();
  const g = await gap;
  assert.equal(g.topic, "feed.local");
  assert.equal(g.recovered, false);
  assert.deepEqual(g.since, { offset: 5, epoch: c.messages[4].epoch });

  await publishMany(() => node, "feed.local", 3);
  await c.until((x) => x.messages.length === 8, 10_000, "3 more after the restart");
  assert.deepEqual(c.offsets, [1, 2, 3, 4, 5, 1, 2, 3], "the new epoch starts again at 1, announced by the gap");
  assert.notEqual(c.messages[5].epoch, c.messages[4].epoch);
});
