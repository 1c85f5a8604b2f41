import test from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { A, B, cdb10, harness, makeNexus, senseOf, type Harness } from '../helpers/scsi-harness';
import { MemoryVolume } from '../helpers/memory-volume';

const K1 = 0x1111n;
const K2 = 0x2222n;

function prOut(sa: number, type: number, rk: bigint, sark: bigint, flags = 0): [Buffer, Buffer] {
  const cdb = Buffer.from([0x5f, sa, type & 0x0f, 0, 0, 0, 0, 0, 24, 0]);
  const p = Buffer.alloc(24);
  p.writeBigUInt64BE(rk, 0);
  p.writeBigUInt64BE(sark, 8);
  p[20] = flags;
  return [cdb, p];
}
async function out(h: Harness, nexus: typeof A, sa: number, type: number, rk: bigint, sark: bigint, flags = 0) {
  const [cdb, data] = prOut(sa, type, rk, sark, flags);
  return h.run(cdb, { nexus, data });
}
const REGISTER = 0, RESERVE = 1, RELEASE = 2, CLEAR = 3, PREEMPT = 4, REG_IGNORE = 6;

const OBS = makeNexus('iqn.1994-05.com.example:observer', 7);
async function readKeys(h: Harness, nexus = OBS) {
  const d = (await h.run([0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0], { nexus })).dataIn!;
  const keys: bigint[] = [];
  for (let o = 8; o < 8 + d.readUInt32BE(4); o += 8) keys.push(d.readBigUInt64BE(o));
  return { generation: d.readUInt32BE(0), keys };
}
async function readReservation(h: Harness, nexus = OBS) {
  const d = (await h.run([0x5e, 1, 0, 0, 0, 0, 0, 0x10, 0, 0], { nexus })).dataIn!;
  if (d.readUInt32BE(4) === 0) return undefined;
  return { key: d.readBigUInt64BE(8), type: d[21] & 0x0f };
}
const readable = async (h: Harness, n: typeof A) => (await h.run(cdb10(0x28, 0, 1), { nexus: n })).status;
const writable = async (h: Harness, n: typeof A) => (await h.run(cdb10(0x2a, 0, 1), { nexus: n, data: Buffer.alloc(512) })).status;

test('REGISTER / READ KEYS / generation; wrong key conflicts; unregister', async () => {
  const h = await harness();
  assert.equal((await out(h, A, REGISTER, 0, 0n, K1)).status, 0);
  assert.equal((await out(h, B, REG_IGNORE, 0, 0n, K2)).status, 0);
  assert.deepEqual(await readKeys(h), { generation: 2, keys: [K1, K2] });
  assert.equal((await out(h, A, REGISTER, 0, 0x9n, 0x5n)).status, 0x18); // wrong reservation key
  assert.equal((await out(h, A, REGISTER, 0, K1, 0n)).status, 0); // unregister
  assert.deepEqual(await readKeys(h), { generation: 3, keys: [K2] });
  assert.equal((await out(h, A, REGISTER, 0, 0n, 0n)).status, 0); // unregistered + zero key: no-op
  assert.deepEqual((await readKeys(h)).generation, 3);
});

test('PR OUT parameter list length must be 24; SPEC_I_PT unsupported; unknown SA invalid', async () => {
  const h = await harness();
  const [cdb, p] = prOut(REGISTER, 0, 0n, K1);
  cdb[8] = 20;
  assert.equal(senseOf(await h.run(cdb, { data: p.subarray(0, 20) })), '5/1a/00');
  assert.equal(senseOf(await out(h, A, REGISTER, 0, 0n, K1, 0x08)), '5/26/00');
  assert.equal(senseOf(await out(h, A, 0x10, 0, 0n, K1)), '5/24/00');
  assert.equal(senseOf(await out(h, A, 7, 0, 0n, K1)), '5/24/00'); // REGISTER AND MOVE unsupported
  assert.equal(senseOf(await h.run([0x5e, 4, 0, 0, 0, 0, 0, 0x10, 0, 0])), '5/24/00'); // PR IN SA 4
});

