/**
 * The PDU codec (src/iscsi/pdu.ts): every target PDU builder round-trips through a decoder
 * written from RFC 7143 §11 (test/helpers/iscsi-wire), leaves reserved bytes zero, and matches
 * golden bytes; every field accessor reads back what an initiator PDU built from the RFC holds.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import fc from 'fast-check';
import { TargetOp } from '../../src/iscsi/constants';
import { loginRequestFields } from '../../src/iscsi/login';
import * as P from '../../src/iscsi/pdu';
import * as W from '../helpers/iscsi-wire';

const RUNS = Number(process.env.FC_RUNS ?? 200);

const u32 = fc.integer({ min: 0, max: 0xffffffff });
const u16 = fc.integer({ min: 0, max: 0xffff });
const u8 = fc.integer({ min: 0, max: 0xff });
const dlen = fc.integer({ min: 0, max: 0xffffff });
const seqArb = fc.record({ statSN: u32, expCmdSN: u32, maxCmdSN: u32 });
const lun8 = fc.uint8Array({ minLength: 8, maxLength: 8 }).map((a) => Buffer.from(a));
const isidArb = fc.uint8Array({ minLength: 6, maxLength: 6 }).map((a) => Buffer.from(a));

/** Bytes RFC 7143 defines for each target opcode (byte offsets; everything else is reserved = 0). */
const DEFINED: Record<number, Array<[number, number]>> = {
  [TargetOp.LoginResponse]: [[0, 8], [8, 16], [16, 20], [24, 38]],
  [TargetOp.TextResponse]: [[0, 2], [4, 8], [8, 16], [16, 24], [24, 36]],
  [TargetOp.ScsiResponse]: [[0, 4], [4, 8], [16, 20], [24, 48]],
  [TargetOp.DataIn]: [[0, 2], [3, 4], [4, 8], [8, 16], [16, 24], [24, 48]],
  [TargetOp.ReadyToTransfer]: [[0, 2], [4, 8], [8, 16], [16, 24], [24, 48]],
  [TargetOp.NopIn]: [[0, 2], [4, 8], [8, 16], [16, 24], [24, 36]],
  [TargetOp.TaskManagementResponse]: [[0, 3], [4, 8], [16, 20], [24, 36]],
  [TargetOp.LogoutResponse]: [[0, 3], [4, 8], [16, 20], [24, 36], [40, 44]],
  [TargetOp.Reject]: [[0, 3], [4, 8], [16, 20], [24, 36], [36, 40]],
  [TargetOp.AsyncMessage]: [[0, 2], [4, 8], [8, 16], [16, 20], [24, 44]],
};

function assertReservedZero(b: Buffer): void {
  assert.equal(b.length, 48);
  const op = b[0] & 0x3f;
  assert.equal(b[0] & 0xc0, 0, 'bits 6-7 of byte 0 are reserved in target PDUs');
  const defined = DEFINED[op];
  assert.ok(defined, `opcode 0x${op.toString(16)}`);
  for (let i = 0; i < 48; i++) {
    if (defined.some(([a, z]) => i >= a && i < z)) continue;
    assert.equal(b[i], 0, `reserved byte ${i} of opcode 0x${op.toString(16)} is 0x${b[i].toString(16)}`);
  }
}

function assertSeq(d: W.TargetPdu, s: P.Sequencing): void {
  assert.equal(d.statSN, s.statSN);
  assert.equal(d.expCmdSN, s.expCmdSN);
  assert.equal(d.maxCmdSN, s.maxCmdSN);
}

test('Login Response round-trips (RFC 7143 §11.13)', () => {
  fc.assert(
    fc.property(
      fc.record({ transit: fc.boolean(), cont: fc.boolean(), csg: fc.constantFrom(0, 1), nsg: fc.constantFrom(1, 3), versionMax: u8, versionActive: u8, isid: isidArb, tsih: u16, itt: u32, status: u16 }),
      seqArb,
      dlen,
      (f, s, n) => {
        const b = P.loginResponse(f, s, n);
        assertReservedZero(b);
        const d = W.decodeTargetBhs(b);
        assert.equal(d.opcode, TargetOp.LoginResponse);
        assert.equal(d.dataLength, n);
        assert.equal(d.transit, f.transit);
        assert.equal(d.cont, f.cont);
        assert.equal(d.csg, f.csg);
        // NSG is only meaningful with T set; without it the field is 0.
        assert.equal(d.nsg, f.transit ? f.nsg : 0);
        assert.equal(d.versionMax, f.versionMax);
        assert.equal(d.versionActive, f.versionActive);
        assert.deepEqual(d.isid, f.isid);
        assert.equal(d.tsih, f.tsih);
        assert.equal(d.itt, f.itt);
        assert.equal(((d.statusClass ?? -1) << 8) | (d.statusDetail ?? 0), f.status);
        assertSeq(d, s);
      },
    ),
    { numRuns: RUNS },
  );
});

