// The refusals after which the client stops instead of looping, each surfaced as one fatal error:
// 4003 (a backend revoked the user), and an upgrade refused with 401 or 403, whose HTTP status
// and error code Node's `ws` lets the client see (browsers cannot: see the README).
import { test } from "node:test";
import assert from "node:assert/strict";

import { Node, jwt, ticketsFor } from "../harness/herald.js";
import { testClient } from "../harness/client.js";
import { nextEvent } from "../harness/wait.js";

test("4003 from POST /v1/disconnect stops the client; reconnect() resumes it", async (t) => {
  const node = await Node.start({ HERALD_NODE_ID: "revoker" });
  t.after(() => node.kill());
  const getTicket = ticketsFor(jwt("frank"));
  const { client, events } = testClient({ url: node.wsUrl, getTicket });
  t.after(() => client.close());
  const seen = [];
  await client.subscribe("feed.revoke", (m) => seen.push(m.offset)).ready;
  await node.publish("feed.revoke", 1);

  const fatal = nextEvent(client, "error", (e) => e.fatal);
  const closed = nextEvent(client, "closed");
  await node.disconnect("frank");
  const e = await fatal;
  assert.equal(e.code, "disconnected");
  assert.equal(e.closeCode, 4003);
  await closed;
  assert.equal(client.state, "closed");
  assert.equal(getTicket.calls.length, 1, "no new ticket after 4003");
  assert.deepEqual(events.disconnected.at(-1).willReconnect, false);

  // The app decides to come back (say, after a new login): the subscription resumes with since.
  await node.publish("feed.revoke", 2);
  const back = nextEvent(client, "subscribed", (s) => s.recovered === true);
  client.reconnect();
  await back;
  assert.equal(client.state, "open");
});

test("an upgrade refused with 401 stops the client with the status and the error code", async (t) => {
  const node = await Node.start({ HERALD_NODE_ID: "refuser" });
  t.after(() => node.kill());
  let calls = 0;
  const { client } = testClient({
    url: node.wsUrl,
    getTicket: async () => {
      calls++;
      return "not-a-ticket";
    },
  });
  t.after(() => client.close());
  const e = await nextEvent(client, "error", (x) => x.fatal);
  assert.equal(e.code, "upgrade_refused");
  assert.equal(e.httpStatus, 401);
  assert.equal(e.error, "invalid_ticket");
  assert.equal(client.state, "closed");
  assert.equal(calls, 1);
});

test("an upgrade refused with 403 (Origin not allowed) stops the client", async (t) => {
  const node = await Node.start({ HERALD_NODE_ID: "origins", HERALD_ALLOWED_ORIGINS: "https://app.example" });
  t.after(() => node.kill());
  const { client } = testClient({
    url: node.wsUrl,
    getTicket: ticketsFor(jwt("grace")),
    webSocketOptions: { origin: "https://evil.example" },
  });
  t.after(() => client.close());
  const e = await nextEvent(client, "error", (x) => x.fatal);
  assert.equal(e.code, "upgrade_refused");
  assert.equal(e.httpStatus, 403);
  assert.equal(e.error, "origin_not_allowed");
});
