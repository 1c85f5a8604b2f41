/**
 * The receive state machine: bytes from the socket in, whole PDUs out (BHS → AHS → header
 * digest → data → padding → data digest). Every length is checked against the negotiated
 * limit before anything is buffered for it, so a peer cannot make us allocate more than one
 * data segment. Any split of the byte stream into reads yields the same PDUs.
 */
import { BHS_LENGTH } from './constants';
import { digestOf, readDigest } from './digest';
import { IscsiError, IscsiErrorCode } from './errors';
import { ahsLength, dataSegmentLength, opcode, padLength, type Pdu } from './pdu';

export class PduReader {
  /** Set once digests are negotiated; applies to the next PDU parsed. */
  headerDigest = false;
  dataDigest = false;
  private chunks: Buffer[] = [];
  private buffered = 0;
  private bhs?: Buffer;
  private failed?: IscsiError;
  /** PDUs parsed so far (for error messages). */
  count = 0;

  constructor(public maxDataSegment: number, private readonly onPdu: (pdu: Pdu) => void) {}

  /** Feed bytes; calls onPdu synchronously for each complete PDU. Throws IscsiError on a stream it cannot parse. */
  push(chunk: Buffer): void {
    if (this.failed) throw this.failed;
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    try {
      this.drain();
    } catch (e) {
      if (e instanceof IscsiError) {
        this.failed = e;
        this.chunks = [];
        this.buffered = 0;
      }
      throw e;
    }
  }

  /** Bytes held waiting for the rest of a PDU. */
  get pending(): number {
    return this.buffered + (this.bhs ? BHS_LENGTH : 0);
  }

  private drain(): void {
    for (;;) {
      if (!this.bhs) {
        if (this.buffered < BHS_LENGTH) return;
        this.bhs = this.take(BHS_LENGTH);
        const dlen = dataSegmentLength(this.bhs);
        if (dlen > this.maxDataSegment) {
          throw new IscsiError(IscsiErrorCode.PduTooLarge, `PDU #${this.count + 1} (opcode 0x${opcode(this.bhs).toString(16)}) declares a ${dlen}-byte data segment, limit ${this.maxDataSegment}`);
        }
      }
      const bhs = this.bhs;
      const ahsLen = ahsLength(bhs);
      const dlen = dataSegmentLength(bhs);
      const pad = padLength(dlen);
      const hd = this.headerDigest ? 4 : 0;
      const dd = this.dataDigest && dlen > 0 ? 4 : 0;
      const rest = ahsLen + hd + dlen + pad + dd;
      if (this.buffered < rest) return;
      this.bhs = undefined;
      const ahs = ahsLen ? this.take(ahsLen) : undefined;
      if (hd) {
        const want = readDigest(this.take(4));
        const got = digestOf(ahs ? [bhs, ahs] : [bhs]);
        if (want !== got) throw new IscsiError(IscsiErrorCode.HeaderDigest, `header digest mismatch on PDU #${this.count + 1} (opcode 0x${opcode(bhs).toString(16)})`);
      }
      let data = dlen ? this.take(dlen + pad) : EMPTY;
      if (dd) {
        const want = readDigest(this.take(4));
        if (want !== digestOf([data])) {
          throw new IscsiError(IscsiErrorCode.DataDigest, `data digest mismatch on PDU #${this.count + 1} (opcode 0x${opcode(bhs).toString(16)}, ${dlen} bytes)`);
        }
      }
      if (pad) data = data.subarray(0, dlen);
      this.count++;
      this.onPdu(ahs ? { bhs, ahs, data } : { bhs, data });
    }
  }

  /** The next n buffered bytes: a view when they lie in one chunk, else one copy. */
  private take(n: number): Buffer {
    const first = this.chunks[0];
    this.buffered -= n;
    if (first.length > n) {
      this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    if (first.length === n) {
      this.chunks.shift();
      return first;
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const c = this.chunks[0];
      const k = Math.min(c.length, n - off);
      c.copy(out, off, 0, k);
      off += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    return out;
  }
}

const EMPTY = Buffer.alloc(0);
