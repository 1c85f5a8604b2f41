/**
 * A reset (Journal.resetTo: a replica's sync start, a divergence, a promotion's give-up) and a
 * power loss: LevelDB keeps what it wrote up to its last synced write. The index clear and the
 * new checkpoint are synced before any segment file goes, so a start after the power loss finds
 * the journal at the reset's point, never its old index naming deleted files under the old
 * checkpoint (where the sequence would go on from the wrong number).
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import { Journal } from '../../src/journal/wal';
import { inJournalDir, LevelPowerLoss } from '../helpers/level-power-loss';

const BS = 4096;

test('a power loss right after a reset deleted the segment files: the start finds the journal at the reset point, empty', async () => {
  await inJournalDir(async (jdir, copyDir) => {
    let j = await Journal.open({ dir: jdir });
    await j.registerVolume('v');
    for (let s = 1; s <= 5; s++) await j.append('v', 'write', s * BS, BS, Buffer.alloc(BS, s), true).done;
    await j.checkpoint(3);
    await j.close();

    const power = new LevelPowerLoss(jdir, copyDir);
    j = await Journal.open({ dir: jdir });
    // The power goes once the reset has deleted the segment files, before its last write (history).
    (j as unknown as { dropHistory: () => Promise<void> }).dropHistory = async () => {
      power.powerLoss();
      throw new Error('power loss (simulated)');
    };
    await assert.rejects(j.resetTo(100), /power loss/);
    await j.close().catch(() => undefined);
    power.restore();

    j = await Journal.open({ dir: jdir });
    try {
      assert.equal(j.headSeq(), 100, 'the reset point was lost: the sequence goes on from the old checkpoint');
      assert.equal(j.checkpointSeq(), 100);
      assert.equal(j.stats().records, 0);
      assert.equal(j.append('v', 'write', 0, BS, Buffer.alloc(BS, 9)).seq, 101);
    } finally {
      await j.close();
    }
  });
});
