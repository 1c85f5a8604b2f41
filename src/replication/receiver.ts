/**
 * The receiver (replica side): accepts the primary's connection, answers the handshake with the
 * durable sequence, and stores segments strictly in order — each made durable by the sink before
 * it is acknowledged. A corrupt, duplicated, out-of-order or oversized frame drops the connection
 * (the primary resumes from the last ack); it is never applied.
 */
import { elapsedMinMs, instant } from '../common/clock';
import net from 'node:net';
import type { Logger } from '../common/logger';
import { ReplicationError, ReplicationErrorCode as Code } from './errors';
import { FramedLink, newLinkCounters, type LinkCounters } from './link';
import type { BookmarkDescriptor, ReceiverSink, RemovedVolumeDescriptor, ReplicatedRecord, VolumeDescriptor } from './ports';
import { FrameType, MAX_BOOKMARKS_PER_PING, MAX_VERIFY_BYTES, PROTOCOL_VERSION, SYNC_CHUNK_BYTES, type Frame } from './protocol';
import { decodeSegment } from './segment';
import { createSecureServer, type LinkKey } from './link-security';

export interface ReceiverOptions {
  /** TLS 1.3 with this pre-shared key; undefined: plain TCP (--insecure-link). */
  linkKey?: LinkKey;
  sink: ReceiverSink;
  logger: Logger;
  /** Drop a connection that sends nothing for this long. */
  idleTimeoutMs?: number;
}

export interface ReceiverStats extends LinkCounters {
  connected: boolean;
  primarySiteId: string;
  /** Highest sequence received (possibly not yet durable). */
  receivedSeq: number;
  connections: number;
  rejectedFrames: number;
  lastError: string;
  lastContactMs: number;
  /** Connections refused at the TLS handshake (wrong or missing key). */
  refusedPeers: number;
  /** The connected primary has paused shipping (offsite pause), as its last ping said. */
  primaryPaused: boolean;
}

export class Receiver {
  private server?: net.Server;
  private tail: Promise<void> = Promise.resolve();
  /** The stores a connection still has running (a new handshake waits for them). */
  private storing: Promise<void> = Promise.resolve();
  private current?: { link: FramedLink; socket: net.Socket };
  /** Every TCP connection, from before its TLS handshake on (close drops them all). */
  private sockets = new Set<net.Socket>();
  readonly counters = newLinkCounters();
  private readonly state = { connected: false, primarySiteId: '', receivedSeq: 0, connections: 0, rejectedFrames: 0, lastError: '', lastContactMs: 0, refusedPeers: 0, primaryPaused: false };

  /**
   * While set, pings go unanswered: this site is asking a witness whether it may take over, and a
   * pong would tell the primary it is still heard (and may keep accepting writes) just when it
   * may be replaced. Every pong the primary gets was therefore sent before any such question.
   */
  holdPongs = false;
  private lastContact = instant();

  /** How long the primary has been silent (since the last frame, or since this receiver started), by the clock that says less. */
  silentMs(): number {
    return elapsedMinMs(this.lastContact);
  }

  constructor(private readonly opts: ReceiverOptions) {}

