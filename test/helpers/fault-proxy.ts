/**
 * A fault-injecting TCP proxy for tests (netem does not exist here): it forwards a listening
 * port to a target and can cut, stall, delay, slow, duplicate or corrupt the traffic on demand.
 * All randomness comes from a seeded generator so a failing run can be replayed.
 */
import net from 'node:net';

export interface ProxyStats {
  connections: number;
  cuts: number;
  bytesForwarded: number;
  corrupted: number;
  duplicated: number;
}

type Direction = 'up' | 'down' | 'both';

/** mulberry32: small, fast, seedable. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class FaultProxy {
  private server?: net.Server;
  private readonly pairs = new Set<{ client: net.Socket; upstream: net.Socket }>();
  private stalled = false;
  private refusing = false;
  private delayMs = 0;
  private rateBytesPerSec = 0;
  private corruptPending = 0;
  private corruptDir: Direction = 'up';
  private duplicatePending = 0;
  readonly stats: ProxyStats = { connections: 0, cuts: 0, bytesForwarded: 0, corrupted: 0, duplicated: 0 };
  private readonly random: () => number;
  port = 0;

  constructor(private readonly targetHost: string, private targetPort: number, seed = 1) {
    this.random = rng(seed);
  }

  async listen(port = 0): Promise<number> {
    this.server = net.createServer((client) => this.accept(client));
    await new Promise<void>((resolve) => this.server!.listen(port, '127.0.0.1', () => resolve()));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this.port;
  }

  retarget(port: number): void {
    this.targetPort = port;
  }

  private accept(client: net.Socket): void {
    if (this.refusing) {
      client.destroy();
      return;
    }
    this.stats.connections++;
    const upstream = net.connect(this.targetPort, this.targetHost);
    const pair = { client, upstream };
    this.pairs.add(pair);
    const end = () => {
      client.destroy();
      upstream.destroy();
      this.pairs.delete(pair);
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    this.pipe(client, upstream, 'up');
    this.pipe(upstream, client, 'down');
  }

  private pipe(from: net.Socket, to: net.Socket, dir: 'up' | 'down'): void {
    let queue = Promise.resolve();
    from.on('data', (chunk: Buffer) => {
      from.pause();
      queue = queue.then(async () => {
        while (this.stalled && !to.destroyed) await sleep(20);
        if (this.delayMs) await sleep(this.delayMs);
        if (this.rateBytesPerSec) await sleep((chunk.length / this.rateBytesPerSec) * 1000);
        let out = chunk;
        if (this.corruptPending > 0 && (this.corruptDir === 'both' || this.corruptDir === dir) && chunk.length > 0) {
          this.corruptPending--;
          this.stats.corrupted++;
          out = Buffer.from(chunk);
          const at = Math.floor(this.random() * out.length);
          out[at] ^= 1 + Math.floor(this.random() * 255);
        }
        if (to.destroyed) return;
        to.write(out);
        if (this.duplicatePending > 0 && dir === 'up') {
          this.duplicatePending--;
          this.stats.duplicated++;
          to.write(out);
        }
        this.stats.bytesForwarded += out.length;
        from.resume();
      });
    });
  }

  /** Drop every open connection (both sides see a reset or close). */
  cut(): void {
    for (const p of this.pairs) {
      p.client.destroy();
      p.upstream.destroy();
    }
    this.pairs.clear();
    this.stats.cuts++;
  }

  /** Hold all traffic (connections stay open) until resumed. */
  stall(on: boolean): void {
    this.stalled = on;
  }

  /** Refuse new connections (a link that is down). */
  refuse(on: boolean): void {
    this.refusing = on;
  }

  setDelay(ms: number): void {
    this.delayMs = ms;
  }

  setRate(bytesPerSec: number): void {
    this.rateBytesPerSec = bytesPerSec;
  }

  /** Flip one random byte in each of the next `n` chunks going in `dir`. */
  corrupt(n = 1, dir: Direction = 'up'): void {
    this.corruptPending += n;
    this.corruptDir = dir;
  }

  /** Send the next `n` upstream chunks twice. */
  duplicate(n = 1): void {
    this.duplicatePending += n;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
