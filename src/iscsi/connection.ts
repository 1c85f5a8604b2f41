/**
 * One TCP connection: the receive state machine feeding the login machine and then the
 * session, the send path (header/data digests, padding, one writev per tick), liveness (NOP-In
 * pings to an idle initiator, drop after a timeout), and backpressure (stop reading while the
 * socket's send queue is long). Any protocol error ends in a Reject or a drop and a log line.
 */
import * as net from 'node:net';
import type { Logger } from '../common/logger';
import { LoginStatus, RESERVED_TAG, RejectReason, TARGET_LIMITS, InitiatorOp, BHS_LENGTH, ISCSI_VERSION } from './constants';
import { digestOf, writeDigest } from './digest';
import { IscsiError, PduRejected } from './errors';
import { LoginMachine, loginRequestFields, type LoginEnvironment, type LoginRequestFields } from './login';
import * as P from './pdu';
import { PduReader } from './reader';
import type { Session } from './session';
import { encodeText } from './text';

const PAD = [Buffer.alloc(0), Buffer.alloc(1), Buffer.alloc(2), Buffer.alloc(3)];
/** Each connection's socket reads into one buffer of this size (see readIntoOwnBuffer). */
const READ_BUFFER_BYTES = 256 * 1024;
/** A read goes straight into the PDU's own data buffer when at least this much of it is missing. */
const DIRECT_READ_MIN = 16 * 1024;

interface ReadSink {
  /** A view of the shared read buffer, valid only during the call. */
  chunk(chunk: Buffer): void;
  /** Where the next read may land instead of the shared buffer (see PduReader.directTarget). */
  direct(): Buffer | undefined;
  /** Read only this many bytes next (the headers before an expected large data segment). */
  headerBytes(): number | undefined;
  /** `n` bytes landed in the buffer `direct` returned. */
  landed(n: number): void;
}

/**
 * Re-wrap a socket accepted paused (`pauseOnConnect`) so that the kernel reads into buffers of
 * the connection's own: by default Node allocates a fresh 64 KiB buffer for every read, and at
 * hundreds of MB/s those allocations drive the garbage collector (see common/buffer-pool).
 * Reads land in one shared buffer, or, in the middle of a large data segment, straight in that
 * PDU's buffer (one copy fewer per byte). Node offers `onread` only to sockets it constructs,
 * so the accepted socket's handle moves to a new Socket; the original is destroyed with it so
 * the server's count stays right. Returns undefined (the caller reads 'data' events instead)
 * for a socket already reading.
 */
function readIntoOwnBuffers(accepted: net.Socket, sink: ReadSink): net.Socket | undefined {
  const holder = accepted as unknown as { _handle?: { reading?: boolean } | null };
  const handle = holder._handle;
  if (!handle || handle.reading) return undefined;
  const shared = Buffer.allocUnsafeSlow(READ_BUFFER_BYTES);
  const headerViews: Buffer[] = [];
  const socket = new net.Socket({
    handle, readable: true, writable: true,
    onread: {
      // Node asks for the next read's buffer after every read.
      buffer: () => {
        const direct = sink.direct();
        if (direct) return direct;
        const h = sink.headerBytes();
        return h ? (headerViews[h] ??= shared.subarray(0, h)) : shared;
      },
      callback: (n: number, buf: Buffer) => void (buf.buffer === shared.buffer ? sink.chunk(shared.subarray(0, n)) : sink.landed(n)),
    },
  } as net.SocketConstructorOpts);
  holder._handle = null;
  socket.once('close', () => accepted.destroy());
  return socket;
}

/** Stop reading from a socket whose unsent output exceeds this. */
const SEND_QUEUE_HIGH = 64 * 1024 * 1024;