  async listen(host: string, port: number): Promise<{ host: string; port: number }> {
    const key = this.opts.linkKey;
    this.server = key
      ? createSecureServer(key, (socket) => this.accept(socket), (peer, why) => {
          this.state.refusedPeers++;
          this.state.lastError = `TLS: ${why}`;
          this.opts.logger.warn({ peer, reason: why }, 'replication peer refused: TLS handshake failed (wrong link key?)');
        })
      : net.createServer((socket) => this.accept(socket));
    this.server.on('connection', (socket: net.Socket) => {
      this.sockets.add(socket);
      socket.once('close', () => this.sockets.delete(socket));
    });
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(port, host, () => resolve());
    });
    const addr = this.server.address() as net.AddressInfo;
    return { host: addr.address, port: addr.port };
  }

  stats(): ReceiverStats {
    return { ...this.counters, ...this.state };
  }

  async close(): Promise<void> {
    this.current?.socket.destroy();
    // Not only the current link: a connection still in its TLS handshake (a stalled peer) would
    // hold server.close() for the handshake timeout.
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  private accept(socket: net.Socket): void {
    const { logger, sink } = this.opts;
    const peer = `${socket.remoteAddress}:${socket.remotePort}`;
    // One primary at a time: a new connection replaces the old one (the old link is dead or stale).
    if (this.current) {
      logger.info({ peer }, 'replication connection replaces the previous one');
      this.current.socket.destroy();
    }
    this.state.connections++;
    socket.setTimeout(this.opts.idleTimeoutMs ?? 30_000, () => socket.destroy(new ReplicationError(Code.Handshake, 'idle replication connection')));
    let greeted = false;
    let expectNext = 0;
    let pending: { records: ReplicatedRecord[]; to: number; payload?: Buffer }[] = [];
    let flushing: Promise<void> | undefined;
    /** A store failed on this connection: nothing more is stored from it (no gap can follow). */
    let dead = false;
    const flush = (): Promise<void> => {
      if (!flushing) {
        flushing = (async () => {
          try {
            while (pending.length && !dead) {
              const take = pending;
              pending = [];
              const records = take.length === 1 ? take[0].records : take.flatMap((t) => t.records);
              const to = take[take.length - 1].to;
              const payloads: Buffer[] = [];
              for (const t of take) if (t.payload) payloads.push(t.payload);
              // Where each segment ends: the sink tells a coalesced one by its missing records.
              await sink.store(records, to, payloads, take.length === 1 ? undefined : take.map((t) => t.to));
              link.send(FrameType.Ack, { seq: sink.durableSeq(), appliedSeq: sink.appliedSeq() });
            }
          } catch (e) {
            dead = true; // before anything else can queue: no store may follow a failed one
            throw e;
          } finally {
            // Cleared in the same turn as the last check of `pending`: a segment queued after
            // this point starts a new flush.
            flushing = undefined;
          }
        })();
        this.storing = flushing.catch(() => undefined);
      }
      return flushing;
    };
    let volumeList: VolumeDescriptor[] = [];
    let volumeNames: string[] = [];
    // Everything this connection stores queues behind what earlier connections still have in
    // flight (one chain per receiver), so the handshake reports a durable sequence that no
    // late store from a dead connection can move afterwards.
    let storing: Promise<void> = this.tail.catch(() => undefined);
    const chain = (next: Promise<void>) => {
      storing = next;
      this.tail = next;
      return next;
    };
    /** The next step in order; a failure drops the connection (the primary resumes from its last ack). */
    const step = (fn: () => unknown) => {
      chain(storing.then(async () => void (await fn())));
      storing.catch((e: Error) => {
        fail(e);
        socket.destroy();
      });
    };
    const fail = (e: Error) => {
      this.state.rejectedFrames++;
      this.state.lastError = `${(e as { code?: string }).code ?? 'ERROR'}: ${e.message}`;
      logger.warn({ peer, err: { code: (e as { code?: string }).code, message: e.message } }, 'replication frame rejected; dropping the connection');
    };
    const onFrame = (f: Frame) => {
      this.lastContact = instant();
      this.state.lastContactMs = this.lastContact.wall;
      if (!greeted) {
        if (f.type !== FrameType.Hello) throw new ReplicationError(Code.Handshake, `expected Hello, got frame type ${f.type}`);
        greeted = true;
        // Well-formed entries only: the handshake refuses a bad list, but frames pipelined behind the Hello are read first.
        volumeList = Array.isArray(f.meta.volumes) ? (f.meta.volumes as VolumeDescriptor[]).filter((v) => v !== null && typeof v === 'object' && typeof v.name === 'string') : [];
        volumeNames = volumeList.map((v) => v.name).sort();
        chain(storing.then(() => this.storing).then(() => this.handshake(link, f)).then(async (durable) => {
          expectNext = durable + 1;
        }));
        storing.catch((e: Error) => {
          fail(e);
          link.send(FrameType.Error, { code: (e as { code?: string }).code ?? Code.Handshake, message: e.message });
          socket.end();
        });
        return;
      }
      switch (f.type) {
        case FrameType.SyncStart: {
          const fromSeq = Number(f.meta.fromSeq);
          if (!Number.isSafeInteger(fromSeq) || fromSeq < 0) throw new ReplicationError(Code.FrameMeta, `SyncStart with fromSeq ${String(f.meta.fromSeq)}`);
          if (!sink.sync) throw new ReplicationError(Code.Handshake, 'this replica cannot take an image sync');
          const resume = f.meta.resume === true;
          step(async () => {
            await this.storing;
            const fresh = sink.sync!.isFresh();
            const cursor = sink.sync!.cursor();
            if (resume && cursor && cursor.fromSeq === fromSeq) {
              // Continue where it stopped: our hashes for the volumes still to scan.
              await this.sendHashes(link, cursor.compare ? volumeNames.filter((n) => n >= cursor.volume) : [], 0);
              return;
            }
            await sink.sync!.begin(fromSeq, volumeNames);
            expectNext = fromSeq + 1;
            this.state.receivedSeq = fromSeq;
            await this.sendHashes(link, fresh ? [] : volumeNames, 0);
          });
          break;
        }
        case FrameType.SyncChunk: {
          const volume = String(f.meta.volume);
          const offset = Number(f.meta.offset);
          const length = Number(f.meta.length);
          const zero = f.meta.zero === true;
          const vol = volumeList.find((v) => v.name === volume);
          if (!vol || !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || offset + length > vol.sizeBytes || (zero ? f.payload.length !== 0 : f.payload.length !== length)) {
            throw new ReplicationError(Code.FrameMeta, `invalid sync chunk ${volume} ${String(f.meta.offset)}+${String(f.meta.length)} (${f.payload.length} bytes)`);
          }
          if (!sink.sync) throw new ReplicationError(Code.Handshake, 'this replica cannot take an image sync');
          step(() => sink.sync!.chunk(volume, offset, length, zero ? undefined : f.payload));
          break;
        }
        case FrameType.SyncDone: {
          const fromSeq = Number(f.meta.fromSeq);
          const consistentSeq = Number(f.meta.consistentSeq);
          if (!Number.isSafeInteger(fromSeq) || !Number.isSafeInteger(consistentSeq) || consistentSeq < fromSeq) throw new ReplicationError(Code.FrameMeta, 'invalid SyncDone');
          if (!sink.sync) throw new ReplicationError(Code.Handshake, 'this replica cannot take an image sync');
          step(async () => {
            const t = Number(f.meta.consistentTimeMs);
            await sink.sync!.end(fromSeq, consistentSeq, Number.isSafeInteger(t) && t > 0 ? t : undefined);
            link.send(FrameType.Ack, { seq: sink.durableSeq(), appliedSeq: sink.appliedSeq() });
          });
          break;
        }
        case FrameType.Segment: {
          const records = decodeSegment(f.meta, f.payload);
          const from = Number(f.meta.from);
          const to = Number(f.meta.to);
          // Sequence is checked against what the handshake (or the previous segment) left us expecting.
          step(() => {
            if (from !== expectNext) {
              throw new ReplicationError(Code.Sequence, from < expectNext ? `duplicate segment ${from}..${to} (expected ${expectNext})` : `out-of-order segment ${from}..${to} (expected ${expectNext})`);
            }
            if (dead) return;
            expectNext = to + 1;
            this.state.receivedSeq = to;
            // Group commit: segments that arrive while a store is running are stored together
            // (one journal sync), then acknowledged; still durable before the ack, still in order.
            pending.push({ records, to, payload: f.pooled ? f.payload : undefined });
            flush().catch((e: Error) => {
              dead = true;
              fail(e);
              socket.destroy();
            });
          });
          break;
        }
        case FrameType.Verify:
        case FrameType.Repair: {
          const repair = f.type === FrameType.Repair;
          const id = Number(f.meta.id);
          const volume = String(f.meta.volume);
          const offset = Number(f.meta.offset);
          const length = Number(f.meta.length);
          const seq = Number(f.meta.seq);
          const vol = volumeList.find((v) => v.name === volume);
          const payloadBytes = repair ? length : 8 * Math.ceil(length / SYNC_CHUNK_BYTES);
          if (!vol || !Number.isSafeInteger(id) || !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || !Number.isSafeInteger(seq) || offset < 0 || offset % SYNC_CHUNK_BYTES !== 0 || length <= 0 || length > MAX_VERIFY_BYTES || offset + length > vol.sizeBytes || f.payload.length !== payloadBytes) {
            throw new ReplicationError(Code.FrameMeta, `invalid ${repair ? 'repair' : 'verify'} range ${volume} ${String(f.meta.offset)}+${String(f.meta.length)} (${f.payload.length} bytes)`);
          }
          const payload = Buffer.from(f.payload);
          step(async () => {
            // Placed after the segment up to `seq`: compared (or written) once that is applied.
            if (seq !== expectNext - 1) throw new ReplicationError(Code.Sequence, `${repair ? 'repair' : 'verify'} at ${seq}, but the stream is at ${expectNext - 1}`);
            while (flushing) await flushing.catch(() => undefined); // every segment before it is in the sink's queue (a failed store is reported by its flush)
            if (dead) return;
            const unsupported = Promise.resolve({ notReady: `this replica cannot ${repair ? 'repair' : 'verify'}` });
            const answer = repair ? (sink.repair?.(volume, offset, payload) ?? unsupported) : (sink.verify?.(volume, offset, length, payload) ?? unsupported);
            answer
              .then(
                (a) => link.send(FrameType.VerifyResult, { id, ...a }),
                (e: Error) => link.send(FrameType.VerifyResult, { id, notReady: e.message }),
              )
              .catch((e: Error) => logger.warn({ peer, err: { message: e.message } }, 'verify: the answer could not be sent'));
          });
          break;
        }
        case FrameType.Ping:
          if ((f.meta.paused === true) !== this.state.primaryPaused) {
            this.state.primaryPaused = f.meta.paused === true;
            logger.info({ peer }, this.state.primaryPaused ? 'the primary paused shipping (offsite pause): the replica stays at its consistent point until it resumes' : 'the primary resumed shipping');
          }
          if (f.meta.bookmarks !== undefined && sink.storeBookmarks) {
            // Kept before the pong says so (the primary resends until a pong confirms them).
            const list = bookmarksIn(f.meta.bookmarks);
            const id = f.meta.id;
            void sink.storeBookmarks(list).then(
              (top) => !this.holdPongs && link.open && link.send(FrameType.Pong, { id, appliedSeq: sink.appliedSeq(), bookmarkId: top }),
              (e: Error) => {
                logger.warn({ peer, err: e.message }, 'bookmarks from the primary not kept; the connection is dropped (they come again)');
                socket.destroy();
              },
            );
            break;
          }
          if (!this.holdPongs) link.send(FrameType.Pong, { id: f.meta.id, appliedSeq: sink.appliedSeq() });
          break;
        case FrameType.Pong:
          break;
        default:
          throw new ReplicationError(Code.FrameType, `unexpected frame type ${f.type} from the primary`);
      }
    };
    const link: FramedLink = new FramedLink(socket, this.counters, onFrame, fail);
    this.current = { link, socket };
    socket.on('error', () => undefined);
    socket.on('close', () => {
      if (this.current?.socket === socket) {
        this.current = undefined;
        if (this.state.connected) logger.warn({ peer }, 'replication link down');
        this.state.connected = false;
        this.state.primaryPaused = false;
      }
    });
  }

  /** Our chunk hashes for these volumes (none: the primary sends every non-zero chunk), then `done`. */
  private async sendHashes(link: FramedLink, volumes: string[], fromOffset: number): Promise<void> {
    for (const name of volumes) {
      const hashes = await this.opts.sink.sync!.hashes(name, fromOffset);
      // Frames stay well under the payload limit: 8 bytes per 64 KiB chunk.
      const perFrame = (32 << 20) / 8;
      for (let i = 0; i * 8 < hashes.length || i === 0; i += perFrame) {
        link.send(FrameType.SyncHashes, { volume: name, offset: fromOffset + i * SYNC_CHUNK_BYTES }, hashes.subarray(i * 8, (i + perFrame) * 8));
        await link.drained();
        if (hashes.length <= (i + perFrame) * 8) break;
      }
    }
    link.send(FrameType.SyncHashes, { done: true });
  }

  private async handshake(link: FramedLink, hello: Frame): Promise<number> {
    const { sink, logger } = this.opts;
    const m = hello.meta;
    if (m.version !== PROTOCOL_VERSION) throw new ReplicationError(Code.FrameVersion, `primary speaks version ${String(m.version)}, this replica ${PROTOCOL_VERSION}`);
    const volumes = m.volumes as VolumeDescriptor[];
    if (!Array.isArray(volumes) || !volumes.every((v) => v && typeof v.name === 'string' && Number.isSafeInteger(v.sizeBytes) && v.sizeBytes > 0)) {
      throw new ReplicationError(Code.Handshake, 'Hello carries an invalid volume list');
    }
    const removed = m.removed ?? [];
    if (!Array.isArray(removed) || removed.length > 100_000 || !removed.every((r: Partial<RemovedVolumeDescriptor> | null) => typeof r === 'object' && r !== null && typeof r.name === 'string' && r.name.length > 0 && r.name.length <= 64 && Number.isSafeInteger(r.lastSeq) && r.lastSeq! >= 0)) {
      throw new ReplicationError(Code.Handshake, 'Hello carries an invalid list of removed volumes');
    }
    await sink.acceptPrimary?.(String(m.siteId ?? ''), m.lineage);
    await sink.ensureVolumes(volumes);
    const size = (n: unknown) => (Number.isSafeInteger(n) && (n as number) > 0 ? (n as number) : undefined);
    await sink.primaryRemovedVolumes?.((removed as RemovedVolumeDescriptor[]).map((r) => ({ name: r.name, lastSeq: r.lastSeq, sizeBytes: size(r.sizeBytes), blockSize: size(r.blockSize) })), size(m.oldestSeq));
    const durable = sink.durableSeq();
    this.state.primarySiteId = String(m.siteId ?? '');
    this.state.connected = true;
    this.state.primaryPaused = false; // until its first ping says otherwise
    this.state.receivedSeq = Math.max(this.state.receivedSeq, durable);
    const cursor = sink.sync?.cursor();
    // segmentTable: segments may carry their record table in binary (see segment.ts).
    link.send(FrameType.HelloAck, { version: PROTOCOL_VERSION, siteId: sink.siteId, durableSeq: durable, appliedSeq: sink.appliedSeq(), segmentTable: true, verify: sink.verify !== undefined, bookmarks: sink.storeBookmarks !== undefined, ...(cursor ? { sync: cursor } : {}) });
    logger.info({ primarySiteId: this.state.primarySiteId, durableSeq: durable, volumes: volumes.map((v) => v.name) }, 'replication link up');
    return durable;
  }
}

/** The bookmarks a ping carries: a short list of well-formed ones, or the frame is refused. */
function bookmarksIn(v: unknown): BookmarkDescriptor[] {
  const ok = (b: Partial<BookmarkDescriptor> | null): boolean =>
    typeof b === 'object' && b !== null && typeof b.name === 'string' && b.name.length > 0 && b.name.length <= 64 &&
    Number.isSafeInteger(b.id) && b.id! > 0 && Number.isSafeInteger(b.seq) && b.seq! >= 0 && typeof b.timeMs === 'number' && Number.isFinite(b.timeMs);
  if (!Array.isArray(v) || v.length > MAX_BOOKMARKS_PER_PING || !v.every((b) => ok(b as Partial<BookmarkDescriptor> | null))) {
    throw new ReplicationError(Code.FrameMeta, 'ping with malformed bookmarks');
  }
  return (v as BookmarkDescriptor[]).map((b) => ({ id: b.id, name: b.name, seq: b.seq, timeMs: b.timeMs }));
}
