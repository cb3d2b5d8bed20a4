// publish, send, presence and direct messages against a real node, with backend services played
// by small HTTP servers of the test: replies, typed errors (forbidden, unknown_service,
// upstream_error with its status, bad_request), and the client's own timeout.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { Node, jwt, ticketsFor } from "../harness/herald.js";
import { testClient } from "../harness/client.js";
import { Collector, nextEvent } from "../harness/wait.js";
import { ServerError, TimeoutError } from "../src/herald.js";

/** An HTTP server on a free loopback port answering with `handler`. */
async function backend(handler) {
  const server = createServer(handler);
  await new Promise((res) => server.listen(0, "127.0.0.1", res));
  return { url: `http://127.0.0.1:${server.address().port}`, server };
}

test("publish, send, presence and direct against a real node, with typed errors", async (t) => {
  const echo = await backend((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      const { user, data } = JSON.parse(body);
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ echoed: data, user }));
    });
  });
  t.after(() => echo.server.close());
  const broken = await backend((req, res) => {
    req.resume();
    res.statusCode = 502;
    res.end("{}");
  });
  t.after(() => broken.server.close());
  const held = []; // requests the silent service never answers (until the end of the test)
  const silent = await backend((req, res) => held.push(res));
  t.after(() => {
    for (const r of held) r.destroy();
    silent.server.close();
  });

  const dir = mkdtempSync(join(tmpdir(), "herald-js-conf-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const conf = join(dir, "herald.toml");
  writeFileSync(
    conf,
    [
      `[services.echo]`,
      `endpoints = ["${echo.url}"]`,
      `[services.broken]`,
      `endpoints = ["${broken.url}"]`,
      `[services.silent]`,
      `endpoints = ["${silent.url}"]`,
      `timeout_ms = 10000`,
      "",
    ].join("\n"),
  );
  const node = await Node.start({ HERALD_NODE_ID: "requests", HERALD_PRESENCE_TOPICS: "room.*" }, 0, ["--config", conf]);
  t.after(() => node.kill());

  const grants = { subscribe: ["room.*", "news"], publish: ["room.*"], send: ["echo", "broken", "silent", "nowhere"] };
  const { client } = testClient({ url: node.wsUrl, getTicket: ticketsFor(jwt("heidi", grants)) });
  t.after(() => client.close());

  // publish: its own message comes back on its subscription.
  const got = new Collector();
  await client.subscribe("room.1", got.handler).ready;
  const pub = await client.publish("room.1", { text: "hi" });
  assert.equal(pub.offset, 1);
  assert.equal(typeof pub.epoch, "string");
  await got.until((x) => x.messages.length === 1, 5000, "its own message");
  assert.deepEqual(got.messages[0], { topic: "room.1", offset: 1, epoch: pub.epoch, data: { text: "hi" } });
  await assert.rejects(client.publish("news", 1), (e) => e instanceof ServerError && e.code === "forbidden");

  // presence: this connection.
  const me = client.welcome.conn;
  assert.deepEqual(await client.presence("room.1"), [{ user: "heidi", conn: me }]);
  await assert.rejects(client.presence("news"), (e) => e instanceof ServerError && e.code === "bad_request");

  // send: a reply, and each failure typed.
  assert.deepEqual(await client.send("echo", { n: 1 }), { echoed: { n: 1 }, user: "heidi" });
  await assert.rejects(client.send("broken", 1), (e) => e instanceof ServerError && e.code === "upstream_error" && e.status === 502);
  await assert.rejects(client.send("nowhere", 1), (e) => e instanceof ServerError && e.code === "unknown_service");
  await assert.rejects(client.send("orders", 1), (e) => e instanceof ServerError && e.code === "forbidden");
  await assert.rejects(client.send("silent", 1, { timeout: 300 }), (e) => e instanceof TimeoutError && e.code === "timeout");

  // A directed message from a backend.
  const direct = nextEvent(client, "direct");
  await node.direct("heidi", { notice: 1 }, "billing");
  assert.deepEqual(await direct, { from: "billing", data: { notice: 1 } });
});
