/**
 * The image tracker's safe sequence; a journaled write waits for the overlapping image writes
 * before it (and only those), also through a write that is itself waiting, so that overlapping
 * writes reach the image in journal order. applyInOrder, the replica's apply: whatever mix of back-to-back writes (combined into one
 * pwritev), overlapping writes, WRITE SAME and UNMAP a segment holds, the image ends exactly as
 * if each record had been applied alone, in order (checked against a plain in-memory model).
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import test from 'node:test';
import fc from 'fast-check';
import { Journal, type JournalRecord } from '../../src/journal/wal';
import { FileVolume } from '../../src/volume/file-volume';
import { applyInOrder, ImageTracker, JournaledVolume, JournalKeeper, recoverImages } from '../../src/volume/journaled';
import { removeDir, tempDir } from '../helpers/appliance';

const BLOCK = 512;
const BLOCKS = 64;
const RUNS = Number(process.env.FC_RUNS ?? 100);

type Op = { op: 'write'; block: number; blocks: number; fill: number } | { op: 'writeSame'; block: number; blocks: number; fill: number } | { op: 'unmap'; block: number; blocks: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ op: fc.constant('write' as const), block: fc.nat({ max: BLOCKS - 1 }), blocks: fc.integer({ min: 1, max: 8 }), fill: fc.integer({ min: 1, max: 255 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('writeSame' as const), block: fc.nat({ max: BLOCKS - 1 }), blocks: fc.integer({ min: 1, max: 8 }), fill: fc.integer({ min: 1, max: 255 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('unmap' as const), block: fc.nat({ max: BLOCKS - 1 }), blocks: fc.integer({ min: 1, max: 8 }) }) },
);

/** Mostly sequential streams (each write where the last ended), with jumps and overwrites. */
const streamArb = fc.array(fc.tuple(opArb, fc.boolean()), { minLength: 1, maxLength: 40 }).map((pairs) => {
  const ops: Op[] = [];
  let next = 0;
  for (const [o, follow] of pairs) {
    const block = follow && o.op === 'write' ? next : o.block;
    const blocks = Math.min(o.blocks, BLOCKS - block);
    if (blocks <= 0) continue;
    ops.push({ ...o, block, blocks });
    next = block + blocks;
  }
  return ops;
});

function toRecords(ops: Op[]): JournalRecord[] {
  return ops.map((o, i) => ({
    seq: i + 1,
    timeMs: 0,
    volume: 'v',
    op: o.op,
    offsetBytes: o.block * BLOCK,
    lengthBytes: o.blocks * BLOCK,
    // Each block of a write says where in the write it is, so a misplaced block shows.
    data: o.op === 'write' ? Buffer.concat(Array.from({ length: o.blocks }, (_, b) => Buffer.alloc(BLOCK, (o.fill + b) & 0xff))) : o.op === 'writeSame' ? Buffer.alloc(BLOCK, o.fill) : Buffer.alloc(0),
  }));
}

function model(records: JournalRecord[]): Buffer {
  const img = Buffer.alloc(BLOCK * BLOCKS);
  for (const r of records) {
    if (r.op === 'write') r.data.copy(img, r.offsetBytes);
    else if (r.op === 'writeSame') for (let o = 0; o < r.lengthBytes; o += BLOCK) r.data.copy(img, r.offsetBytes + o);
    else img.fill(0, r.offsetBytes, r.offsetBytes + r.lengthBytes);
  }
  return img;
}

test('applyInOrder leaves the image as the records applied one by one would, and calls `before` for every record', async () => {
  const dir = tempDir();
  try {
    let n = 0;
    await fc.assert(
      fc.asyncProperty(streamArb, async (ops) => {
        const image = await FileVolume.open({ dir, name: `v${n++}`, sizeBytes: BLOCK * BLOCKS, blockSize: BLOCK });
        try {
          const records = toRecords(ops);
          const seen: number[] = [];
          await applyInOrder(records, () => image, async (r) => void seen.push(r.seq));
          assert.deepEqual(seen, records.map((r) => r.seq));
          const got = await image.read(0, BLOCK * BLOCKS);
          assert.ok(got.equals(model(records)), 'image differs from the in-order model');
        } finally {
          await image.close();
        }
      }),
      { numRuns: RUNS },
    );
  } finally {
    removeDir(dir);
  }
});

