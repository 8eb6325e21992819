// The client's tests, against the real Go server of this repository
// (cmd/jstestserver), built and started here. Run with: node --test test/
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import net from "node:net";
import WebSocket from "ws";

import { RealtimeClient, RealtimeError } from "../realtime.js";

const repo = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
let server, base, wsBase;

before(async () => {
  const bin = join(mkdtempSync(join(tmpdir(), "jstestserver-")), "jstestserver");
  execFileSync("go", ["build", "-o", bin, "./cmd/jstestserver"], { cwd: repo, stdio: "inherit" });
  server = spawn(bin, [], { stdio: ["pipe", "pipe", "inherit"] });
  const addr = await new Promise((resolve, reject) => {
    let buf = "";
    server.stdout.on("data", (d) => {
      buf += d;
      const m = buf.match(/listening (\S+)/);
      if (m) resolve(m[1]);
    });
    server.on("exit", (code) => reject(new Error("jstestserver exited " + code)));
  });
  base = "http://" + addr;
  wsBase = "ws://" + addr;
});

after(() => { server.stdin.end(); });

async function control(path) {
  const r = await fetch(base + path);
  if (!r.ok) throw new Error(path + ": " + r.status + " " + (await r.text()));
  return r.text();
}
const apply = async (id, n, pad = 0) => JSON.parse(await control(`/control/apply?id=${id}&n=${n}&pad=${pad}`)).last;
const serverState = async (id) => JSON.parse(await control("/control/state?id=" + id));

function client(opts = {}) {
  const c = new RealtimeClient({ url: wsBase + "/realtime", WebSocket, reconnectMinMs: 10, reconnectMaxMs: 200, ...opts });
  return c;
}

// waitFor polls cond (an event-driven wait would need a hook per case;
// the conditions here are about what arrived, so polling is exact).
async function waitFor(what, cond, ms = 10000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 5));
  }
}

// record collects a subscription's events.
function record(sub) {
  const r = { states: [], txs: [], errors: [], lifecycle: [], ended: null };
  sub.on("state", (m) => r.states.push(m));
  sub.on("transaction", (m) => r.txs.push(m));
  sub.on("error", (e) => r.errors.push(e));
  sub.on("lifecycle", (m) => r.lifecycle.push(m));
  sub.on("end", (e) => { r.ended = e; });
  return r;
}

function assertChain(txs, from) {
  let cur = from;
  const seen = new Set();
  for (const t of txs) {
    assert.equal(t.previousTransactionId, cur, `transaction ${t.transactionId} follows ${t.previousTransactionId}, not ${cur}`);
    assert.ok(!seen.has(t.transactionId), "duplicate " + t.transactionId);
    seen.add(t.transactionId);
    cur = t.transactionId;
  }
  return cur;
}

test("subscribe, propose, ping: the seed's API", async () => {
  const c = client();
  await c.connect();
  const sub = c.subscribe("doc");
  const r = record(sub);
  await waitFor("the state", () => r.states.length === 1);
  const res = await c.propose({ shareDataId: "doc", functionId: "increment", proposedData: { by: 2 } });
  assert.equal(res.accepted, true);
  assert.ok(res.transactionId);
  await waitFor("the transaction", () => r.txs.some((t) => t.transactionId === res.transactionId));
  const refused = await c.propose({ shareDataId: "doc", functionId: "increment", proposedData: { by: "two" } });
  assert.equal(refused.accepted, false);
  assert.match(refused.error, /proposedData must be/);
  assert.equal(typeof (await c.ping()), "number");
  assert.equal(sub.cursor, res.transactionId);
  c.close();
  assert.equal(c.state, "stopped");
  await assert.rejects(c.propose({ shareDataId: "doc", functionId: "increment", proposedData: { by: 1 } }), (e) => e.code === "stopped");
});

