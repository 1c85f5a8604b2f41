/**
 * Structure-aware fuzzing of the SCSI command layer (issue 6 "Bad input"), extending
 * test/scsi/fuzz.test.ts (random opcodes and bytes) with inputs that get past the first checks:
 * every supported command of the opcode table (src/scsi/table.ts) with a CDB built from its own
 * CDB usage mask, LBAs and lengths mostly in range, and a valid parameter list where the command
 * takes one (UNMAP descriptors, MODE SELECT pages, PERSISTENT RESERVE OUT, EXTENDED COPY
 * descriptors, COMPARE AND WRITE, WRITE SAME, writes) — then mutated (bit flips, boundary
 * integers over fields, truncation, insertion) in the CDB, in the data or both. Also sequences of
 * such commands from two I_T nexuses with task management and nexus loss in between, so that
 * reservations, unit attentions and mode changes carry over from one command to the next.
 *
 * The dispatch entry is `ScsiTarget.execute` (src/scsi/target.ts), which turns every failure
 * into CHECK CONDITION; an untyped exception shows up there as HARDWARE ERROR or, for a write,
 * MEDIUM ERROR plus an error-level log line "command failed". So the properties are: a defined
 * status, parseable sense, never HARDWARE ERROR, never an error-level log line, data-in never
 * longer than the CDB's allocation length, and a GOOD read returns exactly the blocks asked for.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import test from 'node:test';
import fc from 'fast-check';
import pino from 'pino';
import { allocationLength, cdbLength, hasServiceAction, read24, read64, rwLba, rwLength, serviceAction } from '../../src/scsi/cdb';
import { Op } from '../../src/scsi/constants';
import { naaDesignator } from '../../src/scsi/vpd';
import { TmfFunction, type Nexus, type ScsiResult } from '../../src/scsi/port';
import { parseSense } from '../../src/scsi/sense';
import { OPCODES, lookup, type CommandEntry } from '../../src/scsi/table';
import { LogCapture, describeError, fuzzing, mutate, mutationsArb, timeoutFor, type Mutation } from '../helpers/fuzz';
import { MemoryVolume } from '../helpers/memory-volume';
import { A, B, harness, makeNexus, type Harness } from '../helpers/scsi-harness';

const BLOCK = 512;
const SIZE = 1024 * 1024;
const BLOCKS = SIZE / BLOCK;

/** Every supported (opcode, service action) with its table entry. */
const COMMANDS: { opcode: number; sa?: number; entry: CommandEntry }[] = OPCODES.flatMap((slot) =>
  slot.entry ? [{ opcode: slot.opcode, entry: slot.entry }] : (slot.serviceActions ?? []).flatMap((e, sa) => (e ? [{ opcode: slot.opcode, sa, entry: e }] : [])),
);

const READS = new Set<number>([Op.Read6, Op.Read10, Op.Read12, Op.Read16]);
const WRITES = new Set<number>([Op.Write6, Op.Write10, Op.Write12, Op.Write16, Op.WriteAndVerify10, Op.WriteAndVerify12, Op.WriteAndVerify16, Op.OrWrite]);
/** Commands whose LBA / block count sit where rwLba / rwLength read them. */
const RW_FAMILY = new Set<number>([
  ...READS, ...WRITES, Op.Verify10, Op.Verify12, Op.Verify16, Op.PreFetch10, Op.PreFetch16, Op.SynchronizeCache10, Op.SynchronizeCache16, Op.WriteSame10, Op.WriteSame16,
]);
const ALLOCATION_OPS = new Set<number>([Op.Inquiry, Op.ModeSense6, Op.RequestSense, Op.ModeSense10, Op.PersistentReserveIn, Op.ReportLuns, Op.MaintenanceIn, Op.ServiceActionIn16, Op.ReceiveCopyResults]);

/** Put `lba` and `n` where the command's CDB group keeps them. */
function setRange(cdb: Buffer, lba: number, n: number): void {
  switch (cdbLength(cdb[0])) {
    case 6:
      cdb[1] = (cdb[1] & 0xe0) | ((lba >> 16) & 0x1f);
      cdb.writeUInt16BE(lba & 0xffff, 2);
      cdb[4] = n & 0xff;
      break;
    case 10:
      cdb.writeUInt32BE(lba, 2);
      cdb.writeUInt16BE(n & 0xffff, 7);
      break;
    case 12:
      cdb.writeUInt32BE(lba, 2);
      cdb.writeUInt32BE(n, 6);
      break;
    case 16:
      cdb.writeUInt32BE(0, 2);
      cdb.writeUInt32BE(lba, 6);
      cdb.writeUInt32BE(n, 10);
      break;
  }
}

