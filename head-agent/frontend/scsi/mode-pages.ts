// Mode parameters (SPC-4 7.5, SBC-3 6.4): the caching page (08h) and the
// control page (0Ah), their current / changeable / default values, the
// MODE SENSE(6)/(10) data, and MODE SELECT parameter-list parsing. Saved
// values are not supported (PC=3 and SP=1 are refused).

import {
  Asc, SenseError, SenseKey, invalidFieldInCdb, invalidFieldInParameters, parameterListLengthError,
} from './sense.js';
import type { ModeSenseRequest } from './cdb.js';

export const ModePage = { CACHING: 0x08, CONTROL: 0x0a, ALL: 0x3f } as const;

/** The mode parameters an initiator may change. */
export interface ModeState {
  /** Caching page WCE: writes may complete before they are durable (a FLUSH makes them so). Clear: every write is FUA. */
  wce: boolean;
  /** Control page SWP: software write protect; writes fail with DATA PROTECT. */
  swp: boolean;
  /** The medium is write-protected (a snapshot): WP in MODE SENSE, writes fail with DATA PROTECT whatever SWP says. */
  readOnly: boolean;
}

export function defaultModeState(readOnly = false): ModeState {
  return { wce: true, swp: false, readOnly };
}

const PC_CURRENT = 0;
const PC_CHANGEABLE = 1;
const PC_DEFAULT = 2;
const PC_SAVED = 3;

/** Caching page, 20 bytes (SBC-3 6.4.5). */
function cachingPage(pc: number, state: ModeState): Buffer {
  const b = Buffer.alloc(20);
  b[0] = ModePage.CACHING;
  b[1] = 18;
  if (pc === PC_CHANGEABLE) {
    b[2] = 0x04; // WCE
  } else {
    const wce = pc === PC_DEFAULT ? true : state.wce;
    b[2] = wce ? 0x04 : 0x00; // RCD=0: reads may be served from caches
  }
  return b;
}

/** Control page, 12 bytes (SPC-4 7.5.7). */
function controlPage(pc: number, state: ModeState): Buffer {
  const b = Buffer.alloc(12);
  b[0] = ModePage.CONTROL;
  b[1] = 10;
  if (pc === PC_CHANGEABLE) {
    b[4] = 0x08; // SWP
    return b;
  }
  // TST 000b (one task set), D_SENSE 0 (fixed format sense only), GLTSD 0.
  b[2] = 0x00;
  // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering; QERR 00b.
  b[3] = 0x10;
  b[4] = (pc === PC_DEFAULT ? false : state.swp) ? 0x08 : 0x00;
  b[5] = 0x00; // ATO 0, TAS 0, AUTOLOAD 0
  b.writeUInt16BE(0xffff, 8); // BUSY TIMEOUT PERIOD: unlimited
  return b;
}

function pagesFor(req: ModeSenseRequest, state: ModeState): Buffer[] {
  // Subpage 00h is the page itself; FFh asks for all subpages (we have none beyond 00h).
  if (req.subpage !== 0x00 && req.subpage !== 0xff) throw invalidFieldInCdb(3);
  switch (req.page) {
    case ModePage.CACHING:
      return [cachingPage(req.pc, state)];
    case ModePage.CONTROL:
      return [controlPage(req.pc, state)];
    case ModePage.ALL:
      return [cachingPage(req.pc, state), controlPage(req.pc, state)];
    default:
      throw invalidFieldInCdb(2, 5);
  }
}

/**
 * MODE SENSE(6)/(10) data: header, one block descriptor unless DBD (long
 * LBA form when LLBAA asks for it), then the pages.
 */
