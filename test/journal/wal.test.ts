/**
 * The LevelDB journal on its own: records read back as appended, from the in-memory cache of
 * recent records and from the index and segments alike; the size cap, which folds even records
 * the replica has not acknowledged (counted apart), so writes never wait for a replica; and the
 * rebuild of index entries from the segments after a crash.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { Level } from 'level';
import { Journal, type JournalOptions, type JournalRecord } from '../../src/journal/wal';
import { removeDir, smallDisk, tempDir } from '../helpers/appliance';

const KiB = 1024;
const MiB = 1024 * KiB;

const blocks = (n: number, size: number): Buffer[] => Array.from({ length: n }, () => randomBytes(size));

/** A journal with the volume 'v' registered. */
async function openWithV(opts: JournalOptions): Promise<Journal> {
  const j = await Journal.open(opts);
  await j.registerVolume('v');
  return j;
}

async function appendMany(j: Journal, datas: Buffer[]): Promise<Buffer[]> {
  await Promise.all(datas.map((data, i) => j.append('v', 'write', (i % 64) * data.length, data.length, data).done));
  return datas;
}

async function readAll(j: Journal, after: number): Promise<JournalRecord[]> {
  const out: JournalRecord[] = [];
  for (;;) {
    const batch = await j.readAfter(after, 4 * MiB);
    if (!batch.length) return out;
    out.push(...batch);
    after = batch[batch.length - 1].seq;
  }
}

test('readAfter gives the records as appended, from the recent-record cache and from the index alike', async () => {
  const dir = tempDir();
  try {
    const cached = await openWithV({ dir: path.join(dir, 'c'), replicated: true });
    const plain = await openWithV({ dir: path.join(dir, 'p'), cacheRecent: false });
    // Three 4 KiB records, then one of 128 KiB, 1600 in all: the cache takes the small ones only
    // (a gap at every big one), and more of them than it holds, so the oldest come back through
    // the index and the segments.
    const datas = blocks(1600, 4 * KiB).map((d, i) => (i % 4 === 3 ? randomBytes(128 * KiB) : d));
    await appendMany(cached, datas);
    await appendMany(plain, datas);
    for (const j of [cached, plain]) {
      const recs = await readAll(j, 0);
      assert.deepEqual(recs.map((r) => r.seq), datas.map((_, i) => i + 1));
      recs.forEach((r, i) => {
        assert.ok(r.data.equals(datas[i]), `record ${r.seq} data`);
        assert.equal(r.volume, 'v');
        assert.equal(r.op, 'write');
        assert.equal(r.offsetBytes, (i % 64) * datas[i].length);
        assert.equal(r.lengthBytes, datas[i].length);
      });
      // From the middle (old: index; recent: cache), bounded: consecutive records from the one asked for.
      for (const from of [300, 1500, 1501]) {
        const mid = await j.readAfter(from, 512 * KiB);
        assert.ok(mid.length > 0);
        assert.deepEqual(mid.map((r) => r.seq), mid.map((_, k) => from + 1 + k));
        mid.forEach((r) => assert.ok(r.data.equals(datas[r.seq - 1]), `record ${r.seq} data`));
        const bytes = mid.reduce((n, r) => n + r.data.length, 0);
        assert.ok(bytes - mid[mid.length - 1].data.length < 512 * KiB, 'nothing read past the bound');
      }
    }
    // Read into the caller's memory: records one after another from its start, while they fit;
    // a first record bigger than the memory comes alone, in its own buffer.
    const into = Buffer.alloc(300 * KiB);
    const laid = await plain.readAfter(0, 300 * KiB, undefined, into);
    assert.deepEqual(laid.map((r) => r.seq), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]); // 292 KiB; the next 128 KiB do not fit
    let at = 0;
    for (const r of laid) {
      assert.ok(r.data.equals(datas[r.seq - 1]), `record ${r.seq} data`);
      assert.equal(r.data.buffer, into.buffer);
      assert.equal(r.data.byteOffset, into.byteOffset + at);
      at += r.data.length;
    }
    const small = Buffer.alloc(64 * KiB);
    const big = await plain.readAfter(3, 300 * KiB, undefined, small);
    assert.deepEqual(big.map((r) => r.seq), [4], 'a first record bigger than the memory comes alone');
    assert.ok(big[0].data.equals(datas[3]));
    assert.notEqual(big[0].data.buffer, small.buffer);
    // Records trimmed while being read (simulated: the oldest retained sequence moves on during
    // a segment read, as a fold between two steps of the index iterator would make it) are refused.
    const store = (plain as unknown as { segments: { readInto: (...a: unknown[]) => Buffer } }).segments;
    const readInto = store.readInto;
    store.readInto = function (...a: unknown[]) {
      (plain as unknown as { oldest: number }).oldest = 3;
      return readInto.apply(this, a);
    };
    await assert.rejects(plain.readAfter(0, 300 * KiB, undefined, Buffer.alloc(300 * KiB)), (e: Error & { code?: string }) => e.code === 'JOURNAL_SEQUENCE' && /trimmed while being read/.test(e.message));
    store.readInto = readInto;
    // After a reset past the head nothing old is served (from memory or not).
    await cached.resetTo(5000);
    assert.deepEqual(await cached.readAfter(1599, MiB), []);
    await cached.append('v', 'write', 0, 4096, Buffer.alloc(4096, 9)).done;
    const after = await cached.readAfter(5000, MiB);
    assert.deepEqual(after.map((r) => r.seq), [5001]);
    assert.ok(after[0].data.equals(Buffer.alloc(4096, 9)));
    await cached.close();
    await plain.close();
  } finally {
    removeDir(dir);
  }
});