export interface ConnectionHost {
  readonly logger: Logger;
  readonly loginEnv: LoginEnvironment;
  readonly nopIntervalMs: number;
  readonly nopTimeoutMs: number;
  readonly loginTimeoutMs: number;
  /** Login finished: create (or reinstate) the session. Throws LoginFailure-like errors as a status. */
  openSession(conn: Connection, login: LoginMachine, first: LoginRequestFields): Session | LoginStatus;
  connectionClosed(conn: Connection): void;
  count(event: string, n?: number): void;
  /** A login from this address was refused for an initiator error (rate limiting). */
  loginRefused?(remoteAddress: string, status: number): void;
}

export class Connection {
  statSN = 0;
  session?: Session;
  readonly reader: PduReader;
  private login?: LoginMachine;
  private loginFirst?: LoginRequestFields;
  private loginExpCmdSN = 0;
  private headerDigest = false;
  private dataDigest = false;
  private corked = false;
  private closed = false;
  private lastRx = performance.now();
  private pingTtt = 0;
  private pingSentAt = 0;
  private timer?: NodeJS.Timeout;
  private ending = false;
  /** We ended the connection ourselves (protocol error, timeout, reinstatement, shutdown). */
  private dropped = false;
  readonly remote: string;
  readonly localAddress: string;
  readonly localPort: number;
  logger: Logger;

  readonly socket: net.Socket;

  constructor(accepted: net.Socket, private readonly host: ConnectionHost, readonly id: number) {
    const socket = (this.socket =
      readIntoOwnBuffers(accepted, {
        chunk: (chunk) => this.onData(chunk),
        direct: () => (this.closed ? undefined : this.reader?.directTarget(DIRECT_READ_MIN)),
        landed: (n) => this.onData(n),
        // After a large data segment another one is likely: read up to its start only.
        headerBytes: () => (this.reader && this.reader.lastDataLength >= DIRECT_READ_MIN ? this.reader.headerBytesWanted() : undefined),
      }) ?? accepted);
    if (socket === accepted) socket.on('data', (chunk: Buffer) => this.onData(chunk));
    this.remote = `${socket.remoteAddress}:${socket.remotePort}`;
    this.localAddress = socket.localAddress ?? '127.0.0.1';
    this.localPort = socket.localPort ?? 0;
    this.logger = host.logger.child({ conn: id, remote: this.remote });
    this.reader = new PduReader(TARGET_LIMITS.loginMaxDataSegment, (pdu) => this.onPdu(pdu));
    this.login = new LoginMachine(host.loginEnv);
    socket.setNoDelay(true);
    socket.on('error', (e) => this.logger.debug({ err: e }, 'socket error'));
    socket.on('close', () => this.onClose());
    socket.on('drain', () => socket.resume());
    const tick = Math.max(50, Math.min(host.nopIntervalMs || host.loginTimeoutMs, host.loginTimeoutMs) / 2);
    this.timer = setInterval(() => this.onTimer(), tick);
    this.timer.unref();
  }

  /** Bytes in: a chunk to copy from, or the count that landed in the reader's own buffer. */
  private onData(chunk: Buffer | number): void {
    this.lastRx = performance.now();
    try {
      if (typeof chunk === 'number') this.reader.landed(chunk);
      else this.reader.push(chunk);
    } catch (e) {
      this.protocolFailure(e);
    }
  }

  private onPdu(pdu: P.Pdu): void {
    if (this.closed || this.ending) return;
    this.host.count('pdus_in');
    try {
      if (this.session) {
        if (P.opcode(pdu.bhs) === InitiatorOp.NopOut && P.ttt(pdu.bhs) === this.pingTtt) this.pingSentAt = 0;
        this.session.receive(pdu);
      } else {
        this.loginPdu(pdu);
      }
    } catch (e) {
      if (e instanceof PduRejected && !e.fatal && this.session) {
        this.host.count('rejects');
        this.logger.warn({ reason: e.reason, err: e.message, opcode: P.opcode(pdu.bhs) }, 'PDU rejected');
        this.sendReject(e.reason, pdu.bhs);
        return;
      }
      throw e;
    }
  }

