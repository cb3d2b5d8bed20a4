// Herald JavaScript client: one multiplexed WebSocket (`/ws`), one-time tickets fetched again for
// every connection attempt, reconnects with exponential backoff and full jitter, close codes
// honoured (proto/README.md section 8), every topic resubscribed with `since` after a reconnect,
// messages delivered in offset order and never twice, and every loss surfaced as a `gap` event.
// No runtime dependencies; runs in browsers and in Node 20+ (pass `WebSocket` where there is no
// global one, e.g. the `ws` package).

/** The subprotocol spoken by default: JSON text frames. */
export const JSON_PROTOCOL = "herald.v1.json";

/** The `code` of every `error` frame a v1 server sends (proto/README.md section 6.4). */
export const SERVER_ERROR_CODES = Object.freeze([
  "bad_frame",
  "bad_request",
  "forbidden",
  "already_subscribed",
  "not_subscribed",
  "rate_limited",
  "unknown_service",
  "upstream_timeout",
  "upstream_error",
  "upstream_unavailable",
  "overloaded",
  "unavailable",
  "internal",
]);

/** Server codes after which the same request may succeed later (proto section 6.4). */
const RETRYABLE = new Set(["rate_limited", "upstream_unavailable", "overloaded", "unavailable", "internal"]);

/**
 * Every failure the client reports. `code` is a server code of section 6.4 (a `ServerError`) or
 * one of the client's own: `timeout`, `connection_lost`, `closed`, `too_large`,
 * `too_many_requests`, `ticket_failed`, `upgrade_refused`, `connect_failed`, `disconnected`,
 * `protocol`, `handler`.
 */
export class HeraldError extends Error {
  constructor(code, message, extra) {
    super(message);
    this.name = "HeraldError";
    this.code = code;
    this.retryable = false;
    this.fatal = false;
    if (extra) Object.assign(this, extra);
  }
}

/** An `error` frame that answered a request (or a connection-level one, without `id`). */
export class ServerError extends HeraldError {
  constructor(frame, extra) {
    super(String(frame.code), String(frame.message ?? frame.code), extra);
    this.name = "ServerError";
    this.retryable = RETRYABLE.has(this.code);
    if (typeof frame.status === "number") this.status = frame.status; // upstream_error only
  }
}

/** A request that got no reply within its timeout. It may or may not have been carried out. */
export class TimeoutError extends HeraldError {
  constructor(op, ms) {
    super("timeout", `${op}: no reply within ${ms} ms`, { retryable: true });
    this.name = "TimeoutError";
  }
}

/**
 * The connection ended, or could not be made or kept: `connection_lost` (a request was sent and
 * the socket closed before its reply: it may or may not have been carried out), `closed`
 * (`close()` was called), `disconnected` (4003), `upgrade_refused` (an HTTP status before the
 * upgrade, where the platform shows it), `connect_failed`, `ticket_failed`.
 */
export class ConnectionError extends HeraldError {
  constructor(code, message, extra) {
    super(code, message, extra);
    this.name = "ConnectionError";
  }
}

const MAX_ID = 2 ** 53 - 1;
const TOPIC_RE = /^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*$/;
const utf8 = new TextEncoder();

const DEFAULTS = {
  protocol: JSON_PROTOCOL,
  requestTimeout: 10_000,
  connectTimeout: 10_000,
  maxPending: 1000,
  maxBuffered: 10_000,
  maxMessageBytes: 65_536,
  stableAfter: 5_000,
};
const BACKOFF = { initial: 500, max: 30_000, rateLimited: 10_000 };

/** The JSON codec (`herald.v1.json`). A MessagePack codec has the same shape (see the README). */
export const jsonCodec = Object.freeze({
  protocol: JSON_PROTOCOL,
  binaryType: undefined,
  encode: (frame) => JSON.stringify(frame),
  decode: (data) => JSON.parse(typeof data === "string" ? data : new TextDecoder().decode(data)),
});

/** Opens a client and starts connecting at once. See `Client`. */
export function connect(options) {
  return new Client(options);
}

const noop = () => {};

