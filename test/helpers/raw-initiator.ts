/**
 * A small iSCSI initiator over a raw TCP socket, for tests that need what libiscsi and qemu
 * cannot do: data digests, hand-made faults (corrupt digests, garbage, oversized or truncated
 * PDUs, unknown opcodes), many commands in flight without waiting, silence towards NOP-In
 * pings, and a second login with the same ISID. It speaks from `iscsi-wire` (written from the
 * RFC, not from src/iscsi) and keeps every byte it sent and received for wire-level checks.
 */
import net from 'node:net';
import { BHS, cdb as CDB, crc, dataOut, decodeTargetBhs, frame, loginRequest, logoutRequest, nopOut, pad4, parseTextData, scsiCommand, textData, type TargetPdu } from './iscsi-wire';

export interface Received {
  hdr: TargetPdu;
  bhs: Buffer;
  data: Buffer;
}

export interface LoginOptions {
  targetName?: string;
  initiatorName: string;
  isid?: Buffer;
  sessionType?: 'Normal' | 'Discovery';
  /** Operational keys offered in the operational stage (defaults below, overridable). */
  keys?: Record<string, string>;
  timeoutMs?: number;
}

export interface LoginResult {
  /** class << 8 | detail of the last login response. */
  status: number;
  tsih: number;
  /** Every key the target answered or declared during login. */
  answers: Map<string, string>;
  expCmdSN: number;
  maxCmdSN: number;
}

export interface ScsiOutcome {
  status: number;
  response: number;
  sense?: Buffer;
  data: Buffer;
  residual: number;
  underflow: boolean;
  overflow: boolean;
  r2ts: number;
  dataOutPdus: number;
  dataInPdus: number;
}

interface Task {
  itt: number;
  lun: number;
  write?: Buffer;
  dataIn: Buffer;
  dataInBytes: number;
  r2ts: number;
  dataOutPdus: number;
  dataInPdus: number;
  resolve(o: ScsiOutcome): void;
  reject(e: Error): void;
}

interface Waiter {
  pred(r: Received): boolean;
  resolve(r: Received): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

export const DEFAULT_ISID = Buffer.from([0x80, 0x12, 0x34, 0x56, 0x00, 0x01]);

export class RawInitiator {
  /** Raw bytes as received / sent, in order. */
  readonly rx: Buffer[] = [];
  readonly tx: Buffer[] = [];
  /** Index of the first frame (per direction) that carries negotiated digests. */
  rxDigestsFromFrame = Infinity;
  txDigestsFromFrame = Infinity;
  headerDigest = false;
  dataDigest = false;
  /** Answer the target's NOP-In pings (TTT != 0xffffffff) automatically. */
  autoAnswerNop = true;
  readonly nopInPings: Received[] = [];
  readonly rejects: Received[] = [];
  /** Set when the target's bytes could not be parsed or a digest from the target was wrong. */
  wireError?: Error;
  cmdSN = 0;
  expStatSN = 0;
  expCmdSN = 0;
  maxCmdSN = 0;
  tsih = 0;
  isid: Buffer = DEFAULT_ISID;
  /** Negotiated values the command path needs. */
  targetMaxRecv = 8192;
  immediateData = false;
  initialR2T = true;
  firstBurst = 65536;
  /** Largest Data-Out data segment we send (at most the target's MaxRecvDataSegmentLength). */
  dataOutPduBytes = Infinity;
  /** The most commands this initiator had outstanding at once. */
  maxOutstanding = 0;
  isClosed = false;
  readonly closed: Promise<void>;
  private buf: Buffer = Buffer.alloc(0);
  private rxFrames = 0;
  private txFrames = 0;
  private nextItt = 1;
  private inbox: Received[] = [];
  private waiters: Waiter[] = [];
  private tasks = new Map<number, Task>();
  private loginAnswers = new Map<string, string>();
  private loginPieces: Buffer[] = [];