test('Text Response round-trips (§11.11)', () => {
  fc.assert(
    fc.property(fc.boolean(), fc.boolean(), u32, u32, fc.option(lun8, { nil: undefined }), seqArb, dlen, (final, cont, itt, ttt, lun, s, n) => {
      const b = P.textResponse(final, cont, itt, ttt, lun, s, n);
      assertReservedZero(b);
      const d = W.decodeTargetBhs(b);
      assert.equal(d.opcode, TargetOp.TextResponse);
      assert.equal(d.final, final);
      assert.equal(d.cont, cont);
      assert.equal(d.itt, itt);
      assert.equal(d.ttt, ttt);
      assert.deepEqual(d.lunField, lun ?? Buffer.alloc(8));
      assert.equal(d.dataLength, n);
      assertSeq(d, s);
    }),
    { numRuns: RUNS },
  );
});

test('SCSI Response round-trips (§11.4)', () => {
  fc.assert(
    fc.property(
      fc.record({ itt: u32, status: u8, response: fc.constantFrom(0, 1), residualFlags: fc.constantFrom(0, 0x02, 0x04), residual: u32, expDataSN: u32 }),
      seqArb,
      dlen,
      (f, s, n) => {
        const b = P.scsiResponse(f, s, n);
        assertReservedZero(b);
        const d = W.decodeTargetBhs(b);
        assert.equal(d.opcode, TargetOp.ScsiResponse);
        assert.equal(d.final, true, 'F is always 1 in a SCSI Response');
        assert.equal(d.underflow, f.residualFlags === 0x02);
        assert.equal(d.overflow, f.residualFlags === 0x04);
        assert.equal(d.bidiOverflow, false);
        assert.equal(d.bidiUnderflow, false);
        assert.equal(d.response, f.response);
        assert.equal(d.status, f.status);
        assert.equal(d.itt, f.itt);
        assert.equal(d.expDataSN, f.expDataSN);
        assert.equal(d.bidiResidual, 0);
        assert.equal(d.residual, f.residual);
        assert.equal(d.dataLength, n);
        assertSeq(d, s);
      },
    ),
    { numRuns: RUNS },
  );
});

test('Data-In round-trips (§11.7); status, residual and the S bit only with withStatus', () => {
  fc.assert(
    fc.property(
      fc.record({ itt: u32, final: fc.boolean(), withStatus: fc.boolean(), status: u8, residualFlags: fc.constantFrom(0, 0x02, 0x04), residual: u32, lunField: lun8, dataSN: u32, bufferOffset: u32 }),
      seqArb,
      dlen,
      (f, s, n) => {
        const b = P.dataIn(f, s, n);
        assertReservedZero(b);
        const d = W.decodeTargetBhs(b);
        assert.equal(d.opcode, TargetOp.DataIn);
        assert.equal(d.final, f.final);
        assert.equal(d.ack, false);
        assert.equal(d.hasStatus, f.withStatus);
        assert.equal(d.status, f.withStatus ? f.status : 0);
        assert.equal(d.underflow, f.withStatus && f.residualFlags === 0x02);
        assert.equal(d.overflow, f.withStatus && f.residualFlags === 0x04);
        assert.equal(d.residual, f.withStatus ? f.residual : 0);
        assert.deepEqual(d.lunField, f.lunField);
        assert.equal(d.itt, f.itt);
        assert.equal(d.ttt, 0xffffffff, 'TTT is reserved (0xffffffff) without the A bit');
        assert.equal(d.dataSN, f.dataSN);
        assert.equal(d.bufferOffset, f.bufferOffset);
        assert.equal(d.dataLength, n);
        assertSeq(d, s);
      },
    ),
    { numRuns: RUNS },
  );
});