export function modeSense(req: ModeSenseRequest, state: ModeState, numBlocks: number, blockSize: number): Buffer {
  if (req.pc === PC_SAVED) {
    throw new SenseError({ key: SenseKey.ILLEGAL_REQUEST, code: Asc.SAVING_PARAMETERS_NOT_SUPPORTED });
  }
  const pages = pagesFor(req, state);
  let desc = Buffer.alloc(0);
  if (!req.dbd) {
    if (req.llbaa) {
      desc = Buffer.alloc(16);
      desc.writeBigUInt64BE(BigInt(numBlocks), 0);
      desc.writeUInt32BE(blockSize, 12);
    } else {
      desc = Buffer.alloc(8);
      desc.writeUInt32BE(Math.min(numBlocks, 0xffffffff), 0);
      desc.writeUIntBE(blockSize, 5, 3);
    }
  }
  // DEVICE-SPECIFIC PARAMETER (SBC-3 6.4.1): WP, DPOFUA (DPO and FUA are honoured).
  const dsp = (state.swp || state.readOnly ? 0x80 : 0) | 0x10;
  const headerLen = req.ten ? 8 : 4;
  const body = Buffer.concat([desc, ...pages]);
  const b = Buffer.alloc(headerLen + body.length);
  if (req.ten) {
    b.writeUInt16BE(b.length - 2, 0);
    b[3] = dsp;
    b[4] = req.llbaa && desc.length === 16 ? 0x01 : 0x00; // LONGLBA
    b.writeUInt16BE(desc.length, 6);
  } else {
    b[0] = b.length - 1;
    b[2] = dsp;
    b[3] = desc.length;
  }
  body.copy(b, headerLen);
  return b;
}

/**
 * Applies a MODE SELECT parameter list to `state` (SPC-4 6.11/6.12): a
 * block descriptor may restate our block size; each page must have its
 * exact length and may change only changeable bits. Nothing is applied
 * unless the whole list is valid. Returns true when a parameter changed.
 */
export function modeSelect(ten: boolean, list: Buffer, state: ModeState, blockSize: number): boolean {
  const headerLen = ten ? 8 : 4;
  if (list.length < headerLen) throw parameterListLengthError();
  const descLen = ten ? list.readUInt16BE(6) : list[3]!;
  const longLba = ten && (list[4]! & 0x01) !== 0;
  let pos = headerLen;
  if (pos + descLen > list.length) throw parameterListLengthError();
  const descSize = longLba ? 16 : 8;
  if (descLen % descSize !== 0) throw invalidFieldInParameters(ten ? 6 : 3);
  for (let d = pos; d < pos + descLen; d += descSize) {
    const len = longLba ? list.readUInt32BE(d + 12) : list.readUIntBE(d + 5, 3);
    if (len !== blockSize) throw invalidFieldInParameters(longLba ? d + 12 : d + 5);
  }
  pos += descLen;

  const next: ModeState = { ...state };
  while (pos < list.length) {
    if (pos + 2 > list.length) throw parameterListLengthError();
    const code = list[pos]! & 0x3f;
    if ((list[pos]! & 0x80) !== 0) throw invalidFieldInParameters(pos, 7); // PS is reserved in MODE SELECT
    if ((list[pos]! & 0x40) !== 0) throw invalidFieldInParameters(pos, 6); // no subpages
    const len = list[pos + 1]! + 2;
    if (pos + len > list.length) throw parameterListLengthError();
    const got = list.subarray(pos, pos + len);
    let current: Buffer;
    let changeable: Buffer;
    if (code === ModePage.CACHING) {
      current = cachingPage(PC_CURRENT, state);
      changeable = cachingPage(PC_CHANGEABLE, state);
    } else if (code === ModePage.CONTROL) {
      current = controlPage(PC_CURRENT, state);
      changeable = controlPage(PC_CHANGEABLE, state);
    } else {
      throw invalidFieldInParameters(pos);
    }
    if (len !== current.length) throw invalidFieldInParameters(pos + 1);
    for (let i = 2; i < len; i++) {
      if (((got[i]! ^ current[i]!) & ~changeable[i]!) !== 0) throw invalidFieldInParameters(pos + i);
    }
    if (code === ModePage.CACHING) next.wce = (got[2]! & 0x04) !== 0;
    else next.swp = (got[4]! & 0x08) !== 0;
    pos += len;
  }
  const changed = next.wce !== state.wce || next.swp !== state.swp;
  state.wce = next.wce;
  state.swp = next.swp;
  return changed;
}