interface Shape {
  cmd: number;
  bits: Uint8Array;
  lba: number;
  n: number;
  inRange: boolean;
  /** Parameter list choices (used by the commands that take one). */
  param: { count: number; keys: [number, number]; flags: number; type: number; scope: number; wce: boolean; dsense: boolean; swp: boolean; bd: boolean; ten: boolean; zeros: boolean; seg: [number, number, number, number] };
}

const shapeArb: fc.Arbitrary<Shape> = fc.record({
  cmd: fc.integer({ min: 0, max: COMMANDS.length - 1 }),
  bits: fc.uint8Array({ minLength: 16, maxLength: 16 }),
  lba: fc.oneof(fc.integer({ min: 0, max: BLOCKS + 8 }), fc.constantFrom(BLOCKS - 1, BLOCKS, 0xffffffff)),
  n: fc.oneof(fc.integer({ min: 0, max: 16 }), fc.constantFrom(0, 1, 255, 256, 0xffff, 0x10000)),
  inRange: fc.boolean(),
  param: fc.record({
    count: fc.integer({ min: 0, max: 4 }),
    keys: fc.tuple(fc.constantFrom(0, 1, 2, 0xabc), fc.constantFrom(0, 1, 2, 0xabc)),
    flags: fc.constantFrom(0, 0, 0x01, 0x04, 0x08),
    type: fc.constantFrom(1, 3, 5, 6, 7, 8, 0, 2),
    scope: fc.constantFrom(0, 0, 0, 1),
    wce: fc.boolean(),
    dsense: fc.boolean(),
    swp: fc.constantFrom(false, false, false, true),
    bd: fc.boolean(),
    ten: fc.boolean(),
    zeros: fc.boolean(),
    seg: fc.tuple(fc.constantFrom(0, 1, 2), fc.constantFrom(0, 1, 2), fc.integer({ min: 0, max: 64 }), fc.integer({ min: 0, max: BLOCKS })),
  }),
});

