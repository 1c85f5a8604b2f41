/**
 * INQUIRY vital product data pages (SPC-4 §7.8, SBC-3 §6.6): 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2.
 */
import { createHash } from 'node:crypto';
import type { Volume } from '../volume/volume';
import { Designator, PROTOCOL_ID_ISCSI, Vpd } from './constants';
import type { LogicalUnit } from './lu';
import type { Nexus } from './port';
import { invalidCdb } from './sense';

/**
 * IEEE company identifier used in our NAA designators. A CID-form value (its second hex digit
 * is 0xA, the locally-administered pattern for Company IDs), so it cannot collide with an OUI.
 */
export const OFFSITE_COMPANY_ID = 0x5a0ff5;

/**
 * The NAA IEEE Registered Extended designator (NAA 6, SPC-4 §7.8.6.6.5), 16 bytes: NAA(4 bits),
 * company id (24 bits), then 100 bits derived from the volume uuid (SHA-256), so it is stable
 * across restarts and unique per volume.
 */
export function naaDesignator(volume: Volume): Buffer {
  const h = createHash('sha256').update('offsite-naa').update(volume.uuid).digest();
  const b = Buffer.alloc(16);
  b[0] = 0x60 | ((OFFSITE_COMPANY_ID >> 20) & 0x0f);
  b[1] = (OFFSITE_COMPANY_ID >> 12) & 0xff;
  b[2] = (OFFSITE_COMPANY_ID >> 4) & 0xff;
  b[3] = ((OFFSITE_COMPANY_ID & 0x0f) << 4) | (h[0] & 0x0f);
  h.copy(b, 4, 1, 13);
  return b;
}

/** Unit serial number: the volume uuid in hex (32 ASCII characters). */
export function unitSerial(volume: Volume): string {
  return volume.uuid.toString('hex');
}

/** The pages we answer, in ascending order (SPC-4 §7.8.14 requires ascending). */
export const SUPPORTED_VPD_PAGES: readonly number[] = [
  Vpd.SupportedPages,
  Vpd.UnitSerialNumber,
  Vpd.DeviceIdentification,
  Vpd.BlockLimits,
  Vpd.BlockDeviceCharacteristics,
  Vpd.LogicalBlockProvisioning,
];

function page(code: number, body: Buffer): Buffer {
  const b = Buffer.alloc(4 + body.length);
  b[0] = 0x00; // PQ 0, PDT direct access
  b[1] = code;
  b.writeUInt16BE(body.length, 2);
  body.copy(b, 4);
  return b;
}

function designator(codeSet: number, piv: boolean, assoc: number, type: number, value: Buffer): Buffer {
  const d = Buffer.alloc(4 + value.length);
  d[0] = (piv ? PROTOCOL_ID_ISCSI << 4 : 0) | codeSet;
  d[1] = (piv ? 0x80 : 0) | (assoc << 4) | type;
  d[3] = value.length;
  value.copy(d, 4);
  return d;
}

/** SCSI name string: UTF-8, NUL-terminated, padded to a multiple of 4 (SPC-4 §7.8.6.11). */
function scsiName(name: string): Buffer {
  const raw = Buffer.from(name, 'utf8');
  const b = Buffer.alloc((raw.length + 1 + 3) & ~3);
  raw.copy(b);
  return b;
}

export function deviceIdentification(lu: LogicalUnit, nexus: Nexus, targetName: string): Buffer {
  const rtpi = Buffer.alloc(4);
  rtpi.writeUInt16BE(nexus.relativeTargetPortId & 0xffff, 2);
  const tpg = Buffer.alloc(4);
  tpg.writeUInt16BE(nexus.targetPortGroup & 0xffff, 2);
  const tpgt = nexus.tpgt.toString(16).padStart(4, '0');
  return page(
    Vpd.DeviceIdentification,
    Buffer.concat([
      designator(Designator.CodeSetBinary, false, Designator.AssocLu, Designator.TypeNaa, naaDesignator(lu.volume)),
      designator(Designator.CodeSetBinary, true, Designator.AssocTargetPort, Designator.TypeRelativeTargetPort, rtpi),
      designator(Designator.CodeSetBinary, true, Designator.AssocTargetPort, Designator.TypeTargetPortGroup, tpg),
      designator(Designator.CodeSetUtf8, true, Designator.AssocTargetDevice, Designator.TypeScsiName, scsiName(targetName)),
      designator(Designator.CodeSetUtf8, true, Designator.AssocTargetPort, Designator.TypeScsiName, scsiName(`${targetName},t,0x${tpgt}`)),
    ]),
  );
}

function blockLimits(lu: LogicalUnit): Buffer {
  const l = lu.limits;
  const b = Buffer.alloc(0x3c);
  // offsets below are page offsets minus 4
  b[0] = 0x00; // WSNZ=0: WRITE SAME with 0 blocks writes to the end
  b[1] = Math.min(255, l.maxCompareAndWriteBlocks); // MAXIMUM COMPARE AND WRITE LENGTH
  b.writeUInt16BE(1, 2); // OPTIMAL TRANSFER LENGTH GRANULARITY
  b.writeUInt32BE(l.maxTransferBlocks, 4);
  b.writeUInt32BE(l.optimalTransferBlocks, 8);
  b.writeUInt32BE(l.maxTransferBlocks, 12); // MAXIMUM PREFETCH LENGTH
  if (lu.volume.thin) {
    b.writeUInt32BE(l.maxUnmapBlocks, 16);
    b.writeUInt32BE(l.maxUnmapDescriptors, 20);
    b.writeUInt32BE(1, 24); // OPTIMAL UNMAP GRANULARITY
  }
  b.writeUInt32BE(Math.floor(l.maxWriteSameBlocks / 0x1_0000_0000), 32);
  b.writeUInt32BE(l.maxWriteSameBlocks >>> 0, 36);
  return page(Vpd.BlockLimits, b);
}

function blockDeviceCharacteristics(): Buffer {
  const b = Buffer.alloc(0x3c);
  b.writeUInt16BE(0x0001, 0); // MEDIUM ROTATION RATE: non-rotating medium
  return page(Vpd.BlockDeviceCharacteristics, b);
}

function logicalBlockProvisioning(lu: LogicalUnit): Buffer {
  const b = Buffer.alloc(4);
  if (lu.volume.thin) {
    b[1] = 0x80 | 0x40 | 0x20 | 0x04; // LBPU LBPWS LBPWS10 LBPRZ
    b[2] = 0x02; // PROVISIONING TYPE: thin
  }
  return page(Vpd.LogicalBlockProvisioning, b);
}

/** One VPD page, or INVALID FIELD IN CDB (byte 2) for a page we do not have. */
export function vpdPage(lu: LogicalUnit, code: number, nexus: Nexus, targetName: string): Buffer {
  switch (code) {
    case Vpd.SupportedPages:
      return page(code, Buffer.from(SUPPORTED_VPD_PAGES));
    case Vpd.UnitSerialNumber:
      return page(code, Buffer.from(unitSerial(lu.volume), 'ascii'));
    case Vpd.DeviceIdentification:
      return deviceIdentification(lu, nexus, targetName);
    case Vpd.BlockLimits:
      return blockLimits(lu);
    case Vpd.BlockDeviceCharacteristics:
      return blockDeviceCharacteristics();
    case Vpd.LogicalBlockProvisioning:
      return logicalBlockProvisioning(lu);
    default:
      throw invalidCdb(2);
  }
}
