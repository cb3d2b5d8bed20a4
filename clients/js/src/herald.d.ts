// Types of the Herald JavaScript client (src/herald.js). Hand-written; no build step.

/** The subprotocol spoken by default. */
export declare const JSON_PROTOCOL: "herald.v1.json";

/** The `code` of an `error` frame of a v1 server (proto/README.md section 6.4). */
export type ServerErrorCode =
  | "bad_frame"
  | "bad_request"
  | "forbidden"
  | "already_subscribed"
  | "not_subscribed"
  | "rate_limited"
  | "unknown_service"
  | "upstream_timeout"
  | "upstream_error"
  | "upstream_unavailable"
  | "overloaded"
  | "unavailable"
  | "internal";

/** Failures the client itself reports. */
export type ClientErrorCode =
  /** A request got no reply in time; it may or may not have been carried out. */
  | "timeout"
  /** The connection closed after the request was sent, before its reply; it may have been carried out. */
  | "connection_lost"
  /** `close()` was called (or the subscription was unsubscribed). */
  | "closed"
  /** The encoded request is over `maxMessageBytes`: refused here instead of a 1009 close. */
  | "too_large"
  /** More than `maxPending` requests waiting for replies. */
  | "too_many_requests"
  /** `getTicket` threw, timed out, or gave no ticket. Retried with backoff. */
  | "ticket_failed"
  /** An HTTP refusal of the upgrade (only where the platform shows it: Node with `ws`). 401/403 are fatal. */
  | "upgrade_refused"
  /** A connection attempt failed before `welcome` (browsers: every refused upgrade). Retried. */
  | "connect_failed"
  /** Close 4003: a backend revoked the user or this connection. Fatal. */
  | "disconnected"
  /** The server sent something this client cannot make sense of; it reconnects. */
  | "protocol"
  /** A handler or listener of the app threw. */
  | "handler";

export type ErrorCode = ServerErrorCode | ClientErrorCode;

export declare const SERVER_ERROR_CODES: readonly ServerErrorCode[];

export declare class HeraldError extends Error {
  /** A server code (unknown codes of a newer server pass through as strings) or a client code. */
  readonly code: ErrorCode | (string & {});
  /** Worth trying again later (with backoff). */
  readonly retryable: boolean;
  /** The client stopped because of it (state `closed`); `reconnect()` starts it again. */
  readonly fatal: boolean;
  /** The topic, for errors of a subscription. */
  readonly topic?: string;
  /** The URL of the attempt, for connection errors. */
  readonly url?: string;
  /** The close code, for `disconnected`. */
  readonly closeCode?: number;
  /** The HTTP status of a refused upgrade, where the platform shows it. */
  readonly httpStatus?: number;
  /** The `error` code of a refused upgrade's body (e.g. `invalid_ticket`, `origin_not_allowed`). */
  readonly error?: string;
  readonly cause?: unknown;
}

/** An `error` frame: the reply to a request, or (with `connectionLevel`) one without `id`. */
export declare class ServerError extends HeraldError {
  readonly code: ServerErrorCode | (string & {});
  /** The backend's HTTP status: exactly when `code` is `upstream_error`. */
  readonly status?: number;
  /** The op of the request it answers. */
  readonly op?: "pub" | "send" | "presence" | "sub" | "unsub";
  /** No `id`: `bad_frame`, `rate_limited` (requests in flight may have been dropped), ... */
  readonly connectionLevel?: boolean;
}

export declare class TimeoutError extends HeraldError {
  readonly code: "timeout";
}

export declare class ConnectionError extends HeraldError {
  readonly code: "connection_lost" | "closed" | "disconnected" | "upgrade_refused" | "connect_failed" | "ticket_failed";
}

/** A position in a topic: the last offset seen, in its epoch. */
export interface Position {
  offset: number;
  epoch: string;
}

export interface Message<T = unknown> {
  topic: string;
  offset: number;
  epoch: string;
  data: T;
}

/**
 * Messages may have been lost and cannot be replayed: reload the state from your backend.
 * `not_recovered`: a resubscription with `since` came back `recovered: false`.
 * `epoch_changed`: the topic's history was reset (e.g. Redis lost it).
 * `skipped`: an offset was missing (never sent by a v1 server; reported rather than hidden).
 */
export interface Gap {
  topic: string;
  reason: "not_recovered" | "epoch_changed" | "skipped";
  recovered: false;
  /** Where the client was. */
  since: Position;
  /** Where the topic is now: delivery goes on after this offset (or with it, for a message). */
  offset: number;
  epoch: string;
}

export interface Welcome {
  conn: string;
  node: string;
  user: string;
  ping: number;
  /** The URL this connection was made to. */
  url: string;
}

export interface CloseInfo {
  /** The WebSocket close code (1006 for a drop, a refused upgrade or an attempt that failed). */
  code: number;
  reason: string;
  url: string;
  /** Whether the connection had got its `welcome`. */
  welcomed: boolean;
  /** The HTTP status of a refused upgrade, where the platform shows it. */
  httpStatus?: number;
  willReconnect: boolean;
  /** Milliseconds until the next attempt. */
  delay?: number;
}

export interface Subscribed {
  topic: string;
  offset: number;
  epoch: string;
  /** Only for a subscription sent with `since` (every resubscription after a reconnect). */
  recovered?: boolean;
  since?: Position;
}

export interface PresenceEntry {
  user: string;
  conn: string;
}

export interface PresenceChange {
  type: "join" | "leave";
  topic: string;
  user: string;
  conn: string;
}

