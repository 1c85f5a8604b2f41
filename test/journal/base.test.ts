/**
 * The point-in-time base: a fold into the base images cut short (a crash, a failed write) never
 * leaves a base ahead of the sequence it is recorded at, and is finished by the next fold.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { reconstruct, resolvePoint } from '../../src/journal/point-in-time';
import { ImageFileTarget, Journal, type JournalRecord, type RecordOp, type RecordTarget } from '../../src/journal/wal';
import { JournalErrorCode } from '../../src/journal/wal-errors';
import { removeDir, tempDir } from '../helpers/appliance';

const BS = 4096;
const SIZE = 4 * BS;

/** The keeper's trim: into base images opened as JournalKeeper.run opens them, closed after. */
async function keeperTrim(j: Journal): Promise<void> {
  const opened: ImageFileTarget[] = [];
  try {
    await j.trim(async (v) => {
      const t = await ImageFileTarget.open(j.baseImagePath(v), SIZE, true);
      opened.push(t);
      return t;
    });
  } finally {
    for (const t of opened) await t.close();
  }
}

/** Volume 'v' as it is after each record: the model replay is checked against. */
class Model {
  readonly states = new Map<number, Buffer>([[0, Buffer.alloc(SIZE)]]);
  private cur = Buffer.alloc(SIZE);
  constructor(initial?: Buffer) {
    if (initial) {
      this.cur = Buffer.from(initial);
      this.states.set(0, Buffer.from(initial));
    }
  }
  async append(j: Journal, op: RecordOp, blk: number, blocks: number, byte: number): Promise<number> {
    const off = blk * BS;
    const len = blocks * BS;
    const data = op === 'write' ? Buffer.alloc(len, byte) : op === 'writeSame' ? Buffer.alloc(BS, byte) : Buffer.alloc(0);
    const { seq, done } = j.append('v', op, off, len, data);
    await done;
    if (op === 'unmap') this.cur.fill(0, off, off + len);
    else this.cur.fill(byte, off, off + len);
    this.states.set(seq, Buffer.from(this.cur));
    return seq;
  }
}

/** `offsite replay` of volume 'v' at `seq` (`imagePath`, the live image, for the latest). */
async function replayTo(j: Journal, dir: string, seq: number, imagePath: string): Promise<Buffer> {
  const out = path.join(dir, `replay-${seq}.img`);
  await reconstruct({ journal: j, volume: 'v', sizeBytes: SIZE, imagePath, out, seq });
  return readFileSync(out);
}

async function refused(j: Journal, seq: number): Promise<void> {
  await assert.rejects(resolvePoint(j, { seq }), (e: Error & { code?: string }) => e.code === JournalErrorCode.OutsideWindow && /outside the retained window/.test(e.message));
}

/**
 * 1..6 with every op, folded through 4 (retainBytes keeps the last two 4 KiB records), then
 * 7..12: 7 and 8 (a WRITE SAME) touch block 1, which no point ≤ 6 has written; 10 an UNMAP
 * (no data bytes). The next fold goes through 9.
 */
async function foldedHistory(jdir: string): Promise<Model> {
  const j = await Journal.open({ dir: jdir, retainBytes: 2 * BS });
  await j.registerVolume('v');
  const m = new Model();
  await m.append(j, 'write', 0, 1, 1);
  await m.append(j, 'writeSame', 2, 2, 2);
  await m.append(j, 'unmap', 3, 1, 0);
  await m.append(j, 'write', 0, 1, 4);
  await m.append(j, 'write', 0, 1, 5);
  await m.append(j, 'write', 0, 1, 6);
  await j.checkpoint(6);
  await keeperTrim(j);
  assert.equal(j.baseInfo()?.seq, 4);
  await m.append(j, 'write', 1, 1, 7);
  await m.append(j, 'writeSame', 1, 2, 8);
  await m.append(j, 'write', 2, 1, 9);
  await m.append(j, 'unmap', 0, 3, 0);
  await m.append(j, 'write', 3, 1, 11);
  await m.append(j, 'write', 3, 1, 12);
  await j.checkpoint(12);
  await j.close();
  return m;
}

