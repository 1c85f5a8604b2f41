/**
 * The witness epochs this site holds the lease under, one per witness address (witness.ts):
 * kept in the data directory so that a primary restarted after another site took over renews
 * with its old epoch and is refused (superseded), instead of claiming an expired lease afresh.
 * A promotion clears them: the promoted site claims the lease, and learns its own epochs.
 */
import path from 'node:path';
import { readJsonFile, removeJsonFile, writeJsonFile } from '../common/json-file';

export type WitnessEpochs = Record<string, string>;

const file = (dataDir: string) => path.join(dataDir, 'state', 'witness-epochs.json');

function isEpochs(v: unknown): v is { epochs: WitnessEpochs } {
  const e = (v as { epochs?: unknown } | undefined)?.epochs;
  return !!e && typeof e === 'object' && Object.values(e).every((x) => typeof x === 'string');
}

/**
 * The saved epochs (none: {}). An unreadable file is an error: starting without them would let
 * this site claim a lease that passed to another site (the case they exist for).
 */
export async function loadWitnessEpochs(dataDir: string): Promise<WitnessEpochs> {
  const v = await readJsonFile(file(dataDir));
  if (v === undefined) return {};
  if (!isEpochs(v)) throw new Error(`${file(dataDir)} is not a list of witness epochs: remove it only if no other site can have taken the lease over`);
  return { ...v.epochs };
}

export function saveWitnessEpochs(dataDir: string, epochs: WitnessEpochs): Promise<void> {
  return writeJsonFile(file(dataDir), { epochs, savedAt: new Date().toISOString() });
}

export function clearWitnessEpochs(dataDir: string): Promise<void> {
  return removeJsonFile(file(dataDir));
}
