// Writes target PDUs to one connection's socket. Headers (and their digests)
// are written in place into slabs, never allocated per PDU; a data segment
// follows its header as a view of the caller's buffer, with the zero padding
// and data digest after it, all between cork() and uncork() so the kernel
// gets one writev. Read data goes out as Data-In PDUs cut to the initiator's
// MaxRecvDataSegmentLength and grouped into sequences of at most
// MaxBurstLength, with the status in the last one when it can ride there
// (RFC 7143 11.7.4: GOOD with no sense), else in a SCSI Response.
//
// Every PDU written in one tick leaves in one batch: the socket is corked at
// the first write and uncorked on process.nextTick, so the status PDUs of
// many commands finishing together cost one writev, not one syscall each.
//
// The writer owns the connection's StatSN: every PDU that carries status
// takes the next one; R2T, Data-In without status and our own NOP-In pings
// only show it.

import type { Socket } from 'node:net';
import { HeaderSlab } from '../header-slab.js';
import { ioBuffers } from '../io-buffers.js';
import { ScsiStatus } from '../scsi/types.js';
import {
  BHS_SIZE, DATA_IN_STATUS_BIT, DIGEST_SIZE, FINAL_BIT, RESERVED_TAG, RESPONSE_COMPLETED,
} from './constants.js';
import { crc32c, writeDigest } from './crc32c.js';
import { encodeBhs, pad4, type Bhs, type PduSpec } from './pdu.js';
import {
  writeDataIn, writeLoginResponse, writeLogoutResponse, writeNopIn, writeR2T, writeReject,
  writeScsiResponse, writeTextResponse, writeTmfResponse, type SeqNumbers,
} from './target-pdus.js';

/** Header slab size (header-slab.ts). */
const SLAB_SIZE = 16 * 1024;
const ZERO_PAD = Buffer.alloc(4);

/** Where ExpCmdSN and MaxCmdSN come from (the session's CommandWindow). */
export interface WindowNumbers {
  readonly expCmdSN: number;
  readonly maxCmdSN: number;
}

/** How a command's result goes out. */
export interface CommandStatus {
  itt: number;
  status: number;
  sense: Buffer | undefined;
  /** Residual flags for byte 1 (overflow/underflow) and the count. */
  residualFlags: number;
  residual: number;
}

export class PduWriter {
  private readonly socket: Socket;
  private readonly spec: PduSpec;
  private window: WindowNumbers;
  private statSN: number;
  private readonly headers = new HeaderSlab(SLAB_SIZE);
  private readonly sn: { statSN: number; expCmdSN: number; maxCmdSN: number } = { statSN: 0, expCmdSN: 0, maxCmdSN: 0 };
  /** Set when a write returned false; cleared by the connection on 'drain'. */
  blocked = false;
  private corked = false;
  /** Data-In buffers being written, in write order: each goes back to ioBuffers at its write's callback. */
  private readonly sending: Buffer[] = [];
  private readonly sent = (): void => {
    const buf = this.sending.shift();
    if (buf !== undefined) ioBuffers.release(buf);
  };
  private readonly flush = (): void => {
    this.corked = false;
    this.socket.uncork();
  };

  constructor(socket: Socket, spec: PduSpec, window: WindowNumbers, initialStatSN: number) {
    this.socket = socket;
    this.spec = spec;
    this.window = window;
    this.statSN = initialStatSN >>> 0;
  }

  /** The StatSN the next status-carrying PDU will take. */
  get nextStatSN(): number {
    return this.statSN;
  }

  setWindow(window: WindowNumbers): void {
    this.window = window;
  }

  loginResponse(f: { flags: number; isidHigh: number; isidLow16: number; tsih: number; itt: number; status: number }, text: Buffer): boolean {
    return this.single((b, o, sn) => writeLoginResponse(b, o, { ...f, dataLength: text.length }, sn), true, text);
  }

  textResponse(f: { flags: number; itt: number; ttt: number }, text: Buffer): boolean {
    return this.single((b, o, sn) => writeTextResponse(b, o, { ...f, dataLength: text.length }, sn), true, text);
  }

  r2t(f: { lunHigh: number; itt: number; ttt: number; r2tSN: number; offset: number; length: number }): boolean {
    return this.single((b, o, sn) => writeR2T(b, o, f, sn), false, undefined);
  }

  /** An answer to a NOP-Out ping (advances StatSN), echoing its data. */
  nopInReply(f: { lunHigh: number; itt: number }, data: Buffer | undefined): boolean {
    return this.single((b, o, sn) => writeNopIn(b, o, { ...f, ttt: RESERVED_TAG, dataLength: data?.length ?? 0 }, sn), true, data);
  }

  /** Our own ping: the initiator must answer with a NOP-Out echoing `ttt`. */
  nopInPing(ttt: number): boolean {
    return this.single((b, o, sn) => writeNopIn(b, o, { lunHigh: 0, itt: RESERVED_TAG, ttt, dataLength: 0 }, sn), false, undefined);
  }

  tmfResponse(itt: number, response: number): boolean {
    return this.single((b, o, sn) => writeTmfResponse(b, o, { itt, response }, sn), true, undefined);
  }

