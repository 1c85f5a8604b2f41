/**
 * Segments bounded by their record count as well as their data (src/replication/shipper.ts,
 * segment.ts maxRecordsPerSegment): runs of records that carry little or no data (UNMAPs from
 * an fstrim; 512-byte writes read 16 segments' worth at a time for coalescing) once built a
 * segment whose record table outgrew a frame's meta. It could never be sent, the session
 * dropped, and every new one built the same segment: replication stuck for good. Real journal
 * and shipper ⇄ receiver over TCP, into a memory sink.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import test from 'node:test';
import { Journal } from '../../src/journal/wal';
import { Shipper } from '../../src/replication/shipper';
import { Receiver } from '../../src/replication/receiver';
import { maxRecordsPerSegment } from '../../src/replication/segment';
import type { ReplicatedRecord, ShipperSource } from '../../src/replication/ports';
import { silentLogger } from '../../src/common/logger';
import { MemorySink } from '../helpers/memory-journal';
import { removeDir, tempDir } from '../helpers/appliance';
import { until } from '../helpers/wait';

const EMPTY = Buffer.alloc(0);
const MiB = 1 << 20;
/** The replica below announces binary record tables (as every current one does). */
const LIMIT = maxRecordsPerSegment({ table: true });

/**
 * A memory sink that takes coalesced batches (durable through each batch's end, whatever
 * records it kept) and notes where each batch ends.
 */
class RecordingSink extends MemorySink {
  readonly ends: number[] = [];
  override durableSeq(): number {
    return this.ends.length ? this.ends[this.ends.length - 1] : 0;
  }
  override async store(records: ReplicatedRecord[], toSeq?: number): Promise<void> {
    const durable = this.durableSeq();
    if (records[0].seq <= durable) throw new Error(`sink got ${records[0].seq} after ${durable}`);
    for (const r of records) {
      this.stored.push({ ...r, data: r.data && Buffer.from(r.data) });
      if (r.op === 'write') r.data!.copy(this.image.get(r.volume)!, r.offsetBytes);
    }
    this.ends.push(toSeq ?? records[records.length - 1].seq);
  }
}

interface Run {
  head: number;
  sink: MemorySink;
  shipper: Shipper;
  /** The batch ends the replica was asked to store (toSeq of each store). */
  stores: number[];
  /** The most records one readAfter returned. */
  mostRead: number;
}

/**
 * Fill a replicated journal, then ship it to a replica until everything is acknowledged.
 * `honoursLimit: false`: a source that ignores readAfter's record limit (the shipper cuts).
 */
async function ship(fill: (j: Journal) => Promise<void>, opts: { coalesce: boolean; honoursLimit: boolean; bookmarks?: number[] }, check: (r: Run) => void): Promise<void> {
  const dir = tempDir();
  const j = await Journal.open({ dir: path.join(dir, 'journal'), replicated: true });
  const sink = new RecordingSink();
  const run: Partial<Run> = { stores: sink.ends, mostRead: 0 };
  const receiver = new Receiver({ sink, logger: silentLogger() });
  let shipper: Shipper | undefined;
  try {
    await j.registerVolume('v');
    await fill(j);
    run.head = j.headSeq();
    const source: ShipperSource = {
      siteId: 'p',
      volumes: () => [{ name: 'v', sizeBytes: 8 * MiB, blockSize: 512, uuid: '00'.repeat(16) }],
      headSeq: () => j.headSeq(),
      oldestSeq: () => j.oldestSeq(),
      readAfter: async (after, maxBytes, into, maxRecords) => {
        const read = await j.readAfter(after, maxBytes, undefined, into, opts.honoursLimit ? maxRecords : undefined);
        run.mostRead = Math.max(run.mostRead!, read.length);
        return read;
      },
      waitForAppend: (a) => j.waitForAppend(a),
      bytesAfter: (a) => j.bytesAfter(a),
      timeOf: (s) => j.timeOf(s),
      replicaAcked: (s) => j.replicaAcked(s),
      nextBookmarkAfter: opts.bookmarks && ((after) => opts.bookmarks!.find((m) => m > after)),
    };
    const { port } = await receiver.listen('127.0.0.1', 0);
    shipper = new Shipper({ source, host: '127.0.0.1', port, logger: silentLogger(), backoffMinMs: 50, backoffMaxMs: 200, coalesce: () => opts.coalesce });
    shipper.start();
    const s = shipper;
    await until(`everything acknowledged (head ${run.head})`, () => s.stats().ackedSeq === run.head || s.stats().lastError !== '', 30_000);
    const st = shipper.stats();
    assert.equal(st.lastError, '', 'the link never failed');
    assert.equal(st.ackedSeq, run.head);
    assert.equal(st.connects, 1, 'one session carried it all');
    check({ ...(run as Run), sink, shipper });
  } finally {
    await shipper?.stop();
    await receiver.close();
    await j.close();
    removeDir(dir);
  }
}

