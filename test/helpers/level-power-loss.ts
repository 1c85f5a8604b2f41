/**
 * A power loss as LevelDB lives through it: what it wrote with `sync` (and everything before it
 * in its log) is on the disk, what came after may be gone. While a journal directory is watched,
 * its LevelDB files are copied at the start (the state LevelDB's recovery makes durable when the
 * journal is next opened) and after each synced write to it; `powerLoss()` stops copying, and
 * `restore()` puts the copy back once the journal is closed. The segment files and base images
 * (subdirectories) are left as they are: the journal syncs them itself.
 */
import { cpSync, existsSync, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { Level } from 'level';
import { removeDir, tempDir } from './appliance';

type Write = (this: { location: string }, ...args: unknown[]) => unknown;
const WRITES = [
  ['put', 2],
  ['del', 1],
  ['batch', 1],
] as const;

/** LevelDB's own files in `dir` (not its lock, nor the journal's subdirectories). */
function levelFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir).filter((f) => f !== 'LOCK' && statSync(path.join(dir, f)).isFile());
}

export class LevelPowerLoss {
  private lost = false;
  private readonly unpatch: (() => void)[] = [];

  /** Watch the journal at `dir` (closed now); the copy is kept in `copyDir`. */
  constructor(
    private readonly dir: string,
    private readonly copyDir: string,
  ) {
    this.save();
    const proto = Level.prototype as unknown as Record<string, Write>;
    const self = this;
    for (const [name, optionsAt] of WRITES) {
      const own = Object.prototype.hasOwnProperty.call(proto, name);
      const write = proto[name];
      proto[name] = function (this: { location: string }, ...args: unknown[]) {
        const done = write.apply(this, args);
        const synced = (args[optionsAt] as { sync?: boolean } | undefined)?.sync === true;
        if (!synced || path.resolve(this.location) !== path.resolve(self.dir) || !(done instanceof Promise)) return done;
        return done.then((v: unknown) => {
          if (!self.lost) self.save();
          return v;
        });
      };
      this.unpatch.push(() => {
        if (own) proto[name] = write;
        else delete proto[name];
      });
    }
  }

  /** The power goes: LevelDB's state is its last synced one. */
  powerLoss(): void {
    this.lost = true;
    for (const u of this.unpatch.splice(0)) u();
  }

  /** Back on (the journal closed): LevelDB's files are as of its last synced write. */
  restore(): void {
    this.powerLoss();
    for (const f of levelFiles(this.dir)) rmSync(path.join(this.dir, f));
    for (const f of readdirSync(this.copyDir)) cpSync(path.join(this.copyDir, f), path.join(this.dir, f));
  }

  private save(): void {
    rmSync(this.copyDir, { recursive: true, force: true });
    mkdirSync(this.copyDir, { recursive: true });
    for (const f of levelFiles(this.dir)) cpSync(path.join(this.dir, f), path.join(this.copyDir, f));
  }
}

/** A journal directory and a place for LevelDB's copy, for one test, removed afterwards. */
export async function inJournalDir(fn: (jdir: string, copyDir: string) => Promise<void>): Promise<void> {
  const dir = tempDir();
  try {
    await fn(path.join(dir, 'j'), path.join(dir, 'level-copy'));
  } finally {
    removeDir(dir);
  }
}
