/**
 * Lineage: the history of the data a site holds, as a list of generations (like DRBD's
 * generation UUIDs). A generation starts when a site begins accepting writes: a new primary
 * starts generation 1 at sequence 1; a promotion starts a new generation right after the
 * promoted replica's last consistent sequence. Two sites share history up to the point where
 * their lineages fork; a replica whose journal goes past that point holds writes the new
 * primary never saw (split-off writes): they are saved aside and only differing blocks resync.
 * Pure functions plus a small JSON file in the data directory.
 */
import { randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { writeJsonFile } from '../common/json-file';

export interface Generation {
  id: string;
  /** First sequence number written in this generation. */
  fromSeq: number;
  /** When the generation started (ISO-8601). */
  startedAt: string;
}

export type Lineage = Generation[];

export function newGeneration(fromSeq: number): Generation {
  return { id: randomUUID(), fromSeq, startedAt: new Date().toISOString() };
}

export function isLineage(v: unknown): v is Lineage {
  return Array.isArray(v) && v.every((g) => g && typeof g === 'object' && typeof (g as Generation).id === 'string' && Number.isSafeInteger((g as Generation).fromSeq));
}

export type LineageVerdict =
  /** The replica's data is a prefix of the primary's history: resume from its durable sequence. */
  | { kind: 'prefix' }
  /** The replica went past the fork: records after `forkSeq` are not in the primary's history. */
  | { kind: 'diverged'; forkSeq: number }
  /** No common history at all. */
  | { kind: 'unrelated' };

/**
 * Compare a replica (its lineage and durable sequence) with the primary's lineage. An empty
 * replica lineage (a new replica) is a prefix of anything.
 */
export function compareLineage(replica: Lineage, replicaDurableSeq: number, primary: Lineage): LineageVerdict {
  if (replica.length === 0) return { kind: 'prefix' };
  // The newest replica generation the primary also knows.
  for (let i = replica.length - 1; i >= 0; i--) {
    const j = primary.findIndex((g) => g.id === replica[i].id);
    if (j < 0) continue;
    // In the primary's history that generation ends where the primary's next one starts; in
    // the replica's, where the replica's next one starts (if the replica went on itself).
    const primaryEnd = j + 1 < primary.length ? primary[j + 1].fromSeq - 1 : Infinity;
    const replicaEnd = i + 1 < replica.length ? replica[i + 1].fromSeq - 1 : Infinity;
    const fork = Math.min(primaryEnd, replicaEnd);
    if (replicaDurableSeq <= fork && i === replica.length - 1) return { kind: 'prefix' };
    return { kind: 'diverged', forkSeq: fork === Infinity ? replicaDurableSeq : fork };
  }
  return { kind: 'unrelated' };
}

export class LineageFile {
  constructor(private readonly file: string) {}

  static in(dataDir: string): LineageFile {
    return new LineageFile(path.join(dataDir, 'state', 'lineage.json'));
  }

  async load(): Promise<Lineage> {
    try {
      const v = JSON.parse(await fsp.readFile(this.file, 'utf8')) as unknown;
      return isLineage(v) ? v : [];
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
  }

  save(lineage: Lineage): Promise<void> {
    return writeJsonFile(this.file, lineage);
  }
}
