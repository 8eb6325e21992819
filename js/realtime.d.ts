// Type declarations of realtime.js, written by hand; the module's comments
// say what each call guarantees.

export declare const SUBPROTOCOL: "realtime.v1";
export declare const TOKEN_PROTOCOL_PREFIX: "base64url.bearer.realtime.";
export declare const CLOSE_FELL_BEHIND: 4001;
export declare const CLOSE_UNAUTHORIZED: 4002;
export declare const CLOSE_UNKNOWN_SHARE_DATA: 4003;
export declare const CLOSE_INVALID_MESSAGE: 4004;

/** A JSON value. */
export type JSONValue = null | boolean | number | string | JSONValue[] | { [key: string]: JSONValue };

export interface StateFrame {
  v: 1;
  type: "state";
  shareDataId: string;
  currentState: JSONValue;
  lastTransactionId: string;
}

export interface TransactionFrame {
  v: 1;
  type: "transaction";
  shareDataId: string;
  transactionId: string;
  previousTransactionId: string;
  functionId: string;
  proposedData: JSONValue;
  /** Live frames carry the state after the transaction; replayed ones do not. */
  currentState?: JSONValue;
  replayed?: true;
}

export interface LifecycleFrame {
  v: 1;
  type: "lifecycle";
  shareDataId: string;
  event: "updated" | "removed";
  currentState?: JSONValue;
}

export interface ErrorFrame {
  v: 1;
  type: "error";
  code: string;
  message: string;
  shareDataId?: string;
  correlationId?: string;
}

/** The answer to propose(): the proposal-result frame's fields. */
export interface ProposalResult {
  accepted: boolean;
  transactionId?: string;
  error?: string;
  /** Why not accepted, for programs, when it was not the function's or an authorizer's refusal: "rate-limited". */
  code?: string;
}

export type RealtimeErrorCode =
  | "timeout" | "queue-full" | "connection-lost" | "outcome-unknown" | "closed" | "stopped" | "unsubscribed" | "removed"
  | "unauthorized" | "invalid-message"
  | "replay-cursor-not-found" | "forbidden" | "too-many-subscriptions" | "unknown-share-data" | "internal-error"
  | (string & {});

export declare class RealtimeError extends Error {
  readonly code: RealtimeErrorCode;
  /** The close code, for errors caused by a close. */
  readonly closeCode?: number;
  /** The error frame, for errors the server sent. */
  readonly frame?: ErrorFrame;
}

export type ConnectionState = "idle" | "connecting" | "open" | "closed" | "stopped";

export interface StateChange {
  state: ConnectionState;
  /** For "closed", and "stopped" by a close: the close code and reason. */
  code?: number;
  reason?: string;
  /** For "closed": the wait before the next dial, in ms. */
  delay?: number;
  /** For "stopped": why. */
  error?: RealtimeError;
}

export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  onerror: ((ev: any) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export interface RealtimeClientOptions {
  /** The server's ws:// or wss:// endpoint. */
  url: string;
  /** The WebSocket constructor; the global one by default (browsers, Node 22+). */
  WebSocket?: new (url: string, protocols?: string[]) => WebSocketLike;
  /** A token, or a function called before every connect; sent in the subprotocol. */
  token?: string | (() => string | undefined | Promise<string | undefined>);
  /** Send the token as ?token= instead (for servers that only read the URL). Default false. */
  tokenInQuery?: boolean;
  /** Backoff bounds between dials: full jitter over [0, min(max, min*2^n)]. Defaults 250 and 30000. */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  /** propose() and ping() calls that may wait for a connection. Default 100. */
  maxQueueSize?: number;
  /** How long a propose() or ping() may take, from the call. Default 10000. */
  requestTimeoutMs?: number;
  /** Silence after which the client pings, and reconnects after a second silent period. Default 30000. */
  heartbeatMs?: number;
  onStateChange?: (change: StateChange) => void;
}

export declare class Subscription {
  readonly shareDataId: string;
  /** The last transaction handed over (the resume point), or null. */
  /** The resume point after the last event emitted; a handler should save the cursor it is given instead. */
  readonly cursor: string | null;
  readonly ended: boolean;
  readonly endReason: RealtimeError | null;
  on(event: "state", handler: (frame: StateFrame, cursor: string | null) => void): this;
  on(event: "transaction", handler: (frame: TransactionFrame, cursor: string | null) => void): this;
  on(event: "lifecycle", handler: (frame: LifecycleFrame, cursor: string | null) => void): this;
  on(event: "error", handler: (error: RealtimeError, cursor: string | null) => void): this;
  on(event: "end", handler: (reason: RealtimeError, cursor: string | null) => void): this;
  off(event: string, handler: (arg: any, cursor: string | null) => void): this;
  unsubscribe(): void;
}

export declare class RealtimeClient {
  constructor(options: RealtimeClientOptions);
  readonly state: ConnectionState;
  /** Why the client stopped, once state is "stopped". */
  readonly stopReason?: RealtimeError;
  connect(): Promise<void>;
  subscribe(shareDataId: string, options?: { since?: string }): Subscription;
  propose(proposal: { shareDataId: string; functionId: string; proposedData: JSONValue }): Promise<ProposalResult>;
  /** Resolves with the round trip in milliseconds. */
  ping(): Promise<number>;
  close(): void;
}