test("a proposal applied whose result is lost is sent again with its key: applied once, settled with its transaction", async () => {
  const states = [];
  const c = client({ onStateChange: (sc) => states.push(sc.state) });
  try {
    await c.connect();
    const sub = c.subscribe("doc");
    const r = record(sub);
    await waitFor("the state", () => r.states.length === 1);
    const before = (await serverState("doc")).state.count;
    // incrementAndCut cuts every WebSocket's TCP while it applies: the
    // transaction is committed, its result never reaches this client.
    const res = await c.propose({ shareDataId: "doc", functionId: "incrementAndCut", proposedData: { by: 1 } });
    assert.equal(res.accepted, true);
    assert.equal(states.filter((st) => st === "closed").length, 1, "the connection was cut once: " + states.join(","));
    assert.equal((await serverState("doc")).state.count, before + 1, "applied once");
    // The transaction carries the key, live or replayed after the cut.
    await waitFor("the transaction", () => r.txs.some((t) => t.transactionId === res.transactionId));
    const tx = r.txs.find((t) => t.transactionId === res.transactionId);
    assert.match(tx.idempotencyKey, /^[A-Za-z0-9_-]{22}$/);
    assert.equal(r.txs.filter((t) => t.idempotencyKey === tx.idempotencyKey).length, 1);
  } finally {
    c.close(); // also when an assertion failed, so nothing keeps the test process alive
  }
});

test("a server restart: reconnect, and the missed transactions are replayed exactly once, in order", async () => {
  const c = client();
  const states = [];
  const c2 = new RealtimeClient({ url: wsBase + "/realtime", WebSocket, reconnectMinMs: 10, reconnectMaxMs: 100, onStateChange: (s) => states.push(s) });
  await c2.connect();
  const r = record(c2.subscribe("doc"));
  await waitFor("the state", () => r.states.length === 1);
  const start = r.states[0].lastTransactionId;
  await apply("doc", 2);
  await waitFor("two live", () => r.txs.length === 2);
  await control("/control/down");
  await waitFor("the 1001", () => states.some((s) => s.state === "closed" && s.code === 1001));
  const last = await apply("doc", 3);
  await control("/control/up");
  await waitFor("the replay", () => c2.subscribe("doc").cursor === last);
  assert.equal(r.txs.length, 5);
  assertChain(r.txs, start);
  assert.deepEqual(r.txs.map((t) => t.replayed === true), [false, false, true, true, true]);
  assert.equal(r.errors.length, 0);
  c2.close();
  c.close();
});

// cutProxy forwards to the server and cuts the first connection after
// limit bytes from the server.
function cutProxy(limit) {
  const addr = new URL(wsBase).host.split(":");
  let first = true;
  const srv = net.createServer((down) => {
    const up = net.connect(Number(addr[1]), addr[0]);
    const cut = first;
    first = false;
    let n = 0;
    up.on("data", (d) => {
      if (cut) {
        n += d.length;
        if (n > limit) { down.destroy(); up.destroy(); return; }
      }
      down.write(d);
    });
    down.on("data", (d) => up.write(d));
    up.on("error", () => down.destroy());
    down.on("error", () => up.destroy());
    up.on("close", () => down.destroy());
    down.on("close", () => up.destroy());
  });
  return new Promise((resolve) => srv.listen(0, "127.0.0.1", () => resolve(srv)));
}

test("a cut in the middle of a large replay loses nothing", async () => {
  const proxy = await cutProxy(1 << 20); // 1 MiB into the replay
  const url = "ws://127.0.0.1:" + proxy.address().port + "/realtime";
  const before = await serverState("big");
  const last = await apply("big", 60, 60 << 10); // 60 x 60 KiB
  const c = new RealtimeClient({ url, WebSocket, reconnectMinMs: 10, reconnectMaxMs: 100 });
  const sub = c.subscribe("big", { since: before.lastTransactionId });
  const r = record(sub);
  await c.connect();
  await waitFor("the whole replay", () => sub.cursor === last, 20000);
  assert.equal(r.txs.length, 60);
  assertChain(r.txs, before.lastTransactionId);
  assert.equal(r.errors.length, 0);
  c.close();
  proxy.close();
});

