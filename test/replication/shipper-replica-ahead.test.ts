/**
 * src/replication/shipper.ts checkNotAhead: a replica whose durable point is past the primary's
 * head (in a history its lineage check found shared) holds records the primary does not. The
 * shipper asks its source to fork the history once (the appliance starts a generation, and the
 * replica resyncs at the next handshake); a replica still ahead after that is refused for good,
 * however far the primary's head moves on, never streamed to from its own point; one that comes
 * back at or below the head is served again. Real journal and shipper ⇄ receiver over TCP, into a
 * memory sink that claims the point a test gives it.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import test from 'node:test';
import { Journal } from '../../src/journal/wal';
import { Shipper } from '../../src/replication/shipper';
import { Receiver } from '../../src/replication/receiver';
import type { ReplicatedRecord, ShipperSource } from '../../src/replication/ports';
import { silentLogger } from '../../src/common/logger';
import { MemorySink } from '../helpers/memory-journal';
import { removeDir, tempDir } from '../helpers/appliance';
import { until } from '../helpers/wait';

const MiB = 1 << 20;

/** A replica at a point of the test's choosing (as if it held records up to it). */
class PointSink extends MemorySink {
  point = 0;
  override durableSeq(): number {
    return Math.max(this.point, super.durableSeq());
  }
  override async store(records: ReplicatedRecord[]): Promise<void> {
    for (const r of records) this.stored.push({ ...r, data: r.data && Buffer.from(r.data) });
  }
}

test('a replica ahead of the primary: the history is forked once, the replica refused while it stays ahead, served again once back at or below the head', async () => {
  const dir = tempDir();
  const j = await Journal.open({ dir: path.join(dir, 'journal'), replicated: true });
  const sink = new PointSink();
  const receiver = new Receiver({ sink, logger: silentLogger() });
  let shipper: Shipper | undefined;
  let forks = 0;
  try {
    await j.registerVolume('v');
    const write = async (n: number) => {
      for (let i = 0; i < n; i++) await j.append('v', 'write', i * 4096, 4096, Buffer.alloc(4096, i)).done;
    };
    await write(5);
    sink.point = 10; // the replica holds 6..10 that this primary lost
    const source: ShipperSource = {
      siteId: 'p',
      volumes: () => [{ name: 'v', sizeBytes: 8 * MiB, blockSize: 512, uuid: '00'.repeat(16) }],
      headSeq: () => j.headSeq(),
      oldestSeq: () => j.oldestSeq(),
      readAfter: (after, maxBytes, into, maxRecords) => j.readAfter(after, maxBytes, undefined, into, maxRecords),
      waitForAppend: (a) => j.waitForAppend(a),
      bytesAfter: (a) => j.bytesAfter(a),
      timeOf: (s) => j.timeOf(s),
      replicaAcked: (s) => j.replicaAcked(s),
      forkHistory: async () => {
        forks++;
      },
    };
    const { port } = await receiver.listen('127.0.0.1', 0);
    shipper = new Shipper({ source, host: '127.0.0.1', port, logger: silentLogger(), backoffMinMs: 50, backoffMaxMs: 100 });
    shipper.start();
    const s = shipper;
    await until('the replica to be found ahead', () => s.stats().lastError.startsWith('REPL_REPLICA_AHEAD'), 10_000);
    assert.equal(forks, 1);
    // The primary writes on, past the replica's point: the replica (still at 10) is not streamed to from 11.
    await write(10);
    assert.ok(j.headSeq() > 10);
    const connectsBefore = s.stats().connects;
    await new Promise((res) => setTimeout(res, 600));
    assert.equal(s.stats().connects, connectsBefore, 'a session was opened with the replica still ahead');
    assert.equal(sink.stored.length, 0, 'records were sent to a replica whose records 6..10 differ');
    assert.equal(forks, 1, 'the history was forked again for the same replica');
    assert.match(s.stats().lastError, /REPL_REPLICA_AHEAD: replica .* holds records up to 10, past this primary's head 5/);
    // The replica comes back at the fork (it saved 6..10 aside and went back): served from 6.
    sink.point = 5;
    await until('everything acknowledged', () => s.stats().ackedSeq === j.headSeq(), 10_000);
    assert.equal(sink.stored[0].seq, 6);
  } finally {
    await shipper?.stop();
    await receiver.close();
    await j.close();
    removeDir(dir);
  }
});
