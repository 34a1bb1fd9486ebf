import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { FrameDecoder } from '../../shared/frame-decoder.js';
import { Opcode, RESERVED_TAG, Stage } from '../../head-agent/frontend/iscsi/constants.js';
import { loginRequest, logoutRequest, nopOut, scsiCommand } from '../../head-agent/frontend/iscsi/initiator-pdus.js';
import { encodePdu, PduSpec, splitPayload, type Bhs, type BhsFields } from '../../head-agent/frontend/iscsi/pdu.js';
import { encodeTextKeys, parseTextKeys } from '../../head-agent/frontend/iscsi/text-keys.js';

// A minimal iSCSI initiator session for integration tests that must see the
// exact sense data a real initiator would retry away (libiscsi and the kernel
// absorb unit attentions): one connection, login without CHAP, SCSI commands
// one at a time with their status and fixed-format sense (key, ASC, ASCQ).
// The target's NOP-In pings are answered as they come, also between commands.

interface Pdu { bhs: Bhs; data: Buffer }

export interface ScsiReply {
  /** SCSI status (0 GOOD, 2 CHECK CONDITION). */
  status: number;
  data: Buffer;
  /** [sense key, ASC, ASCQ] when the target sent sense data. */
  sense: [number, number, number] | undefined;
}

export class IscsiSession {
  private readonly spec = new PduSpec();
  private readonly decoder: FrameDecoder<Bhs>;
  private readonly queue: Pdu[] = [];
  private wake: (() => void) | undefined;
  private closed = false;
  private itt = 0x100;
  private cmdSN = 1;
  private expStatSN = 0;

  private constructor(private readonly socket: Socket) {
    this.spec.maxDataSegment = 16 * 1024 * 1024;
    this.decoder = new FrameDecoder(this.spec);
    socket.on('data', (c: Buffer) => {
      this.decoder.push(c);
      for (let f = this.decoder.next(); f !== undefined; f = this.decoder.next()) {
        if (f.header.opcode === Opcode.NOP_IN && f.header.itt === RESERVED_TAG) {
          // The target's ping of an idle session: answered at once, so a session may idle between commands.
          this.send(nopOut({ itt: RESERVED_TAG, ttt: f.header.w5, cmdSN: this.cmdSN, expStatSN: this.expStatSN, immediate: true }));
          continue;
        }
        const parts = splitPayload(this.spec, f.header, f.payload);
        this.queue.push({ bhs: f.header, data: parts.data === undefined ? Buffer.alloc(0) : Buffer.from(parts.data) });
      }
      this.wake?.();
    });
    socket.on('close', () => { this.closed = true; this.wake?.(); });
    socket.on('error', () => {});
  }