  private protocolFailure(e: unknown): void {
    if (e instanceof IscsiError || e instanceof PduRejected) {
      this.host.count('protocol_errors');
      this.logger.warn({ code: (e as IscsiError).code, err: (e as Error).message }, 'protocol error, dropping connection');
      if (e instanceof PduRejected && this.session) this.sendReject(e.reason, Buffer.alloc(BHS_LENGTH));
    } else {
      this.logger.error({ err: e }, 'internal error, dropping connection');
    }
    this.destroy();
  }

  sendReject(reason: RejectReason, bhs: Buffer): void {
    const s = this.session ? this.session.seq(true) : { statSN: this.statSN++, expCmdSN: 0, maxCmdSN: 0 };
    const copy = Buffer.from(bhs.subarray(0, BHS_LENGTH));
    this.send(P.reject(reason, s, copy.length), copy);
  }

  // ---- Login --------------------------------------------------------------------------------

  private loginPdu(pdu: P.Pdu): void {
    const op = P.opcode(pdu.bhs);
    if (op !== InitiatorOp.LoginRequest || !this.login) {
      throw new IscsiError('ISCSI_PROTOCOL', `opcode 0x${op.toString(16)} before login completed`);
    }
    const req = loginRequestFields(pdu.bhs);
    if (!this.loginFirst) {
      this.loginFirst = req;
      this.statSN = req.expStatSN;
      this.loginExpCmdSN = req.cmdSN;
    }
    const login = this.login;
    let reply = login.step(req, pdu.data);
    let tsih = req.tsih;
    if (reply.status === LoginStatus.Success && this.loginFirst.tsih !== 0) {
      reply = { ...reply, status: LoginStatus.SessionDoesNotExist, transit: false, pairs: [], complete: false, reason: 'adding a connection to a session is not supported (MaxConnections=1)' };
    }
    let session: Session | undefined;
    if (reply.status === LoginStatus.Success && reply.complete) {
      const opened = this.host.openSession(this, login, this.loginFirst);
      if (typeof opened === 'number') reply = { ...reply, status: opened, transit: false, pairs: [], complete: false, reason: 'session could not be opened' };
      else {
        session = opened;
        tsih = opened.tsih;
      }
    }
    const data = reply.status !== LoginStatus.Success ? Buffer.alloc(0) : (reply.text ?? encodeText(reply.pairs));
    const seq = { statSN: this.statSN, expCmdSN: this.loginExpCmdSN, maxCmdSN: (this.loginExpCmdSN + TARGET_LIMITS.queueDepth - 1) >>> 0 };
    this.statSN = (this.statSN + 1) >>> 0;
    const hdr = P.loginResponse(
      { transit: reply.transit, cont: !!reply.cont, csg: reply.csg, nsg: reply.nsg, versionMax: ISCSI_VERSION, versionActive: ISCSI_VERSION, isid: req.isid, tsih, itt: req.itt, status: reply.status },
      seq,
      data.length,
    );
    this.send(hdr, data);
    if (reply.status !== LoginStatus.Success) {
      this.host.count('login_failures');
      if (reply.status >> 8 === 2) this.host.loginRefused?.(this.socket.remoteAddress ?? '', reply.status);
      this.logger.warn(
        { initiator: login.initiatorName, target: login.target?.name, sessionType: login.sessionType, status: `0x${reply.status.toString(16).padStart(4, '0')}`, reason: reply.reason },
        'login refused',
      );
      this.login = undefined;
      this.end();
      return;
    }
    if (session) {
      this.login = undefined;
      this.session = session;
      const p = session.params;
      // Digests and our data segment limit apply from the next PDU on (RFC 7143 §13.1).
      this.headerDigest = this.reader.headerDigest = p.headerDigest;
      this.dataDigest = this.reader.dataDigest = p.dataDigest;
      this.reader.maxDataSegment = p.targetMaxRecvDataSegmentLength;
      this.host.count('logins');
      this.logger = session.logger;
      this.logger.info(
        {
          sessionType: session.type, isid: session.isid.toString('hex'),
          headerDigest: p.headerDigest, dataDigest: p.dataDigest, chap: login.authenticated, maxBurst: p.maxBurstLength, firstBurst: p.firstBurstLength,
          immediateData: p.immediateData, initialR2T: p.initialR2T, initiatorMaxRecv: p.initiatorMaxRecvDataSegmentLength,
        },
        'login',
      );
    }
  }

