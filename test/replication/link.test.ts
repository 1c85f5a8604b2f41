/**
 * Shipper ⇄ receiver over real TCP through the fault proxy: pipelined shipping, resume after
 * cuts without resending what was acked, corrupt and duplicated frames refused, never applied.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import test from 'node:test';
import { silentLogger } from '../../src/common/logger';
import { Receiver } from '../../src/replication/receiver';
import { Shipper } from '../../src/replication/shipper';
import { FaultProxy } from '../helpers/fault-proxy';
import { MemorySink, MemorySource } from '../helpers/memory-journal';

const until = async (cond: () => boolean, timeoutMs = 20_000, what = 'condition') => {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
};

async function pair(seed = 1, lingerMs?: number) {
  const source = new MemorySource();
  const sink = new MemorySink();
  const receiver = new Receiver({ sink, logger: silentLogger() });
  const { port } = await receiver.listen('127.0.0.1', 0);
  const proxy = new FaultProxy('127.0.0.1', port, seed);
  await proxy.listen();
  const shipper = new Shipper({ source, host: '127.0.0.1', port: proxy.port, logger: silentLogger(), segmentBytes: 64 * 1024, backoffMinMs: 20, backoffMaxMs: 200, pingIntervalMs: 100, deadAfterMs: 2000, lingerMs });
  shipper.start();
  const close = async () => {
    await shipper.stop();
    await proxy.close();
    await receiver.close();
  };
  return { source, sink, receiver, proxy, shipper, close };
}

test('records ship in order, are acknowledged, and the replica image equals the primary writes', async () => {
  const { source, sink, shipper, close } = await pair();
  try {
    const expected = Buffer.alloc(1 << 20);
    for (let i = 0; i < 500; i++) {
      const off = (i * 7919 * 512) % ((1 << 20) - 4096);
      const data = randomBytes(4096);
      data.copy(expected, off);
      source.append('v', off, data);
    }
    await until(() => shipper.stats().ackedSeq === 500, 20_000, 'ack 500');
    assert.equal(source.acked, 500);
    assert.deepEqual(sink.stored.map((r) => r.seq), Array.from({ length: 500 }, (_, i) => i + 1));
    assert.ok(sink.image.get('v')!.equals(expected));
    assert.equal(sink.volumesSeen[0].name, 'v');
    const s = shipper.stats();
    assert.ok(s.framesSent > 5, 'several segments');
  } finally {
    await close();
  }
});

test('a partial segment waits up to the linger for more records; a full one ships at once', async () => {
  // Segments of 64 KiB; a partial one waits a minute, far longer than this test may take.
  const { source, shipper, close } = await pair(1, 60_000);
  try {
    for (let i = 0; i < 16; i++) source.append('v', i * 4096, randomBytes(4096));
    await until(() => shipper.stats().ackedSeq === 16, 20_000, 'the full segment shipped without lingering');
    source.append('v', 0, randomBytes(4096));
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(shipper.stats().sentSeq, 16, 'a lone record waits for company');
    for (let i = 0; i < 15; i++) source.append('v', i * 4096, randomBytes(4096));
    await until(() => shipper.stats().ackedSeq === 32, 20_000, 'the segment, once full, shipped');
  } finally {
    await close();
  }
  // A short linger ships a partial segment once it expires.
  const short = await pair(1, 50);
  try {
    short.source.append('v', 0, randomBytes(4096));
    await until(() => short.shipper.stats().ackedSeq === 1, 20_000, 'the partial segment shipped after the linger');
  } finally {
    await short.close();
  }
});

test('cuts, corruption and duplication: the link drops and resumes; nothing is applied twice or out of order', async () => {
  const { source, sink, shipper, proxy, receiver, close } = await pair(42);
  try {
    let seq = 0;
    for (let round = 0; round < 8; round++) {
      for (let i = 0; i < 50; i++) seq = source.append('v', ((seq * 4096) % (1 << 20)), randomBytes(4096));
      await new Promise((r) => setTimeout(r, 30));
      if (round % 3 === 0) proxy.cut();
      if (round % 3 === 1) proxy.corrupt(1, 'up');
      if (round % 3 === 2) proxy.duplicate(1);
    }
    await until(() => shipper.stats().ackedSeq === seq, 30_000, `ack ${seq}`);
    assert.deepEqual(sink.stored.map((r) => r.seq), Array.from({ length: seq }, (_, i) => i + 1), 'every record exactly once, in order');
    for (const r of sink.stored) assert.ok(r.data!.equals(source.records[r.seq - 1].data!), `record ${r.seq} intact`);
    assert.ok(shipper.stats().connects >= 2, 'the link was re-established');
    assert.ok(proxy.stats.cuts >= 1);
    const rs = receiver.stats();
    assert.ok(rs.rejectedFrames >= 1, `bad frames were refused (${rs.rejectedFrames})`);
    assert.equal(shipper.stats().resyncsNeeded, 0, 'no resync: resumed each time');
  } finally {
    await close();
  }
});

test('a replica behind the retained journal is not silently skipped over', async () => {
  const { source, shipper, close } = await pair();
  try {
    await shipper.stop();
    for (let i = 0; i < 10; i++) source.append('v', 0, randomBytes(512));
    source.trimmedThrough = 5; // records 1..5 gone, replica has nothing
    const s2 = new Shipper({ source, host: '127.0.0.1', port: (shipper as unknown as { opts: { port: number } }).opts.port, logger: silentLogger(), backoffMinMs: 20, backoffMaxMs: 50 });
    s2.start();
    await until(() => s2.stats().resyncsNeeded > 0, 10_000, 'resync detection');
    assert.equal(s2.stats().ackedSeq, 0);
    await s2.stop();
  } finally {
    await close();
  }
});