  logoutResponse(f: { itt: number; response: number; time2Wait: number; time2Retain: number }): boolean {
    return this.single((b, o, sn) => writeLogoutResponse(b, o, f, sn), true, undefined);
  }

  /** Reject (RFC 7143 11.17): carries the offending header back. */
  reject(rejected: Bhs, reason: number): boolean {
    const header = encodeBhs(rejected);
    return this.single((b, o, sn) => writeReject(b, o, { reason, dataLength: BHS_SIZE }, sn), true, header);
  }

  /**
   * A command's Data-In (if any) and status. `data` is already cut to the
   * expected length; `maxSegment` is the initiator's MaxRecvDataSegmentLength.
   * `owner`: the buffer `data` lies in, given back to ioBuffers once the
   * socket has written it (ignored when not from the pool).
   */
  commandResult(st: CommandStatus, data: Buffer | undefined, maxSegment: number, maxBurst: number, owner?: Buffer): boolean {
    if (!this.socket.writable) return false;
    this.batch();
    let ok = true;
    let dataSN = 0;
    const statusInData = st.sense === undefined && (st.status === ScsiStatus.GOOD || st.status === ScsiStatus.CONDITION_MET);
    const length = data?.length ?? 0;
    let statusSent = false;
    for (let offset = 0, burstLeft = maxBurst; offset < length;) {
      const n = Math.min(maxSegment, length - offset, burstLeft);
      const last = offset + n === length;
      const endOfBurst = last || n === burstLeft;
      const withStatus = last && statusInData;
      const flags = (endOfBurst ? FINAL_BIT : 0) | (withStatus ? DATA_IN_STATUS_BIT | st.residualFlags : 0);
      const pduOffset = offset;
      const pduSN = dataSN;
      const release = last && owner !== undefined;
      if (release) this.sending.push(owner);
      ok = this.emit((b, o, sn) => writeDataIn(b, o, {
        flags, status: st.status, itt: st.itt, dataSN: pduSN, offset: pduOffset, residual: st.residual, dataLength: n,
      }, sn, withStatus), withStatus, data!.subarray(offset, offset + n), release ? this.sent : undefined);
      statusSent = withStatus;
      offset += n;
      burstLeft = endOfBurst ? maxBurst : burstLeft - n;
      dataSN++;
    }
    if (!statusSent) {
      let segment: Buffer | undefined;
      if (st.sense !== undefined) {
        // RFC 7143 11.4.7: SenseLength (2 bytes), then the sense data.
        segment = Buffer.allocUnsafe(2 + st.sense.length);
        segment.writeUInt16BE(st.sense.length, 0);
        st.sense.copy(segment, 2);
      }
      const expDataSN = dataSN;
      ok = this.emit((b, o, sn) => writeScsiResponse(b, o, {
        flags: st.residualFlags, response: RESPONSE_COMPLETED, status: st.status, itt: st.itt, expDataSN,
        residual: st.residual, dataLength: segment?.length ?? 0,
      }, sn), true, segment);
    }
    return this.note(ok);
  }

  private single(fill: (buf: Buffer, off: number, sn: SeqNumbers) => void, advance: boolean, data: Buffer | undefined): boolean {
    // A closing connection drops what it can no longer deliver.
    if (!this.socket.writable) return false;
    this.batch();
    return this.note(this.emit(fill, advance, data));
  }

  /** Corks the socket until the end of this tick (see the header comment). */
  private batch(): void {
    if (this.corked) return;
    this.corked = true;
    this.socket.cork();
    process.nextTick(this.flush);
  }

  /**
   * Header (+ digest), then data, pad and data digest. Returns the last
   * write's result. `written` runs once the socket is done with `data`.
   */
  private emit(
    fill: (buf: Buffer, off: number, sn: SeqNumbers) => void, advance: boolean, data: Buffer | undefined, written?: () => void,
  ): boolean {
    const hd = this.spec.headerDigest ? DIGEST_SIZE : 0;
    const header = this.headers.take(BHS_SIZE + hd);
    const sn = this.sn;
    sn.statSN = this.statSN;
    sn.expCmdSN = this.window.expCmdSN;
    sn.maxCmdSN = this.window.maxCmdSN;
    if (advance) this.statSN = (this.statSN + 1) >>> 0;
    fill(header, 0, sn);
    if (hd > 0) writeDigest(header, BHS_SIZE, crc32c(header, 0, 0, BHS_SIZE));
    const s = this.socket;
    let ok = s.write(header);
    if (data === undefined || data.length === 0) return ok;
    ok = written === undefined ? s.write(data) : s.write(data, written);
    const pad = pad4(data.length);
    if (pad > 0) ok = s.write(ZERO_PAD.subarray(0, pad));
    if (this.spec.dataDigest) {
      const digest = this.headers.take(DIGEST_SIZE);
      let crc = crc32c(data);
      if (pad > 0) crc = crc32c(ZERO_PAD, crc, 0, pad);
      writeDigest(digest, 0, crc);
      ok = s.write(digest);
    }
    return ok;
  }

  private note(ok: boolean): boolean {
    if (!ok) this.blocked = true;
    return ok;
  }
}
