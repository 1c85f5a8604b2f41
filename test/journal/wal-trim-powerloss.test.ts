/**
 * A trim and a power loss: the segment files of trimmed records are deleted, or kept as spares
 * and reused under a new number for new records, which are synced and acknowledged as durable
 * (FUA). LevelDB keeps what it wrote up to its last synced write. A trim's index deletes and
 * checkpoint are synced before a file goes, so a start never finds its index naming trimmed
 * records in a file that is gone; and a start whose index does (a LevelDB that lost the write)
 * goes on in the later files rather than stop there.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import { ImageFileTarget, Journal, type JournalOptions } from '../../src/journal/wal';
import { inJournalDir, LevelPowerLoss } from '../helpers/level-power-loss';

const BS = 4096;
const block = (seq: number) => Buffer.alloc(BS, seq);

/** Records 1..5 of volume 'v' in one segment file, in the images (checkpoint); the journal closed. */
async function fiveInImages(opts: JournalOptions): Promise<void> {
  const j = await Journal.open(opts);
  await j.registerVolume('v');
  for (let s = 1; s <= 5; s++) await j.append('v', 'write', s * BS, BS, block(s)).done;
  await j.checkpoint(5);
  await j.close();
}

/** FUA writes 6..10: each acknowledged once its segment is synced. */
async function fuaSixToTen(j: Journal): Promise<void> {
  for (let s = 6; s <= 10; s++) await j.append('v', 'write', s * BS, BS, block(s), true).done;
  assert.equal(j.headSeq(), 10);
}

/** After the power loss: records 6..10 are there, as written; the index begins at `oldest`. */
async function assertSixToTen(opts: JournalOptions, oldest: number): Promise<void> {
  const j = await Journal.open(opts);
  try {
    assert.equal(j.headSeq(), 10, 'the FUA records 6..10 are there after the power loss');
    assert.equal(j.oldestSeq(), oldest);
    const recs = await j.readAfter(5, 1024 * 1024);
    assert.deepEqual(recs.map((r) => r.seq), [6, 7, 8, 9, 10]);
    for (const r of recs) assert.ok(r.data.equals(block(r.seq)), `record ${r.seq} data`);
    // The next record goes on after them: no sequence number is handed out twice.
    assert.equal(j.append('v', 'write', 0, BS, block(11)).seq, 11);
  } finally {
    await j.close();
  }
}

for (const history of [false, true]) {
  const how = history ? 'folded into the base (history)' : 'trimmed (no history)';
  test(`records ${how}, then FUA records in their reused file, then a power loss: the FUA records are there at the next start`, () =>
    inJournalDir(async (jdir, copyDir) => {
      // retainBytes 1: no record fits the window, every one is folded.
      const opts: JournalOptions = { dir: jdir, ownsRetention: true, retainBytes: history ? 1 : undefined };
      await fiveInImages(opts);
      const level = new LevelPowerLoss(jdir, copyDir);
      try {
        const j = await Journal.open(opts);
        const bases: ImageFileTarget[] = [];
        await j.trim(history ? async (v) => bases[bases.push(await ImageFileTarget.open(j.baseImagePath(v), 16 * BS, true)) - 1] : undefined);
        for (const b of bases) await b.close();
        assert.equal(j.oldestSeq(), 6);
        assert.equal(j.baseInfo()?.seq, history ? 5 : undefined);
        await fuaSixToTen(j);
        level.powerLoss();
        await j.close();
      } finally {
        level.restore();
      }
      // The trim is durable too: its records are not indexed again.
      await assertSixToTen(opts, 6);
    }));
}

test("a start whose index names records in a segment file that is gone reads the later files' records, and trims past the gone file", () =>
  inJournalDir(async (jdir, copyDir) => {
    const opts: JournalOptions = { dir: jdir, ownsRetention: true };
    await fiveInImages(opts);
    // LevelDB comes back as it was before the trim (the trim's write lost), naming 1..5 in the
    // file the trim gave up, which now holds 6..10 under another number.
    const level = new LevelPowerLoss(jdir, copyDir);
    try {
      level.powerLoss();
      const j = await Journal.open(opts);
      await j.trim();
      await fuaSixToTen(j);
      await j.close();
    } finally {
      level.restore();
    }
    // Its index entries name the gone file's records (unreadable); they go with the next trim.
    await assertSixToTen(opts, 1);
    const j = await Journal.open(opts);
    try {
      assert.equal(j.headSeq(), 11);
      await j.checkpoint(11);
      await j.trim();
      assert.equal(j.oldestSeq(), 12);
      assert.equal(j.stats().records, 0);
    } finally {
      await j.close();
    }
  }));
