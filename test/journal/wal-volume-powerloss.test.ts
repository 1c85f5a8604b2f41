/**
 * Volumes added to a running journal and a power loss: the volume list is synced before any
 * record of the new volume, so its records, acknowledged as durable (FUA), are there at the next
 * start. A record of a volume the list does not have (a LevelDB that lost the list's write)
 * cannot be replayed: at or below the synced point the start is refused, after it the record and
 * those after it are cut as a torn tail; either way an error names it.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import { Level } from 'level';
import pino from 'pino';
import { Journal, type JournalOptions } from '../../src/journal/wal';
import { inJournalDir, LevelPowerLoss } from '../helpers/level-power-loss';

const BS = 4096;
const block = (seq: number) => Buffer.alloc(BS, seq);

/** A logger keeping what it gets (warnings and errors). */
function capturingLogger(): { logger: pino.Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const logger = pino({ level: 'warn' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  return { logger, lines };
}

/** Volume 'v' with FUA records 1..3; the journal closed. */
async function threeOfV(opts: JournalOptions): Promise<void> {
  const j = await Journal.open(opts);
  await j.registerVolume('v');
  for (let s = 1; s <= 3; s++) await j.append('v', 'write', s * BS, BS, block(s), true).done;
  await j.close();
}

/** Volume 'w' added to the running journal, then FUA records 4..6 to it and 7 to 'v'. */
async function addWThenFua(j: Journal): Promise<void> {
  await j.registerVolume('w');
  for (let s = 4; s <= 6; s++) await j.append('w', 'write', s * BS, BS, block(s), true).done;
  await j.append('v', 'write', 7 * BS, BS, block(7), true).done;
  assert.equal(j.headSeq(), 7);
}

/** The journal's volume list, put back to `names` (as a LevelDB that lost a later write has it). */
async function setVolumeList(jdir: string, names: string[]): Promise<void> {
  const db = new Level<Buffer, Buffer>(jdir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
  await db.put(Buffer.from('mvolumes'), Buffer.from(JSON.stringify(names)));
  await db.close();
}

test('a volume added, FUA records of it and of another, then a power loss: they are all there at the next start', () =>
  inJournalDir(async (jdir, copyDir) => {
    const opts: JournalOptions = { dir: jdir, ownsRetention: true };
    await threeOfV(opts);
    const level = new LevelPowerLoss(jdir, copyDir);
    try {
      const j = await Journal.open(opts);
      await addWThenFua(j);
      level.powerLoss();
      await j.close();
    } finally {
      level.restore();
    }
    const j = await Journal.open(opts);
    try {
      assert.equal(j.headSeq(), 7, 'the FUA records 4..7 are there after the power loss');
      assert.deepEqual(j.volumeNames(), ['v', 'w']);
      const recs = await j.readAfter(3, 1024 * 1024);
      assert.deepEqual(recs.map((r) => [r.seq, r.volume]), [[4, 'w'], [5, 'w'], [6, 'w'], [7, 'v']]);
      for (const r of recs) assert.ok(r.data.equals(block(r.seq)), `record ${r.seq} data`);
    } finally {
      await j.close();
    }
  }));

test('a record of a volume missing from the volume list, at or below the synced point, refuses the start (JOURNAL_DURABLE_RECORD_CORRUPT) and is logged', () =>
  inJournalDir(async (jdir) => {
    let j = await Journal.open({ dir: jdir });
    await j.registerVolume('v');
    await j.registerVolume('w');
    for (const [s, vol] of [[1, 'v'], [2, 'v'], [3, 'w'], [4, 'v']] as const) await j.append(vol, 'write', s * BS, BS, block(s)).done;
    await j.sync();
    // An index batch after the sync carries the synced point 4.
    await j.append('v', 'write', 5 * BS, BS, block(5)).done;
    await j.close();
    await setVolumeList(jdir, ['v']);
    const refused = (e: unknown) => {
      const err = e as { code?: string; message: string };
      assert.equal(err.code, 'JOURNAL_DURABLE_RECORD_CORRUPT');
      assert.match(err.message, /record 3\b/);
      return true;
    };
    const { logger, lines } = capturingLogger();
    await assert.rejects(Journal.open({ dir: jdir, logger }), refused);
    const logged = lines.find((l) => l.level === 50 && l.seq === 3);
    assert.ok(logged, 'an error names record 3');
    // Refused again, not locked out; a tool is refused the same way.
    await assert.rejects(Journal.open({ dir: jdir }), refused);
    await assert.rejects(Journal.open({ dir: jdir, inspectOnly: true }), refused);
    // With the list whole again, the journal is as it was.
    await setVolumeList(jdir, ['v', 'w']);
    j = await Journal.open({ dir: jdir });
    try {
      assert.equal(j.headSeq(), 5);
      assert.deepEqual((await j.readAfter(0, 1024 * 1024)).map((r) => r.volume), ['v', 'v', 'w', 'v', 'v']);
    } finally {
      await j.close();
    }
  }));

test('a LevelDB that lost the volume list write: records of the missing volume after the synced point are cut with those after them, and an error names the first', () =>
  inJournalDir(async (jdir, copyDir) => {
    const opts: JournalOptions = { dir: jdir, ownsRetention: true };
    await threeOfV(opts);
    // LevelDB comes back as it was before 'w' was added (its write lost, as it could be before
    // it was synced) and without the index entries of 4..7.
    const level = new LevelPowerLoss(jdir, copyDir);
    try {
      level.powerLoss();
      const j = await Journal.open(opts);
      await addWThenFua(j);
      await j.close();
    } finally {
      level.restore();
    }
    const { logger, lines } = capturingLogger();
    let j = await Journal.open({ ...opts, logger });
    try {
      assert.deepEqual(j.volumeNames(), ['v']);
      assert.equal(j.headSeq(), 3);
      assert.equal(j.stats().tornRecordsDropped, 4);
      const logged = lines.find((l) => l.level === 50 && l.seq === 4);
      assert.ok(logged, 'an error names record 4');
      assert.equal(logged.volumeIndex, 1);
      // Appends go on from there; the cut records do not come back.
      await j.append('v', 'write', 0, BS, block(40)).done;
      assert.equal(j.headSeq(), 4);
    } finally {
      await j.close();
    }
    j = await Journal.open(opts);
    try {
      assert.equal(j.headSeq(), 4);
      const recs = await j.readAfter(0, 1024 * 1024);
      assert.deepEqual(recs.map((r) => r.seq), [1, 2, 3, 4]);
      assert.ok(recs[3].data.equals(block(40)));
    } finally {
      await j.close();
    }
  }));
