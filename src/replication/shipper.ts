/**
 * The shipper (primary side): one long-lived connection to the replica, started here,
 * reconnecting with backoff. A versioned handshake learns the replica's durable sequence and
 * shipping resumes right after it: never a full resync because a link or a process dropped.
 * Several segments are in flight at once (acks by sequence), so a long link is kept full.
 */
import { elapsedMaxMs, instant, type Instant } from '../common/clock';
import net from 'node:net';
import { releaseBuffer } from '../common/buffer-pool';
import type { Logger } from '../common/logger';
import { ReplicationError, ReplicationErrorCode as Code } from './errors';
import { FramedLink, newLinkCounters, type LinkCounters } from './link';
import { isZero } from '../common/bytes';
import { compressBlockAsync } from '../common/lz4';
import type { ShipperSource, SyncCursor, SyncSource, VerifyOutcome, VerifyProbe } from './ports';
import { chunkHash, FrameType, MAX_BOOKMARKS_PER_PING, MIN_COMPRESS_BYTES, PROTOCOL_VERSION, SYNC_CHUNK_BYTES, type Frame } from './protocol';
import { coalesce, encodeSegment, maxRecordsPerSegment } from './segment';
import { TokenBucket } from './shaper';
import { connectSecure, type LinkKey } from './link-security';

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
  /** TLS 1.3 with this pre-shared key; undefined: plain TCP (--insecure-link). */
  linkKey?: LinkKey;
  /** Asked before each segment: ship only the newest version of blocks overwritten in the batch. */
  coalesce?: () => boolean;
  /**
   * Wait up to this long for a full segment before shipping a partial one (default 10 ms; 0:
   * ship whatever is there). A segment per group commit cost the replica a sync and both sides
   * a frame per ~32 records.
   */
  lingerMs?: number;
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
  /** Data bytes not shipped because a later write in the same coalesced batch replaced them. */
  coalescedBytesSaved: number;
  coalescedRecords: number;
  /** Full syncs started (not counting resumed ones) and resumed. */
  syncsStarted: number;
  syncsResumed: number;
  syncsCompleted: number;
  syncing: boolean;
  /** Bytes of volume left to scan in the current sync. */
  syncRemainingBytes: number;
  /** The point the last image sync made the replica consistent at once it has it (0: the sync under way, or none yet, has not ended). */
  syncConsistentSeq: number;
  syncTotalBytes: number;
  syncChunksSent: number;
  syncChunksSkipped: number;
  syncBytesSent: number;
}

/** Pings awaiting their pong; older ones are forgotten (their pongs then prove nothing). */
const MAX_PINGS_OUT = 64;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface QueuedProbe {
  probe: VerifyProbe;
  queuedAt: number;
  resolve: (o: VerifyOutcome) => void;
}

/** A probe the stream has not reached within this long is given up (stale): the replica is that far behind. */
const PROBE_PLACE_TIMEOUT_MS = 10 * 60_000;



