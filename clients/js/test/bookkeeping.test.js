// The client's bookkeeping with the server's part played frame by frame (no herald process):
// dedupe, resubscribe with `since`, gaps surfaced, close codes, request errors and bounds.
import { test } from "node:test";
import assert from "node:assert/strict";

import { connect, ServerError, TimeoutError, HeraldError, SERVER_ERROR_CODES } from "../src/herald.js";
import { fakeWebSocket } from "../harness/fake-ws.js";
import { Collector, nextEvent } from "../harness/wait.js";

const fast = { initial: 5, max: 20, rateLimited: 200 };

function setup(extra = {}) {
  const fake = fakeWebSocket();
  const tickets = [];
  const client = connect({
    url: "ws://127.0.0.1:1/ws",
    getTicket: async (info) => {
      tickets.push(info);
      return `t${tickets.length}`;
    },
    WebSocket: fake.WebSocket,
    backoff: fast,
    ...extra,
  });
  return { fake, client, tickets };
}

/** Opens socket #i, answers the `sub` for `topic` with `ok`, returns [socket, sub frame]. */
async function openAndSub(fake, i, topic, ok) {
  const ws = await fake.socketAt(i);
  ws.accept();
  const sub = await ws.nextSent("sub");
  assert.equal(sub.topic, topic);
  ws.push({ op: "ok", id: sub.id, ...ok });
  return [ws, sub];
}

test("a new ticket for every attempt (4001 included), in the query string", async () => {
  const { fake, client, tickets } = setup();
  const ws0 = await fake.socketAt(0);
  assert.equal(ws0.url, "ws://127.0.0.1:1/ws?ticket=t1");
  assert.equal(ws0.protocol, "herald.v1.json");
  ws0.accept();
  ws0.serverClose(1006);
  const ws1 = await fake.socketAt(1);
  assert.equal(ws1.url, "ws://127.0.0.1:1/ws?ticket=t2");
  assert.equal(tickets.length, 2);
  assert.equal(tickets[1].lastClose.code, 1006);
  ws1.accept();
  ws1.serverClose(4001); // session expired: a new ticket
  const ws2 = await fake.socketAt(2);
  assert.equal(ws2.url, "ws://127.0.0.1:1/ws?ticket=t3");
  assert.equal(tickets[2].lastClose.code, 4001);
  await client.close();
});

test("duplicates are dropped, replays resume after the last delivered offset", async () => {
  const { fake, client } = setup();
  const c = new Collector();
  client.subscribe("news", c.handler);
  const [ws0] = await openAndSub(fake, 0, "news", { offset: 0, epoch: "e1" });
  for (const o of [1, 2, 2, 1, 3]) ws0.push({ op: "msg", topic: "news", offset: o, epoch: "e1", data: o });
  assert.deepEqual(c.offsets, [1, 2, 3]);
  ws0.serverClose(1006);
  const ws1 = await fake.socketAt(1);
  ws1.accept();
  const sub = await ws1.nextSent("sub");
  assert.deepEqual(sub.since, { offset: 3, epoch: "e1" });
  ws1.push({ op: "ok", id: sub.id, offset: 5, epoch: "e1", recovered: true });
  for (const o of [3, 4, 5, 6]) ws1.push({ op: "msg", topic: "news", offset: o, epoch: "e1", data: o });
  assert.deepEqual(c.offsets, [1, 2, 3, 4, 5, 6]);
  await client.close();
});

test("messages that arrive before the ok are held, then deduplicated against it", async () => {
  const { fake, client } = setup();
  const c = new Collector();
  client.subscribe("news", c.handler);
  const ws = await fake.socketAt(0);
  ws.accept();
  const sub = await ws.nextSent("sub");
  ws.push({ op: "msg", topic: "news", offset: 4, epoch: "e1", data: 4 });
  ws.push({ op: "msg", topic: "news", offset: 5, epoch: "e1", data: 5 });
  assert.deepEqual(c.offsets, []);
  ws.push({ op: "ok", id: sub.id, offset: 4, epoch: "e1" });
  assert.deepEqual(c.offsets, [5]);
  await client.close();
});

