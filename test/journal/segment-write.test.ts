/**
 * The journal's batch write: the native addon (what `make build` makes and the appliance uses)
 * writes the same bytes as the JavaScript version, with checksums that verify, across the
 * 1024-entry pwritev limit; a failed write reports its errno name and how much reached the file.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { nativeWriteRecords, portableWriteRecords, recordChecksum, type WriteRecords } from '../../src/journal/segment-write';
import { removeDir, tempDir } from '../helpers/appliance';

const LAYOUT = { headerBytes: 52, crcAt: 4, crcFrom: 8 };

function batch(count: number): { headers: Buffer; datas: Buffer[] } {
  const headers = randomBytes(count * LAYOUT.headerBytes);
  // Empty data (an unmap's record), odd lengths, a 128K block.
  const datas = Array.from({ length: count }, (_, i) => randomBytes([0, 1, 4096, 513, 131072][i % 5]));
  return { headers, datas };
}

function writeWith(impl: WriteRecords, file: string, position: number, b: { headers: Buffer; datas: Buffer[] }): Buffer {
  const fd = openSync(file, 'w+');
  try {
    const headers = Buffer.from(b.headers);
    const n = impl(fd, position, headers, LAYOUT.headerBytes, b.datas, LAYOUT.crcAt, LAYOUT.crcFrom);
    assert.equal(n, b.datas.length * LAYOUT.headerBytes + b.datas.reduce((s, d) => s + d.length, 0));
  } finally {
    closeSync(fd);
  }
  return readFileSync(file);
}

test('the records addon is built and loaded', () => {
  assert.ok(nativeWriteRecords, 'native/build/records.node did not load: is libisal installed (make build)?');
});

test('native and JavaScript batch writes give the same bytes, and every record verifies', () => {
  const dir = tempDir('segwrite-');
  try {
    // 700 records: 1400 - 140 empty = 1260 iovec entries, more than one pwritev takes.
    for (const count of [1, 5, 700]) {
      const b = batch(count);
      const a = writeWith(nativeWriteRecords!, path.join(dir, 'native'), 100, b);
      const c = writeWith(portableWriteRecords, path.join(dir, 'js'), 100, b);
      assert.ok(a.equals(c), `${count} records: the two writes differ`);
      assert.ok(a.subarray(0, 100).equals(Buffer.alloc(100)), 'written before the position');
      let at = 100;
      for (let i = 0; i < count; i++) {
        const header = a.subarray(at, at + LAYOUT.headerBytes);
        const data = a.subarray(at + LAYOUT.headerBytes, at + LAYOUT.headerBytes + b.datas[i].length);
        assert.ok(header.subarray(LAYOUT.crcFrom).equals(b.headers.subarray(i * 52 + LAYOUT.crcFrom, (i + 1) * 52)), `record ${i}: header changed beyond its checksum`);
        assert.equal(header.readUInt32BE(LAYOUT.crcAt), recordChecksum(header, data, LAYOUT), `record ${i}: checksum`);
        assert.ok(data.equals(b.datas[i]), `record ${i}: data`);
        at += LAYOUT.headerBytes + b.datas[i].length;
      }
    }
  } finally {
    removeDir(dir);
  }
});

test('a failed batch write throws the errno name and the bytes written (none here)', () => {
  const dir = tempDir('segwrite-');
  try {
    const file = path.join(dir, 'ro');
    closeSync(openSync(file, 'w'));
    for (const impl of [nativeWriteRecords!, portableWriteRecords]) {
      const fd = openSync(file, 'r');
      try {
        const b = batch(3);
        assert.throws(() => impl(fd, 0, b.headers, 52, b.datas, 4, 8), (e: NodeJS.ErrnoException & { written?: number }) => e.code === 'EBADF' && e.written === 0);
      } finally {
        closeSync(fd);
      }
    }
  } finally {
    removeDir(dir);
  }
});

test('bad arguments are a TypeError, not a crash', () => {
  const b = batch(2);
  assert.throws(() => nativeWriteRecords!(0, 0, b.headers.subarray(0, 60), 52, b.datas, 4, 8), TypeError);
  assert.throws(() => nativeWriteRecords!(0, 0, b.headers, 52, [Buffer.alloc(1), 'x' as unknown as Buffer], 4, 8), TypeError);
  assert.throws(() => nativeWriteRecords!(0, 0, b.headers, 52, b.datas, 6, 8), TypeError);
});
