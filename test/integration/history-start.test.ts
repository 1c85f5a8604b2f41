/**
 * History turned on for volumes that already hold data (served with --no-journal before, or
 * journaled without --journal-retain, their records trimmed): the history starts at the next
 * start with a copy of the images as its base, never with empty volumes. `offsite replay` then
 * gives every retained point with the data written before history began, and refuses the
 * points before it as outside the retained window.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { CLI, removeDir, startAppliance, tempDir } from '../helpers/appliance';
import { run } from '../helpers/exec';

const MiB = 1024 * 1024;
/** Short enough for the keeper to fold a record within the test, long enough to keep the last one. */
const RETAIN = ['--journal-retain', '5s'];

const replay = (data: string, out: string, seq: number) => run(process.execPath, [CLI, 'replay', '--data', data, '--volume', 'v', '--out', out, '--seq', String(seq)]);

/** Bytes [at, at+len) of `img` all equal `byte`. */
function holds(img: Buffer, at: number, len: number, byte: number): boolean {
  return img.subarray(at, at + len).every((b) => b === byte);
}

/**
 * Life 1 (`firstArgs`) writes 0x5a to the first MiB; life 2, with history, writes 0x01 then
 * (once the keeper has folded it) 0x02 to the third MiB. Replay of the 0x01 point must hold both.
 */
async function historyAfter(firstArgs: string[]): Promise<{ dir: string; data: string; startSeq?: number; pointSeq: number }> {
  const dir = tempDir();
  const data = path.join(dir, 'data');
  let app = await startAppliance({ dataDir: data, volumes: [`v:${8 * MiB}`], args: firstArgs });
  let io = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 1M', app.url('v')]);
  assert.equal(io.code, 0, io.stderr);
  assert.equal(await app.stop(), 0);

  app = await startAppliance({ dataDir: data, volumes: [`v:${8 * MiB}`], args: RETAIN });
  // The start says where history begins (the sequence its base was copied at).
  const startSeq = app.logs.find((l) => String(l.msg).startsWith('point-in-time history starts now'))?.seq as number | undefined;
  io = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x01 2M 1M', app.url('v')]);
  assert.equal(io.code, 0, io.stderr);
  const pointSeq = (await app.status()).headSeq as number;
  // Past the window: the keeper folds the 0x01 write into the base.
  await new Promise((r) => setTimeout(r, 6500));
  io = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x02 2M 1M', app.url('v')]);
  assert.equal(io.code, 0, io.stderr);
  assert.equal(await app.stop(), 0);
  return { dir, data, startSeq, pointSeq };
}

async function checkReplay(h: { dir: string; data: string; pointSeq: number }): Promise<void> {
  const out = path.join(h.dir, 'point.img');
  const r = await replay(h.data, out, h.pointSeq);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /from the base/, 'the point is older than the window: replayed from the folded base');
  const img = readFileSync(out);
  assert.ok(holds(img, 0, MiB, 0x5a), `replay --seq ${h.pointSeq} lost the data written before history began`);
  assert.ok(holds(img, 2 * MiB, MiB, 0x01));
  assert.ok(holds(img, MiB, MiB, 0));
}

test('history turned on after serving with --no-journal: replay holds what the volume held before the journal', { timeout: 120_000 }, async () => {
  const h = await historyAfter(['--no-journal']);
  try {
    await checkReplay(h);
    assert.equal(h.startSeq, 0, 'a new journal: history starts before its first record, from the copied image');
  } finally {
    removeDir(h.dir);
  }
});

test('history turned on for a journal that trimmed its records without it: replay holds the earlier writes, and refuses the points before history began', { timeout: 120_000 }, async () => {
  const h = await historyAfter([]);
  try {
    await checkReplay(h);
    assert.ok(h.startSeq !== undefined && h.startSeq >= 1, `history starts after the trimmed records (at ${h.startSeq})`);
    const r = await replay(h.data, path.join(h.dir, 'early.img'), h.startSeq - 1);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, /outside the retained window/);
  } finally {
    removeDir(h.dir);
  }
});