/** A CDB the command's usage mask allows (in-range LBA and length when `inRange`), and its parameter list. */
function build(s: Shape, env: { naa: Buffer[] }): { cdb: Buffer; data?: Buffer } {
  const { opcode, sa, entry } = COMMANDS[s.cmd];
  const usage = entry.usage;
  const cdb = Buffer.alloc(Math.max(16, usage.length));
  for (let i = 0; i < usage.length; i++) cdb[i] = s.bits[i] & usage[i];
  cdb[0] = opcode;
  if (sa !== undefined) cdb[1] = (cdb[1] & 0xe0) | sa;
  cdb[usage.length - 1] &= ~0x04; // NACA is a defined refusal; mostly leave it off
  const n = s.inRange ? Math.min(s.n, 16) : s.n;
  const lba = s.inRange ? Math.min(s.lba, BLOCKS - n) : s.lba;
  if (RW_FAMILY.has(opcode)) setRange(cdb, Math.max(0, lba), n);
  const p = s.param;
  const blocks = (k: number) => Buffer.alloc(k * BLOCK, (lba + k) & 0xff);
  let data: Buffer | undefined;
  switch (opcode) {
    case Op.Write6:
    case Op.Write10:
    case Op.Write12:
    case Op.Write16:
    case Op.WriteAndVerify10:
    case Op.WriteAndVerify12:
    case Op.WriteAndVerify16:
    case Op.OrWrite:
      data = blocks(Math.min(rwLength(cdb), 64));
      break;
    case Op.Verify10:
    case Op.Verify12:
    case Op.Verify16:
      if (cdb[1] & 0x06) data = blocks(Math.min(rwLength(cdb), 64));
      break;
    case Op.WriteSame10:
    case Op.WriteSame16:
      data = p.zeros ? Buffer.alloc(BLOCK) : blocks(1);
      break;
    case Op.CompareAndWrite: {
      cdb.writeUInt32BE(0, 2);
      cdb.writeUInt32BE(Math.max(0, lba), 6);
      cdb[13] = n & 0xff;
      // Zeros compare equal on a fresh volume.
      data = Buffer.concat([Buffer.alloc((n & 0xff) * BLOCK), blocks(n & 0xff)]);
      break;
    }
    case Op.Unmap: {
      const d = Buffer.alloc(8 + 16 * p.count);
      d.writeUInt16BE(d.length - 2, 0);
      d.writeUInt16BE(16 * p.count, 2);
      for (let i = 0; i < p.count; i++) {
        d.writeUInt32BE((Math.max(0, lba) + i * 4) >>> 0, 8 + 16 * i + 4);
        d.writeUInt32BE(n, 8 + 16 * i + 8);
      }
      cdb[1] &= ~0x01;
      cdb.writeUInt16BE(d.length, 7);
      data = d;
      break;
    }
    case Op.ModeSelect6:
    case Op.ModeSelect10: {
      const ten = opcode === Op.ModeSelect10;
      const hdr = Buffer.alloc(ten ? 8 : 4);
      const bd = p.bd ? Buffer.alloc(8) : Buffer.alloc(0);
      if (p.bd) bd.writeUInt16BE(BLOCK, 6);
      if (ten) hdr.writeUInt16BE(bd.length, 6);
      else hdr[3] = bd.length;
      const caching = Buffer.alloc(20);
      caching[0] = 0x08;
      caching[1] = 18;
      if (p.wce) caching[2] = 0x04;
      const control = Buffer.alloc(12);
      control[0] = 0x0a;
      control[1] = 10;
      if (p.dsense) control[2] = 0x04;
      control[3] = 0x10;
      if (p.swp) control[4] = 0x08;
      control.writeUInt16BE(0xffff, 8);
      const pages = [caching, control, Buffer.from([0x01, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), Buffer.from([0x1c, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])].slice(0, 1 + (p.count % 4));
      data = Buffer.concat([hdr, bd, ...pages]);
      cdb[1] = (cdb[1] & ~0x01) | 0x10; // PF, not SP
      if (ten) cdb.writeUInt16BE(data.length, 7);
      else cdb[4] = data.length;
      break;
    }
    case Op.PersistentReserveOut: {
      const d = Buffer.alloc(24);
      d.writeUInt32BE(p.keys[0], 4);
      d.writeUInt32BE(p.keys[1], 12);
      d[20] = p.flags;
      cdb[2] = (p.scope << 4) | p.type;
      cdb.writeUInt32BE(24, 5);
      data = d;
      break;
    }
    case Op.ExtendedCopy: {
      const [src, dst, k, srcLba] = p.seg;
      const d = Buffer.alloc(16 + 64 + 28);
      d[0] = p.count;
      d.writeUInt16BE(64, 2);
      d.writeUInt32BE(28, 8);
      for (let i = 0; i < 2; i++) {
        const o = 16 + 32 * i;
        d[o] = 0xe4;
        d[o + 4] = 0x01; // binary
        d[o + 5] = 0x03; // LU, NAA
        d[o + 7] = 16;
        env.naa[(i + p.count) % env.naa.length].copy(d, o + 8);
        d[o + 29] = (BLOCK >> 16) & 0xff;
        d.writeUInt16BE(BLOCK & 0xffff, o + 30);
      }
      const o = 16 + 64;
      d[o] = 0x02;
      d.writeUInt16BE(24, o + 2);
      d.writeUInt16BE(src, o + 4);
      d.writeUInt16BE(dst, o + 6);
      d.writeUInt16BE(k, o + 10);
      d.writeUInt32BE(srcLba, o + 16);
      d.writeUInt32BE(Math.max(0, lba), o + 24);
      cdb.writeUInt32BE(d.length, 10);
      data = d;
      break;
    }
  }
  return { cdb, data };
}

/** Where the mutations go. */
type Target = 'none' | 'cdb' | 'data' | 'both';
const targetArb = fc.constantFrom<Target>('none', 'cdb', 'cdb', 'data', 'data', 'both');

interface Input {
  shape: Shape;
  target: Target;
  cdbMutations: Mutation[];
  dataMutations: Mutation[];
  /** Expected data transfer length: the data as sent, or another value. */
  edtl: 'data' | number;
  nexus: 0 | 1 | 2;
  lun: 0 | 1 | 7;
}

const inputArb: fc.Arbitrary<Input> = fc.record({
  shape: shapeArb,
  target: targetArb,
  cdbMutations: mutationsArb(3),
  dataMutations: mutationsArb(4),
  edtl: fc.oneof({ weight: 5, arbitrary: fc.constant('data' as const) }, { weight: 1, arbitrary: fc.constantFrom(0, 1, 512, 4096, 65536) }),
  nexus: fc.constantFrom<0 | 1 | 2>(0, 0, 1, 2),
  lun: fc.constantFrom<0 | 1 | 7>(0, 0, 0, 1, 7),
});

const C = makeNexus('iqn.1994-05.com.example:host-c', 3, 2);
const NEXUSES: Nexus[] = [A, B, C];

interface Rig {
  h: Harness;
  /** Another target of the "appliance" (EXTENDED COPY between targets: A and B have sessions to it, C has none). */
  other: Harness;
  logs: LogCapture;
  naa: Buffer[];
}

/** Close a rig and remove its state directory (persistent reservations). */
async function dispose(r: Rig): Promise<void> {
  for (const h of [r.h, r.other]) {
    await h.target.close();
    rmSync(h.stateDir, { recursive: true, force: true });
  }
}

async function rig(): Promise<Rig> {
  const logs = new LogCapture();
  const logger = pino({ level: 'error' }, logs);
  const v0 = new MemoryVolume('vol0', SIZE);
  const v1 = new MemoryVolume('vol1', SIZE, true);
  const other = new MemoryVolume('other', SIZE);
  const otherH = await harness({ volume: other, extra: { logger } });
  const h = await harness({
    volume: v0,
    extra: { logger, luns: [{ lun: 0, volume: v0 }, { lun: 1, volume: v1 }], copyPeerByDesignator: (naa) => (naa.equals(naaDesignator(other)) ? otherH.target : undefined) },
  });
  h.target.nexusStarted(C, false);
  return { h, other: otherH, logs, naa: [naaDesignator(v0), naaDesignator(v1), naaDesignator(other), Buffer.alloc(16, 0xee)] };
}

function materialize(i: Input, r: Rig): { cdb: Buffer; data?: Buffer; edtl: number } {
  const b = build(i.shape, r);
  let cdb = b.cdb;
  let data = b.data;
  if (i.target === 'cdb' || i.target === 'both') cdb = mutate(cdb, i.cdbMutations);
  if ((i.target === 'data' || i.target === 'both') && data) data = mutate(data, i.dataMutations);
  return { cdb, data, edtl: i.edtl === 'data' ? (data?.length ?? 4096) : i.edtl };
}

async function runOne(r: Rig, i: Input): Promise<ScsiResult> {
  const { cdb, data, edtl } = materialize(i, r);
  let res: ScsiResult;
  try {
    res = await r.h.target.execute({
      nexus: NEXUSES[i.nexus],
      lun: i.lun,
      cdb,
      taskTag: 1,
      taskAttribute: 1,
      expectedDataLength: edtl,
      readFlag: !data,
      writeFlag: !!data,
      dataOut: data,
    });
  } catch (e) {
    assert.fail(`execute rejected (it must always resolve): ${describeError(e)}`);
  }
  check(res, cdb, r.logs);
  return res;
}

const STATUSES = new Set([0x00, 0x02, 0x04, 0x08, 0x18, 0x28, 0x40]);

function check(r: ScsiResult, cdb: Buffer, logs: LogCapture): void {
  const errors = logs.errors();
  assert.deepEqual(errors, [], `error-level log for CDB ${cdb.toString('hex')}: ${JSON.stringify(errors).slice(0, 1500)}`);
  assert.ok(STATUSES.has(r.status), `status 0x${r.status.toString(16)}`);
  if (r.status === 0x02) {
    assert.ok(r.sense && r.sense.length >= 8, 'CHECK CONDITION carries sense');
    const s = parseSense(r.sense);
    assert.ok(s.key > 0 && s.key < 16, `sense key ${s.key}`);
    assert.notEqual(s.key, 0x4, `HARDWARE ERROR for CDB ${cdb.toString('hex')}: an untyped failure`);
    assert.equal(r.dataIn, undefined, 'no data-in with CHECK CONDITION');
  }
  if (r.status === 0x00 && r.dataIn && cdb.length >= 16 && ALLOCATION_OPS.has(cdb[0]) && !(cdb[0] === Op.MaintenanceIn && serviceAction(cdb) !== 0x0a && serviceAction(cdb) !== 0x0c)) {
    const alloc = allocationLength(cdb);
    assert.ok(r.dataIn.length <= alloc, `${r.dataIn.length} bytes of data-in for an allocation length of ${alloc} (CDB ${cdb.toString('hex')})`);
  }
  if (r.status === 0x00 && READS.has(cdb[0]) && cdb.length >= 16) {
    assert.equal(r.dataIn?.length ?? 0, rwLength(cdb) * BLOCK, `GOOD READ of ${rwLength(cdb)} blocks returned ${r.dataIn?.length ?? 0} bytes`);
  }
}

test('every supported command, built from its CDB usage mask with a valid parameter list, then mutated in the CDB and/or the data: defined status and sense, never an untyped failure', { timeout: timeoutFor('scsi/mutated-valid', 5) }, async (t) => {
  const f = fuzzing(t, 'scsi/mutated-valid');
  let r = await rig();
  const byStatus = new Map<string, number>();
  await fc.assert(
    fc.asyncProperty(inputArb, async (i) => {
      f.hit();
      // A fresh target now and then: a reservation or write protection left by an earlier input would otherwise refuse most of the rest.
      if (f.tried % 100 === 0) {
        await dispose(r);
        r = await rig();
      }
      r.logs.clear();
      const res = await runOne(r, i);
      const k = res.status === 0x02 ? `sense ${parseSense(res.sense!).key.toString(16)}` : `status ${res.status.toString(16)}`;
      byStatus.set(k, (byStatus.get(k) ?? 0) + 1);
    }),
    f.params,
  );
  f.report([...byStatus].sort().map(([k, n]) => `${k}: ${n}`).join(', '));
  await dispose(r);
});

type Step = { kind: 'cmd'; input: Input } | { kind: 'tmf'; fn: number; lun: number; nexus: 0 | 1 | 2 } | { kind: 'nexus'; nexus: 0 | 1 | 2; up: boolean; reinstated: boolean };

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 8, arbitrary: inputArb.map((input) => ({ kind: 'cmd' as const, input })) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('tmf' as const), fn: fc.integer({ min: 0, max: 9 }), lun: fc.constantFrom(0, 1, 5), nexus: fc.constantFrom<0 | 1 | 2>(0, 1, 2) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('nexus' as const), nexus: fc.constantFrom<0 | 1 | 2>(0, 1, 2), up: fc.boolean(), reinstated: fc.boolean() }) },
);

