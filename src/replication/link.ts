/** A framed replication connection: decodes frames from a socket, writes frames with backpressure. */
import type net from 'node:net';
import { releaseBuffer } from '../common/buffer-pool';
import type { Lz4Result } from '../common/lz4';
import { encodeFrame, FrameDecoder, type Frame, type FrameType } from './protocol';

export interface LinkCounters {
  framesSent: number;
  framesReceived: number;
  /** Payload bytes before compression, sent. */
  bytesRawSent: number;
  /** Bytes put on the wire (headers + meta + compressed payload). */
  bytesWireSent: number;
  bytesWireReceived: number;
}

export function newLinkCounters(): LinkCounters {
  return { framesSent: 0, framesReceived: 0, bytesRawSent: 0, bytesWireSent: 0, bytesWireReceived: 0 };
}

export class FramedLink {
  private readonly decoder = new FrameDecoder();
  /** Waiting until the socket's write buffer holds no more than `queued` bytes. */
  private drainWaiters: { queued: number; resolve: () => void }[] = [];

  constructor(
    readonly socket: net.Socket,
    private readonly counters: LinkCounters,
    onFrame: (f: Frame) => void,
    onError: (e: Error) => void,
  ) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      counters.bytesWireReceived += chunk.length;
      let frames: Frame[];
      try {
        frames = this.decoder.push(chunk);
      } catch (e) {
        onError(e as Error);
        socket.destroy();
        return;
      }
      for (const f of frames) {
        counters.framesReceived++;
        try {
          onFrame(f);
        } catch (e) {
          onError(e as Error);
          socket.destroy();
          return;
        }
      }
    });
    socket.on('drain', () => this.wakeDrainWaiters());
    socket.on('close', () => this.wakeDrainWaiters());
  }

  get open(): boolean {
    return !this.socket.destroyed;
  }

  /** Queue a frame; returns its wire size. Resolve `drained()` before queueing more when it returns false. See encodeFrame. */
  send(type: FrameType, meta: Record<string, unknown>, payload?: Buffer, compress: boolean | Lz4Result = false, transient = false): number {
    const f = encodeFrame(type, meta, payload, compress, transient);
    const wire = f.head.length + f.payload.length;
    this.counters.framesSent++;
    this.counters.bytesWireSent += wire;
    this.counters.bytesRawSent += f.rawPayloadBytes;
    if (this.socket.destroyed) return wire;
    if (f.payload.length) {
      this.socket.cork();
      this.socket.write(f.head);
      // A pooled (compressed) payload goes back to the pool once the socket is done with it.
      this.socket.write(f.payload, () => {
        if (f.pooled) releaseBuffer(f.payload);
        this.wakeDrainWaiters();
      });
      this.socket.uncork();
    } else {
      this.socket.write(f.head);
    }
    return wire;
  }

  /**
   * Resolves when the socket's write buffer has drained (or the socket closed); at once while it
   * holds no more than `queued` bytes.
   */
  drained(queued = 0): Promise<void> {
    if (!this.socket.writableNeedDrain || this.socket.destroyed || this.socket.writableLength <= queued) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push({ queued, resolve }));
  }

  /**
   * Checked whenever a payload has gone to the kernel, not only at 'drain' (an empty buffer): a
   * sender keeping a segment or two queued behind the one being sent is woken while they are
   * still there, so a slow read or compression of the next one does not leave the link idle.
   */
  private wakeDrainWaiters(): void {
    if (!this.drainWaiters.length) return;
    const gone = this.socket.destroyed;
    const queued = this.socket.writableLength;
    const waiting = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of waiting) {
      if (gone || queued <= w.queued) w.resolve();
      else this.drainWaiters.push(w);
    }
  }

  close(): void {
    this.socket.destroy();
  }
}
