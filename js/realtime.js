// @degenerate/realtime client: the RealtimeClient of the seed's README for
// browsers and Node, speaking the realtime.v1 wire protocol to the Go
// server of this repository. No dependency: it uses the WebSocket
// constructor it is given, or the global one.
//
// What it guarantees (the Go client's semantics):
//   - It reconnects by itself, with full-jitter backoff, and resubscribes
//     every subscription with since = its cursor, so missed transactions
//     are replayed. The cursor is the last transaction handed to the
//     application; a state frame's lastTransactionId becomes it only when
//     no replay is due, so a drop in the middle of a replay loses nothing.
//   - Each transaction must follow the cursor (previousTransactionId): a
//     gap or a duplicate is not shown; the subscription is restarted from
//     the cursor instead, and the server replays what was missed.
//   - replay-cursor-not-found is an 'error' event after the fresh 'state'.
//   - propose() and ping() made while disconnected wait, in order, up to
//     maxQueueSize; each times out requestTimeoutMs after it was called.
//   - Every proposal carries an idempotencyKey. One in flight when the
//     connection drops is sent again after the reconnect, with its key and
//     retry: true; the server applies a key once and answers a repeat with
//     the first outcome, so propose() settles with the one true outcome.
//     Only a key the server no longer remembers rejects with
//     "outcome-unknown". A ping in flight fails with "connection-lost".
//   - Close codes: 4001 reconnects at once and is replayed; 4002 asks the
//     token callback for a new token and stops without one; 4003 ends the
//     subscription its unknown-share-data frame named, others go on; 4004
//     stops and says why; 1001 and 1012 reconnect at once.

export const SUBPROTOCOL = "realtime.v1";
export const TOKEN_PROTOCOL_PREFIX = "base64url.bearer.realtime.";

/** Close codes of the realtime protocol. */
export const CLOSE_FELL_BEHIND = 4001;
export const CLOSE_UNAUTHORIZED = 4002;
export const CLOSE_UNKNOWN_SHARE_DATA = 4003;
export const CLOSE_INVALID_MESSAGE = 4004;

/** Error codes of error frames that end a subscription: retrying cannot help. */
const FINAL_CODES = new Set(["forbidden", "too-many-subscriptions", "unknown-share-data"]);

/**
 * RealtimeError is what the client's promises reject with and what 'error'
 * handlers receive for failures of the client itself. code says what went
 * wrong, for programs: an error frame's code, or one of "timeout",
 * "queue-full", "connection-lost", "outcome-unknown", "closed", "stopped".
 */
export class RealtimeError extends Error {
  constructor(code, message, details = {}) {
    super(message);
    this.name = "RealtimeError";
    this.code = code;
    Object.assign(this, details);
  }
}