export class Client {
  constructor(options) {
    if (!options || (typeof options.url !== "string" && !Array.isArray(options.url) && typeof options.url !== "function")) {
      throw new TypeError("connect: `url` must be a string, an array of strings, or a function");
    }
    if (Array.isArray(options.url) && options.url.length === 0) throw new TypeError("connect: `url` is an empty array");
    if (options.getTicket !== undefined && typeof options.getTicket !== "function") {
      throw new TypeError("connect: `getTicket` must be an async function");
    }
    this._opts = { ...DEFAULTS, ...options };
    this._backoff = { ...BACKOFF, ...(options.backoff || {}) };
    this._codec = options.codec || jsonCodec;
    this._WS = options.WebSocket || globalThis.WebSocket;
    if (typeof this._WS !== "function") {
      throw new TypeError("connect: no global WebSocket here: pass `WebSocket` (e.g. the `ws` package in Node 20)");
    }
    this._listeners = new Map();
    this._subs = new Map(); // topic -> subscription state
    this._pending = new Map(); // id -> request in flight
    this._queue = []; // requests waiting for a connection
    this._nextId = 1;
    this._ws = null;
    this._gen = 0; // bumped for every socket, so that a stale one's events are ignored
    this._state = "connecting";
    this._welcome = null;
    this._failures = 0; // consecutive attempts that ended without a stable connection
    this._urlIndex = 0;
    this._attempt = 0;
    this._timer = null;
    this._immediateUsed = false;
    this._closedPromise = null;
    this._lastClose = null;
    this._start("initial");
  }

  /** `connecting`, `open`, `waiting` (between attempts) or `closed`. */
  get state() {
    return this._state;
  }

  /** The last `welcome` (conn, node, user, ping) while open, else null. */
  get welcome() {
    return this._state === "open" ? this._welcome : null;
  }

