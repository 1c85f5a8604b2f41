/**
 * PREEMPT AND ABORT over iSCSI (SPC-4 §5.12.11.2.5): the server aborts the preempted sessions'
 * tasks for the LU - no status for them - and the PERSISTENT RESERVE OUT completes only once
 * those already at the volume have settled, so a fenced-off node's write in flight never lands
 * after, nor is acknowledged.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { test } from 'node:test';
import pino from 'pino';
import { IscsiServer } from '../../src/iscsi/server';
import type { TargetDirectory, TargetEntry } from '../../src/iscsi/targets';
import { parseSense } from '../../src/scsi/sense';
import { MemoryVolume } from '../helpers/memory-volume';
import { RawInitiator, type ScsiOutcome } from '../helpers/raw-initiator';
import { cdb10, harness } from '../helpers/scsi-harness';

const TARGET = 'iqn.2026-11.dev.offsite:fence';

/** A volume whose writes wait while `hold` is set. */
class SlowVolume extends MemoryVolume {
  hold?: Promise<void>;
  override async write(o: number, d: Buffer, opts?: { fua?: boolean }): Promise<void> {
    if (this.hold) await this.hold;
    return super.write(o, d, opts);
  }
}

function prOut(sa: number, type: number, rk: bigint, sark: bigint): [Buffer, { write: Buffer }] {
  const cdb = Buffer.from([0x5f, sa, type & 0x0f, 0, 0, 0, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0]);
  const p = Buffer.alloc(24);
  p.writeBigUInt64BE(rk, 0);
  p.writeBigUInt64BE(sark, 8);
  return [cdb, { write: p }];
}

const pad16 = (c: Buffer) => Buffer.concat([c, Buffer.alloc(16 - c.length)]);
const within = <T>(p: Promise<T>, ms: number) => Promise.race([p, new Promise<'none'>((r) => setTimeout(() => r('none'), ms).unref())]);

test('PREEMPT AND ABORT: the preempted session\'s WRITE in flight is aborted (no status) and settles before GOOD', async (t) => {
  const vol = new SlowVolume('slow', 1024 * 512);
  const logger = pino({ level: 'silent' });
  const h = await harness({ volume: vol, extra: { logger } });
  const entry: TargetEntry = { name: TARGET, auth: {}, scsi: h.target };
  const directory: TargetDirectory = { targets: () => [entry], lookup: (n) => (n === TARGET ? entry : undefined) };
  const server = new IscsiServer({ directory, logger, nopIntervalMs: 0 });
  const { port } = await server.listen('127.0.0.1', 0);
  const a = await RawInitiator.session(port, { initiatorName: 'iqn.2026-11.test:a', targetName: TARGET });
  const b = await RawInitiator.session(port, { initiatorName: 'iqn.2026-11.test:b', targetName: TARGET });
  t.after(async () => {
    a.destroy();
    b.destroy();
    await server.close(100);
    await h.target.close();
    rmSync(h.stateDir, { recursive: true, force: true });
  });
  assert.equal((await a.scsi(...prOut(0, 0, 0n, 0xan))).status, 0); // REGISTER
  assert.equal((await b.scsi(...prOut(0, 0, 0n, 0xbn))).status, 0);
  assert.equal((await b.scsi(...prOut(1, 1, 0xbn, 0n))).status, 0); // B: WRITE EXCLUSIVE

  let release!: () => void;
  vol.hold = new Promise((r) => { release = r; });
  let writeAnswered = false;
  const bw = b.scsi(pad16(cdb10(0x2a, 7, 1)), { write: Buffer.alloc(512, 0xbb) }).then((o) => { writeAnswered = true; return o; });
  await new Promise((r) => setTimeout(r, 50)); // B's WRITE is at the volume
  let paDone = false;
  const pa = a.scsi(...prOut(5, 1, 0xan, 0xbn)).then((o) => { paDone = true; return o; }); // PREEMPT AND ABORT B
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(paDone, false, 'PREEMPT AND ABORT completed while the preempted session\'s WRITE was still in flight');
  vol.hold = undefined;
  release();
  assert.equal((await pa).status, 0);
  const late = await within(bw, 300);
  assert.equal(late, 'none', `the preempted session's WRITE was answered (status ${(late as ScsiOutcome).status}) after PREEMPT AND ABORT`);
  assert.equal(writeAnswered, false);
  // The preempted session goes on: its next command learns of the preemption, then conflicts.
  const tur = await b.scsi(Buffer.alloc(16));
  assert.equal(tur.status, 2);
  assert.equal(parseSense(tur.sense!).ascq, 0x2a05); // REGISTRATIONS PREEMPTED
  assert.equal((await b.scsi(pad16(cdb10(0x2a, 8, 1)), { write: Buffer.alloc(512, 0xbb) })).status, 0x18);
  assert.ok((await vol.read(8 * 512, 512)).equals(Buffer.alloc(512)));
  assert.equal((await a.scsi(pad16(cdb10(0x2a, 8, 1)), { write: Buffer.alloc(512, 0xaa) })).status, 0);
  assert.equal(server.stats().events.preempt_aborts, 1);
});