test('ImageTracker: the safe sequence is the one before the oldest record not yet in its image, whatever order they land in', () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 60 }), fc.integer({ min: 1, max: 1000 }), fc.array(fc.nat(), { maxLength: 60 }), (n, first, keys) => {
      const tracker = new ImageTracker();
      const head = first + n - 1;
      const seqs = Array.from({ length: n }, (_, i) => first + i);
      for (const s of seqs) tracker.begin(s);
      assert.equal(tracker.safeSeq(head), first - 1);
      // A random landing order.
      const order = seqs.map((s, i) => [keys[i] ?? i, s]).sort((a, b) => a[0] - b[0] || a[1] - b[1]).map(([, s]) => s);
      const landed = new Set<number>();
      for (const s of order) {
        tracker.end(s);
        landed.add(s);
        let oldest = first;
        while (landed.has(oldest)) oldest++;
        assert.equal(tracker.safeSeq(head), oldest > head ? head : oldest - 1);
      }
      // Empty again: the journal head is safe, and new records count from there.
      tracker.begin(head + 1);
      assert.equal(tracker.safeSeq(head + 1), head);
      tracker.end(head + 1);
      assert.equal(tracker.safeSeq(head + 1), head + 1);
    }),
    { numRuns: RUNS },
  );
});

test('a journaled write waits for the overlapping image writes appended before it, not for the others', async () => {
  const dir = tempDir();
  const journal = await Journal.open({ dir });
  try {
    await journal.registerVolume('v');
    // An image whose writes complete only when the test says so, recording when each started.
    const started: string[] = [];
    const finish = new Map<string, () => void>();
    const image = {
      name: 'v', blockSize: 512, sizeBytes: 1 << 20, uuid: Buffer.alloc(16), thin: false, readOnly: false,
      writeCombined(offset: number, data: Buffer): Promise<void> {
        const what = `${offset}+${data.length}`;
        started.push(what);
        return new Promise<void>((resolve) => finish.set(what, resolve));
      },
    } as unknown as FileVolume;
    const vol = new JournaledVolume(image, journal, new ImageTracker());
    const a = vol.write(0, Buffer.alloc(8192, 1)); // blocks 0-15
    const b = vol.write(4096, Buffer.alloc(4096, 2)); // inside a: must wait for it
    const c = vol.write(65536, Buffer.alloc(4096, 3)); // elsewhere: must not
    const until = async (cond: () => boolean) => {
      for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 2));
      assert.ok(cond(), `image writes started: ${started.join(', ')}`);
    };
    await until(() => started.includes('0+8192') && started.includes('65536+4096'));
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(started, ['0+8192', '65536+4096'], 'the overlapping write waits');
    finish.get('65536+4096')!();
    await c;
    finish.get('0+8192')!();
    await a;
    await until(() => started.includes('4096+4096'));
    finish.get('4096+4096')!();
    await b;
    assert.deepEqual(started, ['0+8192', '65536+4096', '4096+4096']);
  } finally {
    await journal.close();
    removeDir(dir);
  }
});

/** An image whose writes, WRITE SAMEs and UNMAPs complete only when the test says so, recording when each started. */
function heldImage(): { image: FileVolume; started: string[]; finish: (what: string) => void; until: (cond: () => boolean) => Promise<void> } {
  const started: string[] = [];
  const held = new Map<string, () => void>();
  const hold = (what: string): Promise<void> => {
    started.push(what);
    return new Promise<void>((resolve) => held.set(what, resolve));
  };
  const image = {
    name: 'v', blockSize: 512, sizeBytes: 1 << 20, uuid: Buffer.alloc(16), thin: false, readOnly: false,
    writeCombined: (offset: number, data: Buffer) => hold(`write ${offset}+${data.length}`),
    writeSame: (offset: number, length: number) => hold(`writeSame ${offset}+${length}`),
    unmap: (offset: number, length: number) => hold(`unmap ${offset}+${length}`),
  } as unknown as FileVolume;
  const finish = (what: string) => {
    const f = held.get(what);
    assert.ok(f, `${what} has not started (started: ${started.join(', ')})`);
    f();
  };
  const until = async (cond: () => boolean) => {
    for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 2));
    assert.ok(cond(), `image writes started: ${started.join(', ')}`);
  };
  return { image, started, finish, until };
}

type Held = ReturnType<typeof heldImage>;

/** A journaled volume 'v' over a held image (see heldImage) and a journal of its own, closed and removed after `fn`. */
async function withHeldVolume(fn: (vol: JournaledVolume, held: Held, journal: Journal) => Promise<void>): Promise<void> {
  const dir = tempDir();
  const journal = await Journal.open({ dir });
  try {
    await journal.registerVolume('v');
    const held = heldImage();
    await fn(new JournaledVolume(held.image, journal, new ImageTracker()), held, journal);
  } finally {
    await journal.close();
    removeDir(dir);
  }
}

