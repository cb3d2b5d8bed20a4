// The demo page in a real browser (Debian's chromium, headless, driven by playwright-core) against a
// real local cluster: deploy/local-cluster.sh up starts Redis, three Herald nodes, HAProxy and the
// example backend on free loopback ports. The page signs a user in with a session cookie, connects
// through HAProxy with that cookie alone (the nodes ask the backend: the auth hook), subscribes to
// two topics, shows live messages and presence, and sends a message to the backend and shows the
// reply (and the direct message the backend sends back through Redis).
//
// Environment: HERALD_BIN and BACKEND_BIN (the binaries; default: ../../../target/debug/...),
// CHROMIUM (default /usr/bin/chromium).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createServer } from "node:net";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../../..");
const target = process.env.CARGO_TARGET_DIR ? resolve(root, process.env.CARGO_TARGET_DIR) : join(root, "target");
const HERALD_BIN = process.env.HERALD_BIN ?? join(target, "debug/herald");
const BACKEND_BIN = process.env.BACKEND_BIN ?? join(target, "debug/herald-example-backend");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const WAIT = 15_000;

/** A port nobody listens on right now. */
function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

let env;
let out = {};
let browser;

function script(...args) {
  return execFileSync(join(root, "deploy/local-cluster.sh"), args, { env, encoding: "utf8" });
}

before(async () => {
  const ports = [];
  for (let i = 0; i < 6; i++) ports.push(await freePort());
  env = {
    ...process.env,
    HERALD_BIN,
    BACKEND_BIN,
    LB_PORT: String(ports[0]),
    NODE_PORTS: ports.slice(1, 4).join(" "),
    REDIS_PORT: String(ports[4]),
    BACKEND_PORT: String(ports[5]),
    CLUSTER_DIR: mkdtempSync(join(tmpdir(), "herald-demo-")),
  };
  for (const line of script("up").split("\n")) {
    const i = line.indexOf("=");
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1);
  }
  assert.ok(out.BACKEND_URL, "local-cluster.sh up prints BACKEND_URL");
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  if (env) script("down");
});

/** Waits until the list `#id` holds at least `n` items; returns their texts. */
async function items(page, id, n) {
  await page.waitForFunction(
    ([id, n]) => document.querySelectorAll(`#${id} li`).length >= n,
    [id, n],
    { timeout: WAIT },
  );
  return page.$$eval(`#${id} li`, (lis) => lis.map((li) => li.textContent));
}

test("the demo signs in with a cookie, streams two topics, shows presence and the backend's reply", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(out.BACKEND_URL, { timeout: WAIT });

  await page.fill("#user", "ann");
  await page.click("#login");
  await page.waitForFunction(() => document.getElementById("state").textContent === "open", null, { timeout: WAIT });
  // The session cookie is HttpOnly: the page cannot read it, the browser sends it.
  assert.equal(await page.evaluate(() => document.cookie), "");

  // demo.ticker: the backend publishes through Redis every second; the page shows them live.
  const ticks = await items(page, "ticker", 2);
  assert.match(ticks[0], /^#\d+ \{.*"n":\d+.*\}$/);

  // demo.chat: a message published by the page comes back to it (and to everyone).
  await page.fill("#chat-text", "hello from chromium");
  await page.click("#chat-send");
  const chat = await items(page, "chat", 1);
  assert.match(chat[0], /^#\d+ ann: hello from chromium$/);

  // Presence: a second browser (another user) joins demo.chat; the first sees both.
  const other = await (await browser.newContext()).newPage();
  await other.goto(out.BACKEND_URL, { timeout: WAIT });
  await other.fill("#user", "bob");
  await other.click("#login");
  await other.waitForFunction(() => document.getElementById("state").textContent === "open", null, { timeout: WAIT });
  await page.waitForFunction(
    () => [...document.querySelectorAll("#presence li")].some((li) => li.textContent.startsWith("bob ")),
    null,
    { timeout: WAIT },
  );
  const present = await items(page, "presence", 2);
  assert.ok(present.some((t) => t.startsWith("ann ")), present.join(", "));

  // send to the backend: its reply, and the direct message it sends back through Redis.
  await page.fill("#send-text", "what time is it?");
  await page.click("#send");
  await page.waitForFunction(() => document.getElementById("reply").className === "", null, { timeout: WAIT });
  const reply = JSON.parse(await page.textContent("#reply"));
  assert.deepEqual(reply.echo, { text: "what time is it?" });
  assert.equal(reply.user, "ann");
  await page.waitForFunction(() => document.getElementById("direct").className === "", null, { timeout: WAIT });
  assert.match(await page.textContent("#direct"), /your message reached the backend/);

  // A page without a session cannot connect: the node asks the backend, which says 401.
  const stranger = await (await browser.newContext()).newPage();
  await stranger.goto(out.BACKEND_URL, { timeout: WAIT });
  const refused = await stranger.evaluate(async (ws) => {
    return await new Promise((done) => {
      const s = new WebSocket(ws);
      s.onopen = () => done("opened");
      s.onerror = () => done("refused");
    });
  }, out.WS_URL + "/ws");
  assert.equal(refused, "refused");
  assert.deepEqual(errors, [], "no error in the page");
});
