/**
 * Record checks: at a start, every record after the image checkpoint is checked against its
 * segment; a bad one after the synced point is a torn tail (cut, counted, logged), at or below
 * it the start is refused. Records of an earlier life before the checkpoint are checked when
 * first read. Tools (inspectOnly) check and never change anything.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { Level } from 'level';
import pino from 'pino';
import { Journal, type JournalOptions, type JournalRecord } from '../../src/journal/wal';
import { removeDir, tempDir } from '../helpers/appliance';

const KiB = 1024;
const MiB = 1024 * KiB;

/** Journal directory for one test, removed afterwards. */
async function inJournalDir(fn: (jdir: string) => Promise<void>): Promise<void> {
  const dir = tempDir();
  try {
    await fn(path.join(dir, 'j'));
  } finally {
    removeDir(dir);
  }
}

async function openWithV(opts: JournalOptions): Promise<Journal> {
  const j = await Journal.open(opts);
  await j.registerVolume('v');
  return j;
}

/** `n` distinct 4 KiB blocks, appended as one group commit (no sync). */
async function appendBlocks(j: Journal, n: number): Promise<Buffer[]> {
  const datas = Array.from({ length: n }, () => randomBytes(4 * KiB));
  await Promise.all(datas.map((d, i) => j.append('v', 'write', i * d.length, d.length, d).done));
  return datas;
}

const segmentFiles = (jdir: string): string[] =>
  readdirSync(path.join(jdir, 'segments'))
    .filter((f) => /^\d+\.seg$/.test(f))
    .sort()
    .map((f) => path.join(jdir, 'segments', f));

/** Flip one byte in the middle of `data` where it lies in the segment files (a bit rotted, a write torn). */
function corrupt(jdir: string, data: Buffer): string {
  for (const file of segmentFiles(jdir)) {
    const bytes = readFileSync(file);
    const at = bytes.indexOf(data);
    if (at < 0) continue;
    bytes[at + 100] ^= 0xff;
    writeFileSync(file, bytes);
    return file;
  }
  throw new Error('record data not found in any segment');
}

async function readAll(j: Journal): Promise<JournalRecord[]> {
  const out: JournalRecord[] = [];
  for await (const r of j.records(j.oldestSeq() - 1, j.headSeq())) out.push(r);
  return out;
}

