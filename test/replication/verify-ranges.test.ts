/**
 * src/replication/verify.ts, a run over given ranges (the repair after an unclean stop, bounded by
 * the write-intent maps): exactly those ranges are compared, from a chunk boundary, cut at the
 * volume's end, overlaps once; ranges of volumes no longer served are left out; differences found
 * there are repaired. The two sides are byte arrays here: what is under test is which ranges the
 * verifier asks for and what it does with the answers.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import { createLogger } from '../../src/ops/logging';
import { Verifier, type VerifyRange } from '../../src/replication/verify';
import type { VerifyOutcome, VerifyProbe } from '../../src/replication/ports';
import { SYNC_CHUNK_BYTES } from '../../src/replication/protocol';

const MiB = 1024 * 1024;
const CHUNK = SYNC_CHUNK_BYTES;

function sides(volumes: Record<string, number>) {
  const primary = new Map(Object.entries(volumes).map(([n, size]) => [n, Buffer.alloc(size, 1)]));
  const replica = new Map(Object.entries(volumes).map(([n, size]) => [n, Buffer.alloc(size, 1)]));
  const asked: VerifyRange[] = [];
  const repaired: VerifyRange[] = [];
  const source = {
    volumes: () => [...primary].map(([name, b]) => ({ name, sizeBytes: b.length, blockSize: 512, uuid: '' })),
    probe: async (volume: string, offsetBytes: number, lengthBytes: number, withData?: boolean) => {
      if (!withData) asked.push({ volume, offsetBytes, lengthBytes });
      const data = primary.get(volume)!.subarray(offsetBytes, offsetBytes + lengthBytes);
      return { volume, offsetBytes, lengthBytes, seq: 1, hashes: Buffer.alloc(0), data: withData ? Buffer.from(data) : undefined, dirtySeq: () => 1, release() {} };
    },
  };
  const target = {
    connected: () => true,
    cancel() {},
    verify: async (p: VerifyProbe): Promise<VerifyOutcome> => {
      const theirs = replica.get(p.volume)!;
      if (p.data) {
        p.data.copy(theirs, p.offsetBytes);
        repaired.push({ volume: p.volume, offsetBytes: p.offsetBytes, lengthBytes: p.lengthBytes });
        return { kind: 'repaired' };
      }
      const ours = primary.get(p.volume)!;
      const mismatched: number[] = [];
      for (let i = 0; i * CHUNK < p.lengthBytes; i++) {
        const a = p.offsetBytes + i * CHUNK;
        const b = Math.min(a + CHUNK, p.offsetBytes + p.lengthBytes);
        if (!ours.subarray(a, b).equals(theirs.subarray(a, b))) mismatched.push(i);
      }
      return { kind: 'compared', mismatched };
    },
  };
  return { primary, replica, asked, repaired, source, target };
}

/** The bytes the asked ranges cover, per volume, merged. */
function covered(list: VerifyRange[]): VerifyRange[] {
  const out: VerifyRange[] = [];
  for (const r of [...list].sort((a, b) => (a.volume !== b.volume ? (a.volume < b.volume ? -1 : 1) : a.offsetBytes - b.offsetBytes))) {
    const last = out[out.length - 1];
    assert.ok(!last || last.volume !== r.volume || last.offsetBytes + last.lengthBytes <= r.offsetBytes, `asked twice: ${JSON.stringify(r)}`);
    if (last && last.volume === r.volume && last.offsetBytes + last.lengthBytes === r.offsetBytes) last.lengthBytes += r.lengthBytes;
    else out.push({ ...r });
  }
  return out;
}

async function finished(v: Verifier): Promise<ReturnType<Verifier['status']>> {
  while (v.running) await new Promise((r) => setTimeout(r, 5));
  return v.status();
}

test('a run over given ranges compares exactly those (from a chunk boundary, cut at the end, overlaps once) and repairs what differs there', async () => {
  const s = sides({ a: 64 * MiB, b: 8 * MiB });
  // Differences inside the ranges (repaired) and outside them (not looked at).
  s.replica.get('a')!.fill(9, 5 * MiB, 5 * MiB + 4096);
  s.replica.get('b')!.fill(9, 7 * MiB + 100, 7 * MiB + 200);
  s.replica.get('a')!.fill(9, 40 * MiB, 40 * MiB + 4096);
  const v = new Verifier(s.source, s.target, createLogger('silent'));
  const st = v.start([], 0, true, 'unclean-stop', [
    { volume: 'a', offsetBytes: 4 * MiB + 1000, lengthBytes: 2 * MiB }, // from 4 MiB (its chunk) to 6 MiB + 1000
    { volume: 'a', offsetBytes: 5 * MiB, lengthBytes: 2 * MiB }, // overlaps: to 7 MiB
    { volume: 'b', offsetBytes: 6 * MiB, lengthBytes: 64 * MiB }, // past the end: to 8 MiB
    { volume: 'gone', offsetBytes: 0, lengthBytes: MiB }, // not served any more
  ]);
  assert.deepEqual(st.volumes, ['a', 'b']);
  assert.equal(st.totalBytes, 3 * MiB + 2 * MiB);
  const done = await finished(v);
  assert.equal(done.state, 'done');
  assert.equal(done.checkedBytes, 5 * MiB);
  assert.deepEqual(covered(s.asked), [
    { volume: 'a', offsetBytes: 4 * MiB, lengthBytes: 3 * MiB },
    { volume: 'b', offsetBytes: 6 * MiB, lengthBytes: 2 * MiB },
  ]);
  assert.equal(done.mismatchedChunks, 2);
  assert.equal(done.repairedChunks, 2);
  assert.deepEqual([...s.repaired].sort((x, y) => (x.volume < y.volume ? -1 : 1)), [
    { volume: 'a', offsetBytes: 5 * MiB, lengthBytes: CHUNK },
    { volume: 'b', offsetBytes: 7 * MiB, lengthBytes: CHUNK },
  ]);
  assert.ok(s.replica.get('a')!.subarray(0, 8 * MiB).equals(s.primary.get('a')!.subarray(0, 8 * MiB)));
  assert.ok(s.replica.get('b')!.equals(s.primary.get('b')!));
  assert.notEqual(s.replica.get('a')![40 * MiB], 1, 'outside the ranges: not compared, not repaired');
  assert.equal(done.lastFullRunStartedAt, undefined, 'not a run over every volume');
});

test('without ranges a run covers every volume whole, and counts as a full run', async () => {
  const s = sides({ a: 4 * MiB, b: 3 * MiB + 512 });
  const v = new Verifier(s.source, s.target, createLogger('silent'));
  v.start([], 0, false, 'operator');
  const done = await finished(v);
  assert.equal(done.totalBytes, 7 * MiB + 512);
  assert.deepEqual(covered(s.asked), [
    { volume: 'a', offsetBytes: 0, lengthBytes: 4 * MiB },
    { volume: 'b', offsetBytes: 0, lengthBytes: 3 * MiB + 512 },
  ]);
  assert.equal(done.lastFullRunStartedAt, done.startedAt);
});
