/** Helpers for scsi/ layer tests: nexuses, request builders, a target over MemoryVolumes. */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { createScsiTarget, type ScsiTargetHandle, type ScsiTargetOptions } from '../../src/scsi';
import type { Nexus, ScsiRequest, ScsiResult } from '../../src/scsi/port';
import { parseSense } from '../../src/scsi/sense';
import { MemoryVolume } from './memory-volume';

export const TARGET_NAME = 'iqn.2026-11.dev.offsite:test';

export function makeNexus(initiator = 'iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test', isidByte = 1, rtpi = 1): Nexus {
  const isid = Buffer.from([0x80, 0, 0, isidByte, 0, 0]);
  return {
    initiatorName: initiator,
    isid,
    targetName: TARGET_NAME,
    tpgt: 1,
    initiatorPortName: `${initiator},i,0x${isid.toString('hex')}`,
    relativeTargetPortId: rtpi,
    targetPortGroup: 1,
    sessionId: `${initiator}-${isidByte}`,
  };
}

export function tempDir(): string {
  return mkdtempSync(path.join(tmpdir(), 'offsite-scsi-'));
}

export interface Harness {
  target: ScsiTargetHandle;
  volume: MemoryVolume;
  stateDir: string;
  /** Run a CDB (hex string or bytes) on LUN 0 from `nexus` (default nexus A). */
  run(cdb: Buffer | number[], opts?: { data?: Buffer; nexus?: Nexus; lun?: number; expected?: number }): Promise<ScsiResult>;
}

export const A = makeNexus('iqn.1994-05.com.example:host-a', 1);
export const B = makeNexus('iqn.1994-05.com.example:host-b', 2);

export async function harness(opts: { sizeBytes?: number; readOnly?: boolean; stateDir?: string; volume?: MemoryVolume; extra?: Partial<ScsiTargetOptions> } = {}): Promise<Harness> {
  const volume = opts.volume ?? new MemoryVolume('vol0', opts.sizeBytes ?? 8 * 1024 * 1024, opts.readOnly ?? false);
  const stateDir = opts.stateDir ?? tempDir();
  const target = await createScsiTarget({ targetName: TARGET_NAME, luns: [{ lun: 0, volume }], stateDir, ...opts.extra });
  target.nexusStarted(A, false);
  target.nexusStarted(B, false);
  return {
    target,
    volume,
    stateDir,
    run: (cdb, o = {}) => {
      const c = Buffer.isBuffer(cdb) ? cdb : Buffer.from(cdb);
      const full = c.length < 16 ? Buffer.concat([c, Buffer.alloc(16 - c.length)]) : c;
      const req: ScsiRequest = {
        nexus: o.nexus ?? A,
        lun: o.lun ?? 0,
        cdb: full,
        taskTag: 1,
        taskAttribute: 1,
        expectedDataLength: o.expected ?? o.data?.length ?? 65536,
        readFlag: !o.data,
        writeFlag: !!o.data,
        dataOut: o.data,
      };
      return target.execute(req);
    },
  };
}

/** "key/asc/ascq" of a result's sense, e.g. "5/24/00", or "" for no sense. */
export function senseOf(r: ScsiResult): string {
  if (!r.sense) return '';
  const s = parseSense(r.sense);
  return `${s.key.toString(16)}/${(s.ascq >> 8).toString(16).padStart(2, '0')}/${(s.ascq & 0xff).toString(16).padStart(2, '0')}`;
}

/** 10-byte CDB with a 32-bit LBA and 16-bit length (READ/WRITE/VERIFY 10 family). */
export function cdb10(op: number, lba: number, n: number, b1 = 0): Buffer {
  const c = Buffer.alloc(10);
  c[0] = op;
  c[1] = b1;
  c.writeUInt32BE(lba >>> 0, 2);
  c.writeUInt16BE(n, 7);
  return c;
}

/** 16-byte CDB with a 64-bit LBA and 32-bit length (READ/WRITE 16 family). */
export function cdb16(op: number, lba: bigint | number, n: number, b1 = 0): Buffer {
  const c = Buffer.alloc(16);
  c[0] = op;
  c[1] = b1;
  c.writeBigUInt64BE(BigInt(lba), 2);
  c.writeUInt32BE(n >>> 0, 10);
  return c;
}
