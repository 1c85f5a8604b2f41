import test from 'node:test';
import assert from 'node:assert/strict';
import { naaDesignator } from '../../src/scsi';
import { MemoryVolume } from '../helpers/memory-volume';
import { A, B, cdb10, harness, makeNexus, senseOf, type Harness } from '../helpers/scsi-harness';

const BLOCKS = 2048;

/** EXTENDED COPY parameter list: header, identification target descriptors, one block->block segment. */
function xcopyParams(naas: Buffer[], seg: { src: number; dst: number; n: number; srcLba: number; dstLba: number }, opts: { listId?: number; nul?: boolean; luIdType?: number } = {}): Buffer {
  const tds = naas.map((naa) => {
    const d = Buffer.alloc(32);
    d[0] = 0xe4; // identification descriptor target descriptor
    d[1] = ((opts.luIdType ?? 0) << 6) | (opts.nul ? 0x20 : 0);
    d[4] = 0x01; // code set binary
    d[5] = 0x03; // association LU, designator type NAA
    d[7] = 16;
    naa.copy(d, 8);
    d.writeUIntBE(512, 29, 3); // block size
    return d;
  });
  const s = Buffer.alloc(28);
  s[0] = 0x02; // block -> block
  s.writeUInt16BE(24, 2);
  s.writeUInt16BE(seg.src, 4);
  s.writeUInt16BE(seg.dst, 6);
  s.writeUInt16BE(seg.n, 10);
  s.writeBigUInt64BE(BigInt(seg.srcLba), 12);
  s.writeBigUInt64BE(BigInt(seg.dstLba), 20);
  const hdr = Buffer.alloc(16);
  hdr[0] = opts.listId ?? 1;
  hdr.writeUInt16BE(32 * tds.length, 2);
  hdr.writeUInt32BE(28, 8);
  return Buffer.concat([hdr, ...tds, s]);
}
function xcopyCdb(len: number): Buffer {
  const c = Buffer.alloc(16);
  c[0] = 0x83;
  c.writeUInt32BE(len, 10);
  return c;
}

/** What the appliance gives a target: the other target ("harness") serving a designator. */
function peerOf(...others: Harness[]) {
  return (naa: Buffer) => others.find((o) => naaDesignator(o.volume).equals(naa))?.target;
}

function prOut(h: Harness, nexus: typeof A, sa: number, type: number, rk: bigint, sark: bigint) {
  const cdb = Buffer.from([0x5f, sa, type & 0x0f, 0, 0, 0, 0, 0, 24, 0]);
  const p = Buffer.alloc(24);
  p.writeBigUInt64BE(rk, 0);
  p.writeBigUInt64BE(sark, 8);
  return h.run(cdb, { nexus, data: p });
}

/** COPY STATUS of list `id` from nexus A: byte 4 is 01h (completed) or 02h (completed with errors). */
async function copyStatus(h: Harness, id: number): Promise<number> {
  return (await h.run([0x84, 0x00, id, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0])).dataIn![4];
}