export interface Direct<T = unknown> {
  from?: string;
  data: T;
}

export type State = "connecting" | "open" | "waiting" | "closed";

export interface TicketRequest {
  /** The URL about to be connected to (a ticket works on any node of a cluster). */
  url: string;
  /** 1 for the first attempt, counting every attempt since. */
  attempt: number;
  reason: string;
  /** How the previous connection (or attempt) ended, if any. */
  lastClose: CloseInfo | null;
}

export interface UrlRequest {
  attempt: number;
  reason: string;
  lastClose: CloseInfo | null;
  /** The URL of the previous attempt. */
  previous: string | null;
}

/** How frames are encoded. The default speaks `herald.v1.json`. */
export interface Codec {
  protocol: string;
  /** For binary subprotocols: "arraybuffer". */
  binaryType?: "arraybuffer" | "blob";
  encode(frame: object): string | Uint8Array | ArrayBuffer;
  decode(data: string | ArrayBuffer | Uint8Array): any;
}

export declare const jsonCodec: Codec;

export interface Backoff {
  /** The first delay's cap, ms (500). */
  initial?: number;
  /** The largest delay, ms (30000). */
  max?: number;
  /** Added to the jittered delay after a 4029 close or a 429 refusal, ms (10000). */
  rateLimited?: number;
}

export interface ConnectOptions {
  /**
   * The `/ws` endpoint: one URL, several (tried in turn: the next after a failed attempt, a 1012
   * close or a 503 refusal), or a function asked before every attempt. `http(s)://` is taken as
   * `ws(s)://`.
   */
  url: string | string[] | ((req: UrlRequest) => string | Promise<string>);
  /**
   * Called before every connection attempt (tickets are one-use). Throwing is retried with
   * backoff (a `ticket_failed` error event each time); call `close()` to give up. Omit it for
   * nodes that authenticate upgrades by session cookie.
   */
  getTicket?: (req: TicketRequest) => string | { ticket: string } | Promise<string | { ticket: string }>;
  /** A WebSocket constructor: the global one by default (browsers, Node 22+); `ws` in Node 20. */
  WebSocket?: any;
  /** A third argument for the WebSocket constructor (Node `ws` options: headers, origin, ...). */
  webSocketOptions?: object;
  codec?: Codec;
  /** Default timeout of publish/send/presence and of subscriptions' replies, ms (10000). */
  requestTimeout?: number;
  /** How long `getTicket` and the wait for `welcome` may take, ms (10000). */
  connectTimeout?: number;
  /** Requests waiting for replies or for a connection, at most (1000). */
  maxPending?: number;
  /** Messages held per topic while its `sub` awaits its `ok`, at most (10000); beyond: reconnect. */
  maxBuffered?: number;
  /** The node's `max_message_bytes` (65536): larger requests are refused locally. */
  maxMessageBytes?: number;
  /** A connection that lasted this long (ms) resets the backoff (5000). */
  stableAfter?: number;
  backoff?: Backoff;
}

export interface SubscribeOptions {
  /** Resume from a position the app kept (e.g. across page loads). */
  since?: Position;
  onGap?: (gap: Gap) => void;
  /** A refused subscription (then removed) or a retried failure. */
  onError?: (err: HeraldError) => void;
}

export interface RequestOptions {
  /** ms; the client's `requestTimeout` by default. */
  timeout?: number;
}

export interface ClientEvents {
  state: State;
  connected: Welcome;
  disconnected: CloseInfo;
  subscribed: Subscribed;
  gap: Gap;
  error: HeraldError;
  direct: Direct;
  presence: PresenceChange;
  closed: { error: HeraldError | null };
}

export declare class Subscription<T = unknown> {
  readonly topic: string;
  /** Resolves at the first `ok`; rejects when refused (forbidden, bad_request) or unsubscribed first. */
  readonly ready: Promise<void>;
  /** The last delivered message's (or the `ok`'s) offset and epoch; null before the first `ok`. */
  readonly position: Position | null;
  /** Between its `ok` and the next disconnect. */
  readonly live: boolean;
  unsubscribe(): Promise<void>;
}

export declare class Client {
  constructor(options: ConnectOptions);
  readonly state: State;
  /** The current connection's `welcome`, or null when not open. */
  readonly welcome: Welcome | null;
  on<K extends keyof ClientEvents>(event: K, fn: (payload: ClientEvents[K]) => void): () => void;
  off<K extends keyof ClientEvents>(event: K, fn: (payload: ClientEvents[K]) => void): void;
  /**
   * Delivers every message of `topic`, in offset order, once, across reconnects. Throws
   * `already_subscribed` if the topic already has a subscription on this client.
   */
  subscribe<T = unknown>(topic: string, handler: (msg: Message<T>) => void, options?: SubscribeOptions): Subscription<T>;
  unsubscribe(topic: string): Promise<void>;
  /** Needs a `publish` grant. Resolves to the message's offset and epoch. */
  publish(topic: string, data: unknown, options?: RequestOptions): Promise<Position>;
  /** A directed message to a backend service; resolves to its reply's `data`. */
  send<R = unknown>(to: string, data: unknown, options?: RequestOptions): Promise<R>;
  /** The connections subscribed to `topic` across the cluster (a `presence_topics` topic). */
  presence(topic: string, options?: RequestOptions): Promise<PresenceEntry[]>;
  /** Connects again now (after a fatal stop, or to skip a backoff). */
  reconnect(): void;
  /** Closes and stops reconnecting; pending requests reject with `closed`. */
  close(): Promise<void>;
}

export declare function connect(options: ConnectOptions): Client;
