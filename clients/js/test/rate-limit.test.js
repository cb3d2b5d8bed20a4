// A client that floods a node: `rate_limited` errors without id come as error events, the node
// closes it with 4029, and the client waits the longer rate-limit backoff before it reconnects
// and resumes its subscription with `since`.
import { test } from "node:test";
import assert from "node:assert/strict";

import { Node, jwt, ticketsFor } from "../harness/herald.js";
import { FAST_BACKOFF, testClient } from "../harness/client.js";
import { nextEvent } from "../harness/wait.js";

test("4029 after a flood: the longer backoff, then a recovered subscription", async (t) => {
  const node = await Node.start({ HERALD_NODE_ID: "limiter", HERALD_RATE_LIMIT: "5", HERALD_RATE_BURST: "5" });
  t.after(() => node.kill());
  const { client, events } = testClient({ url: node.wsUrl, getTicket: ticketsFor(jwt("judy")) });
  t.after(() => client.close());
  await client.subscribe("feed.flood", () => {}).ready;

  const closed = nextEvent(client, "disconnected", (d) => d.code === 4029, 15_000);
  const flood = [];
  for (let i = 0; i < 60; i++) flood.push(client.publish("feed.flood", i).catch((e) => e.code));
  const d = await closed;
  assert.ok(d.delay >= FAST_BACKOFF.rateLimited, `waited ${d.delay} ms`);
  const outcomes = await Promise.all(flood);
  assert.ok(outcomes.includes("connection_lost"), "requests in flight at the close reject as connection_lost");
  assert.ok(events.error.some((e) => e.code === "rate_limited" && e.connectionLevel), "rate_limited errors without id are reported");

  const back = await nextEvent(client, "subscribed", (s) => s.recovered !== undefined, 15_000);
  assert.equal(back.recovered, true);
});
