// The pure iSCSI PDU codec (RFC 7143 11.2): the 48-byte Basic Header Segment
// parsed into one flat record, the FrameSpec that lets the shared
// FrameDecoder cut a byte stream into PDUs, and the generic BHS writer every
// encoder uses. No sockets, no state beyond the connection's negotiated
// digests and segment limit, which the spec object carries.
//
// A PDU on the wire: BHS (48) | AHS (TotalAHSLength * 4) | HeaderDigest (4,
// if negotiated) | DataSegment (DataSegmentLength) | pad to 4 | DataDigest
// (4, if negotiated and DataSegmentLength > 0). The decoder's "header" is the
// BHS; its "payload" is everything after it, so one length limit, checked
// before any allocation, bounds every PDU.

import { ProtocolError } from '../../../shared/errors.js';
import type { FrameSpec } from '../../../shared/frame-decoder.js';
import { BHS_SIZE, DEFAULT_MAX_RECV_DATA_SEGMENT, DIGEST_SIZE, IMMEDIATE_BIT, MAX_AHS_BYTES, OPCODE_MASK, opcodeName } from './constants.js';
import { crc32c, readDigest } from './crc32c.js';

/**
 * A parsed BHS. Fields whose meaning depends on the opcode keep their byte
 * position in the name (w5 = bytes 20..23, ... w11 = bytes 44..47); the
 * handlers of each opcode name them (e.g. SCSI Command: w5 = Expected Data
 * Transfer Length, w6 = CmdSN, w7 = ExpStatSN, w8..w11 = CDB).
 */
export interface Bhs {
  opcode: number;
  immediate: boolean;
  /** Byte 1: F bit and opcode-specific flags. */
  flags: number;
  b2: number;
  b3: number;
  /** TotalAHSLength in bytes. */
  ahsLength: number;
  dataLength: number;
  /** Bytes 8..11 and 12..15: LUN, or ISID/TSIH in login PDUs. */
  w2: number;
  w3: number;
  /** Bytes 16..19: Initiator Task Tag. */
  itt: number;
  w5: number;
  w6: number;
  w7: number;
  w8: number;
  w9: number;
  w10: number;
  w11: number;
  /** CRC32C of the 48 BHS bytes when header digests are on (continued over the AHS later). */
  bhsCrc: number;
}

/** A PDU that cannot be accepted, with the header when it parsed (for a Reject). */
export class PduError extends ProtocolError {
  readonly bhs: Bhs | undefined;
  constructor(message: string, bhs?: Bhs, context: Record<string, unknown> = {}) {
    super(message, context);
    this.bhs = bhs;
  }
}

export function pad4(n: number): number {
  return (4 - (n & 3)) & 3;
}

/**
 * The PDU framing of one connection. Digests switch on after login and the
 * data segment limit grows to our declared MaxRecvDataSegmentLength; the
 * connection changes them between PDUs (the decoder reads them per PDU).
 */
export class PduSpec implements FrameSpec<Bhs> {
  readonly name = 'iSCSI PDU';
  readonly headerSize = BHS_SIZE;
  headerDigest = false;
  dataDigest = false;
  /** Largest DataSegmentLength accepted (ours: 8192 during login, RFC 7143 13.12). */
  maxDataSegment = DEFAULT_MAX_RECV_DATA_SEGMENT;

  get maxPayload(): number {
    return MAX_AHS_BYTES + DIGEST_SIZE + this.maxDataSegment + 3 + DIGEST_SIZE;
  }