test('sequences of such commands from three nexuses, with task management, nexus loss and reinstatement in between (reservations, unit attentions and mode changes carry over) keep every result well formed', { timeout: timeoutFor('scsi/sequences', 60) }, async (t) => {
  const f = fuzzing(t, 'scsi/sequences');
  let r = await rig();
  let commands = 0;
  let concurrent = 0;
  await fc.assert(
    fc.asyncProperty(fc.array(stepArb, { minLength: 1, maxLength: 24 }), fc.boolean(), async (steps, parallel) => {
      f.hit();
      if (f.tried % 10 === 0) {
        await dispose(r);
        r = await rig();
      }
      r.logs.clear();
      const pending: Promise<unknown>[] = [];
      for (const s of steps) {
        if (s.kind === 'cmd') {
          commands++;
          // Now and then several commands in flight at once, as a queue depth > 1 initiator does.
          const p = runOne(r, s.input);
          if (parallel) pending.push(p);
          else await p;
        } else if (s.kind === 'tmf') {
          const resp = r.h.target.taskManagement(s.fn as TmfFunction, s.lun, NEXUSES[s.nexus]);
          assert.ok([0, 1, 2, 3, 4, 5, 6, 255].includes(resp), `TMF response ${resp}`);
        } else if (s.up) {
          r.h.target.nexusStarted(NEXUSES[s.nexus], s.reinstated);
        } else {
          r.h.target.nexusEnded(NEXUSES[s.nexus]);
        }
      }
      if (pending.length > 1) concurrent++;
      await Promise.all(pending);
      assert.deepEqual(r.logs.errors(), []);
    }),
    f.params,
  );
  f.report(`${commands} commands, ${concurrent} sequences with commands in flight together`);
  await dispose(r);
});

