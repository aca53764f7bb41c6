// Key ranges in etcd's terms.

/** The range end that covers every key starting with `prefix` (etcd's "prefix" semantics). */
export function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i]! += 1;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]); // all 0xff: to the end of the key space
}

/**
 * One page of a range read, as the wire has it: `spans` holds, per key, the start and end of its
 * key and of its value in `buf` (four numbers per key). Revisions and counts are numbers (etcd's
 * revisions stay far below 2^53).
 */
export interface RangePage {
  /** The store's revision the page was read at (the response header's). */
  revision: number;
  /** How many keys the range holds in all (etcd counts them for every page). */
  count: number;
  /** More keys follow beyond the page's limit. */
  more: boolean;
  buf: Buffer;
  spans: number[];
}

/**
 * Decodes an etcd RangeResponse (rpc.proto: header = 1 { revision = 3 }, kvs = 2 { key = 1,
 * value = 5 }, more = 3, count = 4) keeping only what a full read uses. etcd3's generic decoding
 * makes a Long for each of a key's four int64 fields and a Buffer for its key and its value, then
 * turns it all into a plain object: at 110,000 keys that was about a third of a whole `-once`
 * run. Unknown fields are skipped as protobuf's wire format says.
 */
export function decodeRangePage(buf: Buffer): RangePage {
  const page: RangePage = { revision: 0, count: 0, more: false, buf, spans: [] };
  const r = new WireReader(buf);
  while (r.pos < buf.length) {
    const tag = r.varint();
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    if (field === 1 && wire === 2) {
      const end = r.lengthEnd();
      while (r.pos < end) {
        const t = r.varint();
        if (t === (3 << 3)) page.revision = r.varint();
        else r.skipField(t & 7);
      }
      r.endAt(end);
    } else if (field === 2 && wire === 2) {
      const end = r.lengthEnd();
      let key0 = 0, key1 = 0, val0 = 0, val1 = 0;
      while (r.pos < end) {
        const t = r.varint();
        if (t === ((1 << 3) | 2)) {
          key1 = r.lengthEnd();
          key0 = r.pos;
          r.pos = key1;
        } else if (t === ((5 << 3) | 2)) {
          val1 = r.lengthEnd();
          val0 = r.pos;
          r.pos = val1;
        } else r.skipField(t & 7);
      }
      r.endAt(end);
      page.spans.push(key0, key1, val0, val1);
    } else if (field === 3 && wire === 0) page.more = r.varint() !== 0;
    else if (field === 4 && wire === 0) page.count = r.varint();
    else r.skipField(wire);
  }
  r.endAt(buf.length);
  return page;
}

/** A cursor over protobuf's wire format: varints as numbers, length-delimited fields, skips. */
class WireReader {
  pos = 0;
  constructor(private readonly buf: Buffer) {}

  varint(): number {
    let n = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
      const b = this.buf[this.pos++];
      if (b === undefined) throw new Error("etcd: truncated varint in RangeResponse");
      n += (b & 0x7f) * scale;
      if (b < 0x80) return n;
      scale *= 128;
    }
    throw new Error("etcd: malformed varint in RangeResponse");
  }

  /** Reads a length prefix; returns where the field ends (the cursor is at its first byte). */
  lengthEnd(): number {
    const length = this.varint();
    const end = this.pos + length;
    if (end > this.buf.length) throw new Error("etcd: truncated field in RangeResponse");
    return end;
  }

  /** The cursor must be exactly at the end of a field (a skip past it: a malformed message). */
  endAt(end: number): void {
    if (this.pos !== end) throw new Error("etcd: malformed RangeResponse");
  }

  skipField(wire: number): void {
    if (wire === 0) this.varint();
    else if (wire === 1) this.pos += 8;
    else if (wire === 2) this.pos = this.lengthEnd();
    else if (wire === 5) this.pos += 4;
    else throw new Error(`etcd: unexpected wire type ${wire} in RangeResponse`);
  }
}