  parseHeader(buf: Buffer, offset: number): Bhs {
    const b0 = buf[offset]!;
    const bhs: Bhs = {
      opcode: b0 & OPCODE_MASK,
      immediate: (b0 & IMMEDIATE_BIT) !== 0,
      flags: buf[offset + 1]!,
      b2: buf[offset + 2]!,
      b3: buf[offset + 3]!,
      ahsLength: buf[offset + 4]! * 4,
      dataLength: buf.readUIntBE(offset + 5, 3),
      w2: buf.readUInt32BE(offset + 8),
      w3: buf.readUInt32BE(offset + 12),
      itt: buf.readUInt32BE(offset + 16),
      w5: buf.readUInt32BE(offset + 20),
      w6: buf.readUInt32BE(offset + 24),
      w7: buf.readUInt32BE(offset + 28),
      w8: buf.readUInt32BE(offset + 32),
      w9: buf.readUInt32BE(offset + 36),
      w10: buf.readUInt32BE(offset + 40),
      w11: buf.readUInt32BE(offset + 44),
      bhsCrc: this.headerDigest ? crc32c(buf, 0, offset, offset + BHS_SIZE) : 0,
    };
    if (bhs.dataLength > this.maxDataSegment) {
      throw new PduError(
        `${opcodeName(bhs.opcode)} carries a data segment of ${bhs.dataLength} bytes, above our MaxRecvDataSegmentLength of ${this.maxDataSegment}`,
        bhs, { dataLength: bhs.dataLength, limit: this.maxDataSegment });
    }
    return bhs;
  }

  payloadLength(h: Bhs): number {
    let n = h.ahsLength + h.dataLength + pad4(h.dataLength);
    if (this.headerDigest) n += DIGEST_SIZE;
    if (this.dataDigest && h.dataLength > 0) n += DIGEST_SIZE;
    return n;
  }

  /** Where the data segment starts inside the payload. */
  dataOffset(h: Bhs): number {
    return h.ahsLength + (this.headerDigest ? DIGEST_SIZE : 0);
  }
}

/** The parts of a PDU's payload, as views; digests already checked. */
export interface PduParts {
  ahs: Buffer | undefined;
  data: Buffer | undefined;
}

export type DigestCheck = 'ok' | 'header' | 'data';

/** Checks the digests of a decoded PDU (a corrupt header means the framing itself is lost). */
export function checkDigests(spec: PduSpec, h: Bhs, payload: Buffer | undefined): DigestCheck {
  if (spec.headerDigest) {
    if (payload === undefined) return 'header';
    const crc = crc32c(payload, h.bhsCrc, 0, h.ahsLength);
    if (crc !== readDigest(payload, h.ahsLength)) return 'header';
  }
  if (spec.dataDigest && h.dataLength > 0) {
    const start = spec.dataOffset(h);
    const end = start + h.dataLength + pad4(h.dataLength);
    if (crc32c(payload!, 0, start, end) !== readDigest(payload!, end)) return 'data';
  }
  return 'ok';
}

/** Splits a decoded payload into AHS and data segment views (no copies). */
export function splitPayload(spec: PduSpec, h: Bhs, payload: Buffer | undefined): PduParts {
  if (payload === undefined) return { ahs: undefined, data: undefined };
  const start = spec.dataOffset(h);
  return {
    ahs: h.ahsLength > 0 ? payload.subarray(0, h.ahsLength) : undefined,
    data: h.dataLength > 0 ? payload.subarray(start, start + h.dataLength) : undefined,
  };
}

// --- Writing a BHS ------------------------------------------------------------

/** The fields of a BHS to write; unset words are zero. */
export interface BhsFields {
  opcode: number;
  immediate?: boolean;
  flags?: number;
  b2?: number;
  b3?: number;
  ahsLength?: number;
  dataLength?: number;
  w2?: number;
  w3?: number;
  itt?: number;
  w5?: number;
  w6?: number;
  w7?: number;
  w8?: number;
  w9?: number;
  w10?: number;
  w11?: number;
}

