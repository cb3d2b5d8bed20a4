// A WebSocket stand-in for tests of the client's bookkeeping without a server: the test plays
// the server's part frame by frame.
import { EventEmitter } from "node:events";

export function fakeWebSocket() {
  const created = new EventEmitter();
  const sockets = [];
  class FakeWS {
    constructor(url, protocol) {
      this.url = url;
      this.protocol = protocol;
      this.readyState = 0;
      this.sent = [];
      this.sentEmitter = new EventEmitter();
      sockets.push(this);
      queueMicrotask(() => created.emit("socket", this));
    }
    send(data) {
      if (this.readyState !== 1) throw new Error("not open");
      const f = JSON.parse(data);
      this.sent.push(f);
      this.sentEmitter.emit("frame", f);
    }
    close(code, reason) {
      if (this.readyState === 3) return;
      this.readyState = 3;
      queueMicrotask(() => this.onclose?.({ code: code ?? 1005, reason: reason ?? "" }));
    }
    // the server's side
    accept(welcome = {}) {
      this.readyState = 1;
      this.push({ op: "welcome", conn: "c1", node: "n1", user: "u", ping: 25, ...welcome });
    }
    push(frame) {
      this.onmessage?.({ data: JSON.stringify(frame) });
    }
    serverClose(code, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
    /** The next frame the client sends with `op` (already sent or still to come), bounded. */
    nextSent(op, ms = 2000) {
      const seen = this.sent.find((f) => f.op === op && !f._taken);
      if (seen) {
        seen._taken = true;
        return Promise.resolve(seen);
      }
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`no ${op} frame within ${ms} ms`)), ms);
        const on = (f) => {
          if (f.op !== op || f._taken) return;
          f._taken = true;
          clearTimeout(t);
          this.sentEmitter.off("frame", on);
          resolve(f);
        };
        this.sentEmitter.on("frame", on);
      });
    }
  }
  /** The `i`-th socket the client opens (0-based), once it exists (bounded). */
  function socketAt(i, ms = 2000) {
    if (sockets[i]) return Promise.resolve(sockets[i]);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        created.off("socket", on);
        reject(new Error(`no socket #${i} within ${ms} ms (have ${sockets.length})`));
      }, ms);
      const on = () => {
        if (!sockets[i]) return;
        clearTimeout(t);
        created.off("socket", on);
        resolve(sockets[i]);
      };
      created.on("socket", on);
    });
  }
  return { WebSocket: FakeWS, sockets, socketAt };
}