// SPC-4 Table 63 (libiscsi ProutReserve.Access*): [type, reg read, reg write, unreg read, unreg write]
const ACCESS: [number, string, number, number, number, number][] = [
  [1, 'WE', 1, 0, 1, 0],
  [3, 'EA', 0, 0, 0, 0],
  [5, 'WE-RO', 1, 1, 1, 0],
  [6, 'EA-RO', 1, 1, 0, 0],
  [7, 'WE-AR', 1, 1, 1, 0],
  [8, 'EA-AR', 1, 1, 0, 0],
];
for (const [type, name, rr, rw, ur, uw] of ACCESS) {
  test(`reservation ${name}: holder and other registered / unregistered nexus access`, async () => {
    const h = await harness();
    await out(h, A, REG_IGNORE, 0, 0n, K1);
    await out(h, B, REG_IGNORE, 0, 0n, K2);
    assert.equal((await out(h, A, RESERVE, type, K1, 0n)).status, 0);
    assert.deepEqual(await readReservation(h), { key: type >= 7 ? 0n : K1, type });
    assert.equal(await readable(h, A), 0);
    assert.equal(await writable(h, A), 0);
    const s = (ok: number) => (ok ? 0 : 0x18);
    assert.equal(await readable(h, B), s(rr), 'registered read');
    assert.equal(await writable(h, B), s(rw), 'registered write');
    assert.equal((await out(h, B, REGISTER, 0, K2, 0n)).status, 0);
    assert.equal(await readable(h, B), s(ur), 'unregistered read');
    assert.equal(await writable(h, B), s(uw), 'unregistered write');
    // INQUIRY, TUR, READ CAPACITY, PR IN are never in conflict
    assert.equal((await h.run([0x12, 0, 0, 0, 36, 0], { nexus: B })).status, 0);
    assert.equal((await h.run([0, 0, 0, 0, 0, 0], { nexus: B })).status, 0);
    assert.equal((await h.run([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], { nexus: B })).status, 0);
    assert.equal((await out(h, A, RELEASE, type, K1, 0n)).status, 0);
    assert.equal(await readReservation(h), undefined);
    assert.equal(await writable(h, B), 0);
  });
}

test('RESERVE: another type by the holder conflicts, another nexus conflicts; RELEASE with wrong type is invalid', async () => {
  const h = await harness();
  await out(h, A, REG_IGNORE, 0, 0n, K1);
  await out(h, B, REG_IGNORE, 0, 0n, K2);
  assert.equal((await out(h, A, RESERVE, 1, K1, 0n)).status, 0);
  assert.equal((await out(h, A, RESERVE, 1, K1, 0n)).status, 0);
  assert.equal((await out(h, A, RESERVE, 3, K1, 0n)).status, 0x18);
  assert.equal((await out(h, B, RESERVE, 1, K2, 0n)).status, 0x18);
  assert.equal(senseOf(await out(h, A, RELEASE, 3, K1, 0n)), '5/26/04');
  assert.equal((await out(h, B, RELEASE, 1, K2, 0n)).status, 0); // not the holder: no effect
  assert.deepEqual(await readReservation(h), { key: K1, type: 1 });
  assert.equal(senseOf(await out(h, A, RESERVE, 2, K1, 0n)), '5/24/00'); // invalid type
});

test('unregistering the holder of an all-registrants reservation keeps it for the others', async () => {
  const h = await harness();
  await out(h, A, REG_IGNORE, 0, 0n, K1);
  await out(h, B, REG_IGNORE, 0, 0n, K2);
  await out(h, A, RESERVE, 7, K1, 0n);
  await out(h, A, REGISTER, 0, K1, 0n);
  assert.deepEqual(await readReservation(h), { key: 0n, type: 7 });
  await out(h, B, REGISTER, 0, K2, 0n);
  assert.equal(await readReservation(h), undefined);
});

test('unregistering a registrants-only holder releases it and tells the other registrants', async () => {
  const h = await harness();
  await out(h, A, REG_IGNORE, 0, 0n, K1);
  await out(h, B, REG_IGNORE, 0, 0n, K2);
  await out(h, A, RESERVE, 5, K1, 0n);
  await out(h, A, REGISTER, 0, K1, 0n);
  assert.equal(await readReservation(h), undefined);
  assert.equal(senseOf(await h.run([0, 0, 0, 0, 0, 0], { nexus: B })), '6/2a/04'); // RESERVATIONS RELEASED
});

