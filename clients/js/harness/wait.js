// Waiting with deadlines: every wait in the tests is for an event, bounded, and says what it
// waited for when it fails. No sleep is used to synchronise.

/** Resolves with the first `event` of `client` whose payload passes `pred`; rejects after `ms`. */
export function nextEvent(client, event, pred = () => true, ms = 10_000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      off();
      reject(new Error(`no "${event}" event within ${ms} ms`));
    }, ms);
    const off = client.on(event, (p) => {
      if (!pred(p)) return;
      clearTimeout(t);
      off();
      resolve(p);
    });
  });
}

/** Bounds a promise: rejects with `what` after `ms`. */
export function within(p, ms, what) {
  let t;
  return Promise.race([
    p,
    new Promise((_, rej) => {
      t = setTimeout(() => rej(new Error(`${what}: not within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(t));
}

/**
 * Collects what a subscription delivers and lets a test wait until a condition holds on what was
 * collected, re-checked on each delivery.
 */
export class Collector {
  constructor() {
    this.messages = [];
    this._waiters = new Set();
    this.handler = (m) => {
      this.messages.push(m);
      for (const w of [...this._waiters]) w();
    };
  }

  get offsets() {
    return this.messages.map((m) => m.offset);
  }

  get last() {
    return this.messages[this.messages.length - 1];
  }

  /** Resolves once `pred(this)` is true; rejects after `ms` with `what`. */
  until(pred, ms, what) {
    if (pred(this)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!pred(this)) return;
        clearTimeout(t);
        this._waiters.delete(check);
        resolve();
      };
      const t = setTimeout(() => {
        this._waiters.delete(check);
        reject(new Error(`${what}: not within ${ms} ms (have ${this.messages.length} messages, last offset ${this.last?.offset})`));
      }, ms);
      this._waiters.add(check);
    });
  }
}

/** Asserts `offsets` is exactly first..last, each once, in order. */
export function assertContiguous(assert, offsets, first, last) {
  const want = [];
  for (let o = first; o <= last; o++) want.push(o);
  assert.deepStrictEqual(offsets, want, `every offset ${first}..${last}, in order, exactly once`);
}