  /** Connects to `portal` (HOST:PORT) and logs in to `target` as `initiator`. */
  static async open(portal: string, target: string, initiator: string): Promise<IscsiSession> {
    const [host, port] = [portal.slice(0, portal.lastIndexOf(':')), Number(portal.slice(portal.lastIndexOf(':') + 1))];
    const socket = connect(port, host);
    await new Promise<void>((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject); });
    const s = new IscsiSession(socket);
    await s.login(target, initiator);
    return s;
  }

  private send(f: BhsFields, data?: Buffer): void {
    this.socket.write(encodePdu(f, data, undefined, { header: false, data: false }));
  }

  private async next(timeoutMs: number): Promise<Pdu> {
    const deadline = Date.now() + timeoutMs;
    while (this.queue.length === 0) {
      if (this.closed) throw new Error('iSCSI connection closed');
      if (Date.now() > deadline) throw new Error('timed out waiting for an iSCSI PDU');
      await new Promise<void>((r) => { this.wake = r; setTimeout(r, 50); });
      this.wake = undefined;
    }
    const p = this.queue.shift()!;
    const unsolicitedPing = p.bhs.opcode === Opcode.NOP_IN && p.bhs.itt === RESERVED_TAG;
    const partialData = p.bhs.opcode === Opcode.DATA_IN && (p.bhs.flags & 1) === 0;
    if (!unsolicitedPing && !partialData) this.expStatSN = (p.bhs.w6 + 1) >>> 0;
    return p;
  }

  private async login(target: string, initiator: string): Promise<void> {
    const isid = randomBytes(6).toString('hex');
    const keys = encodeTextKeys([
      ['InitiatorName', initiator], ['SessionType', 'Normal'], ['TargetName', target], ['MaxRecvDataSegmentLength', '65536'],
      ['HeaderDigest', 'None'], ['DataDigest', 'None'],
    ]);
    this.send(loginRequest({ transit: true, csg: Stage.OPERATIONAL, nsg: Stage.FULL_FEATURE, isid, itt: this.itt, cmdSN: this.cmdSN, expStatSN: 0 }), keys);
    const r = await this.next(5000);
    if (r.bhs.opcode !== Opcode.LOGIN_RESPONSE) throw new Error(`login: unexpected opcode 0x${r.bhs.opcode.toString(16)}`);
    const status = r.bhs.w9 >>> 16;
    if (status !== 0) throw new Error(`login refused: status 0x${status.toString(16)} (${[...parseTextKeys(r.data.length > 0 ? r.data : undefined)].join(' ')})`);
  }

  /** Runs one command (a read of up to `readLength` bytes, or a write of `data`) and returns its status and sense. */
  async command(cdb: Buffer, o: { readLength?: number; data?: Buffer } = {}, timeoutMs = 10_000): Promise<ScsiReply> {
    const itt = this.itt++;
    const write = o.data !== undefined;
    const expectedLength = write ? o.data!.length : (o.readLength ?? 0);
    this.send(scsiCommand({
      itt, cdb, expectedLength, cmdSN: this.cmdSN++, expStatSN: this.expStatSN, read: !write && expectedLength > 0, write, final: true,
    }), o.data);
    const chunks: Buffer[] = [];
    for (;;) {
      const p = await this.next(timeoutMs);
      if (p.bhs.itt !== itt) throw new Error(`PDU 0x${p.bhs.opcode.toString(16)} for ITT ${p.bhs.itt} while waiting for ${itt}`);
      if (p.bhs.opcode === Opcode.DATA_IN) {
        chunks.push(p.data);
        // S bit: the status came with the last Data-In.
        if ((p.bhs.flags & 1) !== 0) return { status: p.bhs.b3, data: Buffer.concat(chunks), sense: undefined };
        continue;
      }
      if (p.bhs.opcode === Opcode.SCSI_RESPONSE) {
        const raw = p.data.length >= 2 ? p.data.subarray(2, 2 + p.data.readUInt16BE(0)) : undefined;
        const sense: ScsiReply['sense'] = raw !== undefined && raw.length >= 14 ? [raw[2]! & 0x0f, raw[12]!, raw[13]!] : undefined;
        return { status: p.bhs.b3, data: Buffer.concat(chunks), sense };
      }
      throw new Error(`unexpected PDU 0x${p.bhs.opcode.toString(16)} while waiting for ITT ${itt}`);
    }
  }

  async logout(): Promise<void> {
    this.send(logoutRequest({ reason: 0, itt: this.itt++, cmdSN: this.cmdSN, expStatSN: this.expStatSN, immediate: true }));
    try {
      for (;;) if ((await this.next(3000)).bhs.opcode === Opcode.LOGOUT_RESPONSE) break;
    } finally {
      this.socket.destroy();
    }
  }
}

/** CDBs the resize test sends. */
export const Cdb = {
  testUnitReady: (): Buffer => Buffer.alloc(6),
  readCapacity10: (): Buffer => Buffer.from([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
  readCapacity16: (): Buffer => Buffer.from([0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]),
  read10(lba: number, blocks: number): Buffer {
    const c = Buffer.alloc(10);
    c[0] = 0x28;
    c.writeUInt32BE(lba, 2);
    c.writeUInt16BE(blocks, 7);
    return c;
  },
};