test('CLEAR removes everything and raises RESERVATIONS PREEMPTED for the others', async () => {
  const h = await harness();
  await out(h, A, REG_IGNORE, 0, 0n, K1);
  await out(h, B, REG_IGNORE, 0, 0n, K2);
  await out(h, A, RESERVE, 3, K1, 0n);
  assert.equal((await out(h, A, CLEAR, 0, K1, 0n)).status, 0);
  assert.deepEqual((await readKeys(h)).keys, []);
  assert.equal(await readReservation(h), undefined);
  assert.equal(senseOf(await h.run([0, 0, 0, 0, 0, 0], { nexus: B })), '6/2a/03');
  assert.equal((await h.run([0, 0, 0, 0, 0, 0], { nexus: B })).status, 0);
});

test('PREEMPT without a reservation removes the registration (generation +1, UA to the victim)', async () => {
  const h = await harness();
  await out(h, A, REG_IGNORE, 0, 0n, K1);
  await out(h, B, REG_IGNORE, 0, 0n, K2);
  const g = (await readKeys(h)).generation;
  assert.equal((await out(h, B, PREEMPT, 3, K2, K1)).status, 0);
  assert.deepEqual(await readKeys(h), { generation: g + 1, keys: [K2] });
  assert.equal(senseOf(await h.run([0, 0, 0, 0, 0, 0], { nexus: A })), '6/2a/05');
  assert.equal((await out(h, B, PREEMPT, 3, K2, 0x77n)).status, 0x18); // no such key
  assert.equal(senseOf(await out(h, B, PREEMPT, 3, K2, 0n)), '5/26/00'); // zero key
});

test('PREEMPT of the holder moves the reservation', async () => {
  const h = await harness();
  await out(h, A, REG_IGNORE, 0, 0n, K1);
  await out(h, B, REG_IGNORE, 0, 0n, K2);
  await out(h, A, RESERVE, 3, K1, 0n);
  assert.equal(await writable(h, B), 0x18);
  assert.equal((await out(h, B, PREEMPT, 1, K2, K1)).status, 0);
  assert.deepEqual(await readReservation(h), { key: K2, type: 1 });
  assert.deepEqual((await readKeys(h)).keys, [K2]);
  assert.equal(await writable(h, B), 0);
  assert.equal(senseOf(await h.run(cdb10(0x28, 0, 1), { nexus: A })), '6/2a/05');
  assert.equal(await writable(h, A), 0x18);
});

test('REPORT CAPABILITIES and READ FULL STATUS', async () => {
  const h = await harness();
  const caps = (await h.run([0x5e, 2, 0, 0, 0, 0, 0, 0, 8, 0])).dataIn!;
  assert.deepEqual([...caps], [0, 8, 0x15, 0x80, 0xea, 0x01, 0, 0]);
  await out(h, A, REG_IGNORE, 0, 0n, K1);
  await out(h, A, RESERVE, 1, K1, 0n);
  const fs = (await h.run([0x5e, 3, 0, 0, 0, 0, 0, 0x10, 0, 0])).dataIn!;
  assert.equal(fs.readBigUInt64BE(8), K1);
  assert.equal(fs[8 + 12], 0x01); // R_HOLDER
  assert.equal(fs[8 + 13], 0x01); // type WE
  assert.equal(fs.readUInt16BE(8 + 18), 1); // relative target port
  const tidLen = fs.readUInt32BE(8 + 20);
  assert.equal(tidLen % 4, 0);
  const tid = fs.subarray(8 + 24, 8 + 24 + tidLen);
  assert.equal(tid[0], 0x45);
  assert.equal(tid.subarray(4).toString('utf8').replace(/\0+$/, ''), A.initiatorPortName);
});

test('registrations are bound to the I_T nexus: same initiator, other ISID is another nexus', async () => {
  const h = await harness();
  const A2 = makeNexus(A.initiatorName, 9);
  await out(h, A, REG_IGNORE, 0, 0n, K1);
  await out(h, A, RESERVE, 3, K1, 0n);
  assert.equal(await readable(h, A2), 0x18);
});

