// The client on the platform's own WebSocket (the browser API), no `ws`: in a child `node` with
// the global WebSocket (Node 20: --experimental-websocket). It subscribes and receives; and an
// upgrade refused with 401, whose status this API does not show (nor does a browser's), is a
// retried `connect_failed` with a fresh ticket, never a silent stop.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { Node, jwt } from "../harness/herald.js";

const child = join(dirname(fileURLToPath(import.meta.url)), "../harness/global-ws-child.js");

// Node 22+ has a global WebSocket; 20.10+ has it behind a flag; older Nodes have none.
const [major, minor] = process.versions.node.split(".").map(Number);
const flags = typeof globalThis.WebSocket === "function" ? [] : major > 20 || (major === 20 && minor >= 10) ? ["--experimental-websocket"] : null;

/** The child's JSON lines, with a bounded wait for one that passes `pred`. */
function runChild(env) {
  const p = spawn(process.execPath, [...flags, "--no-warnings", child], { env: { ...process.env, ...env }, stdio: ["pipe", "pipe", "pipe"] });
  const lines = [];
  const waiters = new Set();
  let stderr = "";
  let buf = "";
  p.stderr.on("data", (c) => (stderr += c));
  p.stdout.setEncoding("utf8");
  p.stdout.on("data", (c) => {
    buf += c;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      lines.push(JSON.parse(buf.slice(0, i)));
      buf = buf.slice(i + 1);
      for (const w of [...waiters]) w();
    }
  });
  const until = (pred, ms, what) =>
    new Promise((res, rej) => {
      const check = () => {
        if (!pred(lines)) return;
        clearTimeout(t);
        waiters.delete(check);
        res();
      };
      const t = setTimeout(() => {
        waiters.delete(check);
        rej(new Error(`${what}: not within ${ms} ms; lines: ${JSON.stringify(lines)}; stderr: ${stderr}`));
      }, ms);
      waiters.add(check);
      check();
    });
  const stop = () =>
    new Promise((res) => {
      p.once("exit", res);
      p.stdin.end();
      setTimeout(() => p.kill("SIGKILL"), 5000).unref();
    });
  return { lines, until, stop };
}

test("the global WebSocket (the browser API): refused upgrades are retried with a new ticket, messages arrive once", { skip: flags === null && `Node ${process.version} has no global WebSocket` }, async (t) => {
  const node = await Node.start({ HERALD_NODE_ID: "global" });
  t.after(() => node.kill());
  const c = runChild({ TEST_URL: node.wsUrl, TEST_JWT: jwt("ivan"), TEST_TOPIC: "feed.global", TEST_BAD_TICKETS: "2" });
  t.after(() => c.stop());
  await c.until((l) => l.some((x) => x.ev === "subscribed"), 15_000, "subscribed");
  for (let i = 1; i <= 5; i++) await node.publish("feed.global", { i });
  await c.until((l) => l.filter((x) => x.ev === "msg").length === 5, 10_000, "5 messages");

  const errors = c.lines.filter((x) => x.ev === "error");
  assert.deepEqual(errors.map((e) => [e.code, e.fatal, e.httpStatus]), [
    ["connect_failed", false, null],
    ["connect_failed", false, null],
  ]);
  assert.equal(c.lines.filter((x) => x.ev === "getTicket").length, 3, "a new ticket after each refused attempt");
  assert.deepEqual(c.lines.filter((x) => x.ev === "msg").map((x) => x.offset), [1, 2, 3, 4, 5]);
});