test("the queue bound and call-time timeouts while disconnected", async () => {
  const c = new RealtimeClient({ url: "ws://127.0.0.1:1/realtime", WebSocket, maxQueueSize: 3, requestTimeoutMs: 300, reconnectMinMs: 50, reconnectMaxMs: 50 });
  c.connect().catch(() => {});
  const t0 = Date.now();
  const calls = [1, 2, 3].map(() => c.propose({ shareDataId: "doc", functionId: "increment", proposedData: { by: 1 } }));
  await assert.rejects(c.ping(), (e) => e instanceof RealtimeError && e.code === "queue-full");
  assert.ok(Date.now() - t0 < 100, "the fourth call failed at once");
  for (const p of calls) await assert.rejects(p, (e) => e.code === "timeout");
  const took = Date.now() - t0;
  assert.ok(took >= 290 && took < 1500, "timeouts count from the call: " + took + " ms");
  c.close();
});

test("calls queued while disconnected go out in order once connected", async () => {
  await control("/control/down");
  const c = client();
  c.connect();
  const p = [1, 2, 3].map((by) => c.propose({ shareDataId: "doc", functionId: "increment", proposedData: { by } }));
  await new Promise((r) => setTimeout(r, 100));
  await control("/control/up");
  const res = await Promise.all(p);
  assert.ok(res.every((x) => x.accepted));
  c.close();
});

test("4001: reconnects at once and is replayed", async () => {
  const states = [];
  const c = client({ url: wsBase + "/realtime?script=close-4001&key=k4001", onStateChange: (s) => states.push(s) });
  const r = record(c.subscribe("doc"));
  await c.connect();
  await waitFor("the state after the reconnect", () => r.states.length === 1);
  const closed = states.find((s) => s.state === "closed");
  assert.equal(closed.code, 4001);
  assert.ok(closed.delay <= 10, "prompt redial: " + closed.delay);
  assert.equal(r.ended, null);
  c.close();
});

test("4002: stops without a token callback, asks it for a new token otherwise", async () => {
  const c = client({ token: "expiring:200" });
  const r = record(c.subscribe("doc"));
  await c.connect();
  await waitFor("the stop", () => c.state === "stopped", 5000);
  assert.equal(c.stopReason.code, "unauthorized");
  assert.match(c.stopReason.message, /4002/);
  assert.ok(r.ended);

  let calls = 0;
  const c2 = client({ token: () => (++calls === 1 ? "expiring:200" : "good") });
  const r2 = record(c2.subscribe("doc"));
  await c2.connect();
  await waitFor("a second token", () => calls === 2 && c2.state === "open", 5000);
  await waitFor("the state again", () => r2.states.length === 2);
  assert.equal(r2.ended, null);
  c2.close();

  const c3 = client({ token: () => (++calls > 100 ? "" : calls === 3 ? "expiring:100" : "") });
  await c3.connect();
  await waitFor("no new token: stopped", () => c3.state === "stopped", 5000);
  c3.close();
});

test("4003: ends only the subscription its frame names", async () => {
  const c = client();
  const good = record(c.subscribe("doc"));
  const bad = record(c.subscribe("no-such-thing"));
  await c.connect();
  await waitFor("the unknown one ends", () => bad.ended !== null);
  assert.equal(bad.ended.code, "unknown-share-data");
  await waitFor("the other goes on after the reconnect", () => good.states.length === 2);
  assert.equal(good.ended, null);
  assert.equal(c.state, "open");
  c.close();
});

test("4004: stops and says why", async () => {
  const c = client({ url: wsBase + "/realtime?script=close-4004&key=k4004" });
  c.subscribe("doc");
  await assert.rejects(c.connect().then(() => waitFor("stop", () => c.state === "stopped")).then(() => { throw c.stopReason; }),
    (e) => e.code === "invalid-message" && /scripted close 4004/.test(e.message));
});

