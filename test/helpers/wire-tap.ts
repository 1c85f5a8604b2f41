/**
 * A recording TCP pass-through: a real initiator connects to the tap, the tap connects to the
 * target, and every byte in each direction is kept so a test can check what was on the wire
 * (e.g. that qemu's PDUs really carry header digests).
 */
import net from 'node:net';

export interface TappedConnection {
  /** Initiator → target bytes. */
  up: Buffer[];
  /** Target → initiator bytes. */
  down: Buffer[];
}

export class WireTap {
  readonly connections: TappedConnection[] = [];
  private server?: net.Server;
  private readonly sockets = new Set<net.Socket>();

  constructor(private readonly targetPort: number, private readonly targetHost = '127.0.0.1') {}

  listen(): Promise<number> {
    return new Promise((resolve) => {
      this.server = net.createServer((client) => {
        const c: TappedConnection = { up: [], down: [] };
        this.connections.push(c);
        const upstream = net.connect({ port: this.targetPort, host: this.targetHost });
        for (const s of [client, upstream]) {
          this.sockets.add(s);
          s.on('error', () => undefined);
          s.on('close', () => {
            this.sockets.delete(s);
            client.destroy();
            upstream.destroy();
          });
        }
        client.on('data', (d: Buffer) => {
          c.up.push(d);
          upstream.write(d);
        });
        upstream.on('data', (d: Buffer) => {
          c.down.push(d);
          client.write(d);
        });
      });
      this.server.listen(0, '127.0.0.1', () => resolve((this.server!.address() as net.AddressInfo).port));
    });
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}
