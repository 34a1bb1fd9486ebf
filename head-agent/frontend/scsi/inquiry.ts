// INQUIRY data (SPC-4 6.6, 7.8; SBC-3 6.5): the standard page and the vital
// product data pages. Pure builders: each returns the whole page, the caller
// truncates to the allocation length.

import { createHash } from 'node:crypto';
import { invalidFieldInCdb } from './sense.js';
import { Limits, PHYSICAL_BLOCK_BYTES, type UnitIdentity } from './unit-context.js';

export const VENDOR = 'VASTSKY';
export const PRODUCT = 'VSKY-VOLUME';
export const REVISION = '0001';

export const VpdPage = {
  SUPPORTED_PAGES: 0x00,
  UNIT_SERIAL_NUMBER: 0x80,
  DEVICE_IDENTIFICATION: 0x83,
  BLOCK_LIMITS: 0xb0,
  BLOCK_DEVICE_CHARACTERISTICS: 0xb1,
  LOGICAL_BLOCK_PROVISIONING: 0xb2,
} as const;

const SUPPORTED_VPD = [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2];

/** Version descriptors (SPC-4 table 151): SAM-5, iSCSI, SPC-4, SBC-3. */
const VERSION_DESCRIPTORS = [0x00a0, 0x0960, 0x0460, 0x04c0];

/**
 * A CID-format IEEE company id (X bit set: locally administered). VastSky
 * owns no OUI, and a CID can never collide with an assigned OUI.
 */
const COMPANY_ID = 0x5a5653;

function ascii(s: string, len: number): Buffer {
  const b = Buffer.alloc(len, 0x20);
  b.write(s.replace(/[^\x20-\x7e]/g, '?').slice(0, len), 'latin1');
  return b;
}

/** Standard INQUIRY data, 96 bytes. */
export function standardInquiry(): Buffer {
  const b = Buffer.alloc(96);
  b[0] = 0x00; // peripheral qualifier 0 (connected), device type 0 (direct access block)
  b[1] = 0x00; // not removable
  b[2] = 0x06; // VERSION: SPC-4
  b[3] = 0x10 | 0x02; // HISUP, RESPONSE DATA FORMAT 2
  b[4] = b.length - 5; // ADDITIONAL LENGTH
  b[5] = 0x00; // no SCCS, ACC, TPGS (no ALUA), 3PC, PROTECT
  b[6] = 0x00;
  b[7] = 0x02; // CMDQUE: full task management model
  ascii(VENDOR, 8).copy(b, 8);
  ascii(PRODUCT, 16).copy(b, 16);
  ascii(REVISION, 4).copy(b, 32);
  VERSION_DESCRIPTORS.forEach((v, i) => b.writeUInt16BE(v, 58 + 2 * i));
  return b;
}

function page(code: number, body: Buffer): Buffer {
  const b = Buffer.alloc(4 + body.length);
  b[1] = code;
  b.writeUInt16BE(body.length, 2);
  body.copy(b, 4);
  return b;
}

/** Stable identifiers derived from the volume: the same volume id and name give the same ones on every head. */
export function unitIdentity(volumeId: number, volumeName: string, relativeTargetPort: number): UnitIdentity {
  const serial = `VSKY${volumeId.toString(16).padStart(12, '0')}`;
  // NAA 6 (IEEE Registered Extended, SPC-4 7.8.6.6.5): NAA(4) COMPANY ID(24)
  // VENDOR SPECIFIC IDENTIFIER(36) EXTENSION(64). The 36 bits hash the volume
  // name (so equal ids in two clusters differ); the extension is the id.
  const h = createHash('sha256').update(volumeName).digest();
  const naa = Buffer.alloc(16);
  naa[0] = 0x60 | (COMPANY_ID >> 20);
  naa[1] = (COMPANY_ID >> 12) & 0xff;
  naa[2] = (COMPANY_ID >> 4) & 0xff;
  naa[3] = ((COMPANY_ID & 0x0f) << 4) | (h[0]! & 0x0f);
  h.copy(naa, 4, 1, 5);
  naa.writeBigUInt64BE(BigInt.asUintN(64, BigInt(volumeId)), 8);
  return { volumeId, volumeName, serial, naa, relativeTargetPort };
}

