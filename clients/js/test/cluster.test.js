// A client moved to another node of a Redis cluster: two nodes, the client's url list names both,
// the one it is on is killed (SIGKILL: no close frame), and it resumes on the other with `since`
// while a backend keeps publishing through the live node.
import { test } from "node:test";
import assert from "node:assert/strict";

import { Node, startRedis, jwt, ticketsFor, publishMany } from "../harness/herald.js";
import { testClient } from "../harness/client.js";
import { Collector, assertContiguous } from "../harness/wait.js";

test("a client moved to another node of a Redis cluster: every offset, in order, exactly once", async (t) => {
  const redis = await startRedis();
  t.after(() => redis.stop());
  const a = await Node.start({ HERALD_REDIS_URL: redis.url, HERALD_NODE_ID: "node-a" });
  t.after(() => a.kill());
  const b = await Node.start({ HERALD_REDIS_URL: redis.url, HERALD_NODE_ID: "node-b" });
  t.after(() => b.kill());

  const getTicket = ticketsFor(jwt("carol"));
  const { client, events } = testClient({ url: [a.wsUrl, b.wsUrl], getTicket });
  t.after(() => client.close());
  const c = new Collector();
  await client.subscribe("feed.cluster", c.handler).ready;
  assert.equal(client.welcome.node, "node-a", "the first url first");

  const N = 300;
  let killed;
  const offsets = await publishMany(() => b, "feed.cluster", N, {
    onPublished: (seq) => {
      if (seq === 60) killed = c.until((x) => x.messages.length >= 30, 10_000, "30 messages before the kill").then(() => a.kill());
    },
  });
  await killed;
  const last = Math.max(...offsets);
  await c.until((x) => x.last?.offset >= last, 20_000, `every offset up to ${last}`).catch((e) => {
    throw new Error(`${e.message}; events: ${JSON.stringify({ ...events, error: events.error.map((x) => x.message) })}`);
  });

  assertContiguous(assert, c.offsets, 1, last);
  assert.equal(client.welcome.node, "node-b", "moved to the live node");
  assert.ok(events.disconnected.some((d) => d.code === 1006), "the kill is seen as a drop");
  assert.ok(events.subscribed.some((s) => s.recovered === true), "resumed with since on node-b");
  assert.deepEqual(events.gap, [], "no gap");
  assert.ok(getTicket.calls.some((u) => u === b.wsUrl), "the ticket was asked of the live node");
});