test('R2T round-trips (§11.8)', () => {
  fc.assert(
    fc.property(fc.record({ itt: u32, ttt: u32, lunField: lun8, r2tSN: u32, bufferOffset: u32, desiredLength: u32 }), seqArb, (f, s) => {
      const b = P.r2t(f, s);
      assertReservedZero(b);
      const d = W.decodeTargetBhs(b);
      assert.equal(d.opcode, TargetOp.ReadyToTransfer);
      assert.equal(d.final, true);
      assert.equal(d.dataLength, 0);
      assert.deepEqual(d.lunField, f.lunField);
      assert.equal(d.itt, f.itt);
      assert.equal(d.ttt, f.ttt);
      assert.equal(d.r2tSN, f.r2tSN);
      assert.equal(d.bufferOffset, f.bufferOffset);
      assert.equal(d.desiredLength, f.desiredLength);
      assertSeq(d, s);
    }),
    { numRuns: RUNS },
  );
});

test('NOP-In, Task Management Response, Logout Response, Reject and Async Message round-trip (§11.19, §11.6, §11.15, §11.17, §11.9)', () => {
  fc.assert(
    fc.property(u32, u32, fc.option(lun8, { nil: undefined }), seqArb, dlen, (itt, ttt, lun, s, n) => {
      const b = P.nopIn(itt, ttt, lun, s, n);
      assertReservedZero(b);
      const d = W.decodeTargetBhs(b);
      assert.equal(d.opcode, TargetOp.NopIn);
      assert.equal(d.final, true);
      assert.equal(d.itt, itt);
      assert.equal(d.ttt, ttt);
      assert.deepEqual(d.lunField, lun ?? Buffer.alloc(8));
      assert.equal(d.dataLength, n);
      assertSeq(d, s);
    }),
    { numRuns: RUNS },
  );
  fc.assert(
    fc.property(u32, u8, seqArb, (itt, response, s) => {
      const b = P.tmfResponse(itt, response, s);
      assertReservedZero(b);
      const d = W.decodeTargetBhs(b);
      assert.equal(d.opcode, TargetOp.TaskManagementResponse);
      assert.equal(d.final, true);
      assert.equal(d.response, response);
      assert.equal(d.itt, itt);
      assert.equal(d.dataLength, 0);
      assertSeq(d, s);
    }),
    { numRuns: RUNS },
  );
  fc.assert(
    fc.property(u32, fc.integer({ min: 0, max: 3 }), u16, u16, seqArb, (itt, response, wait, retain, s) => {
      const b = P.logoutResponse(itt, response, wait, retain, s);
      assertReservedZero(b);
      const d = W.decodeTargetBhs(b);
      assert.equal(d.opcode, TargetOp.LogoutResponse);
      assert.equal(d.final, true);
      assert.equal(d.response, response);
      assert.equal(d.itt, itt);
      assert.equal(d.time2Wait, wait);
      assert.equal(d.time2Retain, retain);
      assertSeq(d, s);
    }),
    { numRuns: RUNS },
  );
  fc.assert(
    fc.property(u8, seqArb, dlen, (reason, s, n) => {
      const b = P.reject(reason, s, n);
      assertReservedZero(b);
      const d = W.decodeTargetBhs(b);
      assert.equal(d.opcode, TargetOp.Reject);
      assert.equal(d.final, true);
      assert.equal(d.reason, reason);
      assert.equal(d.itt, 0xffffffff, 'the ITT of a Reject is 0xffffffff');
      assert.equal(d.dataLength, n);
      assertSeq(d, s);
    }),
    { numRuns: RUNS },
  );
  fc.assert(
    fc.property(u8, u16, u16, u16, seqArb, (event, p1, p2, p3, s) => {
      const b = P.asyncMessage(event, p1, p2, p3, s);
      assertReservedZero(b);
      const d = W.decodeTargetBhs(b);
      assert.equal(d.opcode, TargetOp.AsyncMessage);
      assert.equal(d.final, true);
      assert.equal(d.itt, 0xffffffff);
      assert.equal(d.asyncEvent, event);
      assert.equal(d.asyncVCode, 0);
      assert.equal(d.parameter1, p1);
      assert.equal(d.parameter2, p2);
      assert.equal(d.parameter3, p3);
      assertSeq(d, s);
    }),
    { numRuns: RUNS },
  );
});