function b64url(s) {
  const bytes = new TextEncoder().encode(s);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** KEY_WINDOW_AGE_MS is how long the server remembers a proposal's key (10 minutes). */
const KEY_WINDOW_AGE_MS = 10 * 60 * 1000;

/** idempotencyKey returns 128 random bits, base64url: no other proposal has it. */
function idempotencyKey() {
  const a = new Uint8Array(16);
  globalThis.crypto.getRandomValues(a);
  let bin = "";
  for (const b of a) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function randomPrefix() {
  const a = new Uint8Array(5);
  globalThis.crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(36).padStart(2, "0")).join("") + "-";
}

/** One subscription of a client, as client.subscribe returns it. */
export class Subscription {
  constructor(client, shareDataId, since) {
    this.client = client;
    this.shareDataId = shareDataId;
    this._handlers = { state: [], transaction: [], lifecycle: [], error: [], end: [] };
    this._cursor = since === undefined ? null : since; // null: no cursor yet
    this._awaiting = false; // a subscribe was sent and its state has not come
    this._sentSince = null;
    this._replayUntil = null; // the state's cursor while a replay flows
    this._retries = 0;
    this._retryTimer = null;
    this.ended = false;
    this.endReason = null;
  }

  /**
   * The resume point after the last event emitted: the last transaction
   * handed over, or null. A handler that saves it after an await may read
   * a later point than its own event's: save the cursor each handler is
   * given as its second argument instead.
   */
  get cursor() { return this._cursor; }

  /**
   * on registers a handler for 'state', 'transaction', 'lifecycle', 'error'
   * or 'end' (the subscription ended: unsubscribed, removed, refused, or
   * the client closed), called as handler(event, cursor): cursor is the
   * resume point right after the event (null before any). It returns the
   * subscription.
   */
  on(event, handler) {
    if (!this._handlers[event]) throw new TypeError("unknown event " + JSON.stringify(event));
    this._handlers[event].push(handler);
    return this;
  }

  /** off removes a handler registered with on. */
  off(event, handler) {
    const hs = this._handlers[event];
    if (hs) this._handlers[event] = hs.filter((h) => h !== handler);
    return this;
  }

  /** unsubscribe ends the subscription and tells the server. */
  unsubscribe() {
    if (this.ended) return;
    this.client._send({ v: 1, type: "unsubscribe", shareDataId: this.shareDataId });
    this._end(new RealtimeError("unsubscribed", "unsubscribed"));
  }

  // Every handler gets the resume point after its event as its second
  // argument: saved and given back as since, it resumes exactly after the
  // event, also when the handler saves it later (after an await), when
  // sub.cursor may already be past newer events.
  _emit(event, arg) {
    const cursor = this._cursor;
    for (const h of this._handlers[event]) {
      try { h(arg, cursor); } catch (e) { queueMicrotask(() => { throw e; }); }
    }
  }

  _end(reason) {
    if (this.ended) return;
    this.ended = true;
    this.endReason = reason;
    clearTimeout(this._retryTimer);
    this.client._subs.delete(this.shareDataId);
    this._emit("end", reason);
  }

  _subscribeFrame() {
    const m = { v: 1, type: "subscribe", shareDataId: this.shareDataId };
    if (this._cursor !== null) m.since = this._cursor;
    this._awaiting = true;
    this._sentSince = this._cursor;
    this._replayUntil = null;
    return m;
  }

  _resubscribe() { this.client._send(this._subscribeFrame()); }

  _receive(m) {
    switch (m.type) {
    case "state":
      this._awaiting = false;
      this._retries = 0;
      if (this._sentSince !== null && this._sentSince !== m.lastTransactionId) this._replayUntil = m.lastTransactionId;
      else this._cursor = m.lastTransactionId;
      this._emit("state", m);
      break;
    case "transaction": {
      if (this._awaiting) return; // sent before our subscribe's state: that state covers it
      const replayed = m.replayed === true;
      if (replayed && this._replayUntil === null) return; // no replay is due
      if (replayed !== (this._replayUntil !== null) || m.previousTransactionId !== this._cursor) {
        this._resubscribe(); // a gap or a duplicate: restart from the cursor
        return;
      }
      this._cursor = m.transactionId;
      if (replayed && m.transactionId === this._replayUntil) this._replayUntil = null;
      this._emit("transaction", m);
      break;
    }
    case "lifecycle":
      this._emit("lifecycle", m);
      if (m.event === "removed") this._end(new RealtimeError("removed", "the share data was removed"));
      break;
    case "error":
      if (m.code === "replay-cursor-not-found") {
        if (this._replayUntil !== null) { this._cursor = this._replayUntil; this._replayUntil = null; }
        this._emit("error", new RealtimeError(m.code, m.message, { frame: m }));
      } else if (FINAL_CODES.has(m.code)) {
        const err = new RealtimeError(m.code, m.message, { frame: m });
        this._emit("error", err);
        this._end(err);
      } else {
        // internal-error and codes this client does not know: the server
        // did not keep the subscription but may later: try again.
        this._emit("error", new RealtimeError(m.code, m.message, { frame: m }));
        this._awaiting = true;
        const delay = Math.random() * Math.min(this.client._opts.reconnectMaxMs, this.client._opts.reconnectMinMs * 2 ** this._retries++);
        this._retryTimer = setTimeout(() => { if (!this.ended && this._awaiting) this._resubscribe(); }, delay);
      }
      break;
    }
  }
}

/**
 * RealtimeClient connects to a realtime server, keeps its subscriptions
 * across reconnects, and sends proposals and pings.
 *
 * Options: url (ws:// or wss://, required); WebSocket (the constructor;
 * the global one by default); token (a string, or a function returning
 * one or a promise of one, called before every connect: it is sent in the
 * Sec-WebSocket-Protocol header, never in the URL unless tokenInQuery);
 * reconnectMinMs (250), reconnectMaxMs (30000), maxQueueSize (100),
 * requestTimeoutMs (10000), heartbeatMs (30000: after that long without a
 * message the client pings, and reconnects when the next period also
 * passes in silence); onStateChange({ state, code, reason, delay }).
 */
export class RealtimeClient {
  constructor(options) {
    if (!options || typeof options.url !== "string" || !/^wss?:\/\//.test(options.url)) {
      throw new TypeError("RealtimeClient: url must be a ws:// or wss:// URL");
    }
    const o = {
      reconnectMinMs: 250, reconnectMaxMs: 30000, maxQueueSize: 100, requestTimeoutMs: 10000, heartbeatMs: 30000,
      tokenInQuery: false, ...options,
    };
    o.WebSocket = options.WebSocket || globalThis.WebSocket;
    if (typeof o.WebSocket !== "function") throw new TypeError("RealtimeClient: no WebSocket constructor; pass one as options.WebSocket");
    this._opts = o;
    this._subs = new Map();
    this._ws = null;
    this._state = "idle"; // idle, connecting, open, closed (between connections), stopped
    this._attempt = 0;
    this._prompt = false;
    this._queue = []; // requests waiting for a connection
    this._pending = new Map(); // correlationId -> request sent
    this._prefix = randomPrefix();
    this._seq = 0;
    this._opened = null; // the promise connect() returns
    this._timer = null;
    this._heartbeat = null;
    this._heard = true;
    this._tokenRefused = false;
  }

  /** The connection's state: "idle", "connecting", "open", "closed" or "stopped". */
  get state() { return this._state; }

  /** connect starts the client; the promise resolves once it is open, and rejects if it stops first. */
  connect() {
    if (this._state === "stopped") return Promise.reject(new RealtimeError("stopped", "the client is closed"));
    if (!this._opened) {
      this._opened = new Promise((resolve, reject) => { this._resolveOpen = resolve; this._rejectOpen = reject; });
      this._dial();
    }
    return this._opened;
  }

  /** subscribe returns the subscription to shareDataId (the existing one if there is one). */
  subscribe(shareDataId, { since } = {}) {
    let s = this._subs.get(shareDataId);
    if (s) return s;
    s = new Subscription(this, shareDataId, since);
    this._subs.set(shareDataId, s);
    if (this._state === "open") this._send(s._subscribeFrame());
    return s;
  }

  /**
   * propose sends a proposal and resolves with the server's answer, the
   * proposal-result frame ({ accepted, transactionId } or { accepted: false,
   * error }), applied at most once across reconnects (see the top of this
   * file). It rejects with a RealtimeError: "timeout" (the outcome is
   * unknown: it may still be applied, once), "queue-full",
   * "outcome-unknown" (the server no longer remembers its key), "stopped",
   * or an error frame's code.
   */
  propose({ shareDataId, functionId, proposedData }) {
    const key = idempotencyKey();
    return this._request({ v: 1, type: "propose", shareDataId, functionId, proposedData, idempotencyKey: key });
  }

  /** ping resolves with the round trip in milliseconds. */
  ping() {
    const t0 = Date.now();
    return this._request({ v: 1, type: "ping" }).then(() => Date.now() - t0);
  }

  /** close stops the client: the connection closes with 1000, calls waiting fail, subscriptions end. */
  close() {
    if (this._state === "stopped") return;
    this._stop(new RealtimeError("closed", "the client was closed"));
    if (this._ws) this._ws.close(1000, "client closed");
  }

  // --- internals ---

  _setState(state, extra = {}) {
    this._state = state;
    if (this._opts.onStateChange) {
      try { this._opts.onStateChange({ state, ...extra }); } catch (e) { queueMicrotask(() => { throw e; }); }
    }
  }

  async _token() {
    const t = this._opts.token;
    if (typeof t === "function") return t();
    return t;
  }

  async _dial() {
    if (this._state === "stopped") return;
    this._setState("connecting");
    let token;
    try {
      token = await this._token();
    } catch (e) {
      this._scheduleRedial(1006, "token callback failed: " + e.message);
      return;
    }
    if (this._state === "stopped") return;
    if (this._tokenRefused && !token) {
      this._stop(new RealtimeError("unauthorized", "the server refused the token (4002) and the token callback gave no new one"));
      return;
    }
    const protocols = [SUBPROTOCOL];
    let url = this._opts.url;
    if (token) {
      if (this._opts.tokenInQuery) url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
      else protocols.push(TOKEN_PROTOCOL_PREFIX + b64url(token));
    }
    let ws;
    try {
      ws = new this._opts.WebSocket(url, protocols);
    } catch (e) {
      this._scheduleRedial(1006, e.message);
      return;
    }
    this._ws = ws;
    ws.onopen = () => {
      if (ws !== this._ws) return;
      this._attempt = 0;
      this._prompt = false;
      this._tokenRefused = false;
      this._setState("open");
      this._heard = true;
      clearInterval(this._heartbeat);
      this._heartbeat = setInterval(() => this._beat(ws), this._opts.heartbeatMs);
      for (const s of this._subs.values()) this._send(s._subscribeFrame());
      const q = this._queue;
      this._queue = [];
      for (const r of q) this._transmit(r);
      if (this._resolveOpen) { this._resolveOpen(); this._resolveOpen = null; this._rejectOpen = null; }
    };
    ws.onmessage = (e) => {
      if (ws !== this._ws) return;
      this._heard = true;
      let m;
      try { m = JSON.parse(e.data); } catch { ws.close(CLOSE_INVALID_MESSAGE, "not JSON"); return; }
      this._handle(m);
    };
    ws.onerror = () => {}; // the close event that follows says what happened
    ws.onclose = (e) => {
      if (ws !== this._ws) return;
      this._ws = null;
      clearInterval(this._heartbeat);
      this._onClose(e.code, e.reason || "");
    };
  }

  _beat(ws) {
    if (ws !== this._ws) return;
    if (!this._heard) { ws.close(4000, "no message within the heartbeat"); return; }
    this._heard = false;
    this._send({ v: 1, type: "ping", correlationId: this._prefix + "hb" + (++this._seq) });
  }

  _onClose(code, reason) {
    // Keyed proposals in flight go out again first, marked as retries: the
    // server answers a key it applied with that outcome. Past half the
    // server's key window the key may be forgotten: outcome unknown. A
    // ping in flight just fails.
    const again = [];
    for (const r of this._pending.values()) {
      if (r.m.idempotencyKey === undefined) {
        r.fail(new RealtimeError("connection-lost", "the connection was lost before the answer", { closeCode: code }));
      } else if (Date.now() - r.born < KEY_WINDOW_AGE_MS / 2) {
        r.m.retry = true;
        again.push(r);
      } else {
        r.fail(new RealtimeError("outcome-unknown", "the connection was lost and the proposal is too old to be sent again", { closeCode: code }));
      }
    }
    this._pending.clear();
    again.sort((a, b) => a.born - b.born);
    this._queue = again.concat(this._queue);
    if (this._state === "stopped") return;
    if (code === CLOSE_INVALID_MESSAGE) {
      this._stop(new RealtimeError("invalid-message", "the server could not read a message of this client: " + reason, { closeCode: code }), { code, reason });
      return;
    }
    if (code === CLOSE_UNAUTHORIZED) {
      if (typeof this._opts.token !== "function") {
        this._stop(new RealtimeError("unauthorized", "the server refused the connection's token (4002): " + reason, { closeCode: code }), { code, reason });
        return;
      }
      this._tokenRefused = true; // redial only if the callback yields a token
    }
    this._prompt = code === 1001 || code === 1012 || code === CLOSE_FELL_BEHIND;
    this._scheduleRedial(code, reason);
  }

  _scheduleRedial(code, reason) {
    const o = this._opts;
    const bound = this._prompt ? o.reconnectMinMs : Math.min(o.reconnectMaxMs, o.reconnectMinMs * 2 ** this._attempt++);
    this._prompt = false;
    const delay = Math.random() * bound;
    this._setState("closed", { code, reason, delay });
    this._timer = setTimeout(() => this._dial(), delay);
  }

  _stop(err, close = {}) {
    if (this._state === "stopped") return;
    clearTimeout(this._timer);
    clearInterval(this._heartbeat);
    this._setState("stopped", { error: err, ...close });
    for (const r of this._queue) r.fail(err);
    this._queue = [];
    for (const r of this._pending.values()) r.fail(err);
    this._pending.clear();
    for (const s of [...this._subs.values()]) s._end(err);
    if (this._rejectOpen) { this._rejectOpen(err); this._resolveOpen = null; this._rejectOpen = null; }
    this.stopReason = err;
  }

  _send(m) {
    if (this._ws && this._state === "open") this._ws.send(JSON.stringify(m));
  }

  _request(m) {
    return new Promise((resolve, reject) => {
      if (this._state === "stopped") { reject(new RealtimeError("stopped", "the client is closed")); return; }
      const r = { m, done: false, born: Date.now() };
      r.fail = (err) => { if (!r.done) { r.done = true; clearTimeout(r.timer); reject(err); } };
      r.succeed = (v) => { if (!r.done) { r.done = true; clearTimeout(r.timer); resolve(v); } };
      r.timer = setTimeout(() => {
        this._queue = this._queue.filter((x) => x !== r);
        if (m.correlationId) this._pending.delete(m.correlationId);
        r.fail(new RealtimeError("timeout", "no answer within " + this._opts.requestTimeoutMs + " ms of the call"));
      }, this._opts.requestTimeoutMs);
      if (this._state === "open") { this._transmit(r); return; }
      if (this._queue.length >= this._opts.maxQueueSize) {
        r.fail(new RealtimeError("queue-full", "already " + this._opts.maxQueueSize + " calls wait for a connection"));
        return;
      }
      this._queue.push(r);
    });
  }

  _transmit(r) {
    if (r.done) return;
    r.m.correlationId = this._prefix + (++this._seq);
    this._pending.set(r.m.correlationId, r);
    this._send(r.m);
  }

  _handle(m) {
    if (m.type === "proposal-result" || m.type === "pong" || (m.type === "error" && m.correlationId)) {
      const r = this._pending.get(m.correlationId);
      if (!r) return; // a heartbeat's pong, or an answer after a timeout
      this._pending.delete(m.correlationId);
      if (m.type === "error") r.fail(new RealtimeError(m.code, m.message, { frame: m }));
      else if (m.type === "proposal-result" && m.code === "outcome-unknown") {
        r.fail(new RealtimeError("outcome-unknown", m.error, { frame: m }));
      } else if (m.type === "proposal-result") {
        const out = { accepted: m.accepted };
        if (m.transactionId !== undefined) out.transactionId = m.transactionId;
        if (m.error !== undefined) out.error = m.error;
        if (m.code !== undefined) out.code = m.code; // "rate-limited"
        r.succeed(out);
      } else r.succeed(m);
      return;
    }
    const s = this._subs.get(m.shareDataId);
    if (s) s._receive(m);
  }
}