  /** Adds a listener; returns a function that removes it. */
  on(event, fn) {
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  _emit(event, payload) {
    const set = this._listeners.get(event);
    if (!set || set.size === 0) {
      if (event === "error" && payload?.fatal && typeof console !== "undefined") console.error("herald:", payload);
      return;
    }
    for (const fn of [...set]) {
      try {
        fn(payload);
      } catch (e) {
        if (event !== "error") this._emit("error", new HeraldError("handler", `a "${event}" listener threw: ${e?.message ?? e}`, { cause: e }));
      }
    }
  }

  // ---------------------------------------------------------------- subscriptions

  /**
   * Subscribes to `topic`; `handler({topic, offset, epoch, data})` is called for every message,
   * in offset order, once. Options: `since: {offset, epoch}` (resume from a position the app
   * kept), `onGap(gap)`, `onError(err)`. Returns a `Subscription`.
   */
  subscribe(topic, handler, options = {}) {
    checkTopic(topic);
    if (typeof handler !== "function") throw new TypeError("subscribe: handler must be a function");
    if (this._state === "closed" && this._fatal === undefined) throw new ConnectionError("closed", "the client is closed");
    if (this._subs.has(topic)) {
      throw new HeraldError("already_subscribed", `already subscribed to ${topic}: unsubscribe first`);
    }
    const since = options.since;
    if (since !== undefined && !(isOffset(since.offset) && typeof since.epoch === "string")) {
      throw new TypeError("subscribe: since must be {offset: integer >= 0, epoch: string}");
    }
    let readyResolve, readyReject;
    const ready = new Promise((res, rej) => ((readyResolve = res), (readyReject = rej)));
    ready.catch(noop); // an unobserved failure is also reported through onError / "error"
    const s = {
      topic,
      handler,
      onGap: options.onGap,
      onError: options.onError,
      pos: since ? { offset: since.offset, epoch: since.epoch } : null,
      state: "idle", // idle | pending | live | refetch | removed
      sentSince: null,
      buffer: [],
      refetched: false,
      retries: 0,
      retryTimer: null,
      readyResolve,
      readyReject,
      ready,
    };
    const sub = new Subscription(this, s);
    s.sub = sub;
    this._subs.set(topic, s);
    if (this._state === "open") this._sendSub(s);
    return sub;
  }

  /** Unsubscribes from `topic`. Resolves when the server confirmed (or at once when offline). */
  unsubscribe(topic) {
    const s = this._subs.get(topic);
    if (!s) return Promise.resolve();
    this._subs.delete(topic);
    const wasSent = s.state === "pending" || s.state === "live" || s.state === "refetch";
    s.state = "removed";
    clearTimeout(s.retryTimer);
    s.buffer = [];
    s.readyReject(new ConnectionError("closed", `unsubscribed from ${topic}`));
    if (!wasSent || this._state !== "open") return Promise.resolve();
    // The server handles frames in order, so an `unsub` after a `sub` still in flight is right.
    return new Promise((resolve, reject) =>
      this._call({ op: "unsub", topic }, undefined, true, () => resolve(), (e) => {
        if (e.code === "not_subscribed" || e.code === "connection_lost") resolve();
        else reject(e);
      }),
    );
  }

  _sendSub(s) {
    const frame = { op: "sub", topic: s.topic };
    if (s.pos) frame.since = { offset: s.pos.offset, epoch: s.pos.epoch };
    s.sentSince = frame.since || null;
    s.state = "pending";
    s.buffer = [];
    const gen = this._gen;
    this._call(
      frame,
      undefined,
      true,
      (ok) => this._onSubOk(s, ok, gen),
      (err) => this._onSubError(s, err, gen),
    );
  }

  _onSubOk(s, ok, gen) {
    if (gen !== this._gen || s.state !== "pending") return;
    if (typeof ok.epoch !== "string" || !isOffset(ok.offset)) {
      this._protocolError(`sub ${s.topic}: an ok without offset and epoch`);
      return;
    }
    s.retries = 0;
    const since = s.sentSince;
    if (!since) {
      s.pos = { offset: ok.offset, epoch: ok.epoch };
    } else if (ok.recovered !== true) {
      // `since` could not be replayed exactly. One case can still be made whole: the client had
      // seen nothing of a topic that had no epoch yet (Redis answers epoch "0", offset 0 for a
      // topic never published to); the topic now has a real epoch, so ask again from offset 0 of
      // that epoch, which replays the whole history when it still reaches back to offset 1.
      if (since.offset === 0 && since.epoch === "0" && ok.epoch !== "0" && !s.refetched) {
        s.refetched = true;
        s.state = "refetch";
        s.buffer = [];
        this._call(
          { op: "unsub", topic: s.topic },
          undefined,
          true,
          () => {
            if (gen !== this._gen || s.state !== "refetch") return;
            s.pos = { offset: 0, epoch: ok.epoch };
            this._sendSub(s);
          },
          (err) => {
            if (gen !== this._gen || s.state !== "refetch") return;
            this._forceReconnect(`unsub for refetch of ${s.topic} failed: ${err.message}`);
          },
        );
        return;
      }
      s.pos = { offset: ok.offset, epoch: ok.epoch };
      // Still no epoch and nothing published: nothing can have been missed.
      const nothing = since.offset === 0 && since.epoch === "0" && ok.epoch === "0" && ok.offset === 0;
      if (!nothing) this._gap(s, {
        topic: s.topic,
        reason: "not_recovered",
        recovered: false,
        since: { ...since },
        offset: ok.offset,
        epoch: ok.epoch,
      });
      if (s.state !== "pending") return; // the gap listener unsubscribed
    }
    // recovered: true keeps the position: the replay starts right after it.
    s.refetched = false;
    s.state = "live";
    const buffered = s.buffer;
    s.buffer = [];
    s.readyResolve();
    const info = { topic: s.topic, offset: ok.offset, epoch: ok.epoch };
    if (since) Object.assign(info, { recovered: ok.recovered === true, since: { ...since } });
    this._emit("subscribed", info);
    if (s.state !== "live") return; // a listener unsubscribed
    for (const m of buffered) {
      if (s.state !== "live") break;
      this._deliver(s, m);
    }
  }

  _onSubError(s, err, gen) {
    if (gen !== this._gen || s.state !== "pending") return;
    if (err.code === "connection_lost" || err.code === "closed") return; // resubscribed on reconnect
    if (err.code === "timeout" || err.code === "already_subscribed") {
      // The sub may have been dropped (rate limit) or answered late: the subscription's state on
      // the server is unknown. A new connection resubscribes everything with `since`.
      this._forceReconnect(`sub ${s.topic}: ${err.message}`);
      return;
    }
    err.topic = s.topic;
    if (err.retryable) {
      s.state = "idle";
      const delay = this._delay(s.retries++, false);
      this._emit("error", err);
      s.onError?.(err);
      s.retryTimer = setTimeout(() => {
        if (gen === this._gen && s.state === "idle" && this._state === "open") this._sendSub(s);
      }, delay);
      return;
    }
    // forbidden, bad_request and unknown codes: the subscription cannot succeed as it is.
    this._subs.delete(s.topic);
    s.state = "removed";
    s.readyReject(err);
    this._emit("error", err);
    s.onError?.(err);
  }

  _gap(s, gap) {
    try {
      s.onGap?.(gap);
    } catch (e) {
      this._emit("error", new HeraldError("handler", `onGap threw: ${e?.message ?? e}`, { cause: e }));
    }
    this._emit("gap", gap);
  }

  _onMsg(f) {
    const s = this._subs.get(f.topic);
    if (!s) return; // not subscribed (any more): ignore (proto section 6.2, unsub)
    if (!isOffset(f.offset) || f.offset < 1 || typeof f.epoch !== "string") {
      this._protocolError(`msg on ${f.topic} without a valid offset and epoch`);
      return;
    }
    const m = { topic: f.topic, offset: f.offset, epoch: f.epoch, data: f.data };
    if (s.state === "live") this._deliver(s, m);
    else if (s.state === "pending") {
      if (s.buffer.length >= this._opts.maxBuffered) {
        this._forceReconnect(`more than ${this._opts.maxBuffered} messages of ${s.topic} before its ok`);
        return;
      }
      s.buffer.push(m);
    }
    // refetch: dropped; the new subscription replays them.
  }

  _deliver(s, m) {
    const pos = s.pos;
    if (m.epoch !== pos.epoch) {
      // The topic's history was reset: messages around the reset may be lost (section 7.3),
      // except when nothing was seen yet and this is the first message of the new epoch.
      if (!(pos.offset === 0 && m.offset === 1)) {
        this._gap(s, {
          topic: s.topic,
          reason: "epoch_changed",
          recovered: false,
          since: { ...pos },
          offset: m.offset,
          epoch: m.epoch,
        });
        if (s.state !== "live") return;
      }
    } else if (m.offset <= pos.offset) {
      return; // a duplicate: never delivered twice
    } else if (m.offset !== pos.offset + 1) {
      // v1 never skips within a subscription; if a server ever did, say so rather than hide it.
      this._gap(s, {
        topic: s.topic,
        reason: "skipped",
        recovered: false,
        since: { ...pos },
        offset: m.offset,
        epoch: m.epoch,
      });
      if (s.state !== "live") return;
    }
    s.pos = { offset: m.offset, epoch: m.epoch };
    try {
      s.handler(m);
    } catch (e) {
      const err = new HeraldError("handler", `the handler of ${s.topic} threw: ${e?.message ?? e}`, { cause: e, topic: s.topic });
      this._emit("error", err);
    }
  }

  // ---------------------------------------------------------------- requests

  /** Publishes `data` to `topic` (needs a `publish` grant). Resolves to `{offset, epoch}`. */
  publish(topic, data, options = {}) {
    try {
      checkTopic(topic);
    } catch (e) {
      return Promise.reject(e);
    }
    return this._request({ op: "pub", topic, data: data === undefined ? null : data }, options.timeout).then((ok) => ({
      offset: ok.offset,
      epoch: ok.epoch,
    }));
  }

  /** Sends a directed message to backend service `to`; resolves to the backend's reply `data`. */
  send(to, data, options = {}) {
    try {
      checkTopic(to, "service name");
    } catch (e) {
      return Promise.reject(e);
    }
    return this._request({ op: "send", to, data: data === undefined ? null : data }, options.timeout);
  }

  /** Who is subscribed to `topic` across the cluster: `[{user, conn}]`. */
  presence(topic, options = {}) {
    try {
      checkTopic(topic);
    } catch (e) {
      return Promise.reject(e);
    }
    return this._request({ op: "presence", topic }, options.timeout).then((ok) => ok.presence || []);
  }

  /**
   * Sends a request now (when open) or when the next connection opens; rejects after `timeout`
   * ms either way. `internal` requests (sub/unsub) are only ever sent on the open connection.
   */
  _request(frame, timeout, internal = false) {
    return new Promise((resolve, reject) => this._call(frame, timeout, internal, resolve, reject));
  }

  /**
   * `_request` with callbacks, called synchronously when the reply is read: a subscription's
   * `ok` is handled before the frames that follow it on the socket.
   */
  _call(frame, timeout, internal, resolve, reject) {
    const ms = timeout ?? this._opts.requestTimeout;
    if (this._state === "closed") {
      reject(this._fatal || new ConnectionError("closed", "the client is closed"));
      return;
    }
    if (internal && this._state !== "open") {
      reject(new ConnectionError("connection_lost", "not connected"));
      return;
    }
    if (this._pending.size + this._queue.length >= this._opts.maxPending) {
      reject(new HeraldError("too_many_requests", `more than ${this._opts.maxPending} requests waiting for replies`, { retryable: true }));
      return;
    }
    const req = { frame, resolve, reject, timer: null, op: frame.op, id: 0 };
    req.timer = setTimeout(() => {
      if (req.id) this._pending.delete(req.id);
      else {
        const i = this._queue.indexOf(req);
        if (i >= 0) this._queue.splice(i, 1);
      }
      reject(new TimeoutError(frame.op, ms));
    }, ms);
    if (this._state === "open") this._transmit(req);
    else this._queue.push(req);
  }

  _transmit(req) {
    if (this._nextId > MAX_ID) this._nextId = 1;
    const id = this._nextId++;
    const frame = { ...req.frame, id };
    let payload;
    try {
      payload = this._codec.encode(frame);
    } catch (e) {
      clearTimeout(req.timer);
      req.reject(new HeraldError("bad_request", `${req.op}: data cannot be encoded: ${e?.message ?? e}`, { cause: e }));
      return;
    }
    const size = typeof payload === "string" ? utf8.encode(payload).length : payload.byteLength;
    if (size > this._opts.maxMessageBytes) {
      // The server would close the connection with 1009: refuse it here instead.
      clearTimeout(req.timer);
      req.reject(new HeraldError("too_large", `${req.op}: ${size} bytes is over maxMessageBytes (${this._opts.maxMessageBytes})`));
      return;
    }
    req.id = id;
    this._pending.set(id, req);
    try {
      this._ws.send(payload);
    } catch (e) {
      // The socket is closing; its close event rejects this request as connection_lost.
    }
  }

  _onReply(f) {
    const req = this._pending.get(f.id);
    if (!req) return; // timed out already
    this._pending.delete(f.id);
    clearTimeout(req.timer);
    if (f.op === "error") req.reject(new ServerError(f, { op: req.op }));
    else if (f.op === "reply") req.resolve(f.data);
    else req.resolve(f);
  }

  // ---------------------------------------------------------------- connection

  /** Closes the connection and stops reconnecting. Resolves once the socket is closed. */
  close() {
    if (this._state === "closed" && !this._ws) return Promise.resolve();
    this._stop(null);
    return this._closedPromise || Promise.resolve();
  }

  /**
   * Connects again now: after a fatal stop (4003, 401/403) once the app has fixed what was wrong,
   * or to skip the current backoff (e.g. on the browser's `online` event). Subscriptions resume
   * with `since`.
   */
  reconnect() {
    if (this._state === "open" || this._state === "connecting") {
      this._forceReconnect("reconnect() called");
      return;
    }
    clearTimeout(this._timer);
    this._fatal = undefined;
    this._failures = 0;
    this._start("reconnect");
  }

  _setState(st) {
    if (this._state === st) return;
    this._state = st;
    this._emit("state", st);
  }

  async _start(reason) {
    const gen = ++this._gen;
    this._setState("connecting");
    const attempt = ++this._attempt;
    let url;
    let ticket;
    try {
      url = await this._pickUrl(reason);
      if (gen !== this._gen) return;
      url = toWsUrl(url);
    } catch (e) {
      if (gen !== this._gen) return;
      this._emit("error", new ConnectionError("connect_failed", `url callback failed: ${e?.message ?? e}`, { cause: e, retryable: true }));
      this._scheduleRetry(gen, { advance: true });
      return;
    }
    if (this._opts.getTicket) {
      try {
        ticket = await withTimeout(
          Promise.resolve().then(() => this._opts.getTicket({ url, attempt, reason, lastClose: this._lastClose })),
          this._opts.connectTimeout,
          "getTicket",
        );
        if (gen !== this._gen) return;
        if (ticket && typeof ticket === "object") ticket = ticket.ticket;
        if (typeof ticket !== "string" || ticket === "") throw new TypeError("getTicket must resolve to a non-empty string");
      } catch (e) {
        if (gen !== this._gen) return;
        this._emit("error", new ConnectionError("ticket_failed", `getTicket failed: ${e?.message ?? e}`, { cause: e, retryable: true, url }));
        // The ticket may have been asked of that node (a ticket works on any node): the next
        // attempt goes to the next URL.
        this._scheduleRetry(gen, { advance: true });
        return;
      }
    }
    const full = ticket === undefined ? url : addQuery(url, "ticket", ticket);
    let ws;
    const conn = { gen, ws: null, url, refusal: null, welcomed: false, openedAt: 0 };
    try {
      ws = this._opts.webSocketOptions
        ? new this._WS(full, this._codec.protocol, this._opts.webSocketOptions)
        : new this._WS(full, this._codec.protocol);
    } catch (e) {
      this._emit("error", new ConnectionError("connect_failed", `cannot open ${url}: ${e?.message ?? e}`, { cause: e, retryable: true, url }));
      this._scheduleRetry(gen, { advance: true });
      return;
    }
    conn.ws = ws;
    this._ws = ws;
    this._wsUrl = url;
    this._conn = conn;
    if (this._codec.binaryType) ws.binaryType = this._codec.binaryType;
    else ws.binaryType = "arraybuffer";
    // Node's `ws` shows the HTTP answer to a refused upgrade; browsers never do.
    if (typeof ws.on === "function") {
      ws.on("unexpected-response", (req, res) => readRefusal(ws, res, (r) => (conn.refusal = r)));
    }
    const welcomeTimer = (conn.welcomeTimer = setTimeout(() => {
      if (gen === this._gen && !conn.welcomed) {
        this._onSocketClose(conn, { code: 1006, reason: "no welcome in time" });
        dropSocket(ws, 4000, "no welcome");
      }
    }, this._opts.connectTimeout));
    ws.onmessage = (ev) => {
      if (gen !== this._gen) return;
      let f;
      try {
        f = this._codec.decode(ev.data);
      } catch (e) {
        this._protocolError(`a frame that does not decode: ${e?.message ?? e}`);
        return;
      }
      if (!f || typeof f !== "object") return;
      if (!conn.welcomed) {
        if (f.op !== "welcome") {
          this._protocolError(`the first frame is ${f.op}, not welcome`);
          return;
        }
        clearTimeout(welcomeTimer);
        conn.welcomed = true;
        conn.openedAt = Date.now();
        this._onWelcome(f, url);
        return;
      }
      this._onFrame(f);
    };
    ws.onclose = (ev) => {
      clearTimeout(welcomeTimer);
      this._onSocketClose(conn, ev);
    };
    ws.onerror = () => {
      // Before the welcome an error ends the attempt (some WebSocket implementations fire no
      // close event for a refused upgrade); after it, the close event follows.
      if (gen !== this._gen || conn.welcomed) return;
      this._onSocketClose(conn, { code: 1006, reason: "connection failed" });
      dropSocket(ws, 4000, "failed");
    };
  }

  async _pickUrl(reason) {
    const u = this._opts.url;
    if (typeof u === "string") return u;
    if (Array.isArray(u)) return u[this._urlIndex % u.length];
    return await u({ attempt: this._attempt, reason, lastClose: this._lastClose, previous: this._wsUrl ?? null });
  }

  _onWelcome(f, url) {
    this._welcome = { conn: f.conn, node: f.node, user: f.user, ping: f.ping, url };
    this._immediateUsed = false;
    this._setState("open");
    this._emit("connected", this._welcome);
    // Resubscribe every topic (with `since` when a position is known) before the app's queue,
    // so that nothing it publishes now can be missed by its own subscriptions.
    for (const s of this._subs.values()) {
      if (s.state === "idle" || s.state === "pending" || s.state === "refetch") {
        clearTimeout(s.retryTimer);
        this._sendSub(s);
      }
    }
    const q = this._queue;
    this._queue = [];
    for (const req of q) this._transmit(req);
  }

  _onFrame(f) {
    switch (f.op) {
      case "msg":
        this._onMsg(f);
        break;
      case "ok":
      case "reply":
        this._onReply(f);
        break;
      case "error":
        // With an id: a reply (one that timed out already is dropped). Without: a
        // connection-level problem (bad_frame, rate_limited, ...).
        if (typeof f.id === "number") this._onReply(f);
        else this._emit("error", new ServerError(f, { connectionLevel: true }));
        break;
      case "direct":
        this._emit("direct", { from: f.from, data: f.data });
        break;
      case "join":
      case "leave":
        this._emit("presence", { type: f.op, topic: f.topic, user: f.user, conn: f.conn });
        break;
      default:
        break; // unknown frames are ignored (forward compatibility)
    }
  }

  _protocolError(message) {
    this._emit("error", new HeraldError("protocol", message));
    this._forceReconnect(message);
  }

  /** Drops the current socket and reconnects (with backoff) as after a network drop. */
  _forceReconnect(why) {
    const conn = this._conn;
    if (!conn || conn.gen !== this._gen || this._state === "closed") return;
    this._onSocketClose(conn, { code: 1006, reason: why });
    dropSocket(conn.ws, 4000, "client reconnects");
  }

  _onSocketClose(conn, ev) {
    if (conn.gen !== this._gen) return; // already handled (or an old socket)
    clearTimeout(conn.welcomeTimer);
    this._gen++;
    this._ws = null;
    this._conn = null;
    const code = ev.code ?? 1006;
    const close = { code, reason: ev.reason || "", url: conn.url, welcomed: conn.welcomed };
    if (conn.refusal) close.httpStatus = conn.refusal.status;
    this._lastClose = close;
    this._welcome = null;
    this._failPending(new ConnectionError("connection_lost", `the connection closed (${code}) before the reply`, { retryable: true }));
    for (const s of this._subs.values()) {
      if (s.state === "pending" || s.state === "live" || s.state === "refetch") s.state = "idle";
      clearTimeout(s.retryTimer);
      s.buffer = [];
    }
    if (this._state === "closed") return;
    const stable = conn.welcomed && Date.now() - conn.openedAt >= this._opts.stableAfter;
    if (stable) this._failures = 0;

    // Fatal: 4003, and an upgrade refused with 401 or 403 (seen only where the platform shows it).
    if (code === 4003) {
      this._stop(new ConnectionError("disconnected", "disconnected by the server (4003): do not reconnect with the same credentials", { closeCode: 4003, fatal: true, url: conn.url }), close);
      return;
    }
    const r = conn.refusal;
    if (r && (r.status === 401 || r.status === 403)) {
      this._stop(
        new ConnectionError("upgrade_refused", `the upgrade was refused: ${r.status} ${r.error || ""}`.trim(), {
          httpStatus: r.status,
          error: r.error,
          fatal: true,
          url: conn.url,
        }),
        close,
      );
      return;
    }
    if (!conn.welcomed) {
      this._emit(
        "error",
        new ConnectionError(r ? "upgrade_refused" : "connect_failed", r ? `the upgrade was refused: ${r.status} ${r.error || ""}`.trim() : `could not connect to ${conn.url} (${code})`, {
          retryable: true,
          httpStatus: r?.status,
          error: r?.error,
          url: conn.url,
        }),
      );
    }
    let delay;
    let advance = !conn.welcomed;
    if ((code === 1012 || code === 1001) && !this._immediateUsed) {
      // Restarting or draining: reconnect at once, to another node (section 8).
      this._immediateUsed = true;
      delay = 0;
      advance = true;
    } else if (code === 4029 || r?.status === 429) {
      delay = this._delay(this._failures++, true);
    } else {
      delay = this._delay(this._failures++, false);
    }
    if (r?.retryAfter) delay = Math.max(delay, Math.min(r.retryAfter * 1000, this._backoff.max));
    if (r?.status === 503) advance = true;
    if (code === 1012 || code === 1001) advance = true;
    if (advance) this._urlIndex++;
    close.delay = delay;
    close.willReconnect = true;
    this._emit("disconnected", close);
    this._setState("waiting");
    clearTimeout(this._timer);
    const gen = this._gen;
    this._timer = setTimeout(() => {
      if (gen === this._gen && this._state === "waiting") this._start(`close ${code}`);
    }, delay);
  }

  _scheduleRetry(gen, { advance }) {
    if (gen !== this._gen || this._state === "closed") return;
    this._gen++;
    if (advance) this._urlIndex++;
    const delay = this._delay(this._failures++, false);
    this._setState("waiting");
    clearTimeout(this._timer);
    const g = this._gen;
    this._timer = setTimeout(() => {
      if (g === this._gen && this._state === "waiting") this._start("retry");
    }, delay);
  }

  /** Full jitter: uniform in [0, min(max, initial * 2^n)]; rate-limited closes wait longer. */
  _delay(n, rateLimited) {
    const b = this._backoff;
    const cap = Math.min(b.max, b.initial * 2 ** Math.min(n, 30));
    const jitter = Math.random() * cap;
    return Math.round(rateLimited ? b.rateLimited + jitter : jitter);
  }

  _failPending(err) {
    for (const req of this._pending.values()) {
      clearTimeout(req.timer);
      req.reject(err);
    }
    this._pending.clear();
  }

  _stop(fatal, close) {
    const wasClosed = this._state === "closed";
    clearTimeout(this._timer);
    this._fatal = fatal || undefined;
    const err = fatal || new ConnectionError("closed", "the client is closed");
    const ws = this._ws;
    if (this._conn) clearTimeout(this._conn.welcomeTimer);
    this._ws = null;
    this._conn = null;
    this._gen++; // nothing of the old socket reaches the app any more
    this._setState("closed");
    if (ws) {
      // Resolves when the socket is closed, or after 5 s (a peer that never answers the close).
      this._closedPromise = new Promise((res) => {
        const t = setTimeout(res, 5000);
        t.unref?.();
        ws.onclose = () => {
          clearTimeout(t);
          res();
        };
      });
      ws.onmessage = noop;
      ws.onerror = noop;
      safeClose(ws, 1000, "client closed");
    } else {
      this._closedPromise = Promise.resolve();
    }
    this._failPending(err);
    const q = this._queue;
    this._queue = [];
    for (const req of q) {
      clearTimeout(req.timer);
      req.reject(err);
    }
    for (const s of this._subs.values()) {
      clearTimeout(s.retryTimer);
      if (s.state !== "removed") s.state = "idle";
      s.buffer = [];
    }
    if (fatal) {
      if (close) this._emit("disconnected", { ...close, willReconnect: false });
      this._emit("error", fatal);
    }
    if (!wasClosed) this._emit("closed", { error: fatal || null });
  }
}

/** The handle `subscribe` returns. */
export class Subscription {
  constructor(client, s) {
    this._client = client;
    this._s = s;
    this.topic = s.topic;
  }

