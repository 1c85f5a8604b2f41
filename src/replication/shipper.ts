/**
 * The shipper (primary side): one long-lived connection to the replica, started here,
 * reconnecting with backoff. A versioned handshake learns the replica's durable sequence and
 * shipping resumes right after it: never a full resync because a link or a process dropped.
 * Several segments are in flight at once (acks by sequence), so a long link is kept full.
 */
import net from 'node:net';
import type { Logger } from '../common/logger';
import { ReplicationError, ReplicationErrorCode as Code } from './errors';
import { FramedLink, newLinkCounters, type LinkCounters } from './link';
import type { ShipperSource } from './ports';
import { FrameType, PROTOCOL_VERSION, type Frame } from './protocol';
import { encodeSegment } from './segment';
import { TokenBucket } from './shaper';

export interface ShipperOptions {
  source: ShipperSource;
  host: string;
  port: number;
  logger: Logger;
  /** Link cap in bytes per second on the wire; 0 or undefined: unlimited. */
  maxBandwidthBytesPerSec?: number;
  /** Raw data per segment. */
  segmentBytes?: number;
  /** Raw bytes shipped but not yet acknowledged. */
  windowBytes?: number;
  compress?: boolean;
  pingIntervalMs?: number;
  /** A link with no frame from the replica for this long is dropped and redialled. */
  deadAfterMs?: number;
  backoffMinMs?: number;
  backoffMaxMs?: number;
}