test('EXTENDED COPY within one LU copies the blocks; COPY STATUS reports it', async () => {
  const h = await harness({ sizeBytes: BLOCKS * 512 });
  await h.run(cdb10(0x2a, 0, 16), { data: Buffer.alloc(16 * 512, 0x41) });
  const p = xcopyParams([naaDesignator(h.volume)], { src: 0, dst: 0, n: 16, srcLba: 0, dstLba: BLOCKS - 16 }, { listId: 7 });
  const r = await h.run(xcopyCdb(p.length), { data: p });
  assert.equal(r.status, 0, senseOf(r));
  assert.ok((await h.run(cdb10(0x28, BLOCKS - 16, 16))).dataIn!.equals(Buffer.alloc(16 * 512, 0x41)));
  const cs = await h.run([0x84, 0x00, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
  assert.equal(cs.status, 0);
  assert.equal(cs.dataIn![4], 0x01); // completed without errors
  assert.equal(senseOf(await h.run([0x84, 0x00, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0])), '5/24/00'); // unknown list id
});

test('EXTENDED COPY between two targets, the initiator port logged in to both', async () => {
  const other = await harness({ sizeBytes: BLOCKS * 512 }); // A and B have sessions to it
  await other.volume.write(0, Buffer.alloc(4 * 512, 0x77));
  const h = await harness({ sizeBytes: BLOCKS * 512, extra: { copyPeerByDesignator: peerOf(other) } });
  const naas = [naaDesignator(other.volume), naaDesignator(h.volume)];
  const p = xcopyParams(naas, { src: 0, dst: 1, n: 4, srcLba: 0, dstLba: 100 });
  assert.equal((await h.run(xcopyCdb(p.length), { data: p })).status, 0);
  assert.ok((await h.run(cdb10(0x28, 100, 4))).dataIn!.equals(Buffer.alloc(4 * 512, 0x77)));
  const back = xcopyParams(naas, { src: 1, dst: 0, n: 4, srcLba: 100, dstLba: 500 });
  assert.equal((await h.run(xcopyCdb(back.length), { data: back })).status, 0);
  assert.ok((await other.volume.read(500 * 512, 4 * 512)).equals(Buffer.alloc(4 * 512, 0x77)));
});

test('EXTENDED COPY errors follow libiscsi ExtendedCopy.*', async () => {
  const h = await harness({ sizeBytes: BLOCKS * 512 });
  const naa = naaDesignator(h.volume);
  const good = xcopyParams([naa], { src: 0, dst: 0, n: 8, srcLba: 0, dstLba: 100 });
  assert.equal((await h.run(xcopyCdb(0))).status, 0); // parameter list length 0
  assert.equal(senseOf(await h.run(xcopyCdb(16 + 31), { data: good.subarray(0, 47) })), '5/1a/00'); // truncated target descriptor
  assert.equal(senseOf(await h.run(xcopyCdb(good.length - 1), { data: good.subarray(0, good.length - 1) })), '5/1a/00');
  const three = xcopyParams([naa, naa, naa], { src: 0, dst: 0, n: 8, srcLba: 0, dstLba: 100 });
  assert.equal(senseOf(await h.run(xcopyCdb(three.length), { data: three })), '5/26/06'); // too many target descriptors
  const fc = Buffer.from(good);
  fc[16] = 0xe0;
  assert.equal(senseOf(await h.run(xcopyCdb(fc.length), { data: fc })), '5/26/07');
  const s2s = Buffer.from(good);
  s2s[48] = 0x03;
  assert.equal(senseOf(await h.run(xcopyCdb(s2s.length), { data: s2s })), '5/26/09');
  const lut = xcopyParams([naa], { src: 0, dst: 0, n: 8, srcLba: 0, dstLba: 100 }, { luIdType: 3 });
  assert.equal((await h.run(xcopyCdb(lut.length), { data: lut })).status, 0); // SPC-4: LU ID TYPE ignored
  const usage = Buffer.from(good);
  usage[1] = 0x08; // LIST ID USAGE 01b reserved
  assert.equal(senseOf(await h.run(xcopyCdb(usage.length), { data: usage })), '5/26/00');
  const nul = xcopyParams([naa], { src: 0, dst: 0, n: 8, srcLba: 0, dstLba: 100 }, { nul: true });
  assert.equal(senseOf(await h.run(xcopyCdb(nul.length), { data: nul })).slice(0, 2), 'a/');
  const badIdx = xcopyParams([naa], { src: 0, dst: 1, n: 8, srcLba: 0, dstLba: 100 });
  assert.equal(senseOf(await h.run(xcopyCdb(badIdx.length), { data: badIdx })).slice(0, 2), 'a/');
  const eol = xcopyParams([naa], { src: 0, dst: 0, n: 2048, srcLba: 0, dstLba: BLOCKS - 1 });
  assert.equal(senseOf(await h.run(xcopyCdb(eol.length), { data: eol })).slice(0, 2), 'a/');
  const unknown = xcopyParams([Buffer.alloc(16, 0x61)], { src: 0, dst: 0, n: 1, srcLba: 0, dstLba: 1 });
  assert.equal(senseOf(await h.run(xcopyCdb(unknown.length), { data: unknown })), 'a/0d/02');
});

test('RECEIVE COPY RESULTS operating parameters', async () => {
  const h = await harness();
  const r = await h.run([0x84, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0]);
  const d = r.dataIn!;
  assert.equal(d.readUInt32BE(0), d.length - 4);
  assert.equal(d.readUInt16BE(8), 2); // MAXIMUM TARGET DESCRIPTOR COUNT
  assert.equal(d.readUInt16BE(10), 1); // MAXIMUM SEGMENT DESCRIPTOR COUNT
  assert.equal(d[43], 2);
  assert.deepEqual([...d.subarray(44)], [0x02, 0xe4]);
});

// ---- Access to the LUs a copy uses (CVE-2020-28374 class) ------------------------------------

/** Two targets as the appliance serves them; "other" holds OWNER's data at LBA 0..3. */
async function twoTargets(opts: { otherVolume?: MemoryVolume } = {}) {
  const other = await harness({ sizeBytes: BLOCKS * 512, volume: opts.otherVolume });
  const OWNER = makeNexus('iqn.1994-05.com.example:owner', 5);
  other.target.nexusStarted(OWNER, false);
  await other.volume.write(0, Buffer.alloc(4 * 512, 0x5e));
  const mine = await harness({ sizeBytes: BLOCKS * 512, extra: { copyPeerByDesignator: peerOf(other) } });
  await mine.volume.write(0, Buffer.alloc(4 * 512, 0x66));
  const naas = [naaDesignator(mine.volume), naaDesignator(other.volume)];
  /** Copy 4 blocks mine:0 -> other:10 ("into") or other:0 -> mine:100 ("out of") as `nexus`. */
  const copy = async (dir: 'into' | 'out of', nexus = A, listId = 1) => {
    const p = dir === 'into'
      ? xcopyParams(naas, { src: 0, dst: 1, n: 4, srcLba: 0, dstLba: 10 }, { listId })
      : xcopyParams(naas, { src: 1, dst: 0, n: 4, srcLba: 0, dstLba: 100 }, { listId });
    return mine.run(xcopyCdb(p.length), { data: p, nexus });
  };
  const written = async () => (await other.volume.read(10 * 512, 512)).equals(Buffer.alloc(512, 0x66));
  const leaked = async () => (await mine.volume.read(100 * 512, 512)).equals(Buffer.alloc(512, 0x5e));
  return { other, mine, OWNER, copy, written, leaked };
}

test('EXTENDED COPY neither writes into nor reads from an LU of another target held Exclusive Access by another nexus', async () => {
  const t = await twoTargets();
  assert.equal((await prOut(t.other, t.OWNER, 0, 0, 0n, 0xabn)).status, 0); // REGISTER
  assert.equal((await prOut(t.other, t.OWNER, 1, 3, 0xabn, 0n)).status, 0); // RESERVE, Exclusive Access
  // A is shut out there when it asks directly...
  assert.equal((await t.other.run(cdb10(0x2a, 10, 1), { data: Buffer.alloc(512) })).status, 0x18);
  assert.equal((await t.other.run(cdb10(0x28, 0, 1))).status, 0x18);
  // ...and through the copy manager of its own target (SPC-4 §6.4.3: the copy target is unreachable).
  assert.equal(senseOf(await t.copy('into', A, 3)), 'a/0d/02');
  assert.equal(senseOf(await t.copy('out of', A, 4)), 'a/0d/02');
  assert.equal(await t.written(), false, 'EXTENDED COPY wrote into an LU reserved Exclusive Access by another nexus');
  assert.equal(await t.leaked(), false, 'EXTENDED COPY read an LU reserved Exclusive Access by another nexus');
  assert.equal(await copyStatus(t.mine, 3), 0x02);
  // The reservation holder itself, logged in to both targets, may copy.
  t.mine.target.nexusStarted(t.OWNER, false);
  assert.equal((await t.copy('into', t.OWNER)).status, 0);
  assert.equal(await t.written(), true);
});

test('EXTENDED COPY under Write Exclusive of another nexus: copying out is allowed, copying in is not', async () => {
  const t = await twoTargets();
  assert.equal((await prOut(t.other, t.OWNER, 0, 0, 0n, 0xabn)).status, 0);
  assert.equal((await prOut(t.other, t.OWNER, 1, 1, 0xabn, 0n)).status, 0); // Write Exclusive
  assert.equal(senseOf(await t.copy('into')), 'a/0d/02');
  assert.equal(await t.written(), false);
  assert.equal((await t.copy('out of')).status, 0);
  assert.equal(await t.leaked(), true);
});

test('EXTENDED COPY honours an SPC-2 RESERVE of the other LU', async () => {
  const t = await twoTargets();
  assert.equal((await t.other.run([0x16, 0, 0, 0, 0, 0], { nexus: t.OWNER })).status, 0); // RESERVE(6)
  assert.equal(senseOf(await t.copy('into')), 'a/0d/02');
  assert.equal(senseOf(await t.copy('out of')), 'a/0d/02');
  assert.equal(await t.written(), false);
  assert.equal(await t.leaked(), false);
  assert.equal((await t.other.run([0x17, 0, 0, 0, 0, 0], { nexus: t.OWNER })).status, 0); // RELEASE(6)
  assert.equal((await t.copy('into')).status, 0);
});

test('EXTENDED COPY does not reach a target the initiator port has no session to (its ACL and CHAP were never passed)', async () => {
  const t = await twoTargets();
  const STRANGER = makeNexus('iqn.1994-05.com.example:stranger', 9);
  t.mine.target.nexusStarted(STRANGER, false); // logged in to "mine" only
  assert.equal(senseOf(await t.copy('into', STRANGER)), 'a/0d/02');
  assert.equal(senseOf(await t.copy('out of', STRANGER)), 'a/0d/02');
  assert.equal(await t.written(), false);
  assert.equal(await t.leaked(), false);
  // The same initiator port once its session there ends: unreachable again.
  t.other.target.nexusEnded(A);
  assert.equal(senseOf(await t.copy('into', A)), 'a/0d/02');
});

test('EXTENDED COPY leaves the other nexus\'s unit attention pending and does not copy meanwhile', async () => {
  const t = await twoTargets();
  // MODE SELECT by OWNER on "other": A gets MODE PARAMETERS CHANGED there.
  const page = Buffer.from((await t.other.run([0x1a, 0x08, 0x0a, 0, 0xff, 0], { nexus: t.OWNER })).dataIn!.subarray(4));
  page[2] |= 0x04; // D_SENSE
  const param = Buffer.concat([Buffer.alloc(4), page]);
  assert.equal((await t.other.run([0x15, 0x10, 0, 0, param.length, 0], { data: param, nexus: t.OWNER })).status, 0);
  assert.equal(senseOf(await t.copy('into')), 'a/0d/02');
  assert.equal(await t.written(), false);
  // A learns it on its own session to "other"; then the copy goes through.
  assert.equal(senseOf(await t.other.run([0, 0, 0, 0, 0, 0])), '6/2a/01');
  assert.equal((await t.copy('into')).status, 0);
  assert.equal(await t.written(), true);
});

test('EXTENDED COPY does not write an LU under software write protect (SWP), its own or another target\'s', async () => {
  const t = await twoTargets();
  const swp = async (h: Harness) => {
    const page = Buffer.from((await h.run([0x1a, 0x08, 0x0a, 0, 0xff, 0])).dataIn!.subarray(4));
    page[4] |= 0x08; // SWP
    const param = Buffer.concat([Buffer.alloc(4), page]);
    assert.equal((await h.run([0x15, 0x10, 0, 0, param.length, 0], { data: param })).status, 0);
    await h.run([0, 0, 0, 0, 0, 0], { nexus: B }); // B's MODE PARAMETERS CHANGED
  };
  await swp(t.other);
  assert.equal(senseOf(await t.copy('into')), '7/27/00');
  assert.equal(await t.written(), false);
  await swp(t.mine);
  const self = xcopyParams([naaDesignator(t.mine.volume)], { src: 0, dst: 0, n: 4, srcLba: 0, dstLba: 200 });
  assert.equal(senseOf(await t.mine.run(xcopyCdb(self.length), { data: self })), '7/27/00');
  assert.ok((await t.mine.volume.read(200 * 512, 512)).equals(Buffer.alloc(512)));
});

/** A volume whose reads (and, with `holdWrites`, writes) wait while `hold` is set, and that logs its writes. */
class HeldVolume extends MemoryVolume {
  hold?: Promise<void>;
  holdWrites = false;
  readonly writes: string[] = [];
  override async read(o: number, n: number): Promise<Buffer> {
    if (this.hold) await this.hold;
    return super.read(o, n);
  }
  override async write(o: number, d: Buffer, opts?: { fua?: boolean }): Promise<void> {
    this.writes.push(`${o / 512}:${d[0].toString(16)}`);
    if (this.holdWrites && this.hold) await this.hold;
    return super.write(o, d, opts);
  }
}

test('EXTENDED COPY into another target waits for COMPARE AND WRITE there (its write gate)', async () => {
  const vol = new HeldVolume('held', BLOCKS * 512);
  const t = await twoTargets({ otherVolume: vol });
  let release!: () => void;
  vol.hold = new Promise((r) => { release = r; });
  // B's COMPARE AND WRITE at LBA 10 of "other": holds the gate exclusive while it reads.
  const caw = Buffer.alloc(16);
  caw[0] = 0x89;
  caw.writeBigUInt64BE(10n, 2);
  caw[13] = 1;
  const cawDone = t.other.run(caw, { nexus: B, data: Buffer.concat([Buffer.alloc(512), Buffer.alloc(512, 0xca)]) });
  await new Promise((r) => setImmediate(r));
  const copyDone = t.copy('into');
  await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(vol.writes.filter((w) => w.startsWith('10:')), [], 'the copy wrote inside COMPARE AND WRITE');
  vol.hold = undefined;
  release();
  assert.equal((await cawDone).status, 0);
  assert.equal((await copyDone).status, 0);
  assert.deepEqual(vol.writes.filter((w) => w.startsWith('10:')), ['10:ca', '10:66']);
});

test('PREEMPT AND ABORT at the other target waits for the copy\'s chunk in flight there, and the copy stops', async () => {
  const blocks = 8192;
  const vol = new HeldVolume('held', blocks * 512);
  const other = await harness({ volume: vol });
  const OWNER = makeNexus('iqn.1994-05.com.example:owner', 5);
  other.target.nexusStarted(OWNER, false);
  other.target.attachTransport({ abortNexusTasks: () => Promise.resolve() }); // A has no task at "other"
  const mine = await harness({ sizeBytes: blocks * 512, extra: { copyPeerByDesignator: peerOf(other) } });
  await mine.volume.write(0, Buffer.alloc(4096 * 512, 0x66));
  assert.equal((await prOut(other, A, 0, 0, 0n, 0xan)).status, 0);
  assert.equal((await prOut(other, OWNER, 0, 0, 0n, 0xbn)).status, 0);
  let release!: () => void;
  vol.hold = new Promise((r) => { release = r; });
  vol.holdWrites = true;
  const p = xcopyParams([naaDesignator(mine.volume), naaDesignator(other.volume)], { src: 0, dst: 1, n: 4096, srcLba: 0, dstLba: 0 });
  const copy = mine.run(xcopyCdb(p.length), { data: p });
  await new Promise((r) => setTimeout(r, 20)); // the first chunk (2048 blocks) is at the volume
  let preempted = false;
  const pa = prOut(other, OWNER, 5, 1, 0xbn, 0xan).then((r) => { preempted = true; return r; }); // PREEMPT AND ABORT A
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(preempted, false, 'PREEMPT AND ABORT completed while the copy wrote with the preempted nexus\'s rights');
  vol.hold = undefined;
  release();
  assert.equal((await pa).status, 0);
  assert.equal(senseOf(await copy), 'a/0d/02');
  assert.deepEqual(vol.writes, ['0:66'], 'the copy went on writing after PREEMPT AND ABORT');
});
