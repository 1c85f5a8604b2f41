import test from 'node:test';
import assert from 'node:assert/strict';
import { buildSense, parseSense } from '../../src/scsi/sense';

test('fixed-format sense: ILLEGAL REQUEST / INVALID FIELD IN CDB with field pointer byte 2 bit 5', () => {
  const s = buildSense(false, 0x5, 0x2400, { inCdb: true, byte: 2, bit: 5 });
  assert.deepEqual(
    [...s],
    [
      0x70, // current error, fixed format, INFORMATION not valid
      0x00,
      0x05, // sense key ILLEGAL REQUEST
      0, 0, 0, 0, // INFORMATION
      0x0a, // additional sense length
      0, 0, 0, 0, // command-specific information
      0x24, 0x00, // ASC/ASCQ INVALID FIELD IN CDB
      0x00, // FRU
      0xcd, // SKSV | C/D | BPV | bit pointer 5
      0x00, 0x02, // field pointer: byte 2
    ],
  );
  assert.deepEqual(parseSense(s), { key: 5, ascq: 0x2400, sks: 0xcd0002 });
});

test('fixed-format sense: MISCOMPARE with INFORMATION (offset 0x1234)', () => {
  const s = buildSense(false, 0xe, 0x1d00, undefined, 0x1234);
  assert.equal(s[0], 0xf0); // VALID | 0x70
  assert.equal(s[2], 0x0e);
  assert.deepEqual([...s.subarray(3, 7)], [0, 0, 0x12, 0x34]);
  assert.deepEqual([s[12], s[13]], [0x1d, 0x00]);
  assert.equal(parseSense(s).information, 0x1234);
});

test('descriptor-format sense: header, information descriptor, sense-key-specific descriptor', () => {
  const s = buildSense(true, 0x5, 0x2600, { inCdb: false, byte: 8 }, 7);
  assert.deepEqual(
    [...s],
    [
      0x72, 0x05, 0x26, 0x00, 0, 0, 0, 20, // response code, key, ASC, ASCQ, reserved, additional length
      0x00, 0x0a, 0x80, 0x00, 0, 0, 0, 0, 0, 0, 0, 7, // information descriptor: VALID, INFORMATION=7
      0x02, 0x06, 0, 0, 0x80, 0x00, 0x08, 0, // sense key specific: SKSV, C/D=0, field pointer 8
    ],
  );
  assert.deepEqual(parseSense(s), { key: 5, ascq: 0x2600, information: 7, sks: 0x800008 });
});

test('descriptor-format sense without extras is 8 bytes', () => {
  assert.deepEqual([...buildSense(true, 0x6, 0x2903)], [0x72, 0x06, 0x29, 0x03, 0, 0, 0, 0]);
});