  // ---- Output -------------------------------------------------------------------------------

  /** Queue one PDU. Everything sent within one event-loop turn goes out as one writev. */
  send(bhs: Buffer, data?: Buffer, onSent?: () => void): void {
    if (this.closed) return;
    const s = this.socket;
    if (!this.corked) {
      this.corked = true;
      s.cork();
      setImmediate(() => {
        this.corked = false;
        s.uncork();
      });
    }
    s.write(bhs);
    if (this.headerDigest) s.write(writeDigest(digestOf([bhs])));
    const len = data ? data.length : 0;
    if (len) {
      const pad = P.padLength(len);
      const last = !pad && !this.dataDigest;
      s.write(data!, last ? onSent : undefined);
      if (pad) s.write(PAD[pad], this.dataDigest ? undefined : onSent);
      if (this.dataDigest) s.write(writeDigest(digestOf([data!], pad)), onSent);
    }
    this.host.count('pdus_out');
    if (s.writableLength > SEND_QUEUE_HIGH && !s.isPaused()) s.pause();
  }

  /** Close after what is queued has been written. */
  end(): void {
    if (this.closed || this.ending) return;
    this.ending = true;
    process.nextTick(() => this.socket.end());
  }

  destroy(): void {
    if (this.closed) return;
    this.dropped = true;
    this.socket.destroy();
    this.onClose();
  }

  // ---- Liveness -----------------------------------------------------------------------------

  private onTimer(): void {
    const now = performance.now();
    if (!this.session) {
      if (now - this.lastRx > this.host.loginTimeoutMs) {
        this.logger.warn({ ms: this.host.loginTimeoutMs }, 'login timed out, dropping connection');
        this.destroy();
      }
      return;
    }
    if (!this.host.nopIntervalMs) return;
    if (this.pingSentAt) {
      if (now - this.pingSentAt > this.host.nopTimeoutMs && this.lastRx < this.pingSentAt) {
        this.host.count('nop_timeouts');
        this.logger.warn({ timeoutMs: this.host.nopTimeoutMs, initiator: this.session.initiatorName }, 'initiator did not answer NOP-In, dropping connection');
        this.destroy();
      } else if (this.lastRx >= this.pingSentAt) {
        this.pingSentAt = 0;
      }
      return;
    }
    if (now - this.lastRx >= this.host.nopIntervalMs) this.ping(now);
  }

  /** A NOP-In the initiator must answer (TTT not 0xffffffff): liveness, and an up-to-date ExpStatSN. */
  private ping(now: number): void {
    this.pingTtt = (this.pingTtt % 0x7fffffff) + 1;
    this.pingSentAt = now;
    this.send(P.nopIn(RESERVED_TAG, this.pingTtt, undefined, this.session!.seq(false), 0));
  }

  solicitAck(): void {
    if (this.closed || this.ending || !this.session) return;
    this.host.count('nop_solicited');
    this.ping(performance.now());
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    // The initiator went away with part of a PDU sent: nothing else would say so.
    const partialBytes = this.reader.pending;
    if (partialBytes && !this.dropped && !this.ending) {
      this.host.count('truncated_pdus');
      this.logger.warn({ pendingBytes: partialBytes }, 'connection closed in the middle of a PDU');
    }
    const s = this.session;
    if (s) {
      s.close().catch(() => undefined);
      this.logger.info({ commands: s.commands, seconds: Math.round((performance.now() - s.startedAt) / 1000) }, 'connection closed');
    }
    this.host.connectionClosed(this);
  }
}
