// Run by test/global-websocket.test.js in its own `node` process: the client with the platform's
// global WebSocket (as in a browser; Node 20 needs --experimental-websocket), no `ws` anywhere.
// Prints one JSON line per event for the test to read.
import { connect } from "../src/herald.js";
import { ticketsFor } from "./herald.js";

const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const real = ticketsFor(process.env.TEST_JWT);
let bad = Number(process.env.TEST_BAD_TICKETS || 0);
const client = connect({
  url: process.env.TEST_URL,
  getTicket: async (info) => {
    out({ ev: "getTicket", attempt: info.attempt, lastClose: info.lastClose });
    if (bad > 0) {
      bad--;
      return "not-a-ticket"; // refused with 401: a browser sees only a failed attempt
    }
    return real(info);
  },
  backoff: { initial: 20, max: 200 },
});
client.on("error", (e) => out({ ev: "error", code: e.code, fatal: e.fatal, httpStatus: e.httpStatus ?? null }));
client.on("connected", (w) => out({ ev: "connected", node: w.node }));
client.subscribe(process.env.TEST_TOPIC, (m) => out({ ev: "msg", offset: m.offset, data: m.data }));
client.on("subscribed", (s) => out({ ev: "subscribed", ...s }));
process.stdin.on("data", () => {});
process.stdin.on("end", () => client.close().then(() => process.exit(0)));
