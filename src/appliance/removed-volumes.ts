/**
 * Volumes removed from a site (`offsite remove-volume` on a primary; on a replica, its copy of a
 * volume the primary removed, once it holds every write of it). A removed volume is not deleted:
 * its files (image, metadata, SCSI state) are moved aside to `removed/<name>-<time>/` in the data
 * directory, for the operator to keep or delete. The list (state/removed-volumes.json) keeps the
 * names from being served or created again under the same name, tells the replica which copies
 * to retire, and gives the journal the size of a removed volume whose records are still retained.
 * A removal is recorded before the files move; a start finishes a move a crash cut short.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { OffsiteError } from '../common/errors';
import { readJsonFile, writeJsonFile } from '../common/json-file';
import { VOLUME_NAME_RE } from '../volume/file-volume';

export interface RemovedVolume {
  name: string;
  sizeBytes: number;
  blockSize?: number;
  /** Every record of the volume has a sequence number at or below this one. */
  lastSeq: number;
  removedAt: string;
  /** Where its files went, relative to the data directory. */
  movedTo: string;
  /** A replica's copy that lacks writes the primary folded before shipping them (its moved-aside copy is the complete one). */
  incomplete?: boolean;
}

const file = (dataDir: string) => path.join(dataDir, 'state', 'removed-volumes.json');

function isRemoved(v: unknown): v is RemovedVolume {
  const r = v as Partial<RemovedVolume> | null;
  return (
    typeof r === 'object' && r !== null &&
    typeof r.name === 'string' && VOLUME_NAME_RE.test(r.name) &&
    Number.isSafeInteger(r.sizeBytes) && r.sizeBytes! > 0 &&
    Number.isSafeInteger(r.lastSeq) && r.lastSeq! >= 0 &&
    typeof r.removedAt === 'string' &&
    typeof r.movedTo === 'string' && /^removed\/[^/]+$/.test(r.movedTo)
  );
}

/**
 * The volumes removed here. A damaged list is an error, not an empty list: served again, a
 * removed name would come back as a new empty volume while the replica may still hold the old one.
 */
export async function removedVolumes(dataDir: string): Promise<RemovedVolume[]> {
  let v: unknown;
  try {
    v = await readJsonFile(file(dataDir));
  } catch (e) {
    throw new OffsiteError('STATE_UNREADABLE', `${file(dataDir)} (the volumes removed here) is unreadable: ${(e as Error).message}; repair it by hand`);
  }
  if (v === undefined) return [];
  if (!Array.isArray(v) || !v.every(isRemoved)) throw new OffsiteError('STATE_UNREADABLE', `${file(dataDir)} (the volumes removed here) is damaged; repair it by hand`);
  return v;
}

/** Where a volume removed now goes: removed/<name>-<time>, the time with no colons or dots. */
export function removedDirName(name: string, at: Date): string {
  return `removed/${name}-${at.toISOString().replace(/[:.]/g, '-')}`;
}

/** Record a removal (before its files move). */
export async function recordRemovedVolume(dataDir: string, r: RemovedVolume): Promise<void> {
  const list = await removedVolumes(dataDir);
  await writeJsonFile(file(dataDir), [...list.filter((x) => x.name !== r.name), r]);
}

/**
 * Move a removed volume's files aside (its image and metadata from volumes/, its SCSI state from
 * state/<name>/), the metadata first so that a half-moved volume is no longer listed. Idempotent:
 * what was moved already is skipped. Returns the files moved.
 */
export async function moveRemovedAside(dataDir: string, r: RemovedVolume): Promise<string[]> {
  const to = path.join(dataDir, r.movedTo);
  const moves = [
    [path.join(dataDir, 'volumes', `${r.name}.json`), path.join(to, `${r.name}.json`)],
    [path.join(dataDir, 'volumes', `${r.name}.img`), path.join(to, `${r.name}.img`)],
    [path.join(dataDir, 'state', r.name), path.join(to, 'state')],
  ];
  const moved: string[] = [];
  for (const [from, dest] of moves) {
    const st = await fsp.stat(from).catch(() => undefined);
    // state/<name> only as the volume's own directory (state/ also holds files of the site).
    if (!st || (dest.endsWith('state') && !st.isDirectory())) continue;
    // Never over what an earlier move put there: that is the removed volume's own copy.
    if (await fsp.stat(dest).then(() => true, () => false)) throw new OffsiteError('REMOVED_EXISTS', `${path.relative(dataDir, from)} is in the way of a removal recorded in state/removed-volumes.json (${r.name}, ${r.removedAt}), whose copy in ${r.movedTo} is kept: move it yourself, or take ${r.name} out of that list`);
    await fsp.mkdir(to, { recursive: true, mode: 0o700 });
    await fsp.rename(from, dest);
    moved.push(path.relative(dataDir, from));
  }
  if (moved.length) {
    const fh = await fsp.open(path.join(dataDir, 'volumes'), 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  }
  return moved;
}
