/**
 * The point-in-time base: a fold into the base images cut short (a crash, a failed write) never
 * leaves a base ahead of the sequence it is recorded at, and is finished by the next fold; a
 * base is only ever built on what the volumes really held (never on empty images for a volume
 * that held data, or once records were trimmed without history), and history dropped takes its
 * base files with it.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
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

test('history turned on for a journal that trimmed records without it: no base is folded onto empty images; it restarts with a rebase, refusing the points before it', async () => {
  const dir = tempDir();
  const jdir = path.join(dir, 'journal');
  const image = path.join(dir, 'v.img');
  try {
    // Without history, 1 writes block 0 and is trimmed.
    let j = await Journal.open({ dir: jdir, ownsRetention: true });
    await j.registerVolume('v');
    const m = new Model();
    await m.append(j, 'write', 0, 1, 0x5a);
    await j.checkpoint(1);
    await keeperTrim(j);
    assert.equal(j.oldestSeq(), 2);
    await j.close();
    writeFileSync(image, m.states.get(1)!);
    // With history: 2..5 write block 1; the keeper's fold builds no base, there is none to build on.
    j = await Journal.open({ dir: jdir, retainBytes: 2 * BS, ownsRetention: true });
    try {
      assert.ok(j.awaitsBase);
      assert.equal(j.baseInfo(), undefined);
      assert.equal(j.window().fromSeq, 1, 'only the latest state');
      for (let b = 2; b <= 5; b++) await m.append(j, 'write', 1, 1, b);
      await j.checkpoint(5);
      await keeperTrim(j);
      assert.equal(j.baseInfo(), undefined);
      assert.ok(!existsSync(path.join(jdir, 'base', 'v.img')), 'no base image built from zeros');
      await refused(j, 4);
      // The appliance's start: the image (every record in it) is the base at the head.
      writeFileSync(image, m.states.get(5)!);
      await j.rebase(5, Date.now(), async (baseDir) => writeFileSync(path.join(baseDir, 'v.img'), readFileSync(image)), { keepRecords: true });
      assert.ok(!j.awaitsBase);
      await refused(j, 4);
      for (let b = 6; b <= 9; b++) await m.append(j, 'write', b % 2 ? 2 : 3, 1, b);
      await j.checkpoint(9);
      writeFileSync(image, m.states.get(9)!);
      // Records ≤ 5, kept for the replica, are trimmed without being folded again.
      await keeperTrim(j);
      assert.equal(j.baseInfo()?.seq, 7);
      assert.equal(j.oldestSeq(), 8);
      for (let s = 7; s <= 9; s++) assert.ok((await replayTo(j, dir, s, image)).equals(m.states.get(s)!), `replay of ${s}`);
    } finally {
      await j.close();
    }
    // The refusal survives a restart (as offsite replay opens the journal).
    j = await Journal.open({ dir: jdir });
    await refused(j, 6);
    await j.close();
  } finally {
    removeDir(dir);
  }
});

test('a volume that held data before the journal knew it (served with --no-journal) has no empty base before seq 1: history waits for a rebase', async () => {
  const dir = tempDir();
  const jdir = path.join(dir, 'journal');
  try {
    const before = Buffer.alloc(SIZE);
    before.fill(0x5a, 0, BS);
    let j = await Journal.open({ dir: jdir, retainMs: 3_600_000, ownsRetention: true });
    await j.registerVolume('new');
    assert.ok(!j.awaitsBase, 'a volume created under the journal starts from empty');
    await j.registerVolume('v', { holdsData: true });
    assert.ok(j.awaitsBase);
    const m = new Model(before);
    await m.append(j, 'write', 1, 1, 1);
    await m.append(j, 'write', 1, 1, 2);
    await refused(j, 1);
    await j.close();
    j = await Journal.open({ dir: jdir, retainMs: 3_600_000, ownsRetention: true });
    // Registered again at the next start: still waiting (nothing told it otherwise).
    await j.registerVolume('v', { holdsData: true });
    assert.ok(j.awaitsBase);
    await j.rebase(2, Date.now(), async (baseDir) => writeFileSync(path.join(baseDir, 'v.img'), m.states.get(2)!), { keepRecords: true });
    await m.append(j, 'write', 2, 1, 3);
    await m.append(j, 'write', 0, 1, 4);
    assert.equal(j.window().fromSeq, 2);
    await refused(j, 1);
    const image = path.join(dir, 'v.img');
    writeFileSync(image, m.states.get(4)!);
    for (let s = 2; s <= 4; s++) assert.ok((await replayTo(j, dir, s, image)).equals(m.states.get(s)!), `replay of ${s}`);
    await j.close();
  } finally {
    removeDir(dir);
  }
});

test('history turned off drops the base files with it; turned on again, nothing folds onto the stale ones', async () => {
  const dir = tempDir();
  const jdir = path.join(dir, 'journal');
  try {
    let j = await Journal.open({ dir: jdir, retainBytes: 2 * BS, ownsRetention: true });
    await j.registerVolume('v');
    const m = new Model();
    for (let s = 1; s <= 4; s++) await m.append(j, 'write', s % 2, 1, s);
    await j.checkpoint(4);
    await keeperTrim(j);
    assert.equal(j.baseInfo()?.seq, 2);
    assert.ok(existsSync(j.baseImagePath('v')));
    await j.close();
    // Off: the records trimmed leave the base behind; it goes.
    j = await Journal.open({ dir: jdir, ownsRetention: true });
    assert.ok(!j.awaitsBase, 'nothing trimmed yet: the base still fits the records');
    await m.append(j, 'write', 2, 1, 5);
    await j.checkpoint(5);
    await keeperTrim(j);
    assert.equal(j.oldestSeq(), 6);
    assert.ok(!existsSync(j.baseImagePath('v')), 'the base file is deleted with the history');
    await j.close();
    // On again: no base until a rebase.
    j = await Journal.open({ dir: jdir, retainBytes: 2 * BS, ownsRetention: true });
    try {
      assert.ok(j.awaitsBase);
      for (let s = 6; s <= 9; s++) await m.append(j, 'write', 3, 1, s);
      await j.checkpoint(9);
      await keeperTrim(j);
      assert.equal(j.baseInfo(), undefined);
      assert.ok(!existsSync(j.baseImagePath('v')));
      await refused(j, 8);
    } finally {
      await j.close();
    }
  } finally {
    removeDir(dir);
  }
});
