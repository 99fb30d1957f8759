// A worked natlog client session: append, append a batch, read, read a
// batch, and follow the log. Every step checks what it gets back; the
// script exits 0 only if every check holds.
//
//   node example.mjs [log]      (NATS_URL, default nats://127.0.0.1:4222;
//                                log from argv, NATLOG_LOG, or a new name)

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { connect } from "@nats-io/transport-node";
import { Natlog, NatlogError } from "./natlog.mjs";

const url = process.env.NATS_URL || "nats://127.0.0.1:4222";
const log = process.argv[2] || process.env.NATLOG_LOG || `example-${Date.now()}-${process.pid}`;
const str = (bytes) => new TextDecoder().decode(bytes);

const nc = await connect({ servers: url });
const natlog = new Natlog(nc);
console.log(`connected to ${url}; log ${log}`);

try {
  // 1. One record, with a header and a deduplication id. A retry with the
  // same id (after a timeout, say) is not written again.
  const msgId = randomUUID();
  const first = await natlog.append(log, "hello", { headers: { "Trace-Id": "abc" }, msgId });
  console.log(`append: "hello" at offset ${first}`);
  assert.equal(await natlog.append(log, "hello", { msgId }), first);

  // 2. A batch of three: consecutive offsets right after it.
  const values = ["one", "two", "three"];
  const batch = await natlog.appendBatch(log, [
    { value: "one", headers: { Kind: "number" } },
    { value: "two" },
    { value: "three" },
  ]);
  console.log(`appendBatch: offsets ${batch.first}..${batch.last} (${batch.count} records)`);
  assert.deepEqual(batch, { first: first + 1, last: first + 3, count: 3 });

  // 3. Read the first record back: value, headers, offset and time.
  const rec = await natlog.read(log, first);
  console.log(`read: offset ${rec.offset} "${str(rec.value)}" time ${rec.time} headers ${JSON.stringify(rec.headers)}`);
  assert.equal(rec.offset, first);
  assert.equal(str(rec.value), "hello");
  assert.deepEqual(rec.headers["Trace-Id"], ["abc"]);
  assert.deepEqual(rec.headers["Natlog-Msg-Id"], [msgId]);
  assert.equal(typeof rec.time, "bigint");
  assert.ok(rec.time > 1_600_000_000_000_000_000n, "time is Unix nanoseconds");

  // 4. Read all four as one batch.
  const all = ["hello", ...values];
  const got = await natlog.readBatch(log, first, { max: 100 });
  console.log(`readBatch: ${got.records.length} records, next ${got.next}, end ${got.end}`);
  assert.deepEqual(got.records.map((r) => [r.offset, str(r.value)]), all.map((v, i) => [first + i, v]));
  assert.deepEqual(got.records[1].headers, { Kind: ["number"] });
  assert.equal(got.next, first + 4);

  // 5. An error reply becomes a NatlogError: reading past the end is 404/10011.
  await assert.rejects(natlog.read(log, first + 1000), (err) => {
    console.log(`read past the end: ${err.message}`);
    return err instanceof NatlogError && err.code === 404 && err.err_code === 10011;
  });

  // 6. Follow the log from the first record: the four above, then one
  // appended while the follower waits at the end of the log (long polling).
  const followed = [];
  const stop = new AbortController();
  const timeout = setTimeout(() => stop.abort(new Error("timed out")), 20_000);
  let late;
  await natlog.follow(log, first, async (r) => {
    console.log(`follow: offset ${r.offset} "${str(r.value)}"`);
    followed.push([r.offset, str(r.value)]);
    if (followed.length === 4) {
      // Not awaited: the follower goes on to wait for the next record.
      late = natlog.append(log, "late");
    }
    if (followed.length === 5) stop.abort();
  }, { signal: stop.signal, waitMs: 5000 });
  clearTimeout(timeout);
  assert.equal(await late, first + 4);
  assert.deepEqual(followed, [...all, "late"].map((v, i) => [first + i, v]));

  console.log("ok: every check held");
} catch (err) {
  console.error(`FAILED: ${err.stack ?? err}`);
  process.exitCode = 1;
} finally {
  await nc.close();
}
