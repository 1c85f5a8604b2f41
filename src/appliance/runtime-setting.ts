/**
 * Settings an operator changes at run time (the bandwidth cap, the RPO target and policy) outlive
 * the process: each is saved in the data directory with the configured value in force when it was
 * made, and a restart keeps it as long as the configuration still says the same. When the
 * operator has since changed the configuration (flag, file or environment), that newer decision
 * wins and the saved change is dropped; a file that is not a change is dropped too. (A pause of
 * shipping is kept the same way, with no configured value to compare.)
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { readJsonFile, writeJsonFile } from '../common/json-file';

export type SettingSource = 'configured' | 'runtime';

export class RuntimeSetting<C> {
  private readonly file: string;

  constructor(
    dataDir: string,
    name: string,
    /** Whether a parsed file is a saved change of this setting. */
    private readonly isChange: (v: unknown) => v is C,
  ) {
    this.file = path.join(dataDir, 'state', `${name}.json`);
  }

  /**
   * The saved change, if the configuration still says what it said when the change was made
   * (`stillConfigured`). `dropped`: a change the configuration overtook, or a file that is not
   * one (`unreadable`), now removed.
   */
  async starting(stillConfigured: (c: C) => boolean): Promise<{ change?: C; dropped?: C | 'unreadable' }> {
    let saved: unknown;
    try {
      saved = await readJsonFile(this.file);
    } catch {
      saved = null;
    }
    if (saved === undefined) return {};
    if (this.isChange(saved) && stillConfigured(saved)) return { change: saved };
    await this.clear();
    return { dropped: this.isChange(saved) ? saved : 'unreadable' };
  }

  save(change: C): Promise<void> {
    return writeJsonFile(this.file, change);
  }

  async clear(): Promise<void> {
    await fsp.rm(this.file, { force: true });
  }
}
