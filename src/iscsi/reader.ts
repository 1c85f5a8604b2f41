/**
 * The receive state machine: bytes from the socket in, whole PDUs out (BHS → AHS → header
 * digest → data → padding → data digest). Every length is checked against the negotiated
 * limit before anything is allocated for it, so a peer cannot make us allocate more than one
 * data segment. Any split of the byte stream into reads yields the same PDUs.
 *
 * The reader copies what it needs out of each chunk and never keeps the chunk, so the socket
 * can read into one reused buffer. A PDU's data segment lands in a pooled buffer
 * (common/buffer-pool) that its consumer may give back; nothing per read is allocated.
 * While a large data segment is still being received, the socket may instead read straight
 * into its buffer (`directTarget`, then `landed`): those bytes are never copied in user space.
 */
import { acquireBuffer, releaseBuffer } from '../common/buffer-pool';
import { BHS_LENGTH } from './constants';
import { digestOf, readDigest } from './digest';
import { IscsiError, IscsiErrorCode } from './errors';
import { ahsLength, dataSegmentLength, opcode, padLength, type Pdu } from './pdu';

const enum Stage {
  Bhs,
  Ahs,
  HeaderDigest,
  Data,
  DataDigest,
}

export class PduReader {
  /** Set once digests are negotiated; applies to the next PDU parsed. */
  headerDigest = false;
  dataDigest = false;
  /** PDUs parsed so far (for error messages). */
  count = 0;
  private stage = Stage.Bhs;
  /** The buffer the current stage fills, and how far. */
  private target: Buffer;
  private filled = 0;
  /** Bytes of the current PDU in stages already complete. */
  private held = 0;
  private bhs: Buffer;
  private ahs?: Buffer;
  /** Data segment with its padding. */
  private data: Buffer = EMPTY;
  private hd = false;
  private dd = false;
  private readonly digest = Buffer.allocUnsafe(4);
  private failed?: Error;

  constructor(public maxDataSegment: number, private readonly onPdu: (pdu: Pdu) => void) {
    this.bhs = this.target = Buffer.allocUnsafe(BHS_LENGTH);
  }

  /**
   * Feed bytes; calls onPdu synchronously for each complete PDU. `chunk` is not kept after the
   * call returns. Throws IscsiError on a stream it cannot parse; after any exception the reader
   * is dead and throws that error again.
   */
  push(chunk: Buffer): void {
    if (this.failed) throw this.failed;
    let off = 0;
    try {
      while (off < chunk.length) {
        const n = Math.min(this.target.length - this.filled, chunk.length - off);
        chunk.copy(this.target, this.filled, off, off + n);
        this.filled += n;
        off += n;
        if (this.filled === this.target.length) this.stageDone();
      }
    } catch (e) {
      this.failed = e as Error;
      if (this.data !== EMPTY) releaseBuffer(this.data);
      this.data = EMPTY;
      throw e;
    }
  }

  /**
   * Where the next socket read may land without a copy: the rest of the data segment being
   * received, when at least `min` bytes of it are missing. Undefined otherwise (then `push`).
   */
  directTarget(min: number): Buffer | undefined {
    if (this.failed || this.stage !== Stage.Data) return undefined;
    const rest = this.target.length - this.filled;
    return rest >= min ? this.target.subarray(this.filled) : undefined;
  }

  /**
   * Bytes the reader needs before the next data segment can start (rest of the BHS, AHS and
   * header digest; a data digest counts the next BHS too), or undefined inside a data segment.
   * A socket that expects another large data segment reads just these, so that the data itself
   * can land directly.
   */
  headerBytesWanted(): number | undefined {
    const rest = this.target.length - this.filled;
    switch (this.stage) {
      case Stage.Bhs:
      case Stage.HeaderDigest:
        return rest;
      case Stage.Ahs:
        return rest + (this.hd ? 4 : 0);
      case Stage.DataDigest:
        return rest + BHS_LENGTH;
      default:
        return undefined;
    }
  }

  /** Data segment length of the last whole PDU. */
  lastDataLength = 0;

  /** `n` bytes were read into the view `directTarget` returned (at most its length). */
  landed(n: number): void {
    if (this.failed) throw this.failed;
    if (this.stage !== Stage.Data || n > this.target.length - this.filled) throw new Error('bytes landed outside the data segment being received');
    this.filled += n;
    if (this.filled === this.target.length) {
      try {
        this.stageDone();
      } catch (e) {
        this.failed = e as Error;
        if (this.data !== EMPTY) releaseBuffer(this.data);
        this.data = EMPTY;
        throw e;
      }
    }
  }

  /** Bytes held waiting for the rest of a PDU. */
  get pending(): number {
    return this.held + this.filled;
  }

  private fill(buf: Buffer): void {
    this.held += this.filled;
    this.target = buf;
    this.filled = 0;
  }

  /** The current stage's buffer is full: check it and move on to the next stage that has bytes. */
  private stageDone(): void {
    const bhs = this.bhs;
    for (;;) {
      switch (this.stage) {
        case Stage.Bhs: {
          const dlen = dataSegmentLength(bhs);
          if (dlen > this.maxDataSegment) {
            throw new IscsiError(IscsiErrorCode.PduTooLarge, `PDU #${this.count + 1} (opcode 0x${opcode(bhs).toString(16)}) declares a ${dlen}-byte data segment, limit ${this.maxDataSegment}`);
          }
          this.hd = this.headerDigest;
          this.dd = this.dataDigest && dlen > 0;
          this.stage = Stage.Ahs;
          const a = ahsLength(bhs);
          if (a) return this.fill((this.ahs = Buffer.allocUnsafe(a)));
          break;
        }
        case Stage.Ahs:
          this.stage = Stage.HeaderDigest;
          if (this.hd) return this.fill(this.digest);
          break;
        case Stage.HeaderDigest: {
          if (this.hd) {
            const got = digestOf(this.ahs ? [bhs, this.ahs] : [bhs]);
            if (readDigest(this.digest) !== got) throw new IscsiError(IscsiErrorCode.HeaderDigest, `header digest mismatch on PDU #${this.count + 1} (opcode 0x${opcode(bhs).toString(16)})`);
          }
          this.stage = Stage.Data;
          const dlen = dataSegmentLength(bhs);
          if (dlen) return this.fill((this.data = acquireBuffer(dlen + padLength(dlen))));
          break;
        }
        case Stage.Data:
          this.stage = Stage.DataDigest;
          if (this.dd) return this.fill(this.digest);
          break;
        case Stage.DataDigest: {
          const dlen = dataSegmentLength(bhs);
          if (this.dd && readDigest(this.digest) !== digestOf([this.data])) {
            throw new IscsiError(IscsiErrorCode.DataDigest, `data digest mismatch on PDU #${this.count + 1} (opcode 0x${opcode(bhs).toString(16)}, ${dlen} bytes)`);
          }
          const data = this.data.length > dlen ? this.data.subarray(0, dlen) : this.data;
          const ahs = this.ahs;
          this.stage = Stage.Bhs;
          this.bhs = Buffer.allocUnsafe(BHS_LENGTH);
          this.ahs = undefined;
          this.data = EMPTY;
          this.held = 0;
          this.target = this.bhs;
          this.filled = 0;
          this.count++;
          this.lastDataLength = dlen;
          this.onPdu(ahs ? { bhs, ahs, data } : { bhs, data });
          return;
        }
      }
    }
  }
}

const EMPTY = Buffer.alloc(0);