test('the CDB field decoders (cdb.ts) and the opcode lookup read any 16-byte CDB without throwing, within range', { timeout: timeoutFor('scsi/cdb-fields', 1) }, (t) => {
  const f = fuzzing(t, 'scsi/cdb-fields');
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 16, maxLength: 32 }), (raw) => {
      f.hit();
      const cdb = Buffer.from(raw);
      const len = cdbLength(cdb[0]);
      assert.ok([0, 6, 10, 12, 16].includes(len));
      const nat = (v: number, what: string) => assert.ok(Number.isInteger(v) && v >= 0 && v <= 2 ** 64, `${what} = ${v}`);
      nat(rwLba(cdb), 'rwLba');
      nat(rwLength(cdb), 'rwLength');
      nat(allocationLength(cdb), 'allocationLength');
      nat(read64(cdb, 2), 'read64');
      nat(read24(cdb, 1), 'read24');
      assert.ok(serviceAction(cdb) < 32);
      const e = lookup(cdb);
      if (e) assert.ok(typeof e.name === 'string' && typeof e.handler === 'function');
      if (e && hasServiceAction(cdb[0])) assert.equal(OPCODES[cdb[0]].serviceActions?.[serviceAction(cdb)], e);
    }),
    f.params,
  );
  f.report();
});
