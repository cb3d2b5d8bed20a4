// A ticket callback that fails (throws) a few times, at the first connect and again after a drop,
// then works: each failure is reported, the client backs off and asks again, and the stream ends
// with every offset, in order, exactly once.
import { test } from "node:test";
import assert from "node:assert/strict";

import { Node, jwt, ticketsFor, publishMany } from "../harness/herald.js";
import { testClient } from "../harness/client.js";
import { Collector, assertContiguous } from "../harness/wait.js";

test("a ticket callback that fails a few times then works: every offset, in order, exactly once", async (t) => {
  const node = await Node.start({ HERALD_NODE_ID: "tickets" });
  t.after(() => node.kill());
  const real = ticketsFor(jwt("erin"));
  let failing = 2;
  let calls = 0;
  const getTicket = async (info) => {
    calls++;
    if (failing > 0) {
      failing--;
      throw new Error("the app's backend is down");
    }
    return real(info);
  };
  const { client, events, sockets } = testClient({ url: node.wsUrl, getTicket });
  t.after(() => client.close());
  const c = new Collector();
  await client.subscribe("feed.tickets", c.handler).ready;
  assert.equal(events.error.filter((e) => e.code === "ticket_failed").length, 2);

  const N = 200;
  let dropped;
  const offsets = await publishMany(() => node, "feed.tickets", N, {
    onPublished: (seq) => {
      if (seq === 40)
        dropped = c.until((x) => x.messages.length >= 20, 10_000, "20 messages before the drop").then(() => {
          failing = 3; // the next three tickets fail
          sockets.at(-1).terminate(); // the network drops
        });
    },
  });
  await dropped;
  const last = Math.max(...offsets);
  await c.until((x) => x.last?.offset >= last, 20_000, `every offset up to ${last}`);

  assertContiguous(assert, c.offsets, 1, last);
  assert.equal(events.error.filter((e) => e.code === "ticket_failed").length, 5, "every failure reported");
  assert.ok(calls >= 7, `getTicket called again after each failure (${calls})`);
  assert.ok(events.subscribed.some((s) => s.recovered === true), "recovered with since");
  assert.deepEqual(events.gap, [], "no gap");
});
