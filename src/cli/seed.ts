/**
 * `offsite seed`: preload a replica's volume from an image carried by hand (disks shipped by
 * courier), before the replica first meets its primary. The first sync then compares chunk
 * hashes and sends only the chunks that differ.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { SingleBar } from 'cli-progress';
import { DataDir } from '../appliance/datadir';
import type { ReplicaState } from '../appliance/replica';
import { LineageFile } from '../appliance/lineage';
import { readRoleOverride } from '../appliance/site-role';
import { OffsiteError } from '../common/errors';
import { isZero } from '../common/bytes';
import { FileVolume } from '../volume/file-volume';
import { Journal } from '../journal/wal';
import { fail } from './exit';
import { OWNER_ONLY_UMASK, warnIfOpenToOthers } from './data-perms';

const CHUNK = 1 << 20;

/**
 * Seeding writes a volume's image directly, behind any journal: only a replica that has not yet
 * met its primary may take that. A directory that is (or was) a primary — switched to primary by
 * a promotion, or holding a journal or a lineage without ever having run as a replica — keeps its
 * writes in the journal and the lineage; an image overwritten under them would be served (and
 * replicated) as data the journal says was never written.
 */
async function refuseNonReplica(dir: DataDir, replicaState: ReplicaState | null): Promise<void> {
  const refuse = (why: string) => {
    throw new OffsiteError('SEED_NOT_REPLICA', `${dir.root} ${why}; seed is for a new replica's data directory (seeding would overwrite its volume behind its journal)`);
  };
  const role = await readRoleOverride(dir.root).catch(() => undefined);
  if (role?.role === 'primary') refuse(`is a primary (state/role.json: switched by ${role.reason} at ${role.changedAt})`);
  if (replicaState) return;
  if ((await LineageFile.in(dir.root).load().catch(() => [])).length > 0) refuse('holds a primary\'s data (it has a lineage: it has run as a primary)');
  // A replica started before it met its primary has an empty journal; a primary's holds its writes.
  if (await fsp.stat(dir.journalDir).catch(() => undefined)) {
    const journal = await Journal.open({ dir: dir.journalDir, inspectOnly: true });
    const head = journal.headSeq();
    await journal.close();
    if (head > 0) refuse(`holds a primary's data (its journal has records up to sequence ${head}, and it never ran as a replica)`);
  }
}

export function register(program: Command): void {
  program
    .command('seed')
    .description("preload a (stopped) replica's volume from a carried image; the first sync then sends only what differs")
    .requiredOption('--data <dir>', "the replica's data directory (created when new)")
    .requiredOption('--volume <name>', 'volume name (as on the primary)')
    .requiredOption('--from <image>', 'raw image file of the volume (its size is the volume size)')
    .action(async (opts: { data: string; volume: string; from: string }) => {
      const started = Date.now();
      process.umask(OWNER_ONLY_UMASK);
      const dir = new DataDir(opts.data);
      let volume: FileVolume | undefined;
      let locked = false;
      // fail() exits the process: it comes after the lock is released, not inside the try.
      let failure: { error: unknown } | undefined;
      try {
        const st = await fsp.stat(opts.from).catch(() => {
          throw new OffsiteError('SEED_NO_IMAGE', `cannot read the image ${opts.from}`);
        });
        if (!st.isFile() || st.size === 0 || st.size % 512 !== 0) throw new OffsiteError('SEED_BAD_IMAGE', `${opts.from} is not a raw image (size ${st.size} is not a positive multiple of 512)`);
        await warnIfOpenToOthers(opts.data, (_mode, msg) => process.stderr.write(`offsite seed: warning: ${msg}\n`));
        await dir.init();
        await dir.lock();
        locked = true;
        const statePath = path.join(dir.root, 'state', 'replica.json');
        const state = JSON.parse(await fsp.readFile(statePath, 'utf8').catch(() => 'null')) as ReplicaState | null;
        await refuseNonReplica(dir, state);
        if (state && !state.fresh && !state.sync) {
          throw new OffsiteError('SEED_NOT_FRESH', `${opts.data} already replicates from its primary; seeding is for a new replica`);
        }
        volume = await FileVolume.open({ dir: dir.volumesDir, name: opts.volume, sizeBytes: st.size, create: true });
        const src = await fsp.open(opts.from, 'r');
        const bar = process.stderr.isTTY ? new SingleBar({ format: 'seed |{bar}| {percentage}% {value}/{total} MiB', stream: process.stderr }) : undefined;
        bar?.start(Math.ceil(st.size / CHUNK), 0);
        let copied = 0;
        const buf = Buffer.alloc(CHUNK);
        try {
          for (let off = 0; off < st.size; off += CHUNK) {
            const n = Math.min(CHUNK, st.size - off);
            const { bytesRead } = await src.read(buf, 0, n, off);
            const data = buf.subarray(0, bytesRead);
            // Zero regions stay holes (a fresh volume reads zeros there already).
            if (!isZero(data)) {
              await volume.write(off, Buffer.from(data));
              copied += bytesRead;
            } else await volume.unmap(off, bytesRead);
            bar?.update(Math.floor(off / CHUNK) + 1);
          }
        } finally {
          await src.close();
          bar?.stop();
        }
        await volume.flush();
        // The replica now holds data the primary must compare against: the first handshake runs a sync.
        const next: ReplicaState = { ...(state ?? { consistentSeq: 0, appliedTimeMs: 0, appliedSeq: 0 }), fresh: false, sync: { fromSeq: -1, volume: '', offsetBytes: 0 } };
        await fsp.mkdir(path.dirname(statePath), { recursive: true, mode: 0o700 });
        await fsp.writeFile(`${statePath}.tmp`, JSON.stringify(next, null, 2) + '\n', { mode: 0o600 });
        await fsp.rename(`${statePath}.tmp`, statePath);
        const secs = ((Date.now() - started) / 1000).toFixed(2);
        process.stdout.write(`seeded volume ${opts.volume} in ${opts.data}: ${st.size} bytes, ${copied} bytes of data copied, ${secs} s; the first sync will send only the chunks that differ\n`);
      } catch (e) {
        failure = { error: e };
      } finally {
        await volume?.close().catch(() => undefined);
        if (locked) await dir.unlock();
      }
      if (failure) fail(failure.error, 'offsite seed');
    });
}
