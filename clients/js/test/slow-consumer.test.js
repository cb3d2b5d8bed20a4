// A slow consumer cut with 4008: the client stops reading (its socket paused) while a publisher
// fills its outbox past HERALD_OUTBOX_BYTES; the node closes it with 4008; once it reads again it
// takes what was on its way, reconnects, recovers with `since`, and ends with every offset once.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";

import { Node, jwt, ticketsFor } from "../harness/herald.js";
import { testClient } from "../harness/client.js";
import { Collector, assertContiguous, nextEvent } from "../harness/wait.js";

test("a slow consumer cut with 4008 reconnects and recovers: every offset, in order, exactly once", async (t) => {
  // The smallest outbox the node accepts must exceed max_message_bytes + 1024.
  const node = await Node.start({
    HERALD_NODE_ID: "slow",
    HERALD_OUTBOX_BYTES: "65536",
    HERALD_MAX_MESSAGE_BYTES: "16384",
    HERALD_HISTORY_SIZE: "20000",
  });
  t.after(() => node.kill());
  const { client, events, sockets } = testClient({ url: node.wsUrl, getTicket: ticketsFor(jwt("dave")) });
  t.after(() => client.close());
  const c = new Collector();
  await client.subscribe("feed.slow", c.handler).ready;
  await node.publish("feed.slow", { seq: 0 });
  await c.until((x) => x.messages.length === 1, 10_000, "the first message");

  // Stop reading, and publish until the node has cut a slow consumer (bounded: at most ~64 MB).
  const paused = sockets.at(-1);
  paused.pause();
  // Random, so that permessage-deflate (which the client negotiates) cannot shrink it.
  const pad = () => randomBytes(11_250).toString("base64");
  let last = 1;
  let cut = false;
  for (let i = 1; i <= 4000 && !cut; i++) {
    last = (await node.publish("feed.slow", { seq: i, pad: pad() })).offset;
    if (i % 50 === 0) cut = (await node.metric("herald_slow_consumers_total")) >= 1;
  }
  assert.ok(cut, "the node closed the paused client as a slow consumer");
  t.diagnostic(`cut after ${last} messages of 15 kB`);
  const closed = nextEvent(client, "disconnected", (d) => d.code === 4008, 30_000);
  paused.resume();
  await closed;
  await c.until((x) => x.last?.offset >= last, 30_000, `every offset up to ${last}`);

  assertContiguous(assert, c.offsets, 1, last);
  assert.ok(events.subscribed.some((s) => s.recovered === true), "recovered with since");
  assert.deepEqual(events.gap, [], "no gap");
});