test('PR state with APTPL survives a re-created target; without APTPL it does not (SPC-4 §5.12.5)', async () => {
  const vol = new MemoryVolume('v', 1024 * 1024);
  const h = await harness({ volume: vol });
  await out(h, A, REG_IGNORE, 0, 0n, K1, 0x01); // APTPL
  await out(h, B, REG_IGNORE, 0, 0n, K2, 0x01);
  await out(h, A, RESERVE, 3, K1, 0n);
  const file = JSON.parse(readFileSync(`${h.stateDir}/lun-0.pr.json`, 'utf8'));
  assert.equal(file.registrations.length, 2);
  await h.target.close();
  const h2 = await harness({ volume: vol, stateDir: h.stateDir });
  assert.deepEqual(await readKeys(h2), { generation: 2, keys: [K1, K2] });
  assert.deepEqual(await readReservation(h2), { key: K1, type: 3 });
  assert.equal(await writable(h2, B), 0x18);
  const caps = (await h2.run([0x5e, 2, 0, 0, 0, 0, 0, 0, 8, 0])).dataIn!;
  assert.equal(caps[3] & 0x01, 1); // PTPL_A
  // turn APTPL off: the next restart starts without registrations
  await out(h2, A, REGISTER, 0, K1, K1, 0x00);
  await h2.target.close();
  const h3 = await harness({ volume: vol, stateDir: h.stateDir });
  assert.deepEqual((await readKeys(h3)).keys, []);
});

test('a PR OUT whose state cannot be persisted fails and changes nothing', async () => {
  const h = await harness();
  rmSync(h.stateDir, { recursive: true });
  writeFileSync(h.stateDir, 'not a directory');
  const r = await out(h, A, REG_IGNORE, 0, 0n, K1);
  assert.equal(r.status, 2);
  assert.equal(senseOf(r), '4/44/00');
  assert.deepEqual((await readKeys(h)).keys, []);
});

test('RESERVE(6) conflicts while persistent registrations exist', async () => {
  const h = await harness();
  await out(h, A, REG_IGNORE, 0, 0n, K1);
  assert.equal((await h.run([0x16, 0, 0, 0, 0, 0], { nexus: B })).status, 0x18);
});

// ---- PREEMPT AND ABORT (SPC-4 §5.12.11.2.5): the preempted nexuses' tasks are aborted ----------

const PREEMPT_AND_ABORT = 5;

/** A transport as the iSCSI server is one: records what PREEMPT AND ABORT asks it to abort. */
function fakeTransport(h: Harness, settle: () => Promise<void> = () => Promise.resolve()) {
  const calls: { lun: number; aborted: string[] }[] = [];
  h.target.attachTransport({
    abortNexusTasks: (lun, match) => {
      calls.push({ lun, aborted: [A, B, OBS].filter(match).map((n) => n.initiatorName.split(':')[1]) });
      return settle();
    },
  });
  return calls;
}

/** A volume whose reads wait while `hold` is set (to keep COMPARE AND WRITE inside the write gate). */
class HeldVolume extends MemoryVolume {
  hold?: Promise<void>;
  override async read(o: number, n: number): Promise<Buffer> {
    if (this.hold) await this.hold;
    return super.read(o, n);
  }
}

function compareAndWrite(lba: number, verify: Buffer, write: Buffer): [Buffer, Buffer] {
  const c = Buffer.alloc(16);
  c[0] = 0x89;
  c.writeBigUInt64BE(BigInt(lba), 2);
  c[13] = 1;
  return [c, Buffer.concat([verify, write])];
}

test('PREEMPT AND ABORT has the transport abort the preempted nexus\'s tasks for the LU, and completes only after', async () => {
  let settled!: () => void;
  const h = await harness();
  const calls = fakeTransport(h, () => new Promise((r) => { settled = r; }));
  await out(h, A, REGISTER, 0, 0n, K1);
  await out(h, B, REGISTER, 0, 0n, K2);
  await out(h, B, RESERVE, 1, K2, 0n);
  let completed = false;
  const pa = out(h, A, PREEMPT_AND_ABORT, 1, K1, K2).then((r) => { completed = true; return r; });
  await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(calls, [{ lun: 0, aborted: ['host-b'] }]);
  assert.equal(completed, false, 'PREEMPT AND ABORT completed before the preempted tasks were aborted');
  settled();
  assert.equal((await pa).status, 0);
  assert.deepEqual(await readReservation(h), { key: K1, type: 1 });
  // PREEMPT (without abort) leaves the tasks alone.
  assert.equal(senseOf(await h.run([0, 0, 0, 0, 0, 0], { nexus: B })), '6/2a/05');
  assert.equal((await out(h, B, REGISTER, 0, 0n, K2)).status, 0);
  calls.length = 0;
  assert.equal((await out(h, A, PREEMPT, 1, K1, K2)).status, 0);
  assert.deepEqual(calls, []);
});