/** A logger keeping the warnings it gets. */
function capturingLogger(): { logger: pino.Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const logger = pino({ level: 'warn' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  return { logger, lines };
}

/**
 * Records 1..10 synced, then 11 and 12 appended without a sync (the index batch with them
 * carries the synced point 10), in one segment file.
 */
async function syncedThenUnsynced(jdir: string): Promise<Buffer[]> {
  const j = await openWithV({ dir: jdir });
  const datas = await appendBlocks(j, 10);
  await j.sync();
  datas.push(...(await appendBlocks(j, 2)));
  await j.close();
  return datas;
}

test('a torn tail after the synced point is cut at the start, counted and logged; the records before it stay', () =>
  inJournalDir(async (jdir) => {
    const datas = await syncedThenUnsynced(jdir);
    corrupt(jdir, datas[10]); // record 11: written, never synced
    const { logger, lines } = capturingLogger();
    const j = await Journal.open({ dir: jdir, logger });
    try {
      assert.equal(j.headSeq(), 10, 'records 11 and 12 cut');
      assert.equal(j.stats().tornRecordsDropped, 2);
      const warned = lines.find((l) => /torn tail/.test(String(l.msg)));
      assert.ok(warned, 'a warning names the cut');
      assert.equal(warned.fromSeq, 11);
      assert.equal(warned.records, 2);
      const recs = await readAll(j);
      assert.deepEqual(recs.map((r) => r.seq), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      recs.forEach((r, i) => assert.ok(r.data.equals(datas[i]), `record ${r.seq} data`));
      // Appends go on from there.
      await j.append('v', 'write', 0, 4 * KiB, Buffer.alloc(4 * KiB, 9)).done;
      assert.equal(j.headSeq(), 11);
    } finally {
      await j.close();
    }
    const again = await Journal.open({ dir: jdir });
    try {
      assert.equal(again.headSeq(), 11);
      assert.ok((await again.readAfter(10, MiB))[0].data.equals(Buffer.alloc(4 * KiB, 9)));
      assert.equal(again.stats().tornRecordsDropped, 0);
    } finally {
      await again.close();
    }
  }));

test('a corrupt record at or below the synced point refuses the start (JOURNAL_DURABLE_RECORD_CORRUPT), and lets go of LevelDB', () =>
  inJournalDir(async (jdir) => {
    const datas = await syncedThenUnsynced(jdir);
    const file = corrupt(jdir, datas[4]); // record 5: synced, acknowledged as durable
    const refused = (e: unknown) => {
      const err = e as { code?: string; message: string };
      assert.equal(err.code, 'JOURNAL_DURABLE_RECORD_CORRUPT');
      assert.match(err.message, /record 5\b/);
      assert.ok(err.message.includes(file), 'the message names the file');
      return true;
    };
    await assert.rejects(Journal.open({ dir: jdir }), refused);
    // Refused again, not locked out: the refused open closed LevelDB.
    await assert.rejects(Journal.open({ dir: jdir }), refused);
    // Nothing was cut.
    const db = new Level<Buffer, Buffer>(jdir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    await db.open();
    await db.close();
    assert.ok(readFileSync(file).includes(datas[11]), 'record 12 is still in its segment');
  }));

test('a synced record missing from the segments refuses the start; an unsynced one in a missing file is cut', () =>
  inJournalDir(async (jdir) => {
    // Life 1: records 1..5 (file 1). Life 2 syncs them at its start (the synced point 5 goes
    // with its index batch) and appends 6..8 (file 2) without a sync.
    let j = await openWithV({ dir: jdir });
    const first = await appendBlocks(j, 5);
    await j.close();
    j = await Journal.open({ dir: jdir });
    await appendBlocks(j, 3);
    await j.close();
    const [file1, file2] = segmentFiles(jdir);
    assert.ok(file1 && file2, 'two segment files');
    const saved1 = readFileSync(file1);
    // File 2 gone: 6..8 were never synced, and are cut (their headers cannot be zeroed: no file).
    rmSync(file2);
    j = await Journal.open({ dir: jdir });
    try {
      assert.equal(j.headSeq(), 5);
      assert.equal(j.stats().tornRecordsDropped, 3);
      assert.deepEqual((await readAll(j)).map((r) => r.data), first);
    } finally {
      await j.close();
    }
    // File 1 gone: 1..5 were synced.
    rmSync(file1);
    await assert.rejects(Journal.open({ dir: jdir }), { code: 'JOURNAL_DURABLE_RECORD_CORRUPT' });
    writeFileSync(file1, saved1);
    j = await Journal.open({ dir: jdir });
    assert.equal(j.headSeq(), 5);
    await j.close();
  }));

test('a corrupt record of an earlier life before the checkpoint raises JOURNAL_CORRUPT when read, through records() and readAfter', () =>
  inJournalDir(async (jdir) => {
    let j = await openWithV({ dir: jdir, cacheRecent: false });
    const datas = await appendBlocks(j, 10);
    // In the images: a start checks none of them; they stay (no trim).
    await j.checkpoint(10);
    await j.close();
    const file = corrupt(jdir, datas[3]); // record 4
    j = await Journal.open({ dir: jdir });
    try {
      assert.equal(j.headSeq(), 10, 'the start checks only the records after the checkpoint');
      const seen: number[] = [];
      await assert.rejects(
        (async () => {
          for await (const r of j.records(0, 10)) seen.push(r.seq);
        })(),
        (e: { code?: string; message: string }) => e.code === 'JOURNAL_CORRUPT' && /record 4\b/.test(e.message) && e.message.includes(file),
      );
      assert.deepEqual(seen, [1, 2, 3]);
      await assert.rejects(j.readAfter(0, MiB), { code: 'JOURNAL_CORRUPT' });
      await assert.rejects(j.readAfter(3, MiB, undefined, Buffer.alloc(MiB)), { code: 'JOURNAL_CORRUPT' });
      // The records after it are good.
      const rest = await j.readAfter(4, MiB);
      assert.deepEqual(rest.map((r) => r.seq), [5, 6, 7, 8, 9, 10]);
      rest.forEach((r) => assert.ok(r.data.equals(datas[r.seq - 1]), `record ${r.seq} data`));
    } finally {
      await j.close();
    }
  }));

test('an inspectOnly open reports a bad record and changes no segment file', () =>
  inJournalDir(async (jdir) => {
    const datas = await syncedThenUnsynced(jdir);
    corrupt(jdir, datas[10]); // record 11, after the synced point
    const before = segmentFiles(jdir).map((f) => readFileSync(f));
    await assert.rejects(Journal.open({ dir: jdir, inspectOnly: true }), (e: { code?: string; message: string }) => e.code === 'JOURNAL_CORRUPT' && /record 11\b/.test(e.message));
    assert.deepEqual(segmentFiles(jdir).map((f) => readFileSync(f)), before, 'no header zeroed, no file cut');
    // The appliance's own start still cuts it.
    const j = await Journal.open({ dir: jdir });
    assert.equal(j.headSeq(), 10);
    await j.close();
    // At or below the synced point, a tool is refused the same way a start is.
    corrupt(jdir, datas[1]);
    await assert.rejects(Journal.open({ dir: jdir, inspectOnly: true }), { code: 'JOURNAL_DURABLE_RECORD_CORRUPT' });
  }));

test('a cut lowers the synced point before it zeroes headers: a crash before its index batch leaves a torn tail, not a refused start', () =>
  inJournalDir(async (jdir) => {
    const datas = await syncedThenUnsynced(jdir);
    // The index as it is before the cut.
    const index = async (entries?: [Buffer, Buffer][]): Promise<[Buffer, Buffer][]> => {
      const db = new Level<Buffer, Buffer>(jdir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
      const out: [Buffer, Buffer][] = [];
      for await (const [k, v] of db.iterator({ gte: Buffer.from([0x72]), lt: Buffer.from([0x73]) })) out.push([k, v]);
      if (entries) {
        for (const [k] of out) await db.del(k);
        for (const [k, v] of entries) await db.put(k, v);
      }
      await db.close();
      return out;
    };
    const saved = await index();
    // A replica's store failed part-way: records after 6 go (synced ones among them).
    let j = await Journal.open({ dir: jdir });
    assert.equal(await j.truncateAfter(6), 6);
    await j.close();
    // The crash between the zeroed headers and the index batch: the index still names 7..12.
    await index(saved);
    j = await Journal.open({ dir: jdir });
    try {
      assert.equal(j.headSeq(), 6);
      assert.equal(j.stats().tornRecordsDropped, 6);
      assert.deepEqual((await readAll(j)).map((r) => r.data), datas.slice(0, 6));
    } finally {
      await j.close();
    }
  }));

test('a checkpoint syncs the records it covers first', () =>
  inJournalDir(async (jdir) => {
    const j = await openWithV({ dir: jdir });
    try {
      await appendBlocks(j, 4);
      assert.equal(j.stats().syncs, 0);
      await j.checkpoint(4);
      assert.equal(j.stats().syncs, 1, 'synced before the checkpoint');
      await j.checkpoint(4);
      await appendBlocks(j, 1);
      await j.sync();
      await j.checkpoint(5);
      assert.equal(j.stats().syncs, 2, 'no second sync when the records are synced already');
    } finally {
      await j.close();
    }
  }));
