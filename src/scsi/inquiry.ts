/** INQUIRY (SPC-4 §6.6): standard data and the dispatch to VPD pages. */
import { PDT_DIRECT_ACCESS, PQ_NOT_CONNECTED_BYTE0, Status, VERSION_SPC4, VersionDescriptor } from './constants';
import type { LogicalUnit, ProductInfo } from './lu';
import type { Nexus, ScsiResult } from './port';
import { invalidCdb } from './sense';
import { vpdPage } from './vpd';

/** Standard INQUIRY data length: 96 bytes (up to the last version descriptor and reserved bytes). */
const STANDARD_LENGTH = 96;

/** Standard INQUIRY data (SPC-4 §6.6.2). `lu` undefined: a LUN that is not there (PQ 3, PDT 0x1F). */
export function standardInquiry(product: ProductInfo, lu: LogicalUnit | undefined): Buffer {
  const b = Buffer.alloc(STANDARD_LENGTH);
  b[0] = lu ? PDT_DIRECT_ACCESS : PQ_NOT_CONNECTED_BYTE0;
  b[1] = 0x00; // RMB=0
  b[2] = VERSION_SPC4;
  b[3] = 0x10 | 0x02; // HISUP, RESPONSE DATA FORMAT 2
  b[4] = STANDARD_LENGTH - 5;
  b[5] = 0x10 | 0x08; // TPGS=01b (implicit ALUA), 3PC (EXTENDED COPY)
  b[6] = 0x00;
  b[7] = 0x02; // CMDQUE
  b.write(product.vendorId, 8, 8, 'ascii');
  b.write(product.productId, 16, 16, 'ascii');
  b.write(product.revision, 32, 4, 'ascii');
  // VERSION DESCRIPTORS at 58..73
  b.writeUInt16BE(VersionDescriptor.Sam5, 58);
  b.writeUInt16BE(VersionDescriptor.Iscsi, 60);
  b.writeUInt16BE(VersionDescriptor.Spc4, 62);
  b.writeUInt16BE(VersionDescriptor.Sbc3, 64);
  return b;
}

/** INQUIRY on an existing LU. */
export function inquiry(lu: LogicalUnit, cdb: Buffer, nexus: Nexus, targetName: string): ScsiResult {
  const evpd = (cdb[1] & 0x01) !== 0;
  if (cdb[1] & 0x02) throw invalidCdb(1, 1); // CMDDT (obsolete)
  const pageCode = cdb[2];
  const alloc = cdb.readUInt16BE(3);
  let data: Buffer;
  if (!evpd) {
    if (pageCode !== 0) throw invalidCdb(2);
    data = standardInquiry(lu.product, lu);
  } else {
    data = vpdPage(lu, pageCode, nexus, targetName);
  }
  return { status: Status.Good, dataIn: alloc < data.length ? data.subarray(0, alloc) : data };
}