test('the size cap folds records the replica has not acknowledged, counts them apart, and writes never wait', async () => {
  const dir = tempDir();
  try {
    const j = await openWithV({ dir: path.join(dir, 'j'), replicated: true, maxBytes: 4 * MiB });
    j.replicaAcked(10);
    await appendMany(j, blocks(128, 64 * KiB)); // 8 MiB, twice the cap
    await j.checkpoint(128); // the images hold everything
    await j.trim();
    const st = j.stats();
    assert.ok(st.bytes <= 4 * MiB, `journal at ${st.bytes} bytes after the fold (cap 4 MiB)`);
    assert.ok(st.oldestSeq > 11, `records the replica never got were folded (oldest ${st.oldestSeq})`);
    assert.equal(st.foldedUnshipped, st.oldestSeq - 11, 'every record folded past the replica is counted');
    assert.ok(st.folded >= st.foldedUnshipped);
    // Without the images holding them, nothing is folded: the cap never costs data the images lack.
    const k = await openWithV({ dir: path.join(dir, 'k'), replicated: true, maxBytes: 4 * MiB });
    await appendMany(k, blocks(128, 64 * KiB));
    await k.trim();
    assert.equal(k.stats().oldestSeq, 1);
    await j.close();
    await k.close();
  } finally {
    removeDir(dir);
  }
});