  /** Resolves at the first `ok` of the subscription; rejects if it is refused (e.g. forbidden). */
  get ready() {
    return this._s.ready;
  }

  /** `{offset, epoch}` of the last message delivered (or of the `ok`), or null before the first. */
  get position() {
    return this._s.pos ? { ...this._s.pos } : null;
  }

  /** True between its `ok` and the next disconnect (or its unsubscribe). */
  get live() {
    return this._s.state === "live";
  }

  unsubscribe() {
    if (this._client._subs.get(this.topic) !== this._s) return Promise.resolve();
    return this._client.unsubscribe(this.topic);
  }
}

// ---------------------------------------------------------------- helpers

function isOffset(x) {
  return Number.isInteger(x) && x >= 0;
}

function checkTopic(t, what = "topic") {
  if (typeof t !== "string" || !TOPIC_RE.test(t) || utf8.encode(t).length > 255) {
    throw new HeraldError("bad_request", `not a valid ${what}: ${JSON.stringify(t)}`);
  }
}

function toWsUrl(u) {
  const s = String(u);
  if (s.startsWith("http://")) return "ws://" + s.slice(7);
  if (s.startsWith("https://")) return "wss://" + s.slice(8);
  return s;
}

function addQuery(url, key, value) {
  const hash = url.indexOf("#");
  const base = hash >= 0 ? url.slice(0, hash) : url;
  return base + (base.includes("?") ? "&" : "?") + key + "=" + encodeURIComponent(value);
}

/** Closes a socket this client is done with: its handlers first, so nothing of it comes back. */
function dropSocket(ws, code, reason) {
  // No-ops rather than null: Node's `ws` throws an 'error' event that has no listener.
  ws.onmessage = ws.onerror = ws.onclose = noop;
  safeClose(ws, code, reason);
}

function safeClose(ws, code, reason) {
  try {
    if (typeof ws.terminate === "function" && ws.readyState !== 1) ws.terminate();
    else ws.close(code, reason);
  } catch {
    try {
      ws.close();
    } catch {
      /* already closed */
    }
  }
}

function withTimeout(p, ms, what) {
  let t;
  return Promise.race([
    p,
    new Promise((_, rej) => {
      t = setTimeout(() => rej(new Error(`${what} did not settle within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(t));
}

/** Reads (at most 4 KiB of) the JSON body of a refused upgrade, then ends the attempt. */
function readRefusal(ws, res, done) {
  const r = { status: res.statusCode, error: undefined, retryAfter: undefined };
  const ra = Number(res.headers?.["retry-after"]);
  if (Number.isFinite(ra) && ra > 0) r.retryAfter = ra;
  done(r);
  let body = "";
  let finished = false;
  const finish = () => {
    if (finished) return;
    finished = true;
    clearTimeout(t);
    try {
      r.error = JSON.parse(body).error;
    } catch {
      /* not JSON */
    }
    try {
      ws.terminate();
    } catch {
      /* gone */
    }
  };
  const t = setTimeout(finish, 2000);
  res.setEncoding?.("utf8");
  res.on("data", (c) => {
    body += c;
    if (body.length > 4096) finish();
  });
  res.on("end", finish);
  res.on("error", finish);
}