/** A fold cut short is refused before it, replays exactly from its end, and is finished by the next fold. */
async function checkAfterCutShortFold(jdir: string, dir: string, m: Model, foldTo: number): Promise<void> {
  const image = path.join(dir, 'v.img');
  writeFileSync(image, m.states.get(12)!);
  const replay = (j: Journal, seq: number) => replayTo(j, dir, seq, image);
  // A window asking for more history than before: the fold under way still goes through.
  let j = await Journal.open({ dir: jdir, retainBytes: 100 * BS });
  try {
    // The base images are somewhere between 4 and foldTo: only points from foldTo on are given.
    assert.equal(j.window().fromSeq, foldTo);
    await refused(j, 4);
    await refused(j, foldTo - 1);
    assert.equal(j.oldestSeq(), 5, 'the records of the fold are kept until it is recorded done');
    for (let s = foldTo; s <= 12; s++) assert.ok((await replay(j, s)).equals(m.states.get(s)!), `replay of ${s}`);
    // The next fold finishes it, though the window now asks for less.
    await keeperTrim(j);
    assert.equal(j.baseInfo()?.seq, foldTo);
    assert.equal(j.window().fromSeq, foldTo);
    assert.equal(j.oldestSeq(), foldTo + 1);
    assert.ok(readFileSync(j.baseImagePath('v')).equals(m.states.get(foldTo)!));
    await j.close();
    j = await Journal.open({ dir: jdir });
    assert.equal(j.window().fromSeq, foldTo);
    for (let s = foldTo; s <= 12; s++) assert.ok((await replay(j, s)).equals(m.states.get(s)!), `replay of ${s} after the fold`);
  } finally {
    await j.close();
  }
}

test('a fold SIGKILLed after the base images were written and synced, before it was recorded: no point inside it replays wrong, and the next fold finishes it', async () => {
  const dir = tempDir();
  const jdir = path.join(dir, 'journal');
  try {
    const m = await foldedHistory(jdir);
    // A child folds 5..9 and is killed once the base images hold them, before the base names 9.
    const wal = path.resolve(__dirname, '../../src/journal/wal.js');
    const child = spawnSync(process.execPath, [
      '-e',
      `const { ImageFileTarget, Journal } = require(${JSON.stringify(wal)});
      (async () => {
        const j = await Journal.open({ dir: ${JSON.stringify(jdir)}, retainBytes: ${2 * BS} });
        await j.trim(async (v) => {
          const t = await ImageFileTarget.open(j.baseImagePath(v), ${SIZE}, true);
          const sync = t.sync.bind(t);
          t.sync = async () => { await sync(); process.kill(process.pid, 'SIGKILL'); };
          return t;
        });
      })();`,
    ]);
    assert.equal(child.signal, 'SIGKILL', child.stderr.toString());
    // The crash left the base images at 9 (block 1 holds 8's WRITE SAME), the base named 4.
    assert.ok(readFileSync(path.join(jdir, 'base', 'v.img')).equals(m.states.get(9)!));
    await checkAfterCutShortFold(jdir, dir, m, 9);
  } finally {
    removeDir(dir);
  }
});

test('a base write failing midway (EIO) leaves a mix of states in the base images: points inside the fold are refused, and re-applying its records from the base gives every later point exactly', async () => {
  const dir = tempDir();
  const jdir = path.join(dir, 'journal');
  try {
    const m = await foldedHistory(jdir);
    const j = await Journal.open({ dir: jdir, retainBytes: 2 * BS });
    // 5..7 reach the base, then 8's WRITE SAME fails after part of the batch (9's block) was
    // written: the base holds a state there never was.
    let applied = 0;
    let opened: ImageFileTarget | undefined;
    const eio = async (v: string): Promise<RecordTarget> => {
      const t = (opened = await ImageFileTarget.open(j.baseImagePath(v), SIZE, true));
      return {
        apply: async (rec: JournalRecord) => {
          if (rec.seq === 8 && applied++ === 0) {
            await t.apply({ ...rec, seq: 9, op: 'write', offsetBytes: 2 * BS, lengthBytes: BS, data: Buffer.alloc(BS, 9) });
            throw Object.assign(new Error('EIO: i/o error, write'), { code: 'EIO' });
          }
          await t.apply(rec);
        },
      };
    };
    await assert.rejects(j.trim(eio), /EIO/);
    await opened?.close();
    assert.equal(j.window().fromSeq, 9, 'the fold under way already moved the window');
    await refused(j, 6);
    await j.close();
    await checkAfterCutShortFold(jdir, dir, m, 9);
  } finally {
    removeDir(dir);
  }
});