  private constructor(readonly socket: net.Socket) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) => socket.once('close', () => {
      this.isClosed = true;
      const e = new Error('connection closed');
      for (const w of this.waiters.splice(0)) {
        clearTimeout(w.timer);
        w.reject(e);
      }
      for (const t of this.tasks.values()) t.reject(e);
      this.tasks.clear();
      resolve();
    }));
  }

  static connect(port: number, host = '127.0.0.1'): Promise<RawInitiator> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ port, host }, () => {
        s.off('error', reject);
        resolve(new RawInitiator(s));
      });
      s.once('error', reject);
    });
  }

  /** Connect and log in to a normal session; throws unless the login succeeds. */
  static async session(port: number, opts: LoginOptions): Promise<RawInitiator> {
    const ini = await RawInitiator.connect(port);
    const r = await ini.login(opts);
    if (r.status !== 0) {
      ini.destroy();
      throw new Error(`login failed with status 0x${r.status.toString(16).padStart(4, '0')}`);
    }
    return ini;
  }

  allocItt(): number {
    const itt = this.nextItt++;
    if (this.nextItt >= 0xffffffff) this.nextItt = 1;
    return itt;
  }

  // ---- Wire ---------------------------------------------------------------------------------

  /** Send one PDU framed with the negotiated digests (or deliberately wrong ones). */
  send(header: Buffer, data?: Buffer, fault: { badHeaderDigest?: boolean; badDataDigest?: boolean } = {}): void {
    const digests = this.txFrames >= this.txDigestsFromFrame;
    this.txFrames++;
    this.sendRaw(frame(header, data, { headerDigest: digests && this.headerDigest, dataDigest: digests && this.dataDigest, ...fault }));
  }

  sendRaw(bytes: Buffer): void {
    if (this.isClosed) return;
    this.tx.push(bytes);
    this.socket.write(bytes);
  }

  private onData(chunk: Buffer): void {
    this.rx.push(chunk);
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    try {
      for (;;) {
        const r = this.parseOne();
        if (!r) break;
        this.dispatch(r);
      }
    } catch (e) {
      this.wireError = e as Error;
      this.destroy();
    }
  }

  private parseOne(): Received | undefined {
    const b = this.buf;
    if (b.length < BHS) return undefined;
    const digests = this.rxFrames >= this.rxDigestsFromFrame;
    const hd = digests && this.headerDigest ? 4 : 0;
    const ahs = b[4] * 4;
    const dlen = (b[5] << 16) | (b[6] << 8) | b[7];
    const pad = pad4(dlen);
    const dd = digests && this.dataDigest && dlen ? 4 : 0;
    const total = BHS + ahs + hd + dlen + pad + dd;
    if (b.length < total) return undefined;
    const bhs = Buffer.from(b.subarray(0, BHS));
    let p = BHS + ahs;
    if (hd) {
      if (b.readUInt32LE(p) !== crc(bhs, b.subarray(BHS, BHS + ahs))) throw new Error(`target sent a bad header digest on frame ${this.rxFrames}`);
      p += 4;
    }
    const data = Buffer.from(b.subarray(p, p + dlen));
    if (dd && b.readUInt32LE(p + dlen + pad) !== crc(b.subarray(p, p + dlen + pad))) throw new Error(`target sent a bad data digest on frame ${this.rxFrames}`);
    this.buf = b.subarray(total);
    this.rxFrames++;
    const hdr = decodeTargetBhs(bhs);
    if (hdr.opcode === 0x23) {
      // A response continued with the C bit is parsed once its last piece has arrived.
      this.loginPieces.push(data);
      if (hdr.cont) return { hdr, bhs, data };
      for (const [k, v] of parseTextData(Buffer.concat(this.loginPieces.splice(0)))) this.loginAnswers.set(k, v);
      if (hdr.transit && hdr.nsg === 3 && hdr.statusClass === 0) this.enterFullFeature(hdr);
    }
    return { hdr, bhs, data };
  }

  /** The login completed: digests apply from the next PDU in each direction (RFC 7143 §13.1). */
  private enterFullFeature(hdr: TargetPdu): void {
    const a = this.loginAnswers;
    this.headerDigest = a.get('HeaderDigest') === 'CRC32C';
    this.dataDigest = a.get('DataDigest') === 'CRC32C';
    this.rxDigestsFromFrame = this.rxFrames;
    this.txDigestsFromFrame = this.txFrames;
    this.tsih = hdr.tsih ?? 0;
    if (a.has('MaxRecvDataSegmentLength')) this.targetMaxRecv = Number(a.get('MaxRecvDataSegmentLength'));
    this.immediateData = a.get('ImmediateData') === 'Yes';
    this.initialR2T = a.get('InitialR2T') !== 'No';
    if (a.has('FirstBurstLength')) this.firstBurst = Number(a.get('FirstBurstLength'));
  }

  private dispatch(r: Received): void {
    const h = r.hdr;
    this.expCmdSN = h.expCmdSN;
    this.maxCmdSN = h.maxCmdSN;
    // PDUs that carry a status advance the StatSN we acknowledge.
    const withStatus = h.opcode === 0x21 || h.opcode === 0x22 || h.opcode === 0x23 || h.opcode === 0x24 || h.opcode === 0x26 || h.opcode === 0x3f || (h.opcode === 0x25 && h.hasStatus) || (h.opcode === 0x20 && h.itt !== 0xffffffff);
    if (withStatus) this.expStatSN = (h.statSN + 1) >>> 0;
    if (h.opcode === 0x20 && h.ttt !== 0xffffffff) {
      this.nopInPings.push(r);
      if (this.autoAnswerNop) this.send(nopOut({ itt: 0xffffffff, ttt: h.ttt, cmdSN: this.cmdSN, expStatSN: this.expStatSN }, 0));
      return;
    }
    if (h.opcode === 0x3f) this.rejects.push(r);
    const task = this.tasks.get(h.itt);
    if (task && (h.opcode === 0x21 || h.opcode === 0x25 || h.opcode === 0x31)) return this.taskPdu(task, r);
    for (let i = 0; i < this.waiters.length; i++) {
      const w = this.waiters[i];
      if (w.pred(r)) {
        this.waiters.splice(i, 1);
        clearTimeout(w.timer);
        w.resolve(r);
        return;
      }
    }
    this.inbox.push(r);
  }

  /** The next received PDU matching `pred` (already received ones first). */
  next(pred: (r: Received) => boolean = () => true, timeoutMs = 5000): Promise<Received> {
    const i = this.inbox.findIndex(pred);
    if (i >= 0) return Promise.resolve(this.inbox.splice(i, 1)[0]);
    if (this.isClosed) return Promise.reject(new Error('connection closed'));
    return new Promise((resolve, reject) => {
      const w: Waiter = {
        pred, resolve, reject,
        timer: setTimeout(() => {
          this.waiters.splice(this.waiters.indexOf(w), 1);
          reject(new Error(`no matching PDU within ${timeoutMs} ms`));
        }, timeoutMs),
      };
      this.waiters.push(w);
    });
  }

  /** Whether the target closed the connection within `timeoutMs`. */
  async closedWithin(timeoutMs: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const r = await Promise.race([this.closed.then(() => true), new Promise<boolean>((res) => { timer = setTimeout(() => res(false), timeoutMs); })]);
    clearTimeout(timer);
    return r;
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** All bytes received (or sent) so far, concatenated. */
  rxBytes(): Buffer {
    return Buffer.concat(this.rx);
  }
  txBytes(): Buffer {
    return Buffer.concat(this.tx);
  }

  // ---- Login ----------------------------------------------------------------------------------

  /** Security stage with AuthMethod=None, then the operational stage, then full feature phase. */
  async login(opts: LoginOptions): Promise<LoginResult> {
    if (opts.isid) this.isid = opts.isid;
    const timeoutMs = opts.timeoutMs ?? 5000;
    const identity: Record<string, string> = { InitiatorName: opts.initiatorName, SessionType: opts.sessionType ?? 'Normal' };
    if (opts.targetName) identity.TargetName = opts.targetName;
    const itt = this.allocItt();
    const step = async (csg: number, nsg: number, keys: Record<string, string>): Promise<Received> => {
      const data = textData(keys);
      this.send(loginRequest({ transit: true, csg, nsg, isid: this.isid, itt, cmdSN: this.cmdSN, expStatSN: this.expStatSN }, data.length), data);
      return this.next((r) => r.hdr.opcode === 0x23, timeoutMs);
    };
    const result = (r: Received): LoginResult => ({
      status: ((r.hdr.statusClass ?? 0) << 8) | (r.hdr.statusDetail ?? 0),
      tsih: r.hdr.tsih ?? 0,
      answers: new Map(this.loginAnswers),
      expCmdSN: r.hdr.expCmdSN,
      maxCmdSN: r.hdr.maxCmdSN,
    });
    let r = await step(0, 1, { ...identity, AuthMethod: 'None' });
    if (r.hdr.statusClass !== 0) return result(r);
    if (!r.hdr.transit || r.hdr.nsg !== 1) throw new Error('target did not move to the operational stage');
    const keys = {
      HeaderDigest: 'None', DataDigest: 'None', MaxRecvDataSegmentLength: '65536', ImmediateData: 'Yes', InitialR2T: 'Yes',
      FirstBurstLength: '65536', MaxBurstLength: '262144', ErrorRecoveryLevel: '0', MaxConnections: '1', ...opts.keys,
    };
    r = await step(1, 3, keys);
    if (r.hdr.statusClass === 0 && (!r.hdr.transit || r.hdr.nsg !== 3)) throw new Error('target did not move to full feature phase');
    return result(r);
  }

  // ---- Full feature phase --------------------------------------------------------------------

  /**
   * Issue one SCSI command and resolve with its outcome: immediate data as the session allows,
   * the rest as Data-Out answering R2Ts, Data-In gathered by buffer offset.
   */
  scsi(cdbBytes: Buffer, opts: { read?: number; write?: Buffer; lun?: number; badDataDigestOnImmediate?: boolean } = {}): Promise<ScsiOutcome> {
    const itt = this.allocItt();
    const lun = opts.lun ?? 0;
    const write = opts.write;
    const edtl = write ? write.length : opts.read ?? 0;
    const immLen = write && this.immediateData ? Math.min(write.length, this.firstBurst, this.targetMaxRecv) : 0;
    const promise = new Promise<ScsiOutcome>((resolve, reject) => {
      this.tasks.set(itt, { itt, lun, write, dataIn: Buffer.alloc(opts.read ?? 0), dataInBytes: 0, r2ts: 0, dataOutPdus: 0, dataInPdus: 0, resolve, reject });
    });
    this.maxOutstanding = Math.max(this.maxOutstanding, this.tasks.size);
    const hdr = scsiCommand({ itt, lun, edtl, read: !!opts.read, write: !!write, cmdSN: this.cmdSN, expStatSN: this.expStatSN, cdb: cdbBytes }, immLen);
    this.cmdSN = (this.cmdSN + 1) >>> 0;
    this.send(hdr, immLen ? write!.subarray(0, immLen) : undefined, { badDataDigest: opts.badDataDigestOnImmediate });
    return promise;
  }

  private taskPdu(t: Task, r: Received): void {
    const h = r.hdr;
    if (h.opcode === 0x31) {
      t.r2ts++;
      const start = h.bufferOffset!;
      const end = start + h.desiredLength!;
      let dataSN = 0;
      const pdu = Math.min(this.targetMaxRecv, this.dataOutPduBytes);
      for (let off = start; off < end; off += pdu) {
        const n = Math.min(pdu, end - off);
        t.dataOutPdus++;
        this.send(dataOut({ final: off + n === end, lun: t.lun, itt: t.itt, ttt: h.ttt!, expStatSN: this.expStatSN, dataSN: dataSN++, bufferOffset: off }, n), t.write!.subarray(off, off + n));
      }
      return;
    }
    if (h.opcode === 0x25) {
      t.dataInPdus++;
      r.data.copy(t.dataIn, h.bufferOffset!);
      t.dataInBytes += r.data.length;
      if (!h.hasStatus) return;
    }
    this.tasks.delete(t.itt);
    let sense: Buffer | undefined;
    if (h.opcode === 0x21 && r.data.length >= 2) sense = r.data.subarray(2, 2 + r.data.readUInt16BE(0));
    t.resolve({
      status: h.status ?? 0, response: h.response ?? 0, sense, data: t.dataIn.subarray(0, t.dataInBytes), residual: h.residual ?? 0,
      underflow: !!h.underflow, overflow: !!h.overflow, r2ts: t.r2ts, dataOutPdus: t.dataOutPdus, dataInPdus: t.dataInPdus,
    });
  }

  read10(lba: number, blocks: number): Promise<ScsiOutcome> {
    return this.scsi(CDB.read10(lba, blocks), { read: blocks * 512 });
  }

  write10(lba: number, data: Buffer, opts: { badDataDigestOnImmediate?: boolean } = {}): Promise<ScsiOutcome> {
    return this.scsi(CDB.write10(lba, data.length / 512), { write: data, ...opts });
  }

  /** NOP-Out ping (immediate) with optional data; resolves with the NOP-In echo. */
  async ping(data: Buffer = Buffer.alloc(0), timeoutMs = 5000): Promise<Received> {
    const itt = this.allocItt();
    this.send(nopOut({ itt, cmdSN: this.cmdSN, expStatSN: this.expStatSN }, data.length), data);
    return this.next((r) => r.hdr.opcode === 0x20 && r.hdr.itt === itt, timeoutMs);
  }

  /** Logout (close the session); resolves with the logout response. */
  async logout(timeoutMs = 5000): Promise<Received> {
    const itt = this.allocItt();
    this.send(logoutRequest({ reason: 0, itt, cmdSN: this.cmdSN, expStatSN: this.expStatSN }));
    return this.next((r) => r.hdr.opcode === 0x26 && r.hdr.itt === itt, timeoutMs);
  }
}

/** A pattern unique to (seed, offset): every 4 bytes differ, so misplaced data is detected. */
export function pattern(bytes: number, seed: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i += 4) b.writeUInt32BE(((seed * 0x9e3779b1) ^ (i * 0x85ebca6b)) >>> 0, i);
  return b;
}