test('records appended one turn at a time share index entries, and a reader never waits for that', async () => {
  const dir = tempDir();
  try {
    const jdir = path.join(dir, 'j');
    const j = await openWithV({ dir: jdir });
    // 40 group commits, one record each, with nobody waiting for the index in between.
    for (let i = 0; i < 40; i++) await j.append('v', 'write', i * 4 * KiB, 4 * KiB, Buffer.alloc(4 * KiB, i)).done;
    // A reader gets them at once (the index is written on demand) ...
    const recs = await readAll(j, 0);
    assert.deepEqual(recs.map((r) => r.seq), Array.from({ length: 40 }, (_, i) => i + 1));
    // ... and 41..50, appended while nothing reads, are in the index after close.
    for (let i = 40; i < 50; i++) await j.append('v', 'write', i * 4 * KiB, 4 * KiB, Buffer.alloc(4 * KiB, i)).done;
    await j.close();
    const db = new Level<Buffer, Buffer>(jdir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    const ends: number[] = [];
    for await (const k of db.keys()) if (k[0] === 0x72 && k.length === 9) ends.push(k.readUInt32BE(5));
    await db.close();
    // One LevelDB entry per batch: without the wait for more records, each commit had its own.
    assert.ok(ends.length <= 4, `index entries end at ${ends.join(', ')}`);
    assert.equal(Math.max(...ends), 50);
    const again = await Journal.open({ dir: jdir });
    assert.equal(again.headSeq(), 50);
    assert.deepEqual((await readAll(again, 38)).map((r) => r.seq), Array.from({ length: 12 }, (_, i) => i + 39));
    await again.close();
  } finally {
    removeDir(dir);
  }
});

test('index entries lost in a crash are rebuilt from the segments, up to the first torn record and no further', async () => {
  const dir = tempDir();
  try {
    const jdir = path.join(dir, 'j');
    const j = await openWithV({ dir: jdir });
    // Two index entries in LevelDB: records 1..8, then 9..20 (each group commit's entries go in
    // together).
    const datas = await appendMany(j, blocks(8, 4 * KiB));
    for await (const r of j.records(0, 8)) assert.ok(r.seq <= 8); // indexed
    datas.push(...(await appendMany(j, blocks(12, 4 * KiB))));
    await j.close();
    // The crash: LevelDB never got the entry of records 9..20 ...
    assert.equal(await dropIndexAfter(jdir, 8), 1);
    // ... and record 15 was torn: one byte of its data never reached the segment.
    const segments = readdirSync(path.join(jdir, 'segments')).filter((f) => f.endsWith('.seg'));
    assert.equal(segments.length, 1);
    const seg = readFileSync(path.join(jdir, 'segments', segments[0]));
    const at = seg.indexOf(datas[14]);
    assert.ok(at > 0, 'record 15 is in the segment');
    seg[at + 100] ^= 0xff;
    writeFileSync(path.join(jdir, 'segments', segments[0]), seg);

    const again = await Journal.open({ dir: jdir });
    assert.equal(again.headSeq(), 14, 'records 9..14 rebuilt, the torn 15 and everything after it not');
    const recs = await readAll(again, 0);
    assert.deepEqual(recs.map((r) => r.seq), Array.from({ length: 14 }, (_, i) => i + 1));
    recs.forEach((r, i) => assert.ok(r.data.equals(datas[i]), `record ${r.seq} data`));
    // Appends go on from there, and survive the next start like any other.
    await again.append('v', 'write', 0, 4 * KiB, Buffer.alloc(4 * KiB, 7)).done;
    await again.close();
    const third = await Journal.open({ dir: jdir });
    assert.equal(third.headSeq(), 15);
    assert.ok((await third.readAfter(14, MiB))[0].data.equals(Buffer.alloc(4 * KiB, 7)));
    await third.close();
  } finally {
    removeDir(dir);
  }
});

/** A crash: LevelDB never got the index entries of the records after `seq`. */
async function dropIndexAfter(jdir: string, seq: number): Promise<number> {
  const db = new Level<Buffer, Buffer>(jdir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
  let dropped = 0;
  for await (const k of db.keys()) if (k[0] === 0x72 && k.readUInt32BE(5) > seq) (await db.del(k), dropped++);
  await db.close();
  return dropped;
}

/** The next start finds exactly these records after `after` (with their data), `head` the last. */
async function startFinds(jdir: string, why: string, head: number, after: number, seqs: number[], datas: Buffer[]): Promise<void> {
  const j = await Journal.open({ dir: jdir });
  try {
    assert.equal(j.headSeq(), head, why);
    const recs = await readAll(j, after);
    assert.deepEqual(recs.map((r) => r.seq), seqs);
    recs.forEach((r, i) => assert.ok(r.data.equals(datas[i]), `record ${r.seq} data`));
  } finally {
    await j.close();
  }
}

/** A journal directory for one test, removed afterwards. */
async function inJournalDir(fn: (jdir: string) => Promise<void>): Promise<void> {
  const dir = tempDir();
  try {
    await fn(path.join(dir, 'j'));
  } finally {
    removeDir(dir);
  }
}

test('the rebuild reads past the old records of a reused segment file into the next segment', () =>
  inJournalDir(async (jdir) => {
    // Life 1: records 1..10 in segment 1.
    let j = await openWithV({ dir: jdir });
    await appendMany(j, blocks(10, 4 * KiB));
    await j.close();
    // Life 2: the records are in the images and trimmed; segment 1 becomes a spare file, reused
    // (renamed, not emptied) for records 11 and 12: its old records 3..10 are still there after them,
    // whole and with good checksums.
    j = await Journal.open({ dir: jdir });
    await j.checkpoint(10);
    await j.trim();
    const mine = blocks(3, 4 * KiB);
    await Promise.all(mine.slice(0, 2).map((d, i) => j.append('v', 'write', i * d.length, d.length, d).done));
    await j.close();
    const files = () => readdirSync(path.join(jdir, 'segments')).filter((f) => /^\d+\.seg$/.test(f)).sort();
    assert.deepEqual(files(), ['00000002.seg'], 'segment 1 was reused as segment 2');
    // Life 3: record 13 goes to a new segment, and the process dies before its index entry is put.
    j = await Journal.open({ dir: jdir });
    await j.append('v', 'write', 8 * KiB, 4 * KiB, mine[2]).done;
    await j.close();
    assert.equal(await dropIndexAfter(jdir, 12), 1);
    assert.deepEqual(files(), ['00000002.seg', '00000003.seg']);
    // Life 4: record 13 is found, in segment 3, behind the stale records of segment 2.
    await startFinds(jdir, 'the acknowledged record 13 is not lost', 13, 10, [11, 12, 13], mine);
  }));

test("a replica's records with gaps in their sequence (coalesced batches) are rebuilt after a crash too", () =>
  inJournalDir(async (jdir) => {
    const j = await openWithV({ dir: jdir });
    const datas = blocks(4, 4 * KiB);
    const seqs = [1, 2, 5, 9];
    await Promise.all(seqs.map((seq, i) => j.appendAt(seq, 1000 + seq, 'v', 'write', i * 4 * KiB, 4 * KiB, datas[i]).done));
    await j.sync();
    await j.close();
    assert.ok((await dropIndexAfter(jdir, 2)) >= 1);
    await startFinds(jdir, 'records 5 and 9 are rebuilt, not cut off at the gap', 9, 0, seqs, datas);
  }));

test('after a reset, the records it dropped never come back as the new history, not even after a crash', () =>
  inJournalDir(async (jdir) => {
    const j = await openWithV({ dir: jdir });
    await appendMany(j, blocks(10, 4 * KiB));
    // A replica whose records 6..10 were split off: history restarts after 5 (in the same segment file).
    await j.resetTo(5);
    const fresh = blocks(2, 4 * KiB);
    await Promise.all(fresh.map((d, i) => j.appendAt(6 + i, 2000 + i, 'v', 'write', i * d.length, d.length, d).done));
    await j.close();
    assert.ok((await dropIndexAfter(jdir, 5)) >= 1);
    await startFinds(jdir, 'the new records 6 and 7, and not the old 8..10', 7, 5, [6, 7], fresh);
  }));

test('a group commit that runs out of space counts none of its records, not even after a restart; appends resume when space returns', async (t) => {
  const disk = smallDisk(t, '16m');
  if (!disk) return;
  const { dir, mnt } = disk;
  try {
    const jdir = path.join(mnt, 'j');
    const j = await openWithV({ dir: jdir });
    const acked = await appendMany(j, blocks(4, 4 * KiB));
    await new Promise((r) => setTimeout(r, 100)); // their index entries reach LevelDB
    // Leave room for two and a half of the next eight records: the batch's writev writes some
    // of them whole, then fails.
    const st = statfsSync(mnt);
    const filler = path.join(mnt, 'filler');
    writeFileSync(filler, Buffer.alloc(Number(st.bavail) * Number(st.bsize) - 330 * KiB));
    const batch = blocks(8, 128 * KiB);
    const results = await Promise.allSettled(batch.map((d, i) => j.append('v', 'write', i * 128 * KiB, d.length, d).done));
    assert.deepEqual(results.map((r) => r.status), Array(8).fill('rejected'), 'one batch: all of it fails');
    for (const r of results) assert.equal(((r as PromiseRejectedResult).reason as { code: string }).code, 'JOURNAL_NO_SPACE');
    assert.equal(j.headSeq(), 4);
    assert.deepEqual((await readAll(j, 0)).map((r) => r.seq), [1, 2, 3, 4]);
    const segs = readdirSync(path.join(jdir, 'segments')).filter((f) => /^\d+\.seg$/.test(f));
    const written = readFileSync(path.join(jdir, 'segments', segs[segs.length - 1]));
    assert.ok(written.includes(batch[0]) && written.includes(batch[1]), 'the failed batch did write its first records whole');
    await j.close();

    // A start reads the segment on after record 4: the records written whole before the failure
    // must not come back (their headers were wiped).
    rmSync(filler);
    const again = await Journal.open({ dir: jdir });
    assert.equal(again.headSeq(), 4, 'nothing of the failed batch is rebuilt from the segment');
    const more = blocks(2, 128 * KiB);
    assert.equal(again.append('v', 'write', 0, more[0].length, more[0]).seq, 5, 'the failed batch gave its numbers back');
    await again.append('v', 'write', 128 * KiB, more[1].length, more[1]).done;
    await again.close();
    const third = await Journal.open({ dir: jdir });
    const recs = await readAll(third, 0);
    assert.deepEqual(recs.map((r) => r.seq), [1, 2, 3, 4, 5, 6]);
    [...acked, ...more].forEach((d, i) => assert.ok(recs[i].data.equals(d), `record ${i + 1} data`));
    await third.close();
  } finally {
    try {
      execFileSync('umount', [mnt]);
    } catch {
      /* not mounted */
    }
    removeDir(dir);
  }
});

test('trimming in the middle of an index entry keeps the rest of it, across a restart', async () => {
  const dir = tempDir();
  try {
    const jdir = path.join(dir, 'j');
    const j = await openWithV({ dir: jdir });
    // One group commit of 300 records: index entries of 256 and 44 records.
    const datas = await appendMany(j, blocks(300, 4 * KiB));
    for await (const r of j.records(0, 300)) assert.ok(r.seq <= 300); // indexed
    await j.checkpoint(100); // the images hold 1..100: those may go
    await j.trim();
    assert.equal(j.oldestSeq(), 101);
    const check = async (jj: Journal): Promise<void> => {
      const recs = await readAll(jj, 100);
      assert.deepEqual(recs.map((r) => r.seq), Array.from({ length: 200 }, (_, i) => i + 101));
      recs.forEach((r) => assert.ok(r.data.equals(datas[r.seq - 1]), `record ${r.seq} data`));
      assert.deepEqual((await jj.readAfter(180, 8 * KiB)).map((r) => r.seq), [181, 182]);
      const some: number[] = [];
      for await (const r of jj.records(250, 260)) some.push(r.seq);
      assert.deepEqual(some, Array.from({ length: 10 }, (_, i) => i + 251));
    };
    await check(j);
    await j.close();
    const again = await Journal.open({ dir: jdir });
    assert.equal(again.oldestSeq(), 101, 'the trimmed records stay trimmed');
    assert.equal(again.headSeq(), 300);
    assert.equal(again.stats().records, 200);
    await check(again);
    await again.close();
  } finally {
    removeDir(dir);
  }
});

test('records only in the images’ page cache are trimmed without a checkpoint, but never an FUA record, and the sequence goes on after them across a restart', () =>
  inJournalDir(async (jdir) => {
    let j = await openWithV({ dir: jdir });
    await appendMany(j, blocks(10, 4 * KiB));
    await j.trim();
    assert.equal(j.oldestSeq(), 1, 'nothing goes before the images have a record');
    j.inImages(10);
    await j.trim();
    assert.equal(j.oldestSeq(), 11, 'records 1..10 are in the images: gone without an fsync of them');
    assert.equal(j.checkpointSeq(), 0);
    // An FUA write is durable through the journal alone until a checkpoint covers it.
    const [fua, plain] = blocks(2, 4 * KiB);
    await j.append('v', 'write', 0, fua.length, fua, true).done;
    await j.append('v', 'write', 0, plain.length, plain).done;
    j.inImages(12);
    await j.trim();
    assert.equal(j.oldestSeq(), 11, 'the FUA record 11 holds the trim (and 12 behind it)');
    await j.checkpoint(12);
    await j.trim();
    assert.equal(j.oldestSeq(), 13);
    // Records 13..15, trimmed from the page cache; a crash then leaves an empty index and their
    // stale copies in the segment file.
    await appendMany(j, blocks(3, 4 * KiB));
    j.inImages(15);
    await j.trim();
    await j.close();
    j = await Journal.open({ dir: jdir });
    try {
      assert.equal(j.headSeq(), 15, 'the sequence goes on after the last record ever held, not after the checkpoint (12)');
      assert.deepEqual(await readAll(j, 12), [], 'the trimmed records 13..15 are not read back from the segment');
      assert.equal(j.append('v', 'write', 0, 4 * KiB, Buffer.alloc(4 * KiB)).seq, 16);
    } finally {
      await j.close();
    }
  }));

test('a segment trimmed while a sync of it is under way is closed after the sync, which succeeds: the journal keeps taking writes', () =>
  inJournalDir(async (jdir) => {
    const j = await openWithV({ dir: jdir });
    process.env.OFFSITE_FAILPOINT = 'journal-sync-slow';
    try {
      // 65 records of 1 MiB: the first segment file (64 MiB) is full, the second is current.
      await appendMany(j, blocks(65, MiB));
      const syncing = j.sync();
      await new Promise((r) => setTimeout(r, 50)); // its fdatasync calls are now held back
      j.inImages(j.headSeq());
      await j.trim();
      assert.ok(j.oldestSeq() > 60, `the full segment file was trimmed (oldest ${j.oldestSeq()})`);
      await syncing; // failed with EBADF when the trim closed the descriptor under it
      const after = j.append('v', 'write', 0, 4 * KiB, Buffer.alloc(4 * KiB));
      await after.done;
      assert.equal(after.seq, 66);
      await j.sync();
    } finally {
      delete process.env.OFFSITE_FAILPOINT;
      await j.close();
    }
  }));

test('a watched range is marked by the first later record that touches it, and only by such a record (online verify)', async () => {
  const dir = tempDir();
  try {
    const j = await openWithV({ dir: path.join(dir, 'w') });
    await j.registerVolume('u');
    await j.append('v', 'write', 0, 4 * KiB, Buffer.alloc(4 * KiB, 1)).done;
    const w = j.watch('v', 64 * KiB, 64 * KiB);
    const before = j.assignedSeq();
    assert.equal(before, 1);
    // Beside the range, on another volume, ending where it starts: none of these touch it.
    await j.append('v', 'write', 60 * KiB, 4 * KiB, Buffer.alloc(4 * KiB, 2)).done;
    await j.append('v', 'write', 128 * KiB, 4 * KiB, Buffer.alloc(4 * KiB, 3)).done;
    await j.append('u', 'write', 64 * KiB, 4 * KiB, Buffer.alloc(4 * KiB, 4)).done;
    assert.equal(w.dirtySeq, Infinity);
    // The first that overlaps (an unmap reaching into it) marks it; later ones leave the mark.
    const first = j.append('v', 'unmap', 32 * KiB, 33 * KiB, Buffer.alloc(0));
    const second = j.append('v', 'write', 64 * KiB, 4 * KiB, Buffer.alloc(4 * KiB, 5));
    await Promise.all([first.done, second.done]);
    assert.equal(w.dirtySeq, first.seq);
    // Unwatched ranges are forgotten; a new watch starts clean.
    j.unwatch(w);
    const w2 = j.watch('v', 64 * KiB, 64 * KiB);
    assert.equal(w2.dirtySeq, Infinity);
    await j.append('v', 'writeSame', 100 * KiB, 8 * KiB, Buffer.alloc(512, 6)).done;
    assert.equal(w2.dirtySeq, j.assignedSeq());
    assert.equal(w.dirtySeq, first.seq);
    j.unwatch(w2);
    // Watches are filed by the MiB of the volume they lie in: one across a MiB boundary is
    // marked from either side, a long unmap marks every watch it covers, and many watches at
    // once are each marked by their own records only.
    const across = j.watch('v', MiB - 4 * KiB, 8 * KiB);
    const far = j.watch('v', 5 * MiB / 2, 4 * KiB);
    const many = Array.from({ length: 300 }, (_, i) => j.watch('v', 8 * MiB + i * 64 * KiB, 64 * KiB));
    const w3 = j.append('v', 'write', MiB + 100, 512, Buffer.alloc(512, 7));
    const w4 = j.append('v', 'unmap', 0, 3 * MiB, Buffer.alloc(0));
    const w5 = j.append('v', 'write', 8 * MiB + 77 * 64 * KiB, 4 * KiB, Buffer.alloc(4 * KiB, 8));
    await Promise.all([w3.done, w4.done, w5.done]);
    assert.equal(across.dirtySeq, w3.seq);
    assert.equal(far.dirtySeq, w4.seq);
    assert.deepEqual(many.flatMap((m, i) => (m.dirtySeq === Infinity ? [] : [[i, m.dirtySeq]])), [[77, w5.seq]]);
    for (const m of [across, far, ...many]) j.unwatch(m);
    j.unwatch(across); // twice: harmless
    await j.close();
  } finally {
    removeDir(dir);
  }
});

test('records cut after a sequence never come back, not even after a crash, and the ones appended in their place do', () =>
  inJournalDir(async (jdir) => {
    const j = await openWithV({ dir: jdir });
    const datas = await appendMany(j, blocks(10, 4 * KiB));
    // A replica's store that failed part-way: 7..10 go, and are sent again.
    assert.equal(await j.truncateAfter(6), 4);
    assert.equal(j.headSeq(), 6);
    assert.equal(j.stats().records, 6);
    // Never below what the images hold.
    await j.checkpoint(6);
    await assert.rejects(j.truncateAfter(5), /images hold records up to 6/);
    const again = blocks(2, 4 * KiB);
    await Promise.all(again.map((d, i) => j.appendAt(7 + i, 3000 + i, 'v', 'write', i * d.length, d.length, d).done));
    assert.deepEqual((await readAll(j, 0)).map((r) => r.seq), [1, 2, 3, 4, 5, 6, 7, 8]);
    await j.close();
    // The crash: the index entries of 7 and 8 were never put; the segment alone tells them.
    assert.ok((await dropIndexAfter(jdir, 6)) >= 1);
    await startFinds(jdir, 'the new 7 and 8, not the cut 9 and 10', 8, 0, [1, 2, 3, 4, 5, 6, 7, 8], [...datas.slice(0, 6), ...again]);
  }));

test('a cut reaching into an earlier segment file takes the later files with it, and appends after it are found by the next start', () =>
  inJournalDir(async (jdir) => {
    const j = await openWithV({ dir: jdir });
    // 1 MiB records: 63 fill the first 64 MiB file, 64..66 go to the second.
    const datas = await appendMany(j, blocks(66, MiB));
    const files = () => readdirSync(path.join(jdir, 'segments')).filter((f) => /^\d+\.seg$/.test(f)).sort();
    assert.deepEqual(files(), ['00000001.seg', '00000002.seg']);
    assert.equal(await j.truncateAfter(60), 6);
    assert.deepEqual(files(), ['00000001.seg']);
    const again = blocks(2, MiB);
    await Promise.all(again.map((d, i) => j.appendAt(61 + i, 3000 + i, 'v', 'write', i * d.length, d.length, d).done));
    assert.deepEqual(files(), ['00000001.seg', '00000002.seg'], 'the next record starts the file right after the kept one');
    await j.close();
    assert.ok((await dropIndexAfter(jdir, 60)) >= 1);
    const seqs = Array.from({ length: 62 }, (_, i) => i + 1);
    await startFinds(jdir, 'the new 61 and 62 (in the new second file), not the cut 63..66', 62, 0, seqs, [...datas.slice(0, 60), ...again]);
  }));

test('a cut with no appends after it stays a cut across a restart', () =>
  inJournalDir(async (jdir) => {
    const j = await openWithV({ dir: jdir });
    const datas = await appendMany(j, blocks(10, 4 * KiB));
    await j.truncateAfter(3);
    await j.close();
    await startFinds(jdir, 'the cut records are not rebuilt from the segment', 3, 0, [1, 2, 3], datas.slice(0, 3));
  }));
