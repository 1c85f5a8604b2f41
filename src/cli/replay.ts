/**
 * `offsite replay`: write a volume's image as it was right after sequence N (or at time T;
 * default the latest) from a stopped appliance's data directory (primary or replica).
 */
import { chmod, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Command } from 'commander';
import { SingleBar } from 'cli-progress';
import { DataDir } from '../appliance/datadir';
import { OffsiteError } from '../common/errors';
import { Journal } from '../journal/wal';
import { pointAtTime, reconstruct } from '../journal/point-in-time';
import { Bookmarks } from '../journal/bookmarks';
import { fail } from './exit';
import { OWNER_ONLY_UMASK } from './data-perms';
import { checkPointOptions, seqNumber } from './args';

/** Open a stopped appliance's journal, refusing a running or foreign data directory. */
export async function openStoppedJournal(dataDir: string): Promise<{ dir: DataDir; journal: Journal }> {
  const dir = new DataDir(dataDir);
  try {
    await dir.readIdentity();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new OffsiteError('DATA_DIR_FOREIGN', `${dataDir} is not an offsite data directory (no offsite.json)`);
    throw e;
  }
  const pid = await dir.runningPid();
  if (pid !== undefined) throw new OffsiteError('DATA_DIR_LOCKED', `the appliance owning ${dataDir} is running (pid ${pid}); stop it first, or use its /status for live information`);
  // Checked, never changed: a bad record is reported, not cut (the appliance's own start decides).
  const journal = await Journal.open({ dir: dir.journalDir, inspectOnly: true });
  return { dir, journal };
}

export function register(program: Command): void {
  program
    .command('replay')
    .description("write a volume's image as it was right after a journal sequence number or at a time (default: latest)")
    .requiredOption('--data <dir>', 'data directory of a stopped appliance (primary or replica)')
    .requiredOption('--volume <name>', 'volume to reconstruct')
    .requiredOption('--out <file>', 'output image file (created owner-only, mode 600, or overwritten)')
    .option('--seq <n>', 'state right after this sequence number', seqNumber)
    .option('--time <iso8601>', 'state at this moment (the last write at or before it)')
    .option('--bookmark <name>', 'state at this bookmark (offsite bookmark)')
    .action(async (opts: { data: string; volume: string; out: string; seq?: number; time?: string; bookmark?: string }) => {
      const started = Date.now();
      // The output image holds the volume's data: owner-only like the data directory it comes from.
      process.umask(OWNER_ONLY_UMASK);
      let journal: Journal | undefined;
      try {
        checkPointOptions(opts);
        const opened = await openStoppedJournal(opts.data);
        journal = opened.journal;
        const metaPath = path.join(opened.dir.volumesDir, `${opts.volume}.json`);
        const meta = JSON.parse(await readFile(metaPath, 'utf8').catch(() => {
          throw new OffsiteError('VOLUME_NOT_FOUND', `volume ${opts.volume} does not exist in ${opts.data}`);
        })) as { sizeBytes: number };
        let seq = opts.seq ?? journal.headSeq();
        if (opts.bookmark !== undefined) {
          const b = (await Bookmarks.load(journal)).get(opts.bookmark);
          if (!b) throw new OffsiteError('BOOKMARK_UNKNOWN', `no bookmark '${opts.bookmark}' in ${opts.data}`);
          seq = b.seq;
        }
        if (opts.time !== undefined) {
          seq = await pointAtTime(journal, Date.parse(opts.time));
        }
        const outExisted = await stat(opts.out).then(() => true, () => false);
        const bar = process.stderr.isTTY ? new SingleBar({ format: 'replay |{bar}| {percentage}% {value}/{total} records', stream: process.stderr }) : undefined;
        bar?.start(1, 0);
        const report = await reconstruct({
          journal,
          volume: opts.volume,
          sizeBytes: meta.sizeBytes,
          imagePath: path.join(opened.dir.volumesDir, `${opts.volume}.img`),
          out: opts.out,
          seq,
          onProgress: (done, total) => {
            bar?.setTotal(Math.max(1, total));
            bar?.update(done);
          },
        });
        bar?.stop();
        // A copied image or base keeps its source's mode (copyfile sets it, the umask aside).
        if (!outExisted) await chmod(opts.out, 0o600);
        const secs = ((Date.now() - started) / 1000).toFixed(2);
        const when = report.timeMs ? ` (${new Date(report.timeMs).toISOString()})` : '';
        process.stdout.write(`replayed volume ${opts.volume} to sequence ${report.seq}${when} from ${report.from === 'empty' ? 'an empty volume' : `the ${report.from}`}: ${report.records} records applied, ${report.bytes} bytes, ${secs} s -> ${opts.out}\n`);
      } catch (e) {
        await journal?.close().catch(() => undefined);
        fail(e, 'offsite replay');
      }
      await journal.close();
    });
}