/** Hex with spaces and comments stripped. */
const hex = (s: string): Buffer => Buffer.from(s.replace(/#[^\n]*/g, '').replace(/\s+/g, ''), 'hex');

test('golden bytes: a final Login Response, a SCSI Response with underflow and a Data-In with status', () => {
  const login = P.loginResponse(
    { transit: true, cont: false, csg: 1, nsg: 3, versionMax: 0, versionActive: 0, isid: Buffer.from('800102030405', 'hex'), tsih: 0x0102, itt: 0x11223344, status: 0 },
    { statSN: 7, expCmdSN: 9, maxCmdSN: 0x88 },
    0x123,
  );
  assert.equal(login.toString('hex'), hex(`
    23              # opcode 0x23 Login Response
    87              # T=1 C=0 CSG=01 NSG=11
    00 00           # Version-max, Version-active
    00 000123       # TotalAHSLength, DataSegmentLength 0x123
    800102030405    # ISID
    0102            # TSIH
    11223344        # Initiator Task Tag
    00000000        # reserved
    00000007        # StatSN
    00000009        # ExpCmdSN
    00000088        # MaxCmdSN
    00 00           # Status-Class, Status-Detail
    00000000 00000000 0000  # reserved
  `).toString('hex'));

  const resp = P.scsiResponse({ itt: 5, status: 0x02, response: 0, residualFlags: 0x02, residual: 512, expDataSN: 3 }, { statSN: 0xfffffffe, expCmdSN: 1, maxCmdSN: 128 }, 20);
  assert.equal(resp.toString('hex'), hex(`
    21              # opcode 0x21 SCSI Response
    82              # F=1, U (underflow)
    00 02           # Response: command completed; Status: CHECK CONDITION
    00 000014       # TotalAHSLength, DataSegmentLength 20 (sense)
    0000000000000000 # reserved
    00000005        # ITT
    00000000        # SNACK Tag
    fffffffe 00000001 00000080   # StatSN ExpCmdSN MaxCmdSN
    00000003        # ExpDataSN
    00000000        # Bidirectional Read Residual Count
    00000200        # Residual Count 512
  `).toString('hex'));

  const din = P.dataIn(
    { itt: 9, final: true, withStatus: true, status: 0, residualFlags: 0x04, residual: 100, lunField: Buffer.from('0001000000000000', 'hex'), dataSN: 2, bufferOffset: 8192 },
    { statSN: 1, expCmdSN: 2, maxCmdSN: 3 },
    4096,
  );
  assert.equal(din.toString('hex'), hex(`
    25              # opcode 0x25 SCSI Data-In
    85              # F=1, O (overflow), S=1
    00 00           # reserved, Status GOOD
    00 001000       # TotalAHSLength, DataSegmentLength 4096
    0001000000000000 # LUN 1
    00000009        # ITT
    ffffffff        # Target Transfer Tag
    00000001 00000002 00000003   # StatSN ExpCmdSN MaxCmdSN
    00000002        # DataSN
    00002000        # Buffer Offset 8192
    00000064        # Residual Count 100
  `).toString('hex'));
});

test('field accessors read initiator PDUs built from the RFC: SCSI Command, Data-Out, NOP-Out, Login Request', () => {
  fc.assert(
    fc.property(
      fc.record({ immediate: fc.boolean(), final: fc.boolean(), read: fc.boolean(), write: fc.boolean(), attr: fc.integer({ min: 0, max: 7 }), lun: fc.integer({ min: 0, max: 16383 }), itt: u32, edtl: u32, cmdSN: u32, expStatSN: u32, ahsWords: u8, cdb: fc.uint8Array({ minLength: 16, maxLength: 16 }) }),
      dlen,
      (f, n) => {
        const b = W.scsiCommand({ ...f, cdb: Buffer.from(f.cdb) }, n);
        assert.equal(P.opcode(b), 0x01);
        assert.equal(P.isImmediate(b), f.immediate);
        assert.equal(P.isFinal(b), f.final);
        assert.equal(P.ahsLength(b), f.ahsWords * 4);
        assert.equal(P.dataSegmentLength(b), n);
        assert.equal(P.decodeLun(b), f.lun);
        assert.equal(P.itt(b), f.itt);
        assert.equal(P.expectedDataLength(b), f.edtl);
        assert.equal(P.cmdSN(b), f.cmdSN);
        assert.equal(P.expStatSN(b), f.expStatSN);
      },
    ),
    { numRuns: RUNS },
  );
  fc.assert(
    fc.property(fc.record({ final: fc.boolean(), lun: fc.integer({ min: 0, max: 255 }), itt: u32, ttt: u32, expStatSN: u32, dataSN: u32, bufferOffset: u32 }), dlen, (f, n) => {
      const b = W.dataOut(f, n);
      assert.equal(P.opcode(b), 0x05);
      assert.equal(P.isFinal(b), f.final);
      assert.equal(P.dataSegmentLength(b), n);
      assert.equal(P.itt(b), f.itt);
      assert.equal(P.ttt(b), f.ttt);
      assert.equal(P.dataSN(b), f.dataSN);
      assert.equal(P.bufferOffset(b), f.bufferOffset);
      assert.equal(P.decodeLun(b), f.lun);
    }),
    { numRuns: RUNS },
  );
  fc.assert(
    fc.property(fc.record({ immediate: fc.boolean(), itt: u32, ttt: u32, cmdSN: u32, expStatSN: u32 }), (f) => {
      const b = W.nopOut(f, 0);
      assert.equal(P.opcode(b), 0x00);
      assert.equal(P.isImmediate(b), f.immediate);
      assert.equal(P.itt(b), f.itt);
      assert.equal(P.ttt(b), f.ttt);
      assert.equal(P.cmdSN(b), f.cmdSN);
    }),
    { numRuns: RUNS },
  );
  fc.assert(
    fc.property(
      fc.record({ transit: fc.boolean(), cont: fc.boolean(), csg: fc.integer({ min: 0, max: 3 }), nsg: fc.integer({ min: 0, max: 3 }), versionMax: u8, versionMin: u8, isid: isidArb, tsih: u16, itt: u32, cid: u16, cmdSN: u32, expStatSN: u32 }),
      (f) => {
        const b = W.loginRequest(f, 0);
        assert.equal(P.opcode(b), 0x03);
        assert.equal(P.isImmediate(b), true);
        assert.deepEqual(loginRequestFields(b), { ...f });
      },
    ),
    { numRuns: RUNS },
  );
});

test('LUN decoding: peripheral and flat single-level addressing, anything else is -1', () => {
  assert.equal(P.decodeLun(Buffer.concat([Buffer.alloc(8), Buffer.from('0000000000000000', 'hex'), Buffer.alloc(32)])), 0);
  assert.equal(P.decodeLun(Buffer.concat([Buffer.alloc(8), Buffer.from('00ff000000000000', 'hex'), Buffer.alloc(32)])), 255);
  assert.equal(P.decodeLun(Buffer.concat([Buffer.alloc(8), Buffer.from('4101000000000000', 'hex'), Buffer.alloc(32)])), 257);
  assert.equal(P.decodeLun(Buffer.concat([Buffer.alloc(8), Buffer.from('8001000000000000', 'hex'), Buffer.alloc(32)])), -1, 'logical unit addressing');
  assert.equal(P.decodeLun(Buffer.concat([Buffer.alloc(8), Buffer.from('c001000000000000', 'hex'), Buffer.alloc(32)])), -1, 'extended addressing');
});

test('padding and serial number arithmetic (RFC 1982, 32 bits)', () => {
  for (const [n, pad] of [[0, 0], [1, 3], [2, 2], [3, 1], [4, 0], [5, 3], [8191, 1]]) assert.equal(P.padLength(n), pad, `pad of ${n}`);
  fc.assert(
    fc.property(u32, fc.integer({ min: 1, max: 0x7fffffff }), (a, n) => {
      const b = P.snAdd(a, n);
      assert.equal(b, (a + n) % 2 ** 32);
      assert.equal(P.snLessThan(a, b), true, `${a} < ${b}`);
      assert.equal(P.snLessThan(b, a), false);
      assert.equal(P.snLessOrEqual(a, b), true);
      assert.equal(P.snLessThan(a, a), false);
      assert.equal(P.snLessOrEqual(a, a), true);
    }),
    { numRuns: RUNS },
  );
  // Across the wrap: 0xffffffff < 0 < 1.
  assert.equal(P.snLessThan(0xffffffff, 0), true);
  assert.equal(P.snLessThan(0, 0xffffffff), false);
});
