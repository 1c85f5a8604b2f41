/**
 * Durable persistent-reservation state: one JSON file per LU under the target's state
 * directory, replaced atomically (write tmp, fsync, rename, fsync dir) before PR OUT completes.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { OffsiteError } from '../common/errors';
import { type PrState, type PrStateJson, prFromJson, prToJson } from './pr';

export class PrStoreError extends OffsiteError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('SCSI_PR_STORE', message, options);
  }
}

export class PrStore {
  readonly file: string;
  private seq = 0;

  constructor(readonly dir: string, lun: number) {
    this.file = path.join(dir, `lun-${lun}.pr.json`);
  }

  /**
   * The stored state, or undefined when there is none. SPC-4 §5.12.5: registrations survive a
   * power loss (here: a restart) only when APTPL was set; otherwise the LU starts without any.
   */
  async load(): Promise<PrState | undefined> {
    let text: string;
    try {
      text = await fsp.readFile(this.file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new PrStoreError(`cannot read ${this.file}: ${(e as Error).message}`, { cause: e });
    }
    let st: PrState;
    try {
      st = prFromJson(JSON.parse(text) as PrStateJson);
    } catch (e) {
      throw new PrStoreError(`corrupt persistent reservation state ${this.file}: ${(e as Error).message}`, { cause: e });
    }
    if (!st.aptpl) return { generation: st.generation, aptpl: false, registrations: [] };
    return st;
  }

  /** Replace the stored state atomically and durably. */
  async save(st: PrState): Promise<void> {
    const tmp = `${this.file}.tmp-${process.pid}-${++this.seq}`;
    try {
      await fsp.mkdir(this.dir, { recursive: true });
      const fh = await fsp.open(tmp, 'w', 0o600);
      try {
        await fh.writeFile(JSON.stringify(prToJson(st)));
        await fh.sync();
      } finally {
        await fh.close();
      }
      await fsp.rename(tmp, this.file);
      const dh = await fsp.open(this.dir, 'r');
      try {
        await dh.sync();
      } finally {
        await dh.close();
      }
    } catch (e) {
      await fsp.rm(tmp, { force: true }).catch(() => undefined);
      throw new PrStoreError(`cannot write ${this.file}: ${(e as Error).message}`, { cause: e });
    }
  }
}
