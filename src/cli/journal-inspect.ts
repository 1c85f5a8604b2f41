/** `offsite journal inspect`: what a stopped appliance's journal holds. */
import type { Command } from 'commander';
import { SingleBar } from 'cli-progress';
import { releaseBuffer } from '../common/buffer-pool';
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Journal } from '../journal/wal';
import { describeWindow } from '../journal/point-in-time';
import { Bookmarks } from '../journal/bookmarks';
import { fail } from './exit';
import { openStoppedJournal } from './replay';

export function register(program: Command): void {
  const journal = program.command('journal').description('inspect the write-ahead journal');
  journal
    .command('inspect')
    .description('head and oldest sequence, retained window, records and bytes per volume, base, coalesced batches, bookmarks')
    .requiredOption('--data <dir>', 'data directory of a stopped appliance')
    .option('--json', 'machine-readable output')
    .option('--verify', 'also read every retained record and check it (header, key, length, checksum): exit 1 naming the first bad one')
    .action(async (opts: { data: string; json?: boolean; verify?: boolean }) => {
      let j: Journal | undefined;
      try {
        j = (await openStoppedJournal(opts.data)).journal;
        const st = j.stats();
        const w = j.window();
        const segDir = path.join(j.dir, 'segments');
        const segs = await readdir(segDir).catch(() => [] as string[]);
        let segBytes = 0;
        for (const f of segs) segBytes += (await stat(path.join(segDir, f))).size;
        const iso = (t?: number) => (t ? new Date(t).toISOString() : null);
        // Opening checked the records after the checkpoint; reading each one checks the rest.
        const verified = opts.verify ? await verifyAll(j, st.oldestSeq - 1, st.headSeq) : undefined;
        const out = {
          headSeq: st.headSeq,
          oldestSeq: st.oldestSeq,
          checkpointSeq: st.imageSeq,
          records: st.records,
          bytes: st.bytes,
          window: { fromSeq: w.fromSeq, toSeq: w.toSeq, fromTime: iso(w.fromTimeMs), toTime: iso(w.toTimeMs) },
          volumes: st.perVolume,
          base: st.baseSeq === undefined ? null : { seq: st.baseSeq, time: iso(st.baseTimeMs) },
          segments: { files: segs.length, bytes: segBytes },
          /** A replica's batches received coalesced: the points from..to-1 are not replayable. */
          coalescedBatches: await j.coalescedBatches(),
          bookmarks: (await Bookmarks.load(j)).all().map((b) => ({ name: b.name, seq: b.seq, time: iso(b.timeMs), retained: b.seq >= w.fromSeq && b.seq <= w.toSeq })),
          ...(verified ? { verified } : {}),
        };
        if (opts.json) process.stdout.write(JSON.stringify(out, null, 2) + '\n');
        else {
          const lines = [
            `head sequence     ${out.headSeq}`,
            `oldest retained   ${out.oldestSeq}`,
            `checkpoint        ${out.checkpointSeq} (images hold everything up to here)`,
            `retained window   ${describeWindow(j)}`,
            `records           ${out.records} (${out.bytes} bytes of data in ${out.segments.files} segment files, ${out.segments.bytes} bytes)`,
            `base              ${out.base ? `state after sequence ${out.base.seq}${out.base.time ? ` (${out.base.time})` : ''}` : 'none (no history kept)'}`,
            ...(out.coalescedBatches.length
              ? [`coalesced         ${out.coalescedBatches.length} batches received coalesced: ${out.coalescedBatches.reduce((n, b) => n + b.to - b.from, 0)} sequences inside them are states the primary never had (not replayable)`]
              : []),
            ...out.bookmarks.map((b) => `bookmark          ${b.name} at sequence ${b.seq} (${b.time ?? '?'})${b.retained ? '' : ', not retained'}`),
            ...(verified ? [`verified          ${verified.records} records, ${verified.bytes} bytes of data read back: every record's header and checksum match`] : []),
            'volumes:',
            ...Object.entries(out.volumes).map(([v, s]) => `  ${v.padEnd(16)} ${String(s.records).padStart(8)} records  ${String(s.bytes).padStart(12)} bytes`),
          ];
          process.stdout.write(lines.join('\n') + '\n');
        }
        await j.close();
      } catch (e) {
        await j?.close().catch(() => undefined);
        fail(e, 'offsite journal inspect');
      }
    });
}

/** Read every record in (after, until] back, which checks each one (Journal.records); a bad one throws JOURNAL_CORRUPT. */
async function verifyAll(j: Journal, after: number, until: number): Promise<{ records: number; bytes: number }> {
  const bar = process.stderr.isTTY && until > after ? new SingleBar({ format: 'verify |{bar}| {percentage}% {value}/{total} sequences', stream: process.stderr }) : undefined;
  bar?.start(until - after, 0);
  let records = 0;
  let bytes = 0;
  try {
    for await (const rec of j.records(after, until)) {
      records++;
      bytes += rec.data.length;
      releaseBuffer(rec.data);
      if (records % 1024 === 0) bar?.update(rec.seq - after);
    }
    bar?.update(until - after);
  } finally {
    bar?.stop();
  }
  return { records, bytes };
}
