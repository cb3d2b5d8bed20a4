// A client for the tests: Node's `ws` as the WebSocket (it shows the HTTP status of a refused
// upgrade and can pause reading), short backoffs, and every event recorded.
import WS from "ws";
import { connect } from "../src/herald.js";

export const FAST_BACKOFF = { initial: 20, max: 400, rateLimited: 1000 };

export function testClient(options) {
  const sockets = [];
  class RecordingWS extends WS {
    constructor(...args) {
      super(...args);
      sockets.push(this);
    }
  }
  const client = connect({ WebSocket: RecordingWS, backoff: FAST_BACKOFF, ...options });
  const events = { disconnected: [], error: [], gap: [], subscribed: [], connected: [] };
  for (const name of Object.keys(events)) client.on(name, (p) => events[name].push(p));
  return { client, events, sockets };
}
