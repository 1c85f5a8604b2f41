/**
 * An in-process IscsiServer with one target in front of a scsi-harness target, for tests that
 * drive src/iscsi/session.ts with hand-made PDUs through the raw initiator (test/helpers/raw-initiator).
 */
import { rmSync } from 'node:fs';
import pino from 'pino';
import { IscsiServer, type IscsiServerOptions } from '../../src/iscsi/server';
import type { TargetDirectory, TargetEntry } from '../../src/iscsi/targets';
import { RawInitiator } from './raw-initiator';
import { harness, type Harness } from './scsi-harness';

export class RawTarget {
  private readonly opened: RawInitiator[] = [];
  private sessions = 0;

  private constructor(
    readonly name: string,
    readonly h: Harness,
    readonly server: IscsiServer,
    readonly port: number,
  ) {}

  /** Serve a new harness target named `name`; `harnessOpts` and `serverOpts` as the harness and the server take them. */
  static async start(name: string, harnessOpts: Parameters<typeof harness>[0] = {}, serverOpts: Partial<IscsiServerOptions> = {}): Promise<RawTarget> {
    const logger = pino({ level: 'silent' });
    const h = await harness({ ...harnessOpts, extra: { logger, ...harnessOpts.extra } });
    const target: TargetEntry = { name, auth: {}, scsi: h.target };
    const directory: TargetDirectory = { targets: () => [target], lookup: (n) => (n === name ? target : undefined) };
    const server = new IscsiServer({ directory, logger, nopIntervalMs: 0, ...serverOpts });
    const { port } = await server.listen('127.0.0.1', 0);
    return new RawTarget(name, h, server, port);
  }

  /** A new session, its own ISID (`isidTag` and a counter) and initiator name (`prefix` and the counter), with these operational keys. */
  async session(prefix: string, isidTag: number, keys: Record<string, string> = {}): Promise<RawInitiator> {
    const n = ++this.sessions;
    const s = await RawInitiator.session(this.port, {
      initiatorName: `iqn.2026-11.dev.offsite.test:${prefix}-${n}`, targetName: this.name, keys, isid: Buffer.from([0x80, 0, 0, 0, isidTag, n]),
    });
    this.opened.push(s);
    return s;
  }

  /** A raw initiator opened by the test itself, closed with the others. */
  track(s: RawInitiator): RawInitiator {
    this.opened.push(s);
    return s;
  }

  async close(): Promise<void> {
    for (const s of this.opened) s.destroy();
    await this.server.close(100);
    await this.h.target.close();
    rmSync(this.h.stateDir, { recursive: true, force: true });
  }
}