test("recovered: false is surfaced as a gap event, and the subscription goes on live", async () => {
  const { fake, client } = setup();
  const c = new Collector();
  const gaps = [];
  client.subscribe("news", c.handler, { onGap: (g) => gaps.push(g) });
  const [ws0] = await openAndSub(fake, 0, "news", { offset: 0, epoch: "e1" });
  ws0.push({ op: "msg", topic: "news", offset: 1, epoch: "e1", data: 1 });
  ws0.serverClose(1011);
  const ws1 = await fake.socketAt(1);
  ws1.accept();
  const sub = await ws1.nextSent("sub");
  const gap = nextEvent(client, "gap");
  ws1.push({ op: "ok", id: sub.id, offset: 7, epoch: "e2", recovered: false });
  const g = await gap;
  assert.deepEqual(g, { topic: "news", reason: "not_recovered", recovered: false, since: { offset: 1, epoch: "e1" }, offset: 7, epoch: "e2" });
  assert.equal(gaps.length, 1);
  ws1.push({ op: "msg", topic: "news", offset: 8, epoch: "e2", data: 8 });
  assert.deepEqual(c.offsets, [1, 8]);
  await client.close();
});

test("an epoch change mid-stream is a gap, except for the first message of a topic with no epoch yet", async () => {
  const { fake, client } = setup();
  const c = new Collector();
  const gaps = [];
  client.on("gap", (g) => gaps.push(g));
  client.subscribe("news", c.handler);
  const [ws] = await openAndSub(fake, 0, "news", { offset: 0, epoch: "0" });
  ws.push({ op: "msg", topic: "news", offset: 1, epoch: "e1", data: 1 });
  assert.equal(gaps.length, 0, "offset 0 then offset 1 of a new epoch loses nothing");
  ws.push({ op: "msg", topic: "news", offset: 2, epoch: "e1", data: 2 });
  ws.push({ op: "msg", topic: "news", offset: 5, epoch: "e9", data: 5 });
  assert.equal(gaps.length, 1);
  assert.equal(gaps[0].reason, "epoch_changed");
  ws.push({ op: "msg", topic: "news", offset: 7, epoch: "e9", data: 7 });
  assert.equal(gaps.length, 2);
  assert.equal(gaps[1].reason, "skipped");
  assert.deepEqual(c.offsets, [1, 2, 5, 7]);
  await client.close();
});

test("a topic that had no epoch when the client left is asked again from offset 0 of its new epoch", async () => {
  const { fake, client } = setup();
  const c = new Collector();
  const gaps = [];
  client.on("gap", (g) => gaps.push(g));
  client.subscribe("room", c.handler);
  const [ws0] = await openAndSub(fake, 0, "room", { offset: 0, epoch: "0" });
  ws0.serverClose(1006);
  const ws1 = await fake.socketAt(1);
  ws1.accept();
  const sub1 = await ws1.nextSent("sub");
  assert.deepEqual(sub1.since, { offset: 0, epoch: "0" });
  ws1.push({ op: "ok", id: sub1.id, offset: 3, epoch: "E", recovered: false });
  ws1.push({ op: "msg", topic: "room", offset: 4, epoch: "E", data: 4 }); // dropped: replayed below
  const unsub = await ws1.nextSent("unsub");
  ws1.push({ op: "ok", id: unsub.id });
  const sub2 = await ws1.nextSent("sub");
  assert.deepEqual(sub2.since, { offset: 0, epoch: "E" });
  ws1.push({ op: "ok", id: sub2.id, offset: 4, epoch: "E", recovered: true });
  for (const o of [1, 2, 3, 4, 5]) ws1.push({ op: "msg", topic: "room", offset: o, epoch: "E", data: o });
  assert.deepEqual(c.offsets, [1, 2, 3, 4, 5]);
  assert.equal(gaps.length, 0);
  await client.close();
});

test("4003 stops the client with a fatal error and no new ticket", async () => {
  const { fake, client, tickets } = setup();
  const ws = await fake.socketAt(0);
  ws.accept();
  const err = nextEvent(client, "error", (e) => e.fatal);
  const closed = nextEvent(client, "closed");
  ws.serverClose(4003);
  const e = await err;
  assert.equal(e.code, "disconnected");
  assert.equal(e.closeCode, 4003);
  assert.equal((await closed).error, e);
  assert.equal(client.state, "closed");
  assert.equal(tickets.length, 1);
  await assert.rejects(client.publish("news", 1), (x) => x.code === "disconnected");
});