/** Writes 48 bytes at buf[offset]. */
export function writeBhs(buf: Buffer, offset: number, f: BhsFields): void {
  buf[offset] = (f.opcode & OPCODE_MASK) | (f.immediate === true ? IMMEDIATE_BIT : 0);
  buf[offset + 1] = f.flags ?? 0;
  buf[offset + 2] = f.b2 ?? 0;
  buf[offset + 3] = f.b3 ?? 0;
  buf[offset + 4] = (f.ahsLength ?? 0) >>> 2;
  buf.writeUIntBE(f.dataLength ?? 0, offset + 5, 3);
  buf.writeUInt32BE((f.w2 ?? 0) >>> 0, offset + 8);
  buf.writeUInt32BE((f.w3 ?? 0) >>> 0, offset + 12);
  buf.writeUInt32BE((f.itt ?? 0) >>> 0, offset + 16);
  buf.writeUInt32BE((f.w5 ?? 0) >>> 0, offset + 20);
  buf.writeUInt32BE((f.w6 ?? 0) >>> 0, offset + 24);
  buf.writeUInt32BE((f.w7 ?? 0) >>> 0, offset + 28);
  buf.writeUInt32BE((f.w8 ?? 0) >>> 0, offset + 32);
  buf.writeUInt32BE((f.w9 ?? 0) >>> 0, offset + 36);
  buf.writeUInt32BE((f.w10 ?? 0) >>> 0, offset + 40);
  buf.writeUInt32BE((f.w11 ?? 0) >>> 0, offset + 44);
}

/** The 48 bytes of a parsed header, re-encoded (what a Reject carries back). */
export function encodeBhs(h: Bhs): Buffer {
  const buf = Buffer.alloc(BHS_SIZE);
  writeBhs(buf, 0, h);
  return buf;
}

// --- LUN field (SAM-5 4.7: single-level LUNs) -------------------------------------

/**
 * The LUN in bytes 8..15: peripheral device addressing (method 00b) for 0..255,
 * flat space addressing (01b) for 256..16383, as Linux and libiscsi encode them.
 * Returns undefined for other addressing methods or multi-level LUNs.
 */
export function decodeLun(w2: number, w3: number): number | undefined {
  if ((w2 & 0xffff) !== 0 || w3 !== 0) return undefined;
  const hi = w2 >>> 24;
  const lo = (w2 >>> 16) & 0xff;
  const method = hi >>> 6;
  if (method === 0) return (hi & 0x3f) === 0 ? lo : undefined;
  if (method === 1) return ((hi & 0x3f) << 8) | lo;
  return undefined;
}

/** Bytes 8..11 for `lun` (bytes 12..15 are zero). */
export function encodeLunHigh(lun: number): number {
  if (lun < 256) return (lun << 16) >>> 0;
  return (((0x40 | (lun >>> 8)) << 24) | ((lun & 0xff) << 16)) >>> 0;
}

// --- Login PDU fields ------------------------------------------------------------------

/** ISID (6 bytes) as 12 hex digits, from bytes 8..13. */
export function isidText(h: Bhs): string {
  return h.w2.toString(16).padStart(8, '0') + (h.w3 >>> 16).toString(16).padStart(4, '0');
}

export function tsihOf(h: Bhs): number {
  return h.w3 & 0xffff;
}

// --- Whole PDUs (login, text, tests: not the data path) ---------------------------

export interface PduDigests {
  header: boolean;
  data: boolean;
}

/**
 * One whole PDU in a fresh buffer: BHS, AHS, digests, data and padding.
 * The data path does not use this (see pdu-writer.ts); login, text and the
 * tests' initiator do.
 */
export function encodePdu(f: BhsFields, data?: Buffer, ahs?: Buffer, digests: PduDigests = { header: false, data: false }): Buffer {
  const ahsLength = ahs?.length ?? 0;
  if ((ahsLength & 3) !== 0 || ahsLength > MAX_AHS_BYTES) throw new RangeError(`AHS of ${ahsLength} bytes`);
  const dataLength = data?.length ?? 0;
  const hd = digests.header ? DIGEST_SIZE : 0;
  const dd = digests.data && dataLength > 0 ? DIGEST_SIZE : 0;
  const total = BHS_SIZE + ahsLength + hd + dataLength + pad4(dataLength) + dd;
  const buf = Buffer.alloc(total);
  writeBhs(buf, 0, { ...f, ahsLength, dataLength });
  let at = BHS_SIZE;
  if (ahs !== undefined) at += ahs.copy(buf, at);
  if (hd > 0) {
    buf.writeUInt32LE(crc32c(buf, 0, 0, at), at);
    at += hd;
  }
  const dataStart = at;
  if (data !== undefined) at += data.copy(buf, at);
  at += pad4(dataLength);
  if (dd > 0) buf.writeUInt32LE(crc32c(buf, 0, dataStart, at), at);
  return buf;
}