test("1012: reconnects at once", async () => {
  const states = [];
  const c = client({ url: wsBase + "/realtime?script=close-1012&key=k1012", reconnectMinMs: 10, onStateChange: (s) => states.push(s) });
  const r = record(c.subscribe("doc"));
  await c.connect();
  await waitFor("the state", () => r.states.length === 1);
  assert.equal(states.find((s) => s.state === "closed").code, 1012);
  c.close();
});

test("a gap or a duplicate is not shown: the subscription restarts from its cursor", async () => {
  const c = client({ url: wsBase + "/realtime?script=gap&key=kgap" });
  const sub = c.subscribe("doc");
  const r = record(sub);
  await c.connect();
  await waitFor("the third state", () => r.states.length === 3);
  assert.deepEqual(r.txs.map((t) => t.transactionId), ["t1"]);
  assert.equal(sub.cursor, "t1");
  const sent = JSON.parse(await control("/control/log?key=kgap"));
  assert.deepEqual(sent.map((m) => m.since), [undefined, "t0", "t1"]);
  c.close();
});

test("replay-cursor-not-found: an error event after the fresh state", async () => {
  const c = client();
  const sub = c.subscribe("doc", { since: "from-another-history" });
  const r = record(sub);
  await c.connect();
  await waitFor("the error", () => r.errors.length === 1);
  assert.equal(r.errors[0].code, "replay-cursor-not-found");
  assert.equal(r.states.length, 1);
  assert.equal(sub.cursor, r.states[0].lastTransactionId);
  assert.equal(r.ended, null);
  c.close();
});

test("the token goes in the subprotocol, not the URL", async () => {
  let seenUrl, seenProtocols;
  class Spy extends WebSocket {
    constructor(url, protocols) { seenUrl = url; seenProtocols = protocols; super(url, protocols); }
  }
  const c = new RealtimeClient({ url: wsBase + "/realtime", WebSocket: Spy, token: "good" });
  await c.connect();
  assert.ok(!seenUrl.includes("good"));
  assert.deepEqual(seenProtocols, ["realtime.v1", "base64url.bearer.realtime.Z29vZA"]);
  c.close();
});

test("the cursor given with each event is the resume point after it, also when saved after an await", async () => {
  const c = client();
  await c.connect();
  const sub = c.subscribe("doc");
  const saved = []; // [transactionId, cursor given, sub.cursor read after an await]
  let state = false;
  sub.on("state", () => { state = true; });
  sub.on("transaction", async (m, cursor) => {
    await new Promise((r) => setTimeout(r, 0)); // handling takes a moment
    saved.push([m.transactionId, cursor, sub.cursor]);
  });
  await waitFor("the state", () => state);
  const last = await apply("doc", 200);
  await waitFor("the transactions", () => saved.length === 200 && saved[199][0] === last);
  let ahead = 0;
  for (const [id, cursor, getter] of saved) {
    assert.equal(cursor, id, "the cursor given with a transaction is its id");
    if (getter !== id) ahead++;
  }
  // Without the cursor given with each event, an application saving
  // sub.cursor after an await would have resumed past what it handled.
  assert.ok(ahead > 0, "sub.cursor read after an await was never past its event: the test did not load the client");
  // Resume from the cursor saved after the 100th: the first transaction
  // replayed follows it.
  const resumeFrom = saved[99][1];
  const c2 = client();
  await c2.connect();
  const sub2 = c2.subscribe("doc", { since: resumeFrom });
  const r2 = record(sub2);
  await waitFor("the replay", () => r2.txs.length >= 1);
  assert.equal(r2.txs[0].previousTransactionId, resumeFrom);
  assertChain(r2.txs, resumeFrom);
  c.close();
  c2.close();
});