async function unmaps(j: Journal, n: number): Promise<void> {
  const dones: Promise<void>[] = [];
  for (let i = 0; i < n; i++) dones.push(j.append('v', 'unmap', (i % 1024) * 8192, 4096, EMPTY).done);
  await Promise.all(dones);
}

test('the record limit leaves room in a frame for the record table of either format', () => {
  assert.ok(LIMIT >= 16_384, `segments are not made needlessly small (${LIMIT} records)`);
  assert.ok(maxRecordsPerSegment({ table: false }) >= 8192 && maxRecordsPerSegment({ table: false }) < LIMIT);
});

test('30000 UNMAPs in a row (an fstrim) replicate, in segments within the record limit', async () => {
  await ship((j) => unmaps(j, 30_000), { coalesce: false, honoursLimit: true }, (r) => {
    assert.equal(r.sink.stored.length, 30_000);
    assert.ok(r.sink.stored.every((rec, i) => rec.seq === i + 1 && rec.op === 'unmap'));
    assert.ok(r.mostRead <= LIMIT, `the journal read at most ${LIMIT} records at once (read ${r.mostRead})`);
    assert.ok(r.stores.length >= 2);
  });
});

test('a source that reads more records than asked: the shipper sends the limit and the rest with the next segments', async () => {
  await ship((j) => unmaps(j, 30_000), { coalesce: false, honoursLimit: false }, (r) => {
    assert.ok(r.mostRead > LIMIT, 'the source did read past the limit');
    assert.equal(r.sink.stored.length, 30_000);
    assert.ok(r.sink.stored.every((rec, i) => rec.seq === i + 1));
  });
});

test('coalescing 512-byte writes replicates (16 segments of data are more records than a segment holds); overwrites coalesce and a bookmark still ends its batch', async () => {
  // 28000 blocks written once each, then 12000 overwrites of the last 1000 of them: the first
  // 16 segments' worth (32768 records) keeps 28000 of its records once coalesced, more
  // than a segment's record table holds; the later records overwrite each other.
  const N = 40_000;
  const blockOf = (i: number) => (i < 28_000 ? i : 27_000 + ((i - 28_000) % 1000));
  const MARK = 30_000;
  const expected = Buffer.alloc(8 * MiB);
  await ship(
    async (j) => {
      const dones: Promise<void>[] = [];
      for (let i = 0; i < N; i++) {
        const data = Buffer.alloc(512, (i % 251) + 1);
        data.copy(expected, blockOf(i) * 512);
        dones.push(j.append('v', 'write', blockOf(i) * 512, 512, data).done);
      }
      await Promise.all(dones);
    },
    { coalesce: true, honoursLimit: true, bookmarks: [MARK] },
    (r) => {
      assert.ok(r.mostRead <= LIMIT, `at most ${LIMIT} records read at once (read ${r.mostRead})`);
      assert.ok(r.shipper.stats().coalescedRecords > 0, 'overwritten writes were coalesced away');
      assert.ok(r.sink.stored.length < N);
      assert.ok(r.stores.includes(MARK), `a batch ends at the bookmark (batch ends: ${r.stores.join(', ')})`);
      assert.ok(r.sink.image.get('v')!.equals(expected), "the replica holds the primary's last writes");
    },
  );
});