test('overlapping writes reach the image in journal order through a write that itself waits (UNMAP, then WRITE SAME over it, then a write over that alone)', () =>
  withHeldVolume(async (vol, { started, finish, until }) => {
    const c = vol.unmap(0, 8192); // [0,8K)
    const a = vol.writeSame(4096, 8192, Buffer.alloc(512, 0xaa)); // [4K,12K): overlaps c, waits for it
    const b = vol.write(8192, Buffer.alloc(4096, 0xbb)); // [8K,12K): overlaps a only, must still wait for a
    await until(() => started.length > 0);
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(started, ['unmap 0+8192'], 'b waits for a although a is itself still waiting');
    finish('unmap 0+8192');
    await c;
    await until(() => started.length > 1);
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(started, ['unmap 0+8192', 'writeSame 4096+8192']);
    finish('writeSame 4096+8192');
    await a;
    await until(() => started.length > 2);
    finish('write 8192+4096');
    await b;
    assert.deepEqual(started, ['unmap 0+8192', 'writeSame 4096+8192', 'write 8192+4096']);
  }));

test('two writes waiting for the same earlier write reach the image in journal order, not together', () =>
  withHeldVolume(async (vol, { started, finish, until }) => {
    const c = vol.writeSame(0, 16384, Buffer.alloc(512, 1));
    const a = vol.unmap(0, 4096);
    const b = vol.write(0, Buffer.alloc(4096, 2));
    await until(() => started.length > 0);
    finish('writeSame 0+16384');
    await c;
    await until(() => started.length > 1);
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(started, ['writeSame 0+16384', 'unmap 0+4096'], 'b waits for a as well as for c');
    finish('unmap 0+4096');
    await a;
    await until(() => started.length > 2);
    finish('write 0+4096');
    await b;
  }));

test('a write whose append failed does not hold up the overlapping writes after it', () =>
  withHeldVolume(async (vol, { started, finish, until }, journal) => {
    const real = journal.append.bind(journal);
    let failNext = true;
    journal.append = (...args: Parameters<Journal['append']>) => {
      const r = real(...args);
      if (!failNext) return r;
      failNext = false;
      return { seq: r.seq, done: r.done.then(() => Promise.reject(new Error('append failed (test)'))) };
    };
    const a = vol.write(0, Buffer.alloc(4096, 1));
    const b = vol.write(0, Buffer.alloc(4096, 2));
    await assert.rejects(a, /append failed/);
    await until(() => started.length > 0);
    finish('write 0+4096');
    await b;
    assert.deepEqual(started, ['write 0+4096']);
  }));

test('overlapping writes through a waiting write leave the image as the journal orders them (real image: UNMAP, WRITE SAME, write)', async () => {
  const dir = tempDir();
  const journal = await Journal.open({ dir: `${dir}/journal` });
  try {
    await journal.registerVolume('v');
    const image = await FileVolume.open({ dir, name: 'v', sizeBytes: 1 << 20, blockSize: 512 });
    const vol = new JournaledVolume(image, journal, new ImageTracker());
    await vol.write(0, Buffer.alloc(16384, 0x11));
    // UNMAP and WRITE SAME run on the thread pool; the plain write goes inline, so without the
    // ordering it lands before the WRITE SAME it overlaps, which then overwrites it.
    await Promise.all([vol.unmap(0, 8192), vol.writeSame(4096, 8192, Buffer.alloc(512, 0xaa)), vol.write(8192, Buffer.alloc(4096, 0xbb))]);
    const got = await image.read(0, 12288);
    assert.ok(got.subarray(0, 4096).every((x) => x === 0), 'unmapped');
    assert.ok(got.subarray(4096, 8192).every((x) => x === 0xaa), 'WRITE SAME after the UNMAP');
    assert.ok(got.subarray(8192).every((x) => x === 0xbb), `the last write, last: 0x${got[8192].toString(16)}`);
    await vol.close();
  } finally {
    await journal.close();
    removeDir(dir);
  }
});

