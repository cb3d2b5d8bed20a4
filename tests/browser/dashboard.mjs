// The dashboard in a real browser: Debian's chromium, driven by playwright-core (which downloads
// no browser), against running Herald nodes under a small load. Started by tests/it/browser.rs,
// which starts the nodes, Redis and the load, and passes:
//   HERALD_URL     a node's base URL (http://127.0.0.1:PORT)
//   HERALD_KEY     its admin key
//   HERALD_NODES   the ids of every node of the cluster, comma-separated
//   CHROMIUM       the browser (default /usr/bin/chromium)
//   SCREENSHOTS    a directory for a screenshot of the page (optional; kept out of the repo)
// Checks: opening /dashboard?key= leaves the key out of the address; every chart draws; the
// numbers move while the load publishes; the cluster view lists every node. Every wait is
// bounded; the last line is "N passed, N failed".
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const url = process.env.HERALD_URL;
const key = process.env.HERALD_KEY;
const nodes = (process.env.HERALD_NODES || "").split(",").filter(Boolean).sort();
const bound = 20000;
if (!url || !key || !nodes.length) {
  console.error("HERALD_URL, HERALD_KEY and HERALD_NODES are required");
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
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const pageErrors = [];
  page.on("pageerror", e => pageErrors.push(String(e)));
  page.on("console", m => { if (m.type() === "error") pageErrors.push(m.text()); });
  const outside = [];
  page.on("request", r => { if (!r.url().startsWith(url)) outside.push(r.url()); });

  await check("the key given once becomes a cookie and leaves the address", async () => {
    const resp = await page.goto(`${url}/dashboard?key=${encodeURIComponent(key)}`);
    if (!resp || resp.status() !== 200) throw new Error(`status ${resp && resp.status()}`);
    if (new URL(page.url()).search !== "") throw new Error(`the address still holds a query: ${page.url()}`);
    const cookies = await page.context().cookies();
    const c = cookies.find(c => c.name === "herald_dashboard");
    if (!c || !c.httpOnly || c.sameSite !== "Strict") throw new Error(JSON.stringify(cookies));
    if (c.value.includes(key)) throw new Error("the cookie holds the key");
  });

  await check("figures arrive", async () => {
    await page.waitForFunction(() => document.getElementById("v-connections").textContent !== "–",
                               null, { timeout: bound });
  });

  await check("every chart draws: axes on every canvas, lines on the ones with data", async () => {
    await page.waitForFunction(() =>
      ["c-connections", "c-deliveries", "c-latency", "c-redis"].every(id =>
        Number(document.getElementById(id).dataset.points || 0) > 1),
      null, { timeout: bound });
    const inked = await page.evaluate(() => [...document.querySelectorAll("canvas")].map(c => {
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 3; i < d.length; i += 4) if (d[i] !== 0) n++;
      return [c.id, n];
    }));
    for (const [id, n] of inked) if (n < 200) throw new Error(`${id} is blank (${n} pixels)`);
  });

  await check("the numbers move while messages are published", async () => {
    const read = () => page.evaluate(() => document.getElementById("v-deliveries-total").textContent);
    const first = await read();
    await page.waitForFunction(before =>
      document.getElementById("v-deliveries-total").textContent !== before, first, { timeout: bound });
    const rate = await page.evaluate(() => document.getElementById("v-deliveries").textContent);
    if (!(Number(rate.replace(/[kM]$/, "")) > 0)) throw new Error(`deliveries/s reads ${rate}`);
  });

  await check(`the cluster view lists every node (${nodes.join(", ")})`, async () => {
    await page.waitForFunction(want => {
      const ids = [...document.querySelectorAll("#nodes tbody tr[data-node]")].map(r => r.dataset.node).sort();
      return JSON.stringify(ids) === JSON.stringify(want);
    }, nodes, { timeout: bound });
    const redis = await page.evaluate(() => document.getElementById("v-redis").textContent);
    if (redis !== "connected") throw new Error(`Redis reads ${redis}`);
  });

  await check("nothing is loaded from elsewhere and the page reports no error", async () => {
    if (outside.length) throw new Error(`requests elsewhere: ${outside.join(", ")}`);
    if (pageErrors.length) throw new Error(pageErrors.join("; "));
  });

  if (process.env.SCREENSHOTS) {
    mkdirSync(process.env.SCREENSHOTS, { recursive: true });
    await page.screenshot({ path: join(process.env.SCREENSHOTS, "dashboard.png"), fullPage: true });
  }
} finally {
  await browser.close();
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
