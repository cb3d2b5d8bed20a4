// permessage-deflate in a real browser: Debian's chromium, driven by playwright-core, against a
// Herald node. Started by tests/it/browser.rs, which starts the node and passes:
//   HERALD_URL     the node's base URL (http://127.0.0.1:PORT)
//   HERALD_TICKET  a ticket with every grant
//   CHROMIUM       the browser (default /usr/bin/chromium)
// The page opens a WebSocket to /ws (chromium offers permessage-deflate by itself), subscribes to
// a topic, publishes a large message to it and reads it back. Checks: the handshake's answer
// names permessage-deflate (`ws.extensions`), and the message arrives intact. (Whether the bytes
// were compressed both ways is checked by the Rust side, on the node's byte counters.) Every
// wait is bounded; the last line is "N passed, N failed".
import { chromium } from "playwright-core";

const url = process.env.HERALD_URL;
const ticket = process.env.HERALD_TICKET;
const bound = 20000;
if (!url || !ticket) {
  console.error("HERALD_URL and HERALD_TICKET are required");
  process.exit(2);
}

let passed = 0, failed = 0;
async function check(name, f) {
  try {
    await f();
    passed++;
    console.log(`ok - ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAILED - ${name}: ${e && e.message ? e.message.split("\n")[0] : e}`);
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // Root in a container has no user namespaces for chromium's sandbox.
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage();
  const pageErrors = [];
  page.on("pageerror", e => pageErrors.push(String(e)));
  // A page of the node's own origin (allowed by the test node), to open the WebSocket from.
  await page.goto(`${url}/healthz`);

  // Everything happens in the page; the result is what the checks below look at.
  const run = page.evaluate(async ({ url, ticket, bound }) => {
    const ws = new WebSocket(`${url.replace(/^http/, "ws")}/ws?ticket=${encodeURIComponent(ticket)}`);
    const frames = [];
    let wake = null;
    ws.onmessage = e => { frames.push(JSON.parse(e.data)); if (wake) wake(); };
    const next = pred => new Promise((ok, fail) => {
      const timer = setTimeout(() => fail(new Error("timed out")), bound);
      const look = () => {
        const i = frames.findIndex(pred);
        if (i >= 0) { clearTimeout(timer); wake = null; ok(frames.splice(i, 1)[0]); }
        else wake = look;
      };
      look();
    });
    await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = () => fail(new Error("no connection")); });
    const welcome = await next(f => f.op === "welcome");
    ws.send(JSON.stringify({ op: "sub", id: 1, topic: "browser.deflate" }));
    const subbed = await next(f => f.id === 1);
    // About 40 KB of JSON, as a market feed would send (compressible).
    const ticks = [];
    for (let i = 0; i < 800; i++) ticks.push({ sym: `ABC${i % 9}`, px: 100.25 + i, side: i % 2 ? "buy" : "sell", n: i });
    const data = { ticks };
    ws.send(JSON.stringify({ op: "pub", id: 2, topic: "browser.deflate", data }));
    const published = await next(f => f.id === 2);
    const msg = await next(f => f.op === "msg" && f.topic === "browser.deflate");
    ws.close(1000);
    // The same value, whatever the order of the keys (the node writes them sorted).
    const canon = v => Array.isArray(v) ? v.map(canon)
      : v && typeof v === "object" ? Object.fromEntries(Object.keys(v).sort().map(k => [k, canon(v[k])]))
      : v;
    return {
      extensions: ws.extensions,
      welcome: welcome.op,
      subbed: subbed.op,
      published: published.op,
      intact: JSON.stringify(canon(msg.data)) === JSON.stringify(canon(data)),
      size: JSON.stringify(data).length,
    };
  }, { url, ticket, bound });
  let result = null;
  await check("the page connects, subscribes, publishes and reads its message back", async () => {
    result = await run;
    if (result.welcome !== "welcome" || result.subbed !== "ok" || result.published !== "ok")
      throw new Error(JSON.stringify(result));
  });
  await check("the handshake's answer names permessage-deflate (ws.extensions)", async () => {
    if (!result || !/^permessage-deflate\b/.test(result.extensions))
      throw new Error(`ws.extensions is ${JSON.stringify(result && result.extensions)}`);
  });
  await check("the large message arrives intact", async () => {
    if (!result || !result.intact || result.size < 30000) throw new Error(JSON.stringify(result));
    console.log(`# message of ${result.size} bytes`);
  });
  await check("the page reports no error", async () => {
    if (pageErrors.length) throw new Error(pageErrors.join("; "));
  });
} finally {
  await browser.close();
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