test('the keeper of a primary trims what the images hold without fsyncing them, checkpoints for an FUA write and at stop; a replica’s checkpoints every time', async () => {
  const dir = tempDir();
  try {
    for (const trimUnsynced of [true, false]) {
      const journal = await Journal.open({ dir: `${dir}/j-${trimUnsynced}` });
      await journal.registerVolume('v');
      let flushes = 0;
      const volumes = [{ name: 'v', sizeBytes: 1 << 20, image: { flush: async () => void flushes++ } }];
      const keeper = new JournalKeeper(journal, () => journal.headSeq(), () => volumes, undefined, { intervalMs: 3_600_000, trimUnsynced });
      const write = (fua = false) => journal.append('v', 'write', 0, BLOCK, Buffer.alloc(BLOCK, 7), fua).done;
      await Promise.all([write(), write(), write()]);
      await keeper.tick();
      assert.equal(journal.oldestSeq(), 4, 'records 1..3 are trimmed');
      assert.equal(flushes, trimUnsynced ? 0 : 1, trimUnsynced ? 'a primary trims without an fsync' : 'a replica fsyncs first');
      assert.equal(journal.checkpointSeq(), trimUnsynced ? 0 : 3);
      await write(true);
      await keeper.tick();
      assert.equal(flushes, trimUnsynced ? 1 : 2, 'the FUA record 4 needs the images fsynced');
      assert.equal(journal.checkpointSeq(), 4);
      assert.equal(journal.oldestSeq(), 5);
      await write();
      await keeper.stop();
      assert.equal(journal.checkpointSeq(), 5, 'the last upkeep checkpoints everything');
      await journal.close();
    }
  } finally {
    removeDir(dir);
  }
});

test('recovery leaves out a volume not served (left out of the configuration, or read-only): its records stay in the journal, through the keeper’s upkeep and history folds, until a start that serves it replays them', async () => {
  const BS = 4096;
  const dir = tempDir();
  const jdir = path.join(dir, 'journal');
  const vdir = path.join(dir, 'volumes');
  try {
    for (const name of ['v1', 'v2', 'gone']) await (await FileVolume.open({ dir: vdir, name, sizeBytes: 16 * BS, blockSize: 512 })).close();
    // Life 1: writes to every volume are journaled (acknowledged), then a crash before any image
    // had them (the images were never written). 'gone' is removed after: its records don't count.
    let j = await Journal.open({ dir: jdir, retainMs: 1 });
    for (const name of ['v1', 'gone', 'v2']) await j.registerVolume(name);
    await j.append('v1', 'write', 0, BS, Buffer.alloc(BS, 0x11)).done;
    await j.append('gone', 'write', 0, BS, Buffer.alloc(BS, 0x33)).done;
    await j.append('v2', 'write', 0, BS, Buffer.alloc(BS, 0x22)).done;
    await j.append('v1', 'write', BS, BS, Buffer.alloc(BS, 0x12)).done;
    await j.close();

    // Life 2: only v1 served writable.
    j = await Journal.open({ dir: jdir, retainMs: 1 });
    const v1 = await FileVolume.open({ dir: vdir, name: 'v1' });
    const rep = await recoverImages(j, new Map([['v1', v1]]), undefined, new Set(['gone']));
    assert.equal(rep.records, 2);
    assert.equal(rep.unappliedFromSeq, 3, "v2's record 3 is the first not in its image");
    assert.deepEqual(rep.unappliedVolumes, ['v2']);
    assert.equal(j.checkpointSeq(), 2, 'the checkpoint stays before it');
    const sizes = new Map([['v1', 16 * BS], ['v2', 16 * BS], ['gone', 16 * BS]]);
    const keeper = new JournalKeeper(j, () => j.headSeq(), () => [{ name: 'v1', sizeBytes: v1.sizeBytes, image: v1 }], undefined, {
      intervalMs: 3_600_000,
      trimUnsynced: true,
      sizeOf: async (name) => sizes.get(name),
      keepFrom: rep.unappliedFromSeq,
    });
    await j.append('v1', 'write', 2 * BS, BS, Buffer.alloc(BS, 0x13)).done; // 5, in no image: the keeper is told the head is
    await v1.write(2 * BS, Buffer.alloc(BS, 0x13));
    await new Promise((r) => setTimeout(r, 10)); // past the history window
    await keeper.tick();
    await keeper.stop();
    assert.equal(j.oldestSeq(), 3, 'records 1-2 folded and trimmed, none after');
    assert.equal(j.checkpointSeq(), 2);
    await v1.close();
    await j.close();

    // Life 3: v2 served again: its acknowledged write is replayed.
    j = await Journal.open({ dir: jdir, retainMs: 1 });
    const images = new Map<string, FileVolume>();
    for (const name of ['v1', 'v2']) images.set(name, await FileVolume.open({ dir: vdir, name }));
    const rep3 = await recoverImages(j, images, undefined, new Set(['gone']));
    assert.equal(rep3.fromSeq, 3);
    assert.equal(rep3.unappliedFromSeq, undefined);
    assert.equal(j.checkpointSeq(), 5);
    assert.equal((await images.get('v2')!.read(0, BS))[0], 0x22, "v2's acknowledged write is in its image");
    const v1got = await images.get('v1')!.read(0, 3 * BS);
    assert.deepEqual([v1got[0], v1got[BS], v1got[2 * BS]], [0x11, 0x12, 0x13]);
    for (const img of images.values()) await img.close();
    await j.close();
  } finally {
    removeDir(dir);
  }
});

