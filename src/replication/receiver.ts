/**
 * The receiver (replica side): accepts the primary's connection, answers the handshake with the
 * durable sequence, and stores segments strictly in order — each made durable by the sink before
 * it is acknowledged. A corrupt, duplicated, out-of-order or oversized frame drops the connection
 * (the primary resumes from the last ack); it is never applied.
 */
import net from 'node:net';
import type { Logger } from '../common/logger';
import { ReplicationError, ReplicationErrorCode as Code } from './errors';
import { FramedLink, newLinkCounters, type LinkCounters } from './link';
import type { ReceiverSink, VolumeDescriptor } from './ports';
import { FrameType, PROTOCOL_VERSION, type Frame } from './protocol';
import { decodeSegment } from './segment';

export interface ReceiverOptions {
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
}

export class Receiver {
  private server?: net.Server;
  private current?: { link: FramedLink; socket: net.Socket };
  readonly counters = newLinkCounters();
  private readonly state = { connected: false, primarySiteId: '', receivedSeq: 0, connections: 0, rejectedFrames: 0, lastError: '', lastContactMs: 0 };

  constructor(private readonly opts: ReceiverOptions) {}

  async listen(host: string, port: number): Promise<{ host: string; port: number }> {
    this.server = net.createServer((socket) => this.accept(socket));
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
    let storing: Promise<void> = Promise.resolve();
    const fail = (e: Error) => {
      this.state.rejectedFrames++;
      this.state.lastError = `${(e as { code?: string }).code ?? 'ERROR'}: ${e.message}`;
      logger.warn({ peer, err: { code: (e as { code?: string }).code, message: e.message } }, 'replication frame rejected; dropping the connection');
    };
    const onFrame = (f: Frame) => {
      this.state.lastContactMs = Date.now();
      if (!greeted) {
        if (f.type !== FrameType.Hello) throw new ReplicationError(Code.Handshake, `expected Hello, got frame type ${f.type}`);
        greeted = true;
        storing = this.handshake(link, f).then((durable) => {
          expectNext = durable + 1;
        });
        storing.catch((e: Error) => {
          fail(e);
          link.send(FrameType.Error, { code: (e as { code?: string }).code ?? Code.Handshake, message: e.message });
          socket.end();
        });
        return;
      }
      switch (f.type) {
        case FrameType.Segment: {
          const records = decodeSegment(f.meta, f.payload);
          const from = records[0].seq;
          const to = records[records.length - 1].seq;
          // Sequence is checked against what the handshake (or the previous segment) left us expecting.
          storing = storing.then(async () => {
            if (from !== expectNext) {
              throw new ReplicationError(Code.Sequence, from < expectNext ? `duplicate segment ${from}..${to} (expected ${expectNext})` : `out-of-order segment ${from}..${to} (expected ${expectNext})`);
            }
            expectNext = to + 1;
            this.state.receivedSeq = to;
            await sink.store(records);
            link.send(FrameType.Ack, { seq: sink.durableSeq(), appliedSeq: sink.appliedSeq() });
          });
          storing.catch((e: Error) => {
            fail(e);
            socket.destroy();
          });
          break;
        }
        case FrameType.Ping:
          link.send(FrameType.Pong, { id: f.meta.id, appliedSeq: sink.appliedSeq() });
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
      }
    });
  }

  private async handshake(link: FramedLink, hello: Frame): Promise<number> {
    const { sink, logger } = this.opts;
    const m = hello.meta;
    if (m.version !== PROTOCOL_VERSION) throw new ReplicationError(Code.FrameVersion, `primary speaks version ${String(m.version)}, this replica ${PROTOCOL_VERSION}`);
    const volumes = m.volumes as VolumeDescriptor[];
    if (!Array.isArray(volumes) || !volumes.every((v) => v && typeof v.name === 'string' && Number.isSafeInteger(v.sizeBytes) && v.sizeBytes > 0)) {
      throw new ReplicationError(Code.Handshake, 'Hello carries an invalid volume list');
    }
    await sink.ensureVolumes(volumes);
    const durable = sink.durableSeq();
    this.state.primarySiteId = String(m.siteId ?? '');
    this.state.connected = true;
    this.state.receivedSeq = Math.max(this.state.receivedSeq, durable);
    link.send(FrameType.HelloAck, { version: PROTOCOL_VERSION, siteId: sink.siteId, durableSeq: durable, appliedSeq: sink.appliedSeq() });
    logger.info({ primarySiteId: this.state.primarySiteId, durableSeq: durable, volumes: volumes.map((v) => v.name) }, 'replication link up');
    return durable;
  }
}