test('PREEMPT AND ABORT: a WRITE of the preempted nexus waiting for the write gate is refused and never lands', async () => {
  for (const reserved of [true, false]) {
    const vol = new HeldVolume('held', 1024 * 512);
    const h = await harness({ volume: vol });
    fakeTransport(h);
    await out(h, A, REGISTER, 0, 0n, K1);
    await out(h, B, REGISTER, 0, 0n, K2);
    if (reserved) await out(h, B, RESERVE, 1, K2, 0n); // B: Write Exclusive
    let release!: () => void;
    vol.hold = new Promise((r) => { release = r; });
    // OBS's COMPARE AND WRITE holds the gate exclusive; B's WRITE queues behind it.
    const [cawCdb, cawData] = compareAndWrite(0, Buffer.alloc(512), Buffer.alloc(512, 0xca));
    const caw = h.run(cawCdb, { nexus: reserved ? B : OBS, data: cawData });
    await new Promise((r) => setImmediate(r));
    const write = h.run(cdb10(0x2a, 7, 1), { nexus: B, data: Buffer.alloc(512, 0xbb) });
    await new Promise((r) => setImmediate(r));
    assert.equal((await out(h, A, PREEMPT_AND_ABORT, 1, K1, K2)).status, 0);
    vol.hold = undefined;
    release();
    const w = await write;
    assert.equal(w.status, 0x40, `the preempted nexus's WRITE completed with status 0x${w.status.toString(16)} (reservation: ${reserved})`);
    assert.ok((await vol.read(7 * 512, 512)).equals(Buffer.alloc(512)), 'the preempted nexus\'s WRITE landed after PREEMPT AND ABORT');
    // The COMPARE AND WRITE already inside the gate finished; the preempted nexus learns of it next.
    assert.equal((await caw).status, 0);
    assert.equal(senseOf(await h.run(cdb10(0x28, 0, 1), { nexus: B })), '6/2a/05');
    // Other nexuses' writes waiting alike are not refused.
    vol.hold = new Promise((r) => { release = r; });
    const caw2 = h.run(...spread(compareAndWrite(1, Buffer.alloc(512), Buffer.alloc(512, 0xcb)), A));
    await new Promise((r) => setImmediate(r));
    const mine = h.run(cdb10(0x2a, 8, 1), { nexus: A, data: Buffer.alloc(512, 0xaa) });
    await new Promise((r) => setImmediate(r));
    vol.hold = undefined;
    release();
    assert.equal((await caw2).status, 0);
    assert.equal((await mine).status, 0);
  }
});

function spread([cdb, data]: [Buffer, Buffer], nexus: typeof A): [Buffer, { data: Buffer; nexus: typeof A }] {
  return [cdb, { data, nexus }];
}

test('PREEMPT AND ABORT does not wait on a PR OUT of the preempted nexus queued behind it', async () => {
  const h = await harness();
  // As the iSCSI layer does: abort means waiting for the preempted nexus's executing tasks.
  let victimTask: Promise<unknown> = Promise.resolve();
  fakeTransport(h, () => victimTask.then(() => undefined));
  await out(h, A, REGISTER, 0, 0n, K1);
  await out(h, B, REGISTER, 0, 0n, K2);
  const pa = out(h, A, PREEMPT_AND_ABORT, 1, K1, K2);
  victimTask = out(h, B, RESERVE, 1, K2, 0n); // queued behind the PREEMPT AND ABORT
  const timeout = new Promise<string>((r) => setTimeout(() => r('timed out'), 2000).unref());
  const r = await Promise.race([pa, timeout]);
  assert.notEqual(r, 'timed out', 'PREEMPT AND ABORT and the preempted nexus\'s PR OUT wait on each other');
  assert.equal((r as Awaited<typeof pa>).status, 0);
  assert.equal(((await victimTask) as Awaited<typeof pa>).status, 0x18);
});