test('an image write that fails after its record was journaled: a write error, the safe sequence held below it, overlapping writes in flight held back, new writes refused unjournaled, then the retry applies them from the journal in order', async () => {
  const dir = tempDir();
  const journal = await Journal.open({ dir: path.join(dir, 'journal') });
  try {
    await journal.registerVolume('v');
    const image = await FileVolume.open({ dir, name: 'v', sizeBytes: 1 << 20, blockSize: BLOCK });
    const tracker = new ImageTracker();
    const vol = new JournaledVolume(image, journal, tracker);
    await vol.write(0, Buffer.alloc(4096, 0x11));
    // The next image write fails (EIO under the image, ENOSPC of a thin image...), a moment after it began.
    const real = image.writeCombined.bind(image);
    let failing = true;
    image.writeCombined = async (offset: number, data: Buffer) => {
      if (!failing) return real(offset, data);
      failing = false;
      await new Promise((r) => setTimeout(r, 20));
      throw Object.assign(new Error('EIO: i/o error, write (test)'), { code: 'EIO' });
    };
    const failed = vol.write(0, Buffer.alloc(4096, 0x22));
    const overlapping = vol.write(2048, Buffer.alloc(4096, 0x33)); // appended after it, waits for it
    await assert.rejects(failed, (e: Error & { code?: string }) => e.code === 'VOLUME_IO' && /journaled as record 2/.test(e.message));
    await assert.rejects(overlapping, (e: Error & { code?: string }) => e.code === 'VOLUME_IO');
    assert.equal(journal.headSeq(), 3);
    assert.equal(tracker.safeSeq(journal.headSeq()), 1, 'the keeper could checkpoint past a record the image lacks: a restart would never replay it');
    assert.equal(vol.imageBehindRecords, 2);
    assert.ok((await vol.read(0, 4096)).every((b) => b === 0x11), 'the overlapping write reached the image before the failed one it follows');
    await assert.rejects(vol.write(65536, Buffer.alloc(512, 0x44)), (e: Error & { code?: string }) => e.code === 'VOLUME_IO');
    assert.equal(journal.headSeq(), 3, 'a write refused meanwhile was journaled');

    await vol.retryImage();
    assert.equal(vol.imageBehindRecords, 0);
    assert.equal(tracker.safeSeq(journal.headSeq()), 3);
    const expect = Buffer.alloc(6144, 0x22);
    expect.fill(0x33, 2048);
    assert.ok((await vol.read(0, 6144)).equals(expect), 'the image is not what the journal says, in its order');
    await vol.write(65536, Buffer.alloc(512, 0x44));
    assert.equal(journal.headSeq(), 4);
    await vol.close();
  } finally {
    await journal.close();
    removeDir(dir);
  }
});

test('a write in flight when its site is fenced (lease lost during a stalled image write) is not acknowledged', async () => {
  const dir = tempDir();
  const journal = await Journal.open({ dir: path.join(dir, 'journal') });
  try {
    await journal.registerVolume('v');
    const image = await FileVolume.open({ dir, name: 'v', sizeBytes: 1 << 20, blockSize: BLOCK });
    const vol = new JournaledVolume(image, journal, new ImageTracker());
    let allowed = true;
    vol.writeGate = () => allowed;
    await vol.write(0, Buffer.alloc(4096, 0x11));
    const real = image.writeCombined.bind(image);
    image.writeCombined = async (offset: number, data: Buffer) => {
      allowed = false; // the lease runs out while the image write stalls
      return real(offset, data);
    };
    await assert.rejects(vol.write(0, Buffer.alloc(4096, 0x22)), (e: Error & { code?: string }) => e.code === 'VOLUME_READ_ONLY' && /in flight/.test(e.message));
    await vol.close();
  } finally {
    await journal.close();
    removeDir(dir);
  }
});