export class Shipper {
  private stopped = false;
  private link?: FramedLink;
  private readonly shaper: TokenBucket;
  private wake: (() => void) | undefined;
  private loop?: Promise<void>;
  private inflight: { to: number; rawBytes: number }[] = [];
  private inflightBytes = 0;
  private lastHeardMs = 0;
  /** Pings awaiting their pong, and when each was sent. */
  private pingSentAt = new Map<number, Instant>();
  /** When the newest ping that came back was sent: the replica heard this site no earlier. */
  private confirmed?: Instant;
  private pingId = 0;
  /** A replica found ahead of this primary, and this primary's head then (checkNotAhead). */
  private aheadReplica?: { siteId: string; head: number };
  /** Where segment payloads are gathered before compression (grown as needed, reused). */
  private scratchBuf = Buffer.alloc(0);
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
    coalescedBytesSaved: 0,
    coalescedRecords: 0,
    syncsStarted: 0,
    syncsResumed: 0,
    syncsCompleted: 0,
    syncing: false,
    syncRemainingBytes: 0,
    syncConsistentSeq: 0,
    syncTotalBytes: 0,
    syncChunksSent: 0,
    syncChunksSkipped: 0,
    syncBytesSent: 0,
  };
  private hashFrames: Frame[] = [];
  private hashesDone = false;
  /** Online-verify probes waiting for the stream to reach their point, and those sent, by id. */
  private probesQueued: QueuedProbe[] = [];
  private probesSent = new Map<number, QueuedProbe>();
  private probeId = 0;
  /** The stream position the queued probes were last looked at for (nothing to do until it moves, or a probe comes). */
  private probesScannedAt = -1;
  private probesScanTime = 0;
  /** The replica said in its handshake that it answers Verify frames. */
  private replicaVerifies = false;
  /**
   * Shipping paused by the operator: the link stays up (pings, acks, verify answers), no segment
   * or sync chunk goes out, and the journal keeps everything for when it resumes.
   */
  private pausedFlag = false;
  /** The highest bookmark id the replica confirmed on this connection. */
  private bookmarksConfirmed = 0;
  private bookmarkNews = false;
  /** The replica keeps bookmarks (it said so in its handshake answer; older ones do not). */
  private replicaBookmarks = false;
  /** Why the current connection is being replaced on purpose (reconnect), if it is. */
  private reconnectReason?: string;
  private wakeBackoff?: () => void;

  constructor(private readonly opts: ShipperOptions) {
    this.shaper = new TokenBucket(opts.maxBandwidthBytesPerSec ?? 0);
  }
  private scratch(bytes: number): Buffer {
    if (this.scratchBuf.length < bytes) this.scratchBuf = Buffer.allocUnsafe(Math.max(bytes, 1 << 20));
    return this.scratchBuf.subarray(0, bytes);
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
  }

  /**
   * How long ago the replica certainly last heard from this site: the age of the newest ping whose
   * pong came back (Infinity before the first). An open connection proves nothing on a network
   * that went silent; this does, because the replica saw the ping before it answered.
   */
  sinceConfirmedMs(): number {
    return elapsedMaxMs(this.confirmed);
  }

  get bandwidth(): number {
    return this.shaper.rate;
  }

  /**
   * Start a new connection at once (no backoff), e.g. because a volume grew: the handshake is
   * where the replica learns the volumes and their sizes. Nothing is lost: the new session
   * resumes after what the replica holds durably, as after any reconnect.
   */
  reconnect(reason: string): void {
    if (this.link) {
      this.reconnectReason = reason;
      this.link.close();
      this.poke();
    }
    // Between connections: the next one starts now, and says what is current.
    this.wakeBackoff?.();
  }

  /** Pause (or resume) shipping; the link stays connected. */
  setPaused(paused: boolean): void {
    this.pausedFlag = paused;
    this.poke();
  }

  get paused(): boolean {
    return this.pausedFlag;
  }

  /** A ping (telling the replica whether shipping is paused), remembered for its pong. */
  private sendPing(link: FramedLink): void {
    const id = ++this.pingId;
    this.pingSentAt.set(id, instant());
    if (this.pingSentAt.size > MAX_PINGS_OUT) this.pingSentAt.delete(this.pingSentAt.keys().next().value as number);
    // Bookmarks the replica has not confirmed yet ride along (a pong confirms them).
    const bookmarks = this.replicaBookmarks ? this.opts.source.bookmarksAfter?.(this.bookmarksConfirmed) : undefined;
    link.send(FrameType.Ping, { id, ...(this.pausedFlag ? { paused: true } : {}), ...(bookmarks?.length ? { bookmarks: bookmarks.slice(0, MAX_BOOKMARKS_PER_PING) } : {}) });
  }

  /** A bookmark was taken: told with a ping right away. */
  bookmarked(): void {
    this.bookmarkNews = true;
    this.poke();
  }

  /**
   * Online verify: have the replica compare one range. The probe goes out right after the
   * segment that brings the stream to its sequence number, if no later record that touched the
   * range was sent by then (else: stale, hash it again).
   */
  verify(probe: VerifyProbe): Promise<VerifyOutcome> {
    if (!this.state.connected || !this.link) return Promise.resolve({ kind: 'linkDown' });
    if (!this.replicaVerifies) return Promise.resolve({ kind: 'unsupported' });
    if (this.pausedFlag) return Promise.resolve({ kind: 'notReady', reason: 'replication is paused' });
    if (this.state.syncing) return Promise.resolve({ kind: 'notReady', reason: 'an image sync is running' });
    return new Promise((resolve) => {
      this.probesQueued.push({ probe, queuedAt: performance.now(), resolve });
      this.probesScannedAt = -1; // a new probe may be placeable now
      this.poke();
    });
  }

  /** Send the queued probes whose point the stream has reached (called between segments). */
  private placeProbes(link: FramedLink): void {
    if (this.probesQueued.length === 0) return;
    const sent = this.state.sentSeq;
    const now = performance.now();
    // Nothing placeable since the last look (the timeouts are checked at least once a second).
    if (sent === this.probesScannedAt && now - this.probesScanTime < 1000) return;
    this.probesScannedAt = sent;
    this.probesScanTime = now;
    this.probesQueued = this.probesQueued.filter((q) => {
      if (q.probe.seq > sent) {
        if (now - q.queuedAt < PROBE_PLACE_TIMEOUT_MS) return true;
        q.resolve({ kind: 'stale' });
        return false;
      }
      if (sent >= q.probe.dirtySeq()) {
        q.resolve({ kind: 'stale' });
        return false;
      }
      const id = ++this.probeId;
      this.probesSent.set(id, q);
      const p = q.probe;
      const meta = { id, volume: p.volume, offset: p.offsetBytes, length: p.lengthBytes, seq: sent };
      if (p.data) link.send(FrameType.Repair, meta, p.data, this.opts.compress ?? true);
      else link.send(FrameType.Verify, meta, p.hashes);
      return false;
    });
  }

  private onVerifyResult(meta: Record<string, unknown>): void {
    const id = Number(meta.id);
    const q = this.probesSent.get(id);
    if (!q) return; // from a probe given up already
    this.probesSent.delete(id);
    if (meta.repaired === true && q.probe.data) return q.resolve({ kind: 'repaired' });
    const m = meta.mismatched;
    const chunks = Math.ceil(q.probe.lengthBytes / SYNC_CHUNK_BYTES);
    if (!q.probe.data && Array.isArray(m) && m.every((i) => Number.isSafeInteger(i) && i >= 0 && i < chunks)) q.resolve({ kind: 'compared', mismatched: m as number[] });
    else q.resolve({ kind: 'notReady', reason: typeof meta.notReady === 'string' ? meta.notReady : 'the replica sent an invalid verify result' });
  }

  /** The connection ended (or verify stops): no probe queued or sent on it will be answered. */
  dropProbes(): void {
    for (const q of this.probesQueued) q.resolve({ kind: 'linkDown' });
    for (const q of this.probesSent.values()) q.resolve({ kind: 'linkDown' });
    this.probesQueued = [];
    this.probesSent.clear();
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

  /**
   * A replica whose durable point is past this primary's head, in a history the lineage check
   * found shared, holds records this primary does not have, and its records after the point
   * where they parted differ from the ones this primary numbers the same. Where the source can
   * fork its history (a new generation at the current one's start), it does, and the next
   * handshake makes the replica resync from there (once: a replica still ahead then is refused).
   * Otherwise, or if that fails, the refusal is sticky: it holds while the replica reports
   * anything past the head first seen here, however far this primary's head has moved on since
   * (resuming at the replica's point would skip the differing records), and ends when the replica
   * comes back at or below it.
   */
  private async checkNotAhead(source: ShipperSource, replicaSiteId: string, durable: number, head: number): Promise<void> {
    const seen = this.aheadReplica;
    if (seen && seen.siteId === replicaSiteId) {
      if (durable > seen.head) throw new ReplicationError(Code.ReplicaAhead, `replica ${replicaSiteId} holds records up to ${durable}, past this primary's head ${seen.head} when it was first seen ahead: the records after that differ between the sites`);
      this.aheadReplica = undefined;
    }
    if (durable <= head) return;
    this.opts.logger.error({ replicaSiteId, replicaDurableSeq: durable, headSeq: head }, 'the replica is ahead of this primary in the same history (this primary lost records it had shipped)');
    let forked = false;
    if (source.forkHistory) {
      try {
        await source.forkHistory();
        forked = true;
      } catch (e) {
        this.opts.logger.error({ err: e }, 'could not start a new generation for the replica to resync from');
      }
    }
    // Remembered either way: a replica still ahead at the next handshake is refused, not forked for again.
    this.aheadReplica = { siteId: replicaSiteId, head };
    throw new ReplicationError(Code.ReplicaAhead, `replica is ahead of this primary (replica durable ${durable}, primary head ${head}): ${forked ? 'a new generation was started; the replica resyncs at the next handshake' : 'nothing is shipped to it until it is resynced'}`);
  }

  private async run(): Promise<void> {
    const { logger } = this.opts;
    let backoff = this.opts.backoffMinMs ?? 100;
    while (!this.stopped) {
      const startedAt = performance.now();
      try {
        await this.session();
      } catch (e) {
        const err = e as Error & { code?: string };
        if (!this.stopped && !this.reconnectReason) {
          this.state.lastError = `${err.code ?? 'ERROR'}: ${err.message}`;
          logger.warn({ err: { code: err.code, message: err.message } }, 'replication link error');
        }
      }
      this.dropProbes();
      const planned = this.reconnectReason;
      this.reconnectReason = undefined;
      if (this.state.connected) {
        this.state.connected = false;
        this.state.disconnects++;
        if (planned) logger.info({ ackedSeq: this.state.ackedSeq, reason: planned }, 'replication link restarted');
        else logger.warn({ ackedSeq: this.state.ackedSeq }, 'replication link down');
      }
      // Closed whatever ended the session: a socket left open went on delivering the old
      // connection's frames (acks, pings) next to the new one's.
      this.link?.close();
      this.link = undefined;
      if (this.stopped) break;
      if (planned) continue;
      if (performance.now() - startedAt > 10_000) backoff = this.opts.backoffMinMs ?? 100;
      // A planned reconnect (reconnect()) cuts the wait short.
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, backoff);
        this.wakeBackoff = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.wakeBackoff = undefined;
      backoff = Math.min(backoff * 2, this.opts.backoffMaxMs ?? 5000);
    }
  }

  private async session(): Promise<void> {
    const { source, host, port } = this.opts;
    const key = this.opts.linkKey;
    const socket: net.Socket = key ? connectSecure(host, port, key) : net.connect({ host, port });
    let failure: Error | undefined;
    let helloAck: Frame | undefined;
    const onFrame = (f: Frame) => {
      this.lastHeardMs = performance.now();
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
            this.state.rttMs = performance.now() - sent.mono;
            if (!this.confirmed || sent.mono > this.confirmed.mono) this.confirmed = sent;
            this.pingSentAt.delete(Number(f.meta.id));
          }
          if (typeof f.meta.appliedSeq === 'number') this.state.replicaAppliedSeq = f.meta.appliedSeq;
          if (typeof f.meta.bookmarkId === 'number' && f.meta.bookmarkId > this.bookmarksConfirmed) this.bookmarksConfirmed = f.meta.bookmarkId;
          break;
        }
        case FrameType.Ping:
          this.link?.send(FrameType.Pong, { id: f.meta.id });
          break;
        case FrameType.SyncHashes:
          if (f.meta.done === true) this.hashesDone = true;
          else this.hashFrames.push(f);
          break;
        case FrameType.VerifyResult:
          this.onVerifyResult(f.meta);
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
      socket.once(key ? 'secureConnect' : 'connect', resolve);
      socket.once('error', reject);
      socket.once('close', () => reject(failure ?? new Error('connection closed')));
    });

    link.send(FrameType.Hello, { version: PROTOCOL_VERSION, siteId: source.siteId, volumes: source.volumes(), headSeq: source.headSeq(), oldestSeq: source.oldestSeq(), lineage: source.lineage?.() ?? [], removed: source.removedVolumes?.() ?? [] });
    const handshakeDeadline = performance.now() + (this.opts.deadAfterMs ?? 10_000);
    while (!helloAck) {
      if (failure) throw failure;
      if (!link.open) throw new ReplicationError(Code.Handshake, 'replica closed the connection during the handshake');
      if (performance.now() > handshakeDeadline) throw new ReplicationError(Code.Handshake, 'no handshake answer from the replica');
      await Promise.race([this.waitForPoke(), sleep(200)]);
    }
    const durable = Number(helloAck.meta.durableSeq);
    if (!Number.isSafeInteger(durable) || durable < 0) throw new ReplicationError(Code.Handshake, `replica sent durableSeq ${String(helloAck.meta.durableSeq)}`);
    const replicaSiteId = String(helloAck.meta.siteId ?? '');
    await this.checkNotAhead(source, replicaSiteId, durable, source.headSeq());
    this.state.replicaSiteId = replicaSiteId;
    // Replicas that read binary record tables say so; older ones get msgpack arrays.
    const segmentOpts = { table: helloAck.meta.segmentTable === true };
    this.replicaVerifies = helloAck.meta.verify === true;
    this.replicaBookmarks = helloAck.meta.bookmarks === true;
    this.state.replicaAppliedSeq = Number(helloAck.meta.appliedSeq ?? 0);
    this.inflight = [];
    this.inflightBytes = 0;
    this.lastHeardMs = performance.now();
    this.state.connected = true;
    // A new connection (maybe a new replica process): every bookmark goes again until confirmed.
    this.bookmarksConfirmed = 0;
    this.state.connects++;
    const cursor = helloAck.meta.sync as SyncCursor | undefined;
    const behind = durable + 1 < source.oldestSeq();
    let resumeFrom = durable;
    if (cursor || behind) {
      if (!source.sync) {
        this.state.resyncsNeeded++;
        throw new ReplicationError(Code.Sequence, `replica at ${durable} is behind the retained journal (oldest ${source.oldestSeq()}) and this source cannot sync images`);
      }
      this.opts.logger.info({ replica: `${this.opts.host}:${this.opts.port}`, replicaSiteId: this.state.replicaSiteId, durableSeq: durable, oldestSeq: source.oldestSeq(), resume: cursor, segmentTable: segmentOpts.table }, 'replication link up; image sync needed');
      resumeFrom = await this.syncImages(link, source.sync, cursor, () => failure);
    } else {
      this.opts.logger.info({ replica: `${this.opts.host}:${this.opts.port}`, replicaSiteId: this.state.replicaSiteId, resumeFrom: durable + 1, headSeq: source.headSeq(), segmentTable: segmentOpts.table }, 'replication link up');
    }
    this.state.ackedSeq = resumeFrom;
    this.state.sentSeq = resumeFrom;
    source.replicaAcked(resumeFrom);

    const segmentBytes = this.opts.segmentBytes ?? 1 << 20;
    const windowBytes = this.opts.windowBytes ?? 32 << 20;
    const pingEvery = this.opts.pingIntervalMs ?? 1000;
    const deadAfter = this.opts.deadAfterMs ?? 10_000;
    let lastPing = 0;
    let pausedTold = false;
    while (!this.stopped) {
      if (failure) throw failure;
      if (!link.open) throw new ReplicationError(Code.Handshake, 'connection closed');
      const now = performance.now();
      if (now - this.lastHeardMs > deadAfter) throw new ReplicationError(Code.Handshake, `no frame from the replica for ${Math.round(now - this.lastHeardMs)} ms`);
      this.placeProbes(link);
      // A pause (or resume), or a new bookmark, is told at once, not at the next ping.
      if (now - lastPing >= pingEvery || this.pausedFlag !== pausedTold || this.bookmarkNews) {
        lastPing = now;
        pausedTold = this.pausedFlag;
        this.bookmarkNews = false;
        this.sendPing(link);
      }
      if (!this.pausedFlag && this.inflightBytes < windowBytes && source.headSeq() > this.state.sentSeq) {
        const wait = this.lingerLeft(segmentBytes);
        if (wait > 0) {
          // Until the linger ends or another record arrives (the segment may be full then).
          let timer: NodeJS.Timeout | undefined;
          await Promise.race([new Promise((r) => (timer = setTimeout(r, wait))), source.waitForAppend(source.headSeq()), this.waitForPoke()]);
          clearTimeout(timer);
          continue;
        }
        const coalescing = this.opts.coalesce?.() ?? false;
        // Coalescing reads bigger batches: the more overwrites a batch holds, the more it saves.
        // Records read from the journal's files land in the payload's memory (not when
        // coalescing: dropping records would then move data within it).
        // The record count is bounded too, or the segment's record table could outgrow a frame's
        // meta (UNMAPs carry no data; 16 segments of 512-byte writes are 32768 records): such a
        // segment could never be sent, and every session would build the same one again.
        const maxRecords = maxRecordsPerSegment(segmentOpts);
        const read = coalescing ? await source.readAfter(this.state.sentSeq, segmentBytes * 16, undefined, maxRecords) : await source.readAfter(this.state.sentSeq, segmentBytes, this.scratch(segmentBytes), maxRecords);
        // A source that read more anyway: the rest is the next segment's, read again then.
        if (read.length > maxRecords) for (const r of read.splice(maxRecords)) if (r.data) releaseBuffer(r.data);
        let records = read;
        if (records.length && records[0].seq !== this.state.sentSeq + 1) {
          this.state.resyncsNeeded++;
          throw new ReplicationError(Code.Sequence, `journal has no record ${this.state.sentSeq + 1} (next is ${records[0].seq}): resync needed`);
        }
        if (records.length && link.open) {
          const range = { from: records[0].seq, to: records[records.length - 1].seq };
          // A bookmark inside the batch ends it: the replica keeps the bookmarked point.
          const mark = coalescing && records.length > 1 ? source.nextBookmarkAfter?.(records[0].seq - 1) : undefined;
          if (mark !== undefined && mark < range.to) {
            records = records.filter((r) => r.seq <= mark);
            range.to = records[records.length - 1].seq;
          }
          if (coalescing && records.length > 1) {
            const c = coalesce(records);
            this.state.coalescedBytesSaved += c.savedBytes;
            this.state.coalescedRecords += records.length - c.kept.length;
            records = c.kept;
          }
          // Gathered into the shipper's own buffer: a fresh one per segment was as much garbage as the data.
          const { meta, payload } = encodeSegment(records, range, (n) => this.scratch(n), segmentOpts);
          // The payload holds the data now (gathered, or read straight into the scratch memory):
          // the records' pooled buffers can go back (for data in the scratch memory, a no-op).
          for (const r of read) if (r.data) releaseBuffer(r.data);
          source.shipped?.(range.to);
          // Compressed on the thread pool: the event loop meanwhile serves the initiators (the
          // scratch memory is not touched until this resolves).
          const compressed = (this.opts.compress ?? true) && payload.length >= MIN_COMPRESS_BYTES ? await compressBlockAsync(payload) : undefined;
          const wire = link.send(FrameType.Segment, meta, payload, compressed ?? false, true);
          this.state.sentSeq = meta.to;
          this.inflight.push({ to: meta.to, rawBytes: payload.length + 32 * records.length });
          this.inflightBytes += payload.length + 32 * records.length;
          await this.shaper.take(wire);
          // Up to two segments may wait in the socket's buffer while the next is read and
          // compressed: waiting for an empty buffer left the link idle for that long whenever
          // the kernel's own buffer ran dry first (a busy main thread, a collection).
          await link.drained(2 * segmentBytes);
          continue;
        }
      }
      const waits: Promise<unknown>[] = [this.waitForPoke(), sleep(Math.min(pingEvery, 250))];
      if (source.headSeq() <= this.state.sentSeq) waits.push(source.waitForAppend(this.state.sentSeq));
      await Promise.race(waits);
    }
  }

  /** How much longer to wait for a full segment (0: ship now). */
  private lingerLeft(segmentBytes: number): number {
    const { source } = this.opts;
    const linger = this.opts.lingerMs ?? 10;
    if (linger <= 0 || !source.bytesAfter || source.bytesAfter(this.state.sentSeq) >= segmentBytes) return 0;
    const next = this.state.sentSeq + 1;
    // By the monotonic clock where the source has it: after the wall clock was set back, the
    // stamps of the waiting records stay ahead of it, and the wait for a fuller segment never ended.
    const stamp = source.writtenAgoMs ? undefined : source.timeOf(next);
    const ago = source.writtenAgoMs?.(next) ?? (stamp === undefined ? undefined : Date.now() - stamp);
    return ago === undefined ? 0 : Math.max(0, Math.min(linger, linger - ago));
  }

  /**
   * Copy the images (only what the replica lacks) while writes go on, then hand over to the
   * journal: records after `fromSeq` replay whatever changed during the copy. Returns fromSeq.
   */
  private async syncImages(link: FramedLink, sync: SyncSource, cursor: SyncCursor | undefined, failed: () => Error | undefined): Promise<number> {
    // Under way from the start: the acknowledged point becomes the sync's, which the replica
    // reaches only when the copy ends (the RPO counts from before it: appliance/replication.ts).
    this.state.syncing = true;
    this.state.syncConsistentSeq = 0;
    try {
      return await this.copyImages(link, sync, cursor, failed);
    } finally {
      this.state.syncing = false;
    }
  }

  /** syncImages' work, with the sync marked under way. */
  private async copyImages(link: FramedLink, sync: SyncSource, cursor: SyncCursor | undefined, failed: () => Error | undefined): Promise<number> {
    const { source, logger } = this.opts;
    let fromSeq: number;
    this.hashFrames = [];
    this.hashesDone = false;
    if (cursor && cursor.fromSeq >= 0 && cursor.fromSeq + 1 >= source.oldestSeq() && cursor.fromSeq <= source.headSeq()) {
      fromSeq = cursor.fromSeq;
      this.state.syncsResumed++;
      link.send(FrameType.SyncStart, { fromSeq, resume: true });
    } else {
      fromSeq = sync.imageSeq();
      cursor = undefined;
      this.state.syncsStarted++;
      link.send(FrameType.SyncStart, { fromSeq, resume: false });
    }
    // Records after fromSeq must stay until the replica has them (trim stops at the acked sequence).
    source.replicaAcked(fromSeq);
    this.state.ackedSeq = fromSeq;
    this.state.sentSeq = fromSeq;
    const check = () => {
      const f = failed();
      if (f) throw f;
      if (!link.open) throw new ReplicationError(Code.Handshake, 'connection closed during sync');
      if (this.stopped) throw new ReplicationError(Code.Handshake, 'shipper stopping');
    };
    // The replica answers with its chunk hashes (or none, when its volumes are fresh).
    while (!this.hashesDone) {
      check();
      if (performance.now() - this.lastHeardMs > (this.opts.deadAfterMs ?? 10_000) * 6) throw new ReplicationError(Code.Handshake, 'no sync hashes from the replica');
      await Promise.race([this.waitForPoke(), sleep(200)]);
    }
    const theirs = new Map<string, { from: number; hashes: Buffer }>();
    for (const f of this.hashFrames) {
      const vol = String(f.meta.volume);
      const from = Number(f.meta.offset);
      if (f.payload.length % 8 !== 0 || !Number.isSafeInteger(from) || from % SYNC_CHUNK_BYTES !== 0) throw new ReplicationError(Code.FrameMeta, `bad sync hashes for ${vol}`);
      theirs.set(vol, { from, hashes: f.payload });
    }
    const volumes = [...source.volumes()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const startIndex = cursor ? Math.max(0, volumes.findIndex((v) => v.name === cursor!.volume)) : 0;
    let remaining = 0;
    for (let i = startIndex; i < volumes.length; i++) remaining += volumes[i].sizeBytes - (i === startIndex && cursor ? cursor.offsetBytes : 0);
    this.state.syncTotalBytes = this.state.syncRemainingBytes = remaining;
    logger.info({ fromSeq, resumed: !!cursor, bytesToScan: remaining, compareHashes: theirs.size > 0 }, 'sync start');
    const zero = Buffer.alloc(SYNC_CHUNK_BYTES);
    const zeroHash = chunkHash(zero);
    let lastPing = 0;
    let lastLog = performance.now();
    for (let vi = startIndex; vi < volumes.length; vi++) {
      const v = volumes[vi];
      const hashes = theirs.get(v.name);
      let off = vi === startIndex && cursor ? cursor.offsetBytes - (cursor.offsetBytes % SYNC_CHUNK_BYTES) : 0;
      const WINDOW = 64 << 20;
      while (off < v.sizeBytes) {
        const windowEnd = Math.min(v.sizeBytes, off + WINDOW);
        const extents = await sync.allocated(v.name, off, windowEnd - off);
        for (let chunk = off; chunk < windowEnd; chunk += SYNC_CHUNK_BYTES) {
          check();
          // Paused: the sync holds its place (the link stays up, pinged) until shipping resumes.
          if (this.pausedFlag) {
            logger.info({ volume: v.name, offset: chunk, remainingBytes: this.state.syncRemainingBytes }, 'sync paused');
            this.sendPing(link); // the replica hears of the pause at once
            lastPing = performance.now();
            while (this.pausedFlag) {
              check();
              if (performance.now() - this.lastHeardMs > (this.opts.deadAfterMs ?? 10_000)) throw new ReplicationError(Code.Handshake, `no frame from the replica for ${Math.round(performance.now() - this.lastHeardMs)} ms`);
              if (performance.now() - lastPing >= (this.opts.pingIntervalMs ?? 1000)) {
                lastPing = performance.now();
                this.sendPing(link);
              }
              await Promise.race([this.waitForPoke(), sleep(Math.min(this.opts.pingIntervalMs ?? 1000, 250))]);
            }
            this.sendPing(link);
            logger.info({ volume: v.name, remainingBytes: this.state.syncRemainingBytes }, 'sync resumed');
          }
          const len = Math.min(SYNC_CHUNK_BYTES, v.sizeBytes - chunk);
          const mapped = extents.some((e) => e.mapped && e.offsetBytes < chunk + len && chunk < e.offsetBytes + e.lengthBytes);
          let data: Buffer | undefined = mapped ? await sync.readImage(v.name, chunk, len) : undefined;
          if (data && isZero(data)) data = undefined;
          let send: boolean;
          if (hashes) {
            const idx = (chunk - hashes.from) / SYNC_CHUNK_BYTES;
            const theirHash = idx >= 0 && (idx + 1) * 8 <= hashes.hashes.length ? hashes.hashes.subarray(idx * 8, idx * 8 + 8) : undefined;
            const ours = data ? chunkHash(data) : len === SYNC_CHUNK_BYTES ? zeroHash : chunkHash(Buffer.alloc(len));
            send = !theirHash || !theirHash.equals(ours);
          } else send = data !== undefined;
          if (send) {
            const wire = link.send(FrameType.SyncChunk, { volume: v.name, offset: chunk, length: len, zero: data === undefined }, data, this.opts.compress ?? true);
            this.state.syncChunksSent++;
            this.state.syncBytesSent += wire;
            await this.shaper.take(wire);
            await link.drained();
          } else this.state.syncChunksSkipped++;
          this.state.syncRemainingBytes = Math.max(0, this.state.syncRemainingBytes - len);
          const now = performance.now();
          if (now - lastPing >= (this.opts.pingIntervalMs ?? 1000)) {
            lastPing = now;
            this.sendPing(link);
          }
          if (now - lastLog >= 5000) {
            lastLog = now;
            logger.info({ volume: v.name, offset: chunk, remainingBytes: this.state.syncRemainingBytes, chunksSent: this.state.syncChunksSent, chunksSkipped: this.state.syncChunksSkipped }, 'sync progress');
          }
        }
        off = windowEnd;
      }
    }
    check();
    const consistentSeq = Math.max(fromSeq, source.headSeq());
    // The primary time of that point: its newest record's, or now when that record is already trimmed.
    link.send(FrameType.SyncDone, { fromSeq, consistentSeq, consistentTimeMs: source.timeOf(consistentSeq) ?? Date.now() });
    this.state.syncsCompleted++;
    this.state.syncConsistentSeq = consistentSeq;
    logger.info({ fromSeq, consistentSeq, chunksSent: this.state.syncChunksSent, chunksSkipped: this.state.syncChunksSkipped, wireBytes: this.state.syncBytesSent }, 'sync end: the journal takes over');
    return fromSeq;
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