export interface ShipperStats extends LinkCounters {
  connected: boolean;
  /** Highest sequence durable at the replica. */
  ackedSeq: number;
  /** Highest sequence sent. */
  sentSeq: number;
  /** Replica's applied sequence as last reported. */
  replicaAppliedSeq: number;
  rttMs: number;
  connects: number;
  disconnects: number;
  /** Times the replica was behind the retained journal (a resync was needed). */
  resyncsNeeded: number;
  replicaSiteId: string;
  lastError: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class Shipper {
  private stopped = false;
  private link?: FramedLink;
  private readonly shaper: TokenBucket;
  private wake: (() => void) | undefined;
  private loop?: Promise<void>;
  private inflight: { to: number; rawBytes: number }[] = [];
  private inflightBytes = 0;
  private lastHeardMs = 0;
  private pingSentAt = new Map<number, number>();
  private pingId = 0;
  readonly counters = newLinkCounters();
  private readonly state = {
    connected: false,
    ackedSeq: 0,
    sentSeq: 0,
    replicaAppliedSeq: 0,
    rttMs: 0,
    connects: 0,
    disconnects: 0,
    resyncsNeeded: 0,
    replicaSiteId: '',
    lastError: '',
  };

  constructor(private readonly opts: ShipperOptions) {
    this.shaper = new TokenBucket(opts.maxBandwidthBytesPerSec ?? 0);
  }

  start(): void {
    this.loop ??= this.run();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.link?.close();
    this.poke();
    await this.loop;
  }

  setBandwidth(bytesPerSec: number): void {
    this.shaper.setRate(bytesPerSec);
    this.opts.logger.info({ maxBandwidthBytesPerSec: bytesPerSec }, 'replication bandwidth limit changed');
  }

  get bandwidth(): number {
    return this.shaper.rate;
  }

  stats(): ShipperStats {
    return { ...this.counters, ...this.state };
  }

  private poke(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  private waitForPoke(): Promise<void> {
    return new Promise((resolve) => (this.wake = resolve));
  }

  private async run(): Promise<void> {
    const { logger } = this.opts;
    let backoff = this.opts.backoffMinMs ?? 100;
    while (!this.stopped) {
      const startedAt = Date.now();
      try {
        await this.session();
      } catch (e) {
        const err = e as Error & { code?: string };
        if (!this.stopped) {
          this.state.lastError = `${err.code ?? 'ERROR'}: ${err.message}`;
          logger.warn({ err: { code: err.code, message: err.message } }, 'replication link error');
        }
      }
      if (this.state.connected) {
        this.state.connected = false;
        this.state.disconnects++;
        logger.warn({ ackedSeq: this.state.ackedSeq }, 'replication link down');
      }
      this.link = undefined;
      if (this.stopped) break;
      if (Date.now() - startedAt > 10_000) backoff = this.opts.backoffMinMs ?? 100;
      await sleep(backoff);
      backoff = Math.min(backoff * 2, this.opts.backoffMaxMs ?? 5000);
    }
  }

  private async session(): Promise<void> {
    const { source, host, port } = this.opts;
    const socket = net.connect({ host, port });
    let failure: Error | undefined;
    let helloAck: Frame | undefined;
    const onFrame = (f: Frame) => {
      this.lastHeardMs = Date.now();
      switch (f.type) {
        case FrameType.HelloAck:
          helloAck = f;
          break;
        case FrameType.Ack:
          this.onAck(f.meta);
          break;
        case FrameType.Pong: {
          const sent = this.pingSentAt.get(Number(f.meta.id));
          if (sent !== undefined) {
            this.state.rttMs = performance.now() - sent;
            this.pingSentAt.delete(Number(f.meta.id));
          }
          if (typeof f.meta.appliedSeq === 'number') this.state.replicaAppliedSeq = f.meta.appliedSeq;
          break;
        }
        case FrameType.Ping:
          this.link?.send(FrameType.Pong, { id: f.meta.id });
          break;
        case FrameType.Error:
          throw new ReplicationError(String(f.meta.code ?? Code.Handshake), `replica refused: ${String(f.meta.message)}`);
        default:
          throw new ReplicationError(Code.FrameType, `unexpected frame type ${f.type} from the replica`);
      }
      this.poke();
    };
    const link = new FramedLink(socket, this.counters, onFrame, (e) => (failure = e));
    this.link = link;
    socket.on('error', (e) => (failure ??= e));
    socket.on('close', () => this.poke());
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
      socket.once('close', () => reject(failure ?? new Error('connection closed')));
    });

    link.send(FrameType.Hello, { version: PROTOCOL_VERSION, siteId: source.siteId, volumes: source.volumes(), headSeq: source.headSeq() });
    const handshakeDeadline = Date.now() + (this.opts.deadAfterMs ?? 10_000);
    while (!helloAck) {
      if (failure) throw failure;
      if (!link.open) throw new ReplicationError(Code.Handshake, 'replica closed the connection during the handshake');
      if (Date.now() > handshakeDeadline) throw new ReplicationError(Code.Handshake, 'no handshake answer from the replica');
      await Promise.race([this.waitForPoke(), sleep(200)]);
    }
    const durable = Number(helloAck.meta.durableSeq);
    if (!Number.isSafeInteger(durable) || durable < 0) throw new ReplicationError(Code.Handshake, `replica sent durableSeq ${String(helloAck.meta.durableSeq)}`);
    if (durable > source.headSeq()) {
      throw new ReplicationError(Code.Handshake, `replica is ahead of this primary (replica durable ${durable}, primary head ${source.headSeq()}): the sites have diverged`);
    }
    if (durable + 1 < source.oldestSeq()) {
      this.state.resyncsNeeded++;
      throw new ReplicationError(Code.Sequence, `replica at ${durable} is behind the retained journal (oldest ${source.oldestSeq()}): resync needed`);
    }
    this.state.replicaSiteId = String(helloAck.meta.siteId ?? '');
    this.state.replicaAppliedSeq = Number(helloAck.meta.appliedSeq ?? 0);
    this.state.ackedSeq = durable;
    this.state.sentSeq = durable;
    this.inflight = [];
    this.inflightBytes = 0;
    this.lastHeardMs = Date.now();
    source.replicaAcked(durable);
    this.state.connected = true;
    this.state.connects++;
    this.opts.logger.info({ replica: `${this.opts.host}:${this.opts.port}`, replicaSiteId: this.state.replicaSiteId, resumeFrom: durable + 1, headSeq: source.headSeq() }, 'replication link up');

    const segmentBytes = this.opts.segmentBytes ?? 1 << 20;
    const windowBytes = this.opts.windowBytes ?? 32 << 20;
    const pingEvery = this.opts.pingIntervalMs ?? 1000;
    const deadAfter = this.opts.deadAfterMs ?? 10_000;
    let lastPing = 0;
    while (!this.stopped) {
      if (failure) throw failure;
      if (!link.open) throw new ReplicationError(Code.Handshake, 'connection closed');
      const now = Date.now();
      if (now - this.lastHeardMs > deadAfter) throw new ReplicationError(Code.Handshake, `no frame from the replica for ${now - this.lastHeardMs} ms`);
      if (now - lastPing >= pingEvery) {
        lastPing = now;
        const id = ++this.pingId;
        this.pingSentAt.set(id, performance.now());
        if (this.pingSentAt.size > 16) this.pingSentAt.delete(this.pingSentAt.keys().next().value as number);
        link.send(FrameType.Ping, { id });
      }
      if (this.inflightBytes < windowBytes && source.headSeq() > this.state.sentSeq) {
        const records = await source.readAfter(this.state.sentSeq, segmentBytes);
        if (records.length && records[0].seq !== this.state.sentSeq + 1) {
          this.state.resyncsNeeded++;
          throw new ReplicationError(Code.Sequence, `journal has no record ${this.state.sentSeq + 1} (next is ${records[0].seq}): resync needed`);
        }
        if (records.length && link.open) {
          const { meta, payload } = encodeSegment(records);
          const wire = link.send(FrameType.Segment, meta, payload, this.opts.compress ?? true);
          this.state.sentSeq = meta.to;
          this.inflight.push({ to: meta.to, rawBytes: payload.length + 32 * records.length });
          this.inflightBytes += payload.length + 32 * records.length;
          await this.shaper.take(wire);
          await link.drained();
          continue;
        }
      }
      const waits: Promise<unknown>[] = [this.waitForPoke(), sleep(Math.min(pingEvery, 250))];
      if (source.headSeq() <= this.state.sentSeq) waits.push(source.waitForAppend(this.state.sentSeq));
      await Promise.race(waits);
    }
  }

  private onAck(meta: Record<string, unknown>): void {
    const seq = Number(meta.seq);
    if (!Number.isSafeInteger(seq) || seq > this.state.sentSeq) {
      throw new ReplicationError(Code.Sequence, `ack for ${String(meta.seq)} beyond what was sent (${this.state.sentSeq})`);
    }
    if (seq <= this.state.ackedSeq) return;
    this.state.ackedSeq = seq;
    if (typeof meta.appliedSeq === 'number') this.state.replicaAppliedSeq = meta.appliedSeq;
    while (this.inflight.length && this.inflight[0].to <= seq) this.inflightBytes -= this.inflight.shift()!.rawBytes;
    this.opts.source.replicaAcked(seq);
  }
}