function designator(codeSet: number, assocAndType: number, value: Buffer, protocol = 0): Buffer {
  const d = Buffer.alloc(4 + value.length);
  d[0] = (protocol << 4) | codeSet;
  d[1] = assocAndType;
  d[3] = value.length;
  value.copy(d, 4);
  return d;
}

export interface Geometry {
  blockSize: number;
  lbppbe: number;
}

/** One VPD page, or INVALID FIELD IN CDB (PAGE CODE) for a page we do not have. */
export function vpdPage(code: number, id: UnitIdentity, geo: Geometry): Buffer {
  switch (code) {
    case VpdPage.SUPPORTED_PAGES:
      return page(code, Buffer.from(SUPPORTED_VPD));
    case VpdPage.UNIT_SERIAL_NUMBER:
      return page(code, Buffer.from(id.serial, 'latin1'));
    case VpdPage.DEVICE_IDENTIFICATION:
      return page(code, deviceIdentification(id));
    case VpdPage.BLOCK_LIMITS:
      return page(code, blockLimits(geo));
    case VpdPage.BLOCK_DEVICE_CHARACTERISTICS: {
      const body = Buffer.alloc(0x3c);
      body.writeUInt16BE(0x0001, 0); // MEDIUM ROTATION RATE: non-rotating medium
      return page(code, body);
    }
    case VpdPage.LOGICAL_BLOCK_PROVISIONING: {
      const body = Buffer.alloc(4);
      // LBPU (UNMAP), LBPWS (WRITE SAME(16) UNMAP), LBPWS10, LBPRZ: unmapped
      // blocks read as zeros (BlockDevice.discard guarantees it). No ANC_SUP, no DP.
      body[1] = 0x80 | 0x40 | 0x20 | 0x04;
      body[2] = 0x02; // PROVISIONING TYPE: thin
      return page(code, body);
    }
    default:
      throw invalidFieldInCdb(2);
  }
}

/** VPD 83h: NAA 6 and T10 vendor id for the unit, the relative target port for the port. */
function deviceIdentification(id: UnitIdentity): Buffer {
  const t10 = Buffer.concat([ascii(VENDOR, 8), Buffer.from(id.serial, 'latin1')]);
  const rtp = Buffer.alloc(4);
  rtp.writeUInt16BE(id.relativeTargetPort & 0xffff, 2);
  return Buffer.concat([
    designator(0x1, 0x03, id.naa), // binary, association LU, type NAA
    designator(0x2, 0x01, t10), // ASCII, association LU, type T10 vendor id
    // PIV=1, association target port, type relative target port; protocol iSCSI (5)
    designator(0x1, 0x80 | 0x10 | 0x04, rtp, 0x5),
  ]);
}

/** VPD B0h (SBC-3 6.5.3), page length 3Ch. */
function blockLimits(geo: Geometry): Buffer {
  const b = Buffer.alloc(0x3c);
  const bs = geo.blockSize;
  b[0] = 0x01; // WSNZ: WRITE SAME with NUMBER OF LOGICAL BLOCKS 0 is refused
  b[1] = Limits.maxCompareAndWriteBlocks;
  b.writeUInt16BE(PHYSICAL_BLOCK_BYTES / bs, 2); // OPTIMAL TRANSFER LENGTH GRANULARITY
  b.writeUInt32BE(Limits.maxTransferBytes / bs, 4);
  b.writeUInt32BE(Limits.optimalTransferBytes / bs, 8);
  b.writeUInt32BE(0, 12); // MAXIMUM PREFETCH LENGTH: PRE-FETCH not supported
  b.writeUInt32BE(Limits.maxUnmapBytes / bs, 16);
  b.writeUInt32BE(Limits.maxUnmapDescriptors, 20);
  b.writeUInt32BE(PHYSICAL_BLOCK_BYTES / bs, 24); // OPTIMAL UNMAP GRANULARITY
  b.writeUInt32BE(0x8000_0000, 28); // UGAVALID, UNMAP GRANULARITY ALIGNMENT 0
  b.writeBigUInt64BE(BigInt(Limits.maxWriteSameBytes / bs), 32);
  return b;
}
