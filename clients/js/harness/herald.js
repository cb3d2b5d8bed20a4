// Real processes for the tests: `herald serve` nodes (production mode: an API key and a JWT
// secret) and `redis-server`, each on a free 127.0.0.1 port, started and stopped by the test,
// waited for through their own log lines (never by sleeping). JWTs are signed here (HS256, Node's
// crypto), tickets come from POST /v1/tickets, publishes go through POST /v1/publish.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));

/** The herald binary: $HERALD_BIN, else target/debug/herald of the repository. */
export const HERALD_BIN = process.env.HERALD_BIN ? resolve(process.env.HERALD_BIN) : resolve(here, "../../../target/debug/herald");

export const API_KEY = "test-api-key-0123456789abcdef0123456789abcdef";
export const JWT_SECRET = "test-jwt-secret-0123456789abcdef0123456789abcdef";

/** A port on 127.0.0.1 that was free a moment ago. */
export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/**
 * A child process whose output is read line by line; `waitLine(re, ms)` resolves with the first
 * line (already seen or still to come) that matches, and fails at the deadline or at its exit.
 */
class Proc {
  constructor(cmd, args, env, name) {
    this.name = name;
    this.lines = [];
    this._waiters = new Set();
    this.exited = false;
    this.child = spawn(cmd, args, { env, stdio: ["ignore", "pipe", "pipe"] });
    this.exit = new Promise((res) => {
      this.child.once("exit", (code, signal) => {
        this.exited = true;
        for (const w of [...this._waiters]) w();
        res({ code, signal });
      });
    });
    this.child.once("error", (e) => {
      this.lines.push(`spawn error: ${e.message}`);
      this.exited = true;
      for (const w of [...this._waiters]) w();
    });
    for (const stream of [this.child.stdout, this.child.stderr]) {
      let buf = "";
      stream.setEncoding("utf8");
      stream.on("data", (chunk) => {
        buf += chunk;
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          if (this.lines.length < 5000) this.lines.push(line);
          for (const w of [...this._waiters]) w();
        }
      });
    }
  }

  waitLine(re, ms = 15_000) {
    return new Promise((res, rej) => {
      const check = () => {
        const line = this.lines.find((l) => re.test(l));
        if (line !== undefined) return done(() => res(line));
        if (this.exited) return done(() => rej(new Error(`${this.name} exited before printing ${re}:\n${this.lines.join("\n")}`)));
      };
      const done = (f) => {
        clearTimeout(t);
        this._waiters.delete(check);
        f();
      };
      const t = setTimeout(() => done(() => rej(new Error(`${this.name}: no line ${re} within ${ms} ms:\n${this.lines.join("\n")}`))), ms);
      this._waiters.add(check);
      check();
    });
  }

  /** Sends `signal` and waits (bounded) for the exit; SIGKILL when it does not come. */
  async stop(signal = "SIGTERM", ms = 15_000) {
    if (this.exited) return this.exit;
    this.child.kill(signal);
    let t;
    const timeout = new Promise((res) => (t = setTimeout(() => res("timeout"), ms)));
    const r = await Promise.race([this.exit, timeout]);
    clearTimeout(t);
    if (r === "timeout") {
      this.child.kill("SIGKILL");
      await this.exit;
      throw new Error(`${this.name} did not exit within ${ms} ms of ${signal}`);
    }
    return r;
  }
}

/** A redis-server without persistence on a free port, in its own directory. */
export async function startRedis() {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "herald-js-redis-"));
  const p = new Proc(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir],
    { PATH: process.env.PATH },
    `redis-server :${port}`,
  );
  await p.waitLine(/Ready to accept connections/);
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      await p.stop("SIGKILL").catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A `herald serve` node on `port` (a free one if not given) with the test secrets, generous
 * connection and ticket rates (the tests reconnect often from one address) and `env`.
 */
export class Node {
  constructor(env = {}, port = 0, args = []) {
    this.env = env;
    this.port = port;
    this.args = args;
    this.proc = null;
  }

  /** `args` go after `serve` (e.g. `--config FILE`). */
  static async start(env = {}, port = 0, args = []) {
    const n = new Node(env, port, args);
    await n.start();
    return n;
  }

