// A small natlog client, written from docs/protocol.md alone: NATS
// request-reply, headers, and msgpack bodies. It needs no natlog library.
//
// Numbers:
// - offsets are JS numbers. An offset is an unsigned 64-bit integer on the
//   wire; a number holds every offset up to 2^53 - 1 exactly (9e15 records),
//   and toOffset throws rather than round beyond that.
// - times are BigInt Unix nanoseconds (an int64 on the wire, and about
//   1.7e18 today: far beyond 2^53, so a number would round them).
//   Convert with `new Date(Number(time / 1_000_000n))` when you want a Date.
//
// Values are bytes: append takes a string (sent as UTF-8) or a Uint8Array;
// reads return Uint8Array (decode text with new TextDecoder().decode(value)).
//
// Headers, given and returned, are plain objects of arrays of strings:
// { "Trace-Id": ["abc"] }. A single string is accepted for one value.
// NATS header names are case-sensitive; nats.js trims values of white space.

import { headers as natsHeaders } from "@nats-io/transport-node";
import { decode, encode } from "@msgpack/msgpack";

const MSGPACK = "application/msgpack";
const text = new TextEncoder();

/** An error reply: a reply with a Status header (docs/protocol.md, Errors). */
export class NatlogError extends Error {
  constructor(code, errCode, description) {
    super(`natlog: ${code}/${errCode}: ${description}`);
    this.name = "NatlogError";
    this.code = code; // the status: 400, 404, 409, 413, 500
    this.err_code = errCode; // what precisely went wrong: 10011 offset out of range, ...
    this.description = description;
  }
}

/** A natlog client over a connected nats.js NatsConnection. */
export class Natlog {
  /**
   * @param nc a NatsConnection (from connect() of @nats-io/transport-node)
   * @param prefix the node's subject prefix (--prefix), "natlog" by default
   * @param timeout how long to wait for a reply, in ms (a long poll adds its wait_ms)
   */
  constructor(nc, { prefix = "natlog", timeout = 5000 } = {}) {
    this.nc = nc;
    this.prefix = prefix;
    this.timeout = timeout;
  }

  /** Appends one record and returns its offset. */
  async append(log, value, { headers, msgId } = {}) {
    const h = toNatsHeaders(headers);
    if (msgId !== undefined) h.set("Natlog-Msg-Id", msgId);
    const reply = await this.#request("append", log, toBytes(value), h);
    return toOffset(reply.json().offset);
  }

  /**
   * Appends records [{value, headers}] atomically, with consecutive offsets,
   * and returns {first, last, count}.
   */
  async appendBatch(log, records, { msgId } = {}) {
    const body = encode(
      { records: records.map((r) => ({ value: toBytes(r.value), headers: toHeaderMap(r.headers) })) },
      { ignoreUndefined: true },
    );
    const h = natsHeaders();
    h.set("Content-Type", MSGPACK);
    if (msgId !== undefined) h.set("Natlog-Msg-Id", msgId);
    const { first, last, count } = (await this.#request("append", log, body, h)).json();
    return { first: toOffset(first), last: toOffset(last), count };
  }

  /** Reads the record at offset: {offset, time, headers, value}. */
  async read(log, offset) {
    const reply = await this.#request("read", log, text.encode(String(offset)));
    const headers = {};
    for (const key of reply.headers.keys()) {
      if (key !== "Natlog-Offset" && key !== "Natlog-Time") headers[key] = reply.headers.values(key);
    }
    return {
      offset: toOffset(reply.headers.get("Natlog-Offset")),
      time: BigInt(reply.headers.get("Natlog-Time")),
      headers,
      value: reply.data,
    };
  }

  /**
   * Reads records from offset: the decoded ReadReply {log, records, next,
   * lowest, end}, each record {offset, time, headers, value}. At the end of
   * the log the node waits up to waitMs for a record (long polling).
   */
  async readBatch(log, offset, { max, maxBytes, waitMs } = {}) {
    const body = encode(
      { offset, max, max_bytes: maxBytes, wait_ms: waitMs },
      { ignoreUndefined: true },
    );
    const h = natsHeaders();
    h.set("Content-Type", MSGPACK);
    const reply = await this.#request("read", log, body, h, this.timeout + (waitMs ?? 0));
    const r = decode(reply.data, { useBigInt64: true });
    return {
      log: r.log,
      records: r.records.map((rec) => ({
        offset: toOffset(rec.offset),
        time: BigInt(rec.time),
        headers: rec.headers ?? {},
        value: rec.value,
      })),
      next: toOffset(r.next),
      lowest: toOffset(r.lowest),
      end: toOffset(r.end),
    };
  }

  /**
   * Calls onRecord (awaited) for every record from offset `from` on, in
   * order, waiting for new ones with long-polling batch reads, until signal
   * aborts. Returns the offset to continue from. An error (a NatlogError,
   * or a NATS error such as a timeout) ends the loop and is thrown.
   */
  async follow(log, from, onRecord, { signal, waitMs = 5000, max } = {}) {
    let next = from;
    while (!signal?.aborted) {
      let reply;
      try {
        reply = await untilAborted(this.readBatch(log, next, { waitMs, max }), signal);
      } catch (err) {
        if (signal?.aborted) break;
        throw err;
      }
      for (const record of reply.records) {
        await onRecord(record);
        next = record.offset + 1;
        if (signal?.aborted) return next;
      }
      next = reply.next;
    }
    return next;
  }

  /** Sends a request on <prefix>.<op>.<log>; throws NatlogError on an error reply. */
  async #request(op, log, body, headers, timeout = this.timeout) {
    const subject = `${this.prefix}.${op}.${log}`;
    const opts = { timeout };
    if (headers?.keys().length) opts.headers = headers;
    const reply = await this.nc.request(subject, body, opts);
    throwIfError(reply);
    return reply;
  }
}

/** Throws the NatlogError that reply carries, if it has a Status header. */
export function throwIfError(reply) {
  const status = reply.headers?.get("Status");
  if (!status) return;
  // The body says it all, in JSON or (for a msgpack request) msgpack; the
  // headers are the fallback should it not decode.
  let e = {};
  try {
    const body = reply.headers.get("Content-Type") === MSGPACK ? decode(reply.data) : reply.json();
    e = body.error ?? {};
  } catch {
    // keep the headers' version
  }
  throw new NatlogError(
    e.code ?? Number(status),
    e.err_code ?? 0,
    e.description ?? reply.headers.get("Description"),
  );
}

/** An offset as a number, refusing one a number would round. */
export function toOffset(v) {
  const n = v === "" || v == null ? NaN : Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`offset ${v} is not a safe integer`);
  return n;
}

function toBytes(value) {
  return typeof value === "string" ? text.encode(value) : value;
}

// {k: v | [v...]} -> {k: [v...]}, or undefined for none.
function toHeaderMap(headers) {
  if (!headers) return undefined;
  return Object.fromEntries(Object.entries(headers).map(([k, v]) => [k, [v].flat()]));
}

function toNatsHeaders(headers) {
  const h = natsHeaders();
  for (const [k, vs] of Object.entries(toHeaderMap(headers) ?? {})) {
    for (const v of vs) h.append(k, v);
  }
  return h;
}

// Settles as promise does, or rejects when signal aborts first. The
// request itself goes on until its reply or timeout; its outcome is ignored.
function untilAborted(promise, signal) {
  if (!signal) return promise;
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    if (signal.aborted) return onAbort();
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}