test("1012 reconnects at once to the next url; 4029 waits at least the rate-limit backoff", async () => {
  const fake = fakeWebSocket();
  const client = connect({
    url: ["ws://a/ws", "ws://b/ws"],
    getTicket: async () => "t",
    WebSocket: fake.WebSocket,
    backoff: fast,
  });
  const ws0 = await fake.socketAt(0);
  assert.match(ws0.url, /^ws:\/\/a\/ws/);
  ws0.accept();
  const d1 = nextEvent(client, "disconnected");
  ws0.serverClose(1012);
  assert.equal((await d1).delay, 0);
  const ws1 = await fake.socketAt(1);
  assert.match(ws1.url, /^ws:\/\/b\/ws/);
  ws1.accept();
  const d2 = nextEvent(client, "disconnected");
  ws1.serverClose(4029);
  const d = await d2;
  assert.equal(d.code, 4029);
  assert.ok(d.delay >= fast.rateLimited, `delay ${d.delay}`);
  await client.close();
});

test("a getTicket that throws is retried with backoff and reported", async () => {
  let calls = 0;
  const fake = fakeWebSocket();
  const errors = [];
  const client = connect({
    url: () => "ws://x/ws",
    getTicket: async () => {
      if (++calls <= 3) throw new Error(`no ticket ${calls}`);
      return "good";
    },
    WebSocket: fake.WebSocket,
    backoff: fast,
  });
  client.on("error", (e) => errors.push(e));
  const ws = await fake.socketAt(0);
  assert.equal(ws.url, "ws://x/ws?ticket=good");
  assert.deepEqual(errors.map((e) => e.code), ["ticket_failed", "ticket_failed", "ticket_failed"]);
  await client.close();
});

test("requests: typed server errors, a timeout, local size and count bounds, queued while offline", async () => {
  const { fake, client } = setup({ requestTimeout: 100, maxPending: 3, maxMessageBytes: 200 });
  const queued = client.publish("chat.a", { hi: 1 }); // sent once open
  const ws = await fake.socketAt(0);
  ws.accept();
  const pub = await ws.nextSent("pub");
  ws.push({ op: "ok", id: pub.id, offset: 9, epoch: "e" });
  assert.deepEqual(await queued, { offset: 9, epoch: "e" });

  for (const code of SERVER_ERROR_CODES) {
    const p = client.send("orders", { code });
    const f = await ws.nextSent("send");
    ws.push({ op: "error", id: f.id, code, message: code, ...(code === "upstream_error" ? { status: 502 } : {}) });
    await assert.rejects(p, (e) => e instanceof ServerError && e.code === code && (code !== "upstream_error" || e.status === 502));
  }
  const r = client.send("orders", 1);
  const f = await ws.nextSent("send");
  ws.push({ op: "reply", id: f.id, data: { ok: true } });
  assert.deepEqual(await r, { ok: true });

  await assert.rejects(client.publish("chat.a", "x".repeat(300)), (e) => e instanceof HeraldError && e.code === "too_large");
  await assert.rejects(client.publish("news.*", 1), (e) => e.code === "bad_request");
  const slow = [client.presence("a"), client.presence("b"), client.presence("c")];
  await assert.rejects(client.presence("d"), (e) => e.code === "too_many_requests");
  for (const p of slow) await assert.rejects(p, (e) => e instanceof TimeoutError);

  const lost = client.publish("chat.a", 1);
  await ws.nextSent("pub");
  ws.serverClose(1006);
  await assert.rejects(lost, (e) => e.code === "connection_lost");
  await client.close();
  await assert.rejects(client.publish("chat.a", 1), (e) => e.code === "closed");
});

test("a forbidden subscription is removed and reported; unsubscribe stops delivery", async () => {
  const { fake, client } = setup();
  const a = new Collector();
  const bad = client.subscribe("admin", () => {});
  const good = client.subscribe("news", a.handler);
  const ws = await fake.socketAt(0);
  ws.accept();
  const s1 = await ws.nextSent("sub");
  const s2 = await ws.nextSent("sub");
  const [badF, goodF] = s1.topic === "admin" ? [s1, s2] : [s2, s1];
  ws.push({ op: "error", id: badF.id, code: "forbidden", message: "no" });
  await assert.rejects(bad.ready, (e) => e.code === "forbidden" && e.topic === "admin");
  ws.push({ op: "ok", id: goodF.id, offset: 0, epoch: "e" });
  await good.ready;
  ws.push({ op: "msg", topic: "news", offset: 1, epoch: "e", data: 1 });
  const u = good.unsubscribe();
  const uf = await ws.nextSent("unsub");
  ws.push({ op: "msg", topic: "news", offset: 2, epoch: "e", data: 2 });
  ws.push({ op: "ok", id: uf.id });
  await u;
  assert.deepEqual(a.offsets, [1]);
  // The topic can be subscribed again.
  client.subscribe("news", () => {});
  await client.close();
});