  get base() {
    return `http://127.0.0.1:${this.port}`;
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  /** Starts (or starts again, on the same port) and resolves once it listens. */
  async start() {
    if (!this.port) this.port = await freePort();
    const env = {
      HERALD_LISTEN: `127.0.0.1:${this.port}`,
      HERALD_API_KEY: API_KEY,
      HERALD_JWT_SECRET: JWT_SECRET,
      HERALD_TICKET_RATE_PER_IP: "10000",
      HERALD_TICKET_RATE_PER_USER: "10000",
      HERALD_CONNECTION_RATE_PER_IP: "10000",
      HERALD_SHUTDOWN_TIMEOUT_SECS: "3",
      // SIGTERM closes every client with 1012 at once: what these tests restart nodes for.
      HERALD_DRAIN_DELAY_SECS: "0",
      HERALD_DRAIN_WINDOW_SECS: "0",
      RUST_LOG: "herald=info",
      ...this.env,
    };
    this.proc = new Proc(HERALD_BIN, ["serve", ...this.args], env, `herald :${this.port}`);
    await this.proc.waitLine(/listening on/);
  }

  /** SIGTERM (drain: open connections are closed with 1012) and wait for the exit. */
  async stop() {
    if (this.proc) await this.proc.stop("SIGTERM");
  }

  /** SIGKILL: a crash; connections drop without a close frame. */
  async kill() {
    if (this.proc) await this.proc.stop("SIGKILL");
  }

  async restart() {
    await this.stop();
    await this.start();
  }

  /** POST /v1/publish with the API key; returns {offset, epoch}. */
  async publish(topic, data) {
    const r = await fetch(`${this.base}/v1/publish`, {
      method: "POST",
      headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ topic, data }),
    });
    const body = await r.json().catch(() => ({}));
    if (r.status !== 200) throw new Error(`publish: ${r.status} ${JSON.stringify(body)}`);
    return body;
  }

  /** POST /v1/publish of a directed message to `user`. */
  async direct(user, data, from) {
    const r = await fetch(`${this.base}/v1/publish`, {
      method: "POST",
      headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
      body: JSON.stringify(from ? { user, from, data } : { user, data }),
    });
    if (r.status !== 200) throw new Error(`direct: ${r.status} ${await r.text()}`);
  }

  /** POST /v1/disconnect: closes the user's connections with 4003. */
  async disconnect(user) {
    const r = await fetch(`${this.base}/v1/disconnect`, {
      method: "POST",
      headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ user }),
    });
    if (r.status !== 200) throw new Error(`disconnect: ${r.status} ${await r.text()}`);
    return r.json();
  }

  /** A Prometheus sample's value (summed over its label sets), 0 when absent. */
  async metric(name) {
    const r = await fetch(`${this.base}/metrics`, { headers: { authorization: `Bearer ${API_KEY}` } });
    const text = await r.text();
    let sum = 0;
    for (const line of text.split("\n")) {
      if (line.startsWith(name + " ") || line.startsWith(name + "{")) sum += Number(line.slice(line.lastIndexOf(" ") + 1));
    }
    return sum;
  }
}

const b64url = (b) => Buffer.from(b).toString("base64url");

/** An HS256 JWT for `sub` with `grants` (default: every topic, every service), valid 1 hour. */
export function jwt(sub, grants = { subscribe: [">"], publish: [">"], send: [">"] }) {
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const payload = b64url(JSON.stringify({ sub, exp: Math.floor(Date.now() / 1000) + 3600, grants }));
  const sig = createHmac("sha256", JWT_SECRET).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${sig}`;
}

/** The HTTP base of a WebSocket URL: ws://h:p/ws -> http://h:p. */
export function httpBase(wsUrl) {
  const u = new URL(wsUrl);
  return `${u.protocol === "wss:" ? "https:" : "http:"}//${u.host}`;
}

/** A `getTicket` for the client: POST /v1/tickets on the node the client is about to connect to. */
export function ticketsFor(token) {
  const calls = [];
  const getTicket = async ({ url }) => {
    calls.push(url);
    const r = await fetch(`${httpBase(url)}/v1/tickets`, { method: "POST", headers: { authorization: `Bearer ${token}` } });
    const body = await r.json().catch(() => ({}));
    if (r.status !== 200) throw new Error(`tickets: ${r.status} ${JSON.stringify(body)}`);
    return body.ticket;
  };
  getTicket.calls = calls;
  return getTicket;
}

/**
 * Publishes `n` messages `{seq}` to `topic`, one after another, through `nodeOf()` (asked again
 * for every attempt, so a test can point it elsewhere). A publish that fails (the node drains,
 * restarts, or is gone) is tried again, at most `tries` times with a short pause: the pause
 * paces retries, nothing waits on it. Returns the offsets the server assigned, in order.
 */
export async function publishMany(nodeOf, topic, n, { tries = 400, pad = "", onPublished } = {}) {
  const offsets = [];
  for (let seq = 0; seq < n; seq++) {
    let lastErr;
    let done = false;
    for (let attempt = 0; attempt < tries && !done; attempt++) {
      try {
        const r = await nodeOf().publish(topic, pad ? { seq, pad } : { seq });
        offsets.push(r.offset);
        done = true;
        await onPublished?.(seq, r);
      } catch (e) {
        lastErr = e;
        await new Promise((res) => setTimeout(res, 25));
      }
    }
    if (!done) throw new Error(`publish #${seq} failed ${tries} times: ${lastErr?.message}`);
  }
  return offsets;
}
