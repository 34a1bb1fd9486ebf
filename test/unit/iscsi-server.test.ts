// The iSCSI target driven by real initiators (libiscsi's iscsi-inq, iscsi-ls,
// iscsi-readcapacity16, iscsi-perf; qemu-img and qemu-io over iscsi://) and
// by a raw initiator for what real ones never send (garbage, bad digests,
// out-of-order CmdSN, task management, R2T sequences). The units are a
// Buffer-backed test LogicalUnit: the seam, not the SCSI command layer.

import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setRootLogger } from '../../shared/logger.js';
import { FrameDecoder } from '../../shared/frame-decoder.js';
import { MemoryDevice } from '../harness/memory-device.js';
import { createBlockUnit } from '../../head-agent/frontend/scsi/block-unit.js';
import { ScsiStatus, type LogicalUnit, type ScsiCommand, type ScsiResult } from '../../head-agent/frontend/scsi/types.js';
import type { IscsiTarget, IscsiTargetRegistry } from '../../head-agent/frontend/iscsi/target-registry.js';
import { startIscsiServer, type IscsiServerHandle } from '../../head-agent/frontend/iscsi/server.js';
import {
  CMD_READ_BIT, FINAL_BIT, LoginStatus, Opcode, RESERVED_TAG, RejectReason, Stage, TmfFunction, TmfResponse,
} from '../../head-agent/frontend/iscsi/constants.js';
import { chapResponse, decodeBinary, encodeBinary } from '../../head-agent/frontend/iscsi/chap.js';
import {
  dataOut, loginRequest, logoutRequest, nopOut, scsiCommand, taskManagementRequest, textRequest,
} from '../../head-agent/frontend/iscsi/initiator-pdus.js';
import { encodePdu, PduSpec, splitPayload, type Bhs, type BhsFields } from '../../head-agent/frontend/iscsi/pdu.js';
import { encodeTextKeys, parseTextKeys, type KeyPair } from '../../head-agent/frontend/iscsi/text-keys.js';


const MiB = 1024 * 1024;
const BLOCK = 512;
const CMD_TIMEOUT = 30_000;
const IQN = 'iqn.2026-11.ts.vastsky:vol1';
const IQN_CHAP = 'iqn.2026-11.ts.vastsky:chap';
const IQN_MUTUAL = 'iqn.2026-11.ts.vastsky:mutual';
const IQN_ACL = 'iqn.2026-11.ts.vastsky:acl';
const IQN_REAL = 'iqn.2026-11.ts.vastsky:real';
const ALLOWED_INITIATOR = 'iqn.2026-11.test:allowed';
const INITIATOR = 'iqn.2026-11.test:raw';

// --- A Buffer-backed logical unit: just what libiscsi tools and qemu need ---

function sense(key: number, asc: number, ascq = 0): ScsiResult {
  const s = Buffer.alloc(18);
  s[0] = 0x70;
  s[2] = key;
  s[7] = 10;
  s[12] = asc;
  s[13] = ascq;
  return { status: ScsiStatus.CHECK_CONDITION, sense: s };
}

const ILLEGAL_OPCODE = (): ScsiResult => sense(0x05, 0x20);
const LBA_OUT_OF_RANGE = (): ScsiResult => sense(0x05, 0x21);

class MemoryUnit implements LogicalUnit {
  readonly data: Buffer;
  resets: string[] = [];
  lostNexus: string[] = [];
  commands = 0;
  /** When set, every command waits for it (for aborts and ordering tests). */
  gate: Promise<void> | undefined;
  /** Signals seen by commands that were aborted while gated. */
  abortedSignals = 0;
  writes: { lba: number; nexus: string }[] = [];

  constructor(readonly blocks: number) {
    this.data = Buffer.alloc(blocks * BLOCK);
  }

  async execute(cmd: ScsiCommand): Promise<ScsiResult> {
    this.commands++;
    if (this.gate !== undefined) {
      await this.gate;
      if (cmd.signal.aborted) {
        this.abortedSignals++;
        return { status: ScsiStatus.TASK_ABORTED };
      }
    }
    const c = cmd.cdb;
    switch (c[0]) {
      case 0x00: return { status: ScsiStatus.GOOD }; // TEST UNIT READY
      case 0x03: return { status: ScsiStatus.GOOD, dataIn: Buffer.alloc(Math.min(18, c[4]!)) }; // REQUEST SENSE
      case 0x12: return this.inquiry(c);
      case 0x1a: return { status: ScsiStatus.GOOD, dataIn: Buffer.from([3, 0, 0, 0]).subarray(0, c[4]!) }; // MODE SENSE(6)
      case 0x5a: return { status: ScsiStatus.GOOD, dataIn: Buffer.from([0, 6, 0, 0, 0, 0, 0, 0]).subarray(0, c.readUInt16BE(7)) };
      case 0x25: { // READ CAPACITY(10)
        const d = Buffer.alloc(8);
        d.writeUInt32BE(Math.min(this.blocks - 1, 0xffffffff), 0);
        d.writeUInt32BE(BLOCK, 4);
        return { status: ScsiStatus.GOOD, dataIn: d };
      }
      case 0x9e: { // SERVICE ACTION IN(16)
        if ((c[1]! & 0x1f) !== 0x10) return ILLEGAL_OPCODE();
        const d = Buffer.alloc(32);
        d.writeBigUInt64BE(BigInt(this.blocks - 1), 0);
        d.writeUInt32BE(BLOCK, 8);
        return { status: ScsiStatus.GOOD, dataIn: d.subarray(0, Math.min(32, c.readUInt32BE(10))) };
      }
      case 0x28: return this.read(c.readUInt32BE(2), c.readUInt16BE(7));
      case 0x88: return this.read(Number(c.readBigUInt64BE(2)), c.readUInt32BE(10));
      case 0x2a: return this.write(c.readUInt32BE(2), c.readUInt16BE(7), cmd);
      case 0x8a: return this.write(Number(c.readBigUInt64BE(2)), c.readUInt32BE(10), cmd);
      case 0x35: case 0x91: return { status: ScsiStatus.GOOD }; // SYNCHRONIZE CACHE
      default: return ILLEGAL_OPCODE();
    }
  }

  private inquiry(c: Buffer): ScsiResult {
    const alloc = c.readUInt16BE(3);
    let d: Buffer;
    if ((c[1]! & 1) === 0) {
      d = Buffer.alloc(36);
      d[2] = 6;
      d[3] = 2;
      d[4] = 31;
      d[7] = 0x02; // CMDQUE
      d.write('TEST    MEMORY UNIT     0001', 8, 'latin1');
    } else if (c[2] === 0x00) {
      d = Buffer.from([0, 0, 0, 2, 0x00, 0x80]);
    } else if (c[2] === 0x80) {
      d = Buffer.concat([Buffer.from([0, 0x80, 0, 8]), Buffer.from('SERIAL01')]);
    } else {
      return sense(0x05, 0x24);
    }
    return { status: ScsiStatus.GOOD, dataIn: d.subarray(0, Math.min(d.length, alloc)) };
  }

  private read(lba: number, blocks: number): ScsiResult {
    if (lba + blocks > this.blocks) return LBA_OUT_OF_RANGE();
    return { status: ScsiStatus.GOOD, dataIn: Buffer.from(this.data.subarray(lba * BLOCK, (lba + blocks) * BLOCK)) };
  }

  private write(lba: number, blocks: number, cmd: ScsiCommand): ScsiResult {
    if (lba + blocks > this.blocks) return LBA_OUT_OF_RANGE();
    const length = blocks * BLOCK;
    // Writes what came, at most what the CDB asked for (the transport reports the residual).
    cmd.dataOut?.copy(this.data, lba * BLOCK, 0, Math.min(length, cmd.dataOut.length));
    this.writes.push({ lba, nexus: cmd.nexus });
    return { status: ScsiStatus.GOOD, dataOutLength: length };
  }

  reset(kind: 'lun' | 'target'): void {
    this.resets.push(kind);
  }

  nexusLost(nexus: string): void {
    this.lostNexus.push(nexus);
  }
}

class MapRegistry implements IscsiTargetRegistry {
  readonly targets = new Map<string, IscsiTarget>();
  add(t: IscsiTarget): void { this.targets.set(t.iqn, t); }
  lookup(iqn: string): IscsiTarget | undefined { return this.targets.get(iqn); }
  list(): IscsiTarget[] { return [...this.targets.values()]; }
}



// --- Log capture: tests check what the server says about the connections it closes ---

const logLines: Record<string, unknown>[] = [];
setRootLogger(pino({ level: 'debug' }, {
  write(line: string): void {
    logLines.push(JSON.parse(line) as Record<string, unknown>);
    if (logLines.length > 5000) logLines.splice(0, 1000);
  },
}));

function logsSince(mark: number, msg: string): Record<string, unknown>[] {
  return logLines.slice(mark).filter((l) => l.msg === msg);
}

// --- Fixture ------------------------------------------------------------------

let server: IscsiServerHandle;
let registry: MapRegistry;
let unit: MemoryUnit;
let blockDevice: MemoryDevice;
let host: string;
let port: number;
let dir: string;

const TUNING = { nopIntervalMs: 400, nopTimeoutMs: 600, loginTimeoutMs: 2000, closeGraceMs: 1000 };

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vsky-iscsi-'));
  registry = new MapRegistry();
  unit = new MemoryUnit((64 * MiB) / BLOCK);
  blockDevice = new MemoryDevice(64 * MiB, { name: 'vol-real' });
  registry.add({ iqn: IQN, luns: new Map([[0, unit]]), access: { initiators: [] } });
  registry.add({ iqn: IQN_REAL, luns: new Map([[0, createBlockUnit(blockDevice, { volumeId: 7, volumeName: 'vol-real' })]]), access: { initiators: [] } });
  registry.add({ iqn: IQN_CHAP, luns: new Map([[0, new MemoryUnit(2048)]]), access: { initiators: [], chap: { user: 'alice', secret: 'alice-secret-123' } } });
  registry.add({
    iqn: IQN_MUTUAL, luns: new Map([[0, new MemoryUnit(2048)]]),
    access: { initiators: [], chap: { user: 'bob', secret: 'bob-secret-4567' }, mutualChap: { user: 'target-bob', secret: 'target-secret-89' } },
  });
  registry.add({ iqn: IQN_ACL, luns: new Map([[0, new MemoryUnit(2048)]]), access: { initiators: [ALLOWED_INITIATOR] } });
  server = await startIscsiServer({ host: '127.0.0.1', port: 0, registry }, TUNING);
  [host, port] = [server.address.split(':')[0]!, Number(server.address.split(':')[1])];
});

afterAll(async () => {
  await server?.close();
  rmSync(dir, { recursive: true, force: true });
});

function url(iqn: string, user?: string): string {
  return `iscsi://${user === undefined ? '' : `${user}@`}${host}:${port}/${iqn}/0`;
}

async function run(cmd: string, args: string[], env: Record<string, string> = {}, timeout = CMD_TIMEOUT): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const r = await execa(cmd, args, { timeout, reject: false, env, stdin: 'ignore' });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

async function until(cond: () => boolean, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

// --- A raw initiator, for bytes no real initiator sends ------------------------

interface Pdu { bhs: Bhs; data: Buffer }

interface LoginOptions {
  target?: string;
  discovery?: boolean;
  initiator?: string;
  isid?: string;
  chap?: { user: string; secret: string; mutual?: { user: string; secret: string }; reflect?: boolean };
  keys?: KeyPair[];
}

class RawInitiator {
  readonly spec = new PduSpec();
  private readonly decoder: FrameDecoder<Bhs>;
  private readonly queue: Pdu[] = [];
  private waiter: (() => void) | undefined;
  closed = false;
  readonly closedPromise: Promise<void>;
  itt = 0x100;
  cmdSN = 1000;
  expStatSN = 0;
  /** Keys the target answered in the last login response. */
  loginKeys = new Map<string, string>();
  tsih = 0;

  private constructor(readonly socket: Socket) {
    this.spec.maxDataSegment = 16 * MiB;
    this.decoder = new FrameDecoder(this.spec);
    socket.on('data', (c: Buffer) => {
      this.decoder.push(c);
      for (let f = this.decoder.next(); f !== undefined; f = this.decoder.next()) {
        const parts = splitPayload(this.spec, f.header, f.payload);
        this.queue.push({ bhs: f.header, data: parts.data === undefined ? Buffer.alloc(0) : Buffer.from(parts.data) });
      }
      this.waiter?.();
    });
    this.closedPromise = new Promise((r) => socket.on('close', () => { this.closed = true; this.waiter?.(); r(); }));
    socket.on('error', () => {});
  }

  static async connect(): Promise<RawInitiator> {
    const socket = connect(port, host);
    await new Promise<void>((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject); });
    return new RawInitiator(socket);
  }

  send(f: BhsFields, data?: Buffer, ahs?: Buffer): void {
    this.socket.write(encodePdu(f, data, ahs, { header: this.spec.headerDigest, data: this.spec.dataDigest }));
  }

  raw(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** The next PDU; rejects when the target closes first or nothing comes in time. */
  async next(timeoutMs = 3000): Promise<Pdu> {
    const deadline = Date.now() + timeoutMs;
    while (this.queue.length === 0) {
      if (this.closed) throw new Error('connection closed');
      if (Date.now() > deadline) throw new Error('timed out waiting for a PDU');
      await new Promise<void>((r) => { this.waiter = r; setTimeout(r, 50); });
      this.waiter = undefined;
    }
    const pdu = this.queue.shift()!;
    if (pdu.bhs.opcode !== Opcode.R2T && !(pdu.bhs.opcode === Opcode.NOP_IN && pdu.bhs.itt === RESERVED_TAG) &&
      !(pdu.bhs.opcode === Opcode.DATA_IN && (pdu.bhs.flags & 1) === 0)) {
      this.expStatSN = (pdu.bhs.w6 + 1) >>> 0;
    }
    return pdu;
  }

  /** Resolves true if nothing arrives for `ms` (the target stays silent). */
  async silentFor(ms: number): Promise<boolean> {
    await new Promise((r) => setTimeout(r, ms));
    return this.queue.length === 0;
  }

  async waitClosed(ms = 3000): Promise<void> {
    await Promise.race([this.closedPromise, new Promise((_, reject) => setTimeout(() => reject(new Error('still open')), ms))]);
  }

  async loginStep(f: { transit: boolean; csg: number; nsg: number; isid: string; keys: KeyPair[] }): Promise<{ status: number; flags: number; keys: Map<string, string>; bhs: Bhs }> {
    this.send(loginRequest({ ...f, itt: this.itt, cmdSN: this.cmdSN, expStatSN: this.expStatSN }), encodeTextKeys(f.keys));
    const r = await this.next();
    expect(r.bhs.opcode).toBe(Opcode.LOGIN_RESPONSE);
    const keys = new Map(parseTextKeys(r.data.length > 0 ? r.data : undefined));
    return { status: r.bhs.w9 >>> 16, flags: r.bhs.flags, keys, bhs: r.bhs };
  }

  /** Logs in; resolves with the final status (0 on success). */
  async login(o: LoginOptions = {}): Promise<number> {
    const isid = o.isid ?? randomBytes(6).toString('hex');
    const id: KeyPair[] = [['InitiatorName', o.initiator ?? INITIATOR]];
    if (o.discovery === true) id.push(['SessionType', 'Discovery']);
    else id.push(['SessionType', 'Normal'], ['TargetName', o.target ?? IQN]);
    let csg: number = Stage.OPERATIONAL;
    if (o.chap !== undefined) {
      let r = await this.loginStep({ transit: true, csg: Stage.SECURITY, nsg: Stage.OPERATIONAL, isid, keys: [...id, ['AuthMethod', 'CHAP,None']] });
      if (r.status !== 0) return r.status;
      expect(r.keys.get('AuthMethod')).toBe('CHAP');
      expect(r.flags & 0x80).toBe(0);
      r = await this.loginStep({ transit: false, csg: Stage.SECURITY, nsg: 0, isid, keys: [['CHAP_A', '7,5']] });
      if (r.status !== 0) return r.status;
      expect(r.keys.get('CHAP_A')).toBe('5');
      const id0 = Number(r.keys.get('CHAP_I'));
      const challenge = decodeBinary(r.keys.get('CHAP_C')!);
      expect(challenge.length).toBeGreaterThanOrEqual(16);
      const keys: KeyPair[] = [['CHAP_N', o.chap.user], ['CHAP_R', encodeBinary(chapResponse(id0, o.chap.secret, challenge))]];
      const mine = o.chap.reflect === true ? challenge : randomBytes(16);
      if (o.chap.mutual !== undefined) keys.push(['CHAP_I', '77'], ['CHAP_C', encodeBinary(mine)]);
      r = await this.loginStep({ transit: true, csg: Stage.SECURITY, nsg: Stage.OPERATIONAL, isid, keys });
      if (r.status !== 0) return r.status;
      if (o.chap.mutual !== undefined) {
        expect(r.keys.get('CHAP_N')).toBe(o.chap.mutual.user);
        expect(decodeBinary(r.keys.get('CHAP_R')!)).toEqual(chapResponse(77, o.chap.mutual.secret, mine));
      }
      expect(r.flags & 0x80).toBe(0x80);
      id.length = 0;
    }
    const r = await this.loginStep({
      transit: true, csg, nsg: Stage.FULL_FEATURE, isid,
      keys: [...id, ...(o.keys?.some(([k]) => k === 'MaxRecvDataSegmentLength') === true ? [] : [['MaxRecvDataSegmentLength', '65536'] as KeyPair]), ...(o.keys ?? [])],
    });
    this.loginKeys = r.keys;
    if (r.status !== 0) return r.status;
    expect(r.flags & 0x83).toBe(0x83);
    this.tsih = r.bhs.w3 & 0xffff;
    this.spec.headerDigest = r.keys.get('HeaderDigest') === 'CRC32C';
    this.spec.dataDigest = r.keys.get('DataDigest') === 'CRC32C';
    csg = 0;
    return 0;
  }

  nextItt(): number {
    return this.itt++;
  }

  /** Sends a SCSI command (ordered, taking the next CmdSN unless given). */
  command(cdb: Buffer, o: { edtl: number; read?: boolean; write?: boolean; data?: Buffer; final?: boolean; cmdSN?: number; itt?: number; lun?: number } = { edtl: 0 }): number {
    const itt = o.itt ?? this.nextItt();
    const cmdSN = o.cmdSN ?? this.cmdSN++;
    this.send(scsiCommand({
      itt, cdb, expectedLength: o.edtl, cmdSN, expStatSN: this.expStatSN, read: o.read, write: o.write, final: o.final, lun: o.lun,
    }), o.data);
    return itt;
  }

  /** Collects Data-In until the status; returns the data, the status PDU and every Data-In. */
  async result(itt: number): Promise<{ status: number; data: Buffer; last: Bhs; dataIns: Bhs[]; sense: Buffer | undefined }> {
    const chunks: Buffer[] = [];
    const dataIns: Bhs[] = [];
    for (;;) {
      const p = await this.next();
      if (p.bhs.opcode === Opcode.DATA_IN) {
        expect(p.bhs.itt).toBe(itt);
        dataIns.push(p.bhs);
        chunks.push(p.data);
        if ((p.bhs.flags & 1) !== 0) return { status: p.bhs.b3, data: Buffer.concat(chunks), last: p.bhs, dataIns, sense: undefined };
        continue;
      }
      if (p.bhs.opcode === Opcode.SCSI_RESPONSE) {
        expect(p.bhs.itt).toBe(itt);
        const sense = p.data.length >= 2 ? p.data.subarray(2, 2 + p.data.readUInt16BE(0)) : undefined;
        return { status: p.bhs.b3, data: Buffer.concat(chunks), last: p.bhs, dataIns, sense };
      }
      if (p.bhs.opcode === Opcode.NOP_IN && p.bhs.itt === RESERVED_TAG) {
        this.send(nopOut({ itt: RESERVED_TAG, ttt: p.bhs.w5, cmdSN: this.cmdSN, expStatSN: this.expStatSN }));
        continue;
      }
      throw new Error(`unexpected ${p.bhs.opcode.toString(16)} (${p.bhs.b2}) while waiting for ITT ${itt}`);
    }
  }

  /** Answers the target's pings while waiting for a PDU of `opcode`. */
  async expect(opcode: number, timeoutMs = 3000): Promise<Pdu> {
    for (;;) {
      const p = await this.next(timeoutMs);
      if (p.bhs.opcode === Opcode.NOP_IN && p.bhs.itt === RESERVED_TAG && opcode !== Opcode.NOP_IN) {
        this.send(nopOut({ itt: RESERVED_TAG, ttt: p.bhs.w5, cmdSN: this.cmdSN, expStatSN: this.expStatSN }));
        continue;
      }
      expect(p.bhs.opcode.toString(16)).toBe(opcode.toString(16));
      return p;
    }
  }

  async logout(): Promise<void> {
    this.send(logoutRequest({ reason: 0, itt: this.nextItt(), cmdSN: this.cmdSN, expStatSN: this.expStatSN }));
    await this.expect(Opcode.LOGOUT_RESPONSE);
    await this.waitClosed();
  }

  destroy(): void {
    this.socket.destroy();
  }
}

const TUR = Buffer.from([0, 0, 0, 0, 0, 0]);
function inquiryCdb(alloc: number): Buffer {
  const c = Buffer.alloc(6);
  c[0] = 0x12;
  c.writeUInt16BE(alloc, 3);
  return c;
}
function rw10(op: 0x28 | 0x2a, lba: number, blocks: number): Buffer {
  const c = Buffer.alloc(10);
  c[0] = op;
  c.writeUInt32BE(lba, 2);
  c.writeUInt16BE(blocks, 7);
  return c;
}

/** Logs in a raw initiator to IQN with `keys`, ready for commands. */
async function loggedIn(keys: KeyPair[] = [], target = IQN): Promise<RawInitiator> {
  const c = await RawInitiator.connect();
  expect(await c.login({ target, keys })).toBe(0);
  return c;
}

// --- Real initiators ------------------------------------------------------------

describe('iSCSI target with real initiators', () => {
  it('answers iscsi-inq and iscsi-readcapacity16', async () => {
    const inq = await run('iscsi-inq', [url(IQN)]);
    expect(inq.exitCode, inq.stderr).toBe(0);
    expect(inq.stdout).toContain('MEMORY UNIT');
    const cap = await run('iscsi-readcapacity16', [url(IQN)]);
    expect(cap.exitCode, cap.stderr).toBe(0);
    expect(cap.stdout).toContain(`Total size:${64 * MiB}`);
    expect(cap.stdout).toContain('LOGICAL BLOCK LENGTH IN BYTES:512');
  });

  it('lists, in discovery, the targets this initiator may reach, with their LUNs', async () => {
    const r = await run('iscsi-ls', [`iscsi://${host}:${port}`]);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toContain(`Target:${IQN} Portal:${host}:${port},1`);
    expect(r.stdout).toContain(`Target:${IQN_CHAP} Portal:${host}:${port},1`);
    // The ACL target does not name libiscsi's default initiator: not listed.
    expect(r.stdout).not.toContain(IQN_ACL);
    const allowed = await run('iscsi-ls', ['-i', ALLOWED_INITIATOR, `iscsi://${host}:${port}`]);
    expect(allowed.stdout).toContain(IQN_ACL);
    // With LUNs (iscsi-ls logs in to every target it lists: open targets only here).
    const open = new MapRegistry();
    open.add(registry.lookup(IQN)!);
    open.add(registry.lookup(IQN_ACL)!);
    const s2 = await startIscsiServer({ host: '127.0.0.1', port: 0, registry: open });
    try {
      const l = await run('iscsi-ls', ['-s', '-i', ALLOWED_INITIATOR, `iscsi://${s2.address}`]);
      expect(l.exitCode, l.stdout + l.stderr).toBe(0);
      expect(l.stdout).toContain(`Target:${IQN} Portal:${s2.address},1`);
      expect(l.stdout).toContain(`Target:${IQN_ACL} Portal:${s2.address},1`);
      expect(l.stdout).toMatch(/Lun:0\s+Type:DIRECT_ACCESS \(Size:63M\)/);
    } finally {
      await s2.close();
    }
  });

  it('takes a qemu-img convert of random data that reads back identical, on the real SCSI unit', async () => {
    const img = join(dir, 'rand.img');
    writeFileSync(img, randomBytes(24 * MiB));
    const conv = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', img, url(IQN_REAL)]);
    expect(conv.exitCode, conv.stderr).toBe(0);
    expect(blockDevice.data.subarray(0, 24 * MiB).equals(readFileSync(img))).toBe(true);
    // The head of the volume equals the file (qemu-img compare reads it back over iSCSI).
    writeFileSync(img, blockDevice.data.subarray(0, 64 * MiB));
    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', img, url(IQN_REAL)]);
    expect(cmp.exitCode, cmp.stdout + cmp.stderr).toBe(0);
  });

  it('serves qemu-io pattern writes and reads, with CRC32C header digests when asked', async () => {
    const mark = logLines.length;
    const opts = `driver=iscsi,transport=tcp,portal=${host}:${port},target=${IQN},lun=0,header-digest=crc32c,initiator-name=iqn.2026-11.test:qemu-hd`;
    const r = await run('qemu-io', ['--image-opts', '-c', 'write -P 0xab 1M 1M', '-c', 'read -P 0xab 1M 1M', '-c', 'read -P 0 0 4k', opts]);
    expect(r.exitCode, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).not.toContain('Pattern verification failed');
    expect(unit.data.subarray(MiB, 2 * MiB).every((b) => b === 0xab)).toBe(true);
    const login = logsSince(mark, 'iSCSI login').find((l) => l.initiator === 'iqn.2026-11.test:qemu-hd');
    expect(login?.headerDigest).toBe(true);
  });

  it('runs iscsi-perf', async () => {
    const r = await run('timeout', ['-s', 'INT', '3', 'iscsi-perf', '-t', '1', '-m', '16', url(IQN)]);
    const m = /iops average (\d+)/.exec(r.stdout);
    expect(m, r.stdout + r.stderr).not.toBeNull();
    expect(Number(m![1])).toBeGreaterThan(100);
  });

  it('authenticates with one-way CHAP and refuses a wrong or missing secret', async () => {
    const ok = await run('iscsi-inq', [url(IQN_CHAP, 'alice%alice-secret-123')]);
    expect(ok.exitCode, ok.stderr).toBe(0);
    const mark = logLines.length;
    const wrong = await run('iscsi-inq', [url(IQN_CHAP, 'alice%wrong-secret')]);
    expect(wrong.exitCode).not.toBe(0);
    expect(wrong.stderr).toContain('Authentication failure');
    const refused = logsSince(mark, 'iSCSI login refused');
    expect(refused.some((l) => String(l.reason).includes('wrong CHAP response') && typeof l.remote === 'string')).toBe(true);
    const none = await run('iscsi-inq', [url(IQN_CHAP)]);
    expect(none.exitCode).not.toBe(0);
  });

  it('answers mutual CHAP, and the initiator refuses a target that knows the wrong secret', async () => {
    const env = { LIBISCSI_CHAP_TARGET_USERNAME: 'target-bob', LIBISCSI_CHAP_TARGET_PASSWORD: 'target-secret-89' };
    const ok = await run('iscsi-inq', [url(IQN_MUTUAL, 'bob%bob-secret-4567')], env);
    expect(ok.exitCode, ok.stderr).toBe(0);
    const bad = await run('iscsi-inq', [url(IQN_MUTUAL, 'bob%bob-secret-4567')], { ...env, LIBISCSI_CHAP_TARGET_PASSWORD: 'not-the-secret' });
    expect(bad.exitCode).not.toBe(0);
    expect(bad.stderr).toContain('Invalid CHAP_R');
  });

  it('refuses an initiator the ACL does not name', async () => {
    const refused = await run('iscsi-inq', [url(IQN_ACL)]);
    expect(refused.exitCode).not.toBe(0);
    expect(refused.stderr).toContain('Authorization failure');
    const ok = await run('iscsi-inq', ['-i', ALLOWED_INITIATOR, url(IQN_ACL)]);
    expect(ok.exitCode, ok.stderr).toBe(0);
  });

  it('refuses an unknown target', async () => {
    const r = await run('iscsi-inq', [url('iqn.2026-11.ts.vastsky:nope')]);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toContain('Target not found');
  });
});

// --- Login ------------------------------------------------------------------------

describe('iSCSI login', () => {
  it('negotiates operational keys by their rules and declares its own limits', async () => {
    const c = await RawInitiator.connect();
    expect(await c.login({
      keys: [
        ['HeaderDigest', 'None,CRC32C'], ['DataDigest', 'CRC32C,None'], ['MaxBurstLength', '16776192'], ['FirstBurstLength', '4096'],
        ['InitialR2T', 'No'], ['ImmediateData', 'Yes'], ['MaxOutstandingR2T', '8'], ['DefaultTime2Wait', '0'],
        ['DefaultTime2Retain', '3600'], ['ErrorRecoveryLevel', '2'], ['MaxConnections', '4'], ['DataPDUInOrder', 'No'],
        ['X-com.example.foo', 'bar'], ['OFMarker', 'Yes'], ['OFMarkInt', '2048~8192'], ['MaxBurstLength2', '1'],
      ],
    })).toBe(0);
    const k = c.loginKeys;
    expect(k.get('HeaderDigest')).toBe('None'); // the initiator's first acceptable choice
    expect(k.get('DataDigest')).toBe('CRC32C');
    expect(k.get('MaxBurstLength')).toBe(String(1024 * 1024)); // min
    expect(k.get('FirstBurstLength')).toBe('4096'); // min
    expect(k.get('InitialR2T')).toBe('No'); // OR
    expect(k.get('ImmediateData')).toBe('Yes'); // AND
    expect(k.get('MaxOutstandingR2T')).toBe('4');
    expect(k.get('DefaultTime2Wait')).toBe('2'); // max
    expect(k.get('DefaultTime2Retain')).toBe('0'); // min
    expect(k.get('ErrorRecoveryLevel')).toBe('0');
    expect(k.get('MaxConnections')).toBe('1');
    expect(k.get('DataPDUInOrder')).toBe('Yes'); // OR with our Yes
    expect(k.get('X-com.example.foo')).toBe('NotUnderstood');
    expect(k.get('MaxBurstLength2')).toBe('NotUnderstood');
    expect(k.get('OFMarker')).toBe('No');
    expect(k.get('OFMarkInt')).toBe('Irrelevant');
    expect(k.get('MaxRecvDataSegmentLength')).toBe(String(256 * 1024)); // declared
    expect(k.get('TargetPortalGroupTag')).toBe('1');
    expect(c.tsih).not.toBe(0);
    expect(server.sessionCount(IQN)).toBeGreaterThanOrEqual(1);
    // Data digests are on: a command round-trips with them.
    const itt = c.command(inquiryCdb(36), { edtl: 36, read: true });
    const r = await c.result(itt);
    expect(r.status).toBe(0);
    expect(r.data.subarray(8, 12).toString()).toBe('TEST');
    await c.logout();
  });

  it('goes through one-way and mutual CHAP, and refuses a reflected challenge', async () => {
    const a = await RawInitiator.connect();
    expect(await a.login({ target: IQN_CHAP, chap: { user: 'alice', secret: 'alice-secret-123' } })).toBe(0);
    await a.logout();
    const b = await RawInitiator.connect();
    expect(await b.login({
      target: IQN_MUTUAL, chap: { user: 'bob', secret: 'bob-secret-4567', mutual: { user: 'target-bob', secret: 'target-secret-89' } },
    })).toBe(0);
    await b.logout();
    const mark = logLines.length;
    const c = await RawInitiator.connect();
    expect(await c.login({
      target: IQN_MUTUAL, chap: { user: 'bob', secret: 'bob-secret-4567', mutual: { user: 'target-bob', secret: 'x' }, reflect: true },
    })).toBe(LoginStatus.AUTH_FAILURE);
    await c.waitClosed();
    expect(logsSince(mark, 'iSCSI login refused').some((l) => String(l.reason).includes('reflected'))).toBe(true);
    // Mutual CHAP asked of a target that has no mutual secret.
    const d = await RawInitiator.connect();
    expect(await d.login({
      target: IQN_CHAP, chap: { user: 'alice', secret: 'alice-secret-123', mutual: { user: 'x', secret: 'y' } },
    })).toBe(LoginStatus.AUTH_FAILURE);
  });

  it('answers each login error with its status class and detail, then closes', async () => {
    const cases: [LoginOptions, number][] = [
      [{ target: 'iqn.2026-11.ts.vastsky:missing' }, LoginStatus.TARGET_NOT_FOUND],
      [{ target: IQN_ACL }, LoginStatus.AUTHORIZATION_FAILURE],
      // Straight to the operational stage on a target that requires CHAP.
      [{ target: IQN_CHAP }, LoginStatus.AUTH_FAILURE],
      [{ target: IQN_CHAP, chap: { user: 'mallory', secret: 'alice-secret-123' } }, LoginStatus.AUTH_FAILURE],
      [{ initiator: '' }, LoginStatus.MISSING_PARAMETER],
    ];
    for (const [opts, status] of cases) {
      const c = await RawInitiator.connect();
      expect(await c.login(opts)).toBe(status);
      await c.waitClosed();
    }
  });

  it('refuses a login that adds a connection to a session, and an unsupported version', async () => {
    const a = await loggedIn();
    const b = await RawInitiator.connect();
    b.send(loginRequest({ transit: true, csg: 1, nsg: 3, isid: '00023d000001', tsih: a.tsih, itt: 1, cmdSN: 1, expStatSN: 0 }),
      encodeTextKeys([['InitiatorName', INITIATOR], ['TargetName', IQN]]));
    expect((await b.next()).bhs.w9 >>> 16).toBe(LoginStatus.TOO_MANY_CONNECTIONS);
    const c = await RawInitiator.connect();
    c.send(loginRequest({ transit: true, csg: 1, nsg: 3, isid: '00023d000001', tsih: 0x7777, itt: 1, cmdSN: 1, expStatSN: 0 }),
      encodeTextKeys([['InitiatorName', INITIATOR], ['TargetName', IQN]]));
    expect((await c.next()).bhs.w9 >>> 16).toBe(LoginStatus.SESSION_DOES_NOT_EXIST);
    const d = await RawInitiator.connect();
    d.send(loginRequest({ transit: true, csg: 1, nsg: 3, isid: '00023d000001', itt: 1, cmdSN: 1, expStatSN: 0, versionMax: 2, versionMin: 1 }),
      encodeTextKeys([['InitiatorName', INITIATOR], ['TargetName', IQN]]));
    expect((await d.next()).bhs.w9 >>> 16).toBe(LoginStatus.UNSUPPORTED_VERSION);
    await a.logout();
  });

  it('reinstates a session: a new login with the same ISID closes the old one', async () => {
    const isid = '80123456789a';
    await until(() => server.sessionCount(IQN) === 0);
    const before = 0;
    const a = await RawInitiator.connect();
    expect(await a.login({ isid })).toBe(0);
    expect(server.sessionCount(IQN)).toBe(before + 1);
    const b = await RawInitiator.connect();
    expect(await b.login({ isid })).toBe(0);
    await a.waitClosed();
    expect(server.sessionCount(IQN)).toBe(before + 1);
    expect(unit.lostNexus).toContain(`${INITIATOR},i,0x${isid}`);
    const itt = b.command(TUR);
    expect((await b.result(itt)).status).toBe(0);
    await b.logout();
    await until(() => server.sessionCount(IQN) === before);
  });

  it('closes a session whose target is removed, or whose ACL stops naming its initiator', async () => {
    const iqn = 'iqn.2026-11.ts.vastsky:transient';
    const target: IscsiTarget = { iqn, luns: new Map([[0, new MemoryUnit(64)]]), access: { initiators: [] } };
    registry.add(target);
    const a = await loggedIn([], iqn);
    const b = await loggedIn([], iqn);
    // ACL narrowed while logged in: the session goes within a ping interval.
    target.access = { initiators: [ALLOWED_INITIATOR] };
    await a.waitClosed(TUNING.nopIntervalMs * 3);
    await b.waitClosed(TUNING.nopIntervalMs * 3);
    target.access = { initiators: [] };
    const c = await loggedIn([], iqn);
    // Removed (volume detached): the next command closes the session instead of reaching the unit.
    registry.targets.delete(iqn);
    const commands = (target.luns.get(0) as MemoryUnit).commands;
    c.command(TUR);
    await c.waitClosed();
    expect((target.luns.get(0) as MemoryUnit).commands).toBe(commands);
    await until(() => server.sessionCount(iqn) === 0);
  });

  it('closes a connection that does not finish logging in', async () => {
    const mark = logLines.length;
    const c = await RawInitiator.connect();
    await c.waitClosed(TUNING.loginTimeoutMs + 2000);
    expect(logsSince(mark, 'closing the iSCSI connection').some((l) => String(l.reason).includes('login did not complete'))).toBe(true);
  });

  it('joins login text continued over several PDUs', async () => {
    const c = await RawInitiator.connect();
    const text = encodeTextKeys([['InitiatorName', INITIATOR], ['SessionType', 'Normal'], ['TargetName', IQN]]);
    const isid = '00023d000009';
    c.send(loginRequest({ transit: false, continue: true, csg: 1, nsg: 0, isid, itt: 1, cmdSN: 5, expStatSN: 0 }), text.subarray(0, 10));
    const first = await c.next();
    expect(first.bhs.opcode).toBe(Opcode.LOGIN_RESPONSE);
    expect(first.data.length).toBe(0);
    c.send(loginRequest({ transit: true, csg: 1, nsg: 3, isid, itt: 1, cmdSN: 5, expStatSN: 0 }), text.subarray(10));
    const last = await c.next();
    expect(last.bhs.w9 >>> 16, JSON.stringify(logLines.filter((l) => l.msg === 'iSCSI login refused').slice(-1))).toBe(0);
    expect(last.bhs.flags & 0x83).toBe(0x83);
    c.cmdSN = 5;
    await c.logout();
  });
});

// --- Discovery and text ---------------------------------------------------------------

describe('iSCSI discovery and text', () => {
  it('answers SendTargets=All in a discovery session, filtered by ACL, and refuses SCSI there', async () => {
    const c = await RawInitiator.connect();
    expect(await c.login({ discovery: true, initiator: ALLOWED_INITIATOR })).toBe(0);
    expect(c.loginKeys.has('TargetPortalGroupTag')).toBe(false);
    c.send(textRequest({ itt: 9, cmdSN: c.cmdSN++, expStatSN: c.expStatSN }), encodeTextKeys([['SendTargets', 'All']]));
    const r = await c.expect(Opcode.TEXT_RESPONSE);
    const pairs = parseTextKeys(r.data);
    const names = pairs.filter(([k]) => k === 'TargetName').map(([, v]) => v);
    expect(names).toEqual(expect.arrayContaining([IQN, IQN_ACL, IQN_CHAP]));
    expect(pairs.filter(([k]) => k === 'TargetAddress').every(([, v]) => v === `${host}:${port},1`)).toBe(true);
    c.command(TUR);
    const reject = await c.expect(Opcode.REJECT);
    expect(reject.bhs.b2).toBe(RejectReason.PROTOCOL_ERROR);
    await c.logout();
  });

  it('sends a long SendTargets answer in pieces of the initiator\'s MaxRecvDataSegmentLength', async () => {
    const many = new MapRegistry();
    for (let i = 0; i < 40; i++) many.add({ iqn: `iqn.2026-11.ts.vastsky:volume-with-a-long-name-${i}`, luns: new Map(), access: { initiators: [] } });
    const s2 = await startIscsiServer({ host: '127.0.0.1', port: 0, registry: many, portalGroupTag: 7 });
    try {
      const socket = connect(Number(s2.address.split(':')[1]), '127.0.0.1');
      await new Promise((r) => socket.once('connect', r));
      const c = new (RawInitiator as unknown as new (s: Socket) => RawInitiator)(socket);
      expect(await c.login({ discovery: true, keys: [['MaxRecvDataSegmentLength', '512']] })).toBe(0);
      c.send(textRequest({ itt: 3, cmdSN: c.cmdSN++, expStatSN: c.expStatSN }), encodeTextKeys([['SendTargets', 'All']]));
      const pieces: Buffer[] = [];
      for (;;) {
        const p = await c.expect(Opcode.TEXT_RESPONSE);
        expect(p.data.length).toBeLessThanOrEqual(512);
        pieces.push(p.data);
        if ((p.bhs.flags & FINAL_BIT) !== 0) {
          expect(p.bhs.w5).toBe(RESERVED_TAG);
          break;
        }
        expect(p.bhs.flags & 0x40).toBe(0x40); // C: more follows
        c.send(textRequest({ itt: 3, ttt: p.bhs.w5, cmdSN: c.cmdSN++, expStatSN: c.expStatSN }));
      }
      expect(pieces.length).toBeGreaterThan(3);
      const pairs = parseTextKeys(Buffer.concat(pieces));
      expect(pairs.filter(([k]) => k === 'TargetName')).toHaveLength(40);
      expect(pairs.find(([k]) => k === 'TargetAddress')?.[1]).toMatch(/,7$/);
      c.destroy();
    } finally {
      await s2.close();
    }
  });
});

// --- Full feature phase ----------------------------------------------------------------

describe('iSCSI data transfer', () => {
  it('splits Data-In by the initiator\'s MaxRecvDataSegmentLength and MaxBurstLength, status in the last PDU', async () => {
    const pattern = randomBytes(64 * 1024);
    pattern.copy(unit.data, 100 * BLOCK);
    const c = await loggedIn([['MaxRecvDataSegmentLength', '4096'], ['MaxBurstLength', '16384']]);
    const itt = c.command(rw10(0x28, 100, 128), { edtl: 64 * 1024, read: true });
    const r = await c.result(itt);
    expect(r.status).toBe(0);
    expect(r.data.equals(pattern)).toBe(true);
    expect(r.dataIns).toHaveLength(16);
    r.dataIns.forEach((d, i) => {
      expect(d.dataLength).toBe(4096);
      expect(d.w9).toBe(i); // DataSN
      expect(d.w10).toBe(i * 4096); // buffer offset
      // F ends each 16 KiB sequence; S only on the last PDU.
      expect((d.flags & FINAL_BIT) !== 0).toBe(i % 4 === 3);
      expect((d.flags & 1) !== 0).toBe(i === 15);
    });
    await c.logout();
  });

  it('reports residual underflow and overflow, and sends sense in a SCSI Response', async () => {
    const c = await loggedIn();
    // INQUIRY allocation 200, EDTL 200: the unit returns 36 bytes.
    let itt = c.command(inquiryCdb(200), { edtl: 200, read: true });
    let r = await c.result(itt);
    expect(r.data).toHaveLength(36);
    expect(r.last.flags & 0x02).toBe(0x02); // U
    expect(r.last.w11).toBe(164);
    // READ of 8 blocks with EDTL 1024: cut to 1024, overflow 3072.
    itt = c.command(rw10(0x28, 0, 8), { edtl: 1024, read: true });
    r = await c.result(itt);
    expect(r.data).toHaveLength(1024);
    expect(r.last.flags & 0x04).toBe(0x04); // O
    expect(r.last.w11).toBe(3072);
    // READ past the end: CHECK CONDITION with sense data, no Data-In.
    itt = c.command(rw10(0x28, unit.blocks, 1), { edtl: 512, read: true });
    r = await c.result(itt);
    expect(r.last.opcode).toBe(Opcode.SCSI_RESPONSE);
    expect(r.status).toBe(ScsiStatus.CHECK_CONDITION);
    expect(r.sense?.[2]).toBe(0x05);
    expect(r.sense?.[12]).toBe(0x21);
    await c.logout();
  });

  it('reports write residuals from the Data-Out the CDB called for', async () => {
    const c = await loggedIn([['ImmediateData', 'Yes'], ['InitialR2T', 'No']]);
    // One block written, EDTL 0: overflow of one block.
    let itt = c.command(rw10(0x2a, 50, 1), { edtl: 0, write: true });
    let r = await c.result(itt);
    expect(r.status).toBe(0);
    expect(r.last.flags & 0x06).toBe(0x04);
    expect(r.last.w11).toBe(BLOCK);
    // One block written, EDTL two blocks: underflow of one block.
    itt = c.command(rw10(0x2a, 50, 1), { edtl: 2 * BLOCK, write: true, data: Buffer.alloc(2 * BLOCK, 1) });
    r = await c.result(itt);
    expect(r.last.flags & 0x06).toBe(0x02);
    expect(r.last.w11).toBe(BLOCK);
    // Exact: no residual.
    itt = c.command(rw10(0x2a, 50, 1), { edtl: BLOCK, write: true, data: Buffer.alloc(BLOCK, 1) });
    r = await c.result(itt);
    expect(r.last.flags & 0x06).toBe(0);
    await c.logout();
  });

  it('answers REPORT LUNS for the target and INQUIRY / other commands on a LUN that does not exist', async () => {
    const c = await loggedIn();
    const rl = Buffer.alloc(12);
    rl[0] = 0xa0;
    rl.writeUInt32BE(64, 6);
    let itt = c.command(rl, { edtl: 64, read: true, lun: 3 });
    let r = await c.result(itt);
    expect(r.status).toBe(0);
    expect(r.data.readUInt32BE(0)).toBe(8);
    itt = c.command(inquiryCdb(36), { edtl: 36, read: true, lun: 5 });
    r = await c.result(itt);
    expect(r.data[0]).toBe(0x7f);
    itt = c.command(TUR, { edtl: 0, lun: 5 });
    r = await c.result(itt);
    expect(r.status).toBe(ScsiStatus.CHECK_CONDITION);
    expect(r.sense?.[12]).toBe(0x25); // LOGICAL UNIT NOT SUPPORTED
    await c.logout();
  });

  it('solicits write data with R2Ts within MaxBurstLength and MaxOutstandingR2T', async () => {
    const c = await loggedIn([['InitialR2T', 'Yes'], ['ImmediateData', 'No'], ['MaxBurstLength', '4096'], ['MaxOutstandingR2T', '2']]);
    const payload = randomBytes(20 * 1024);
    const itt = c.command(rw10(0x2a, 2000, 40), { edtl: payload.length, write: true });
    let got = 0;
    const r2ts: Bhs[] = [];
    while (got < payload.length) {
      const r2t = await c.expect(Opcode.R2T);
      r2ts.push(r2t.bhs);
      expect(r2t.bhs.itt).toBe(itt);
      const offset = r2t.bhs.w10;
      const length = r2t.bhs.w11;
      expect(length).toBeLessThanOrEqual(4096);
      // Two PDUs per R2T.
      const half = length / 2;
      c.send(dataOut({ final: false, itt, ttt: r2t.bhs.w5, expStatSN: c.expStatSN, dataSN: 0, offset }), payload.subarray(offset, offset + half));
      c.send(dataOut({ final: true, itt, ttt: r2t.bhs.w5, expStatSN: c.expStatSN, dataSN: 1, offset: offset + half }), payload.subarray(offset + half, offset + length));
      got += length;
    }
    expect(r2ts.map((b) => b.w9)).toEqual([0, 1, 2, 3, 4]); // R2TSN
    const r = await c.result(itt);
    expect(r.status).toBe(0);
    expect(unit.data.subarray(2000 * BLOCK, 2040 * BLOCK).equals(payload)).toBe(true);
    await c.logout();
  });

  it('assembles large Data-Out with header and data digests intact', async () => {
    const c = await loggedIn([
      ['HeaderDigest', 'CRC32C'], ['DataDigest', 'CRC32C'], ['InitialR2T', 'Yes'], ['ImmediateData', 'No'],
      ['MaxBurstLength', String(MiB)], ['MaxOutstandingR2T', '2'],
    ]);
    const payload = randomBytes(3 * MiB + 4096 + 3 * BLOCK);
    const blocks = payload.length / BLOCK;
    const itt = c.command(rw10(0x2a, 8192, blocks), { edtl: payload.length, write: true });
    for (let got = 0; got < payload.length;) {
      const r2t = await c.expect(Opcode.R2T);
      const { w10: offset, w11: length } = r2t.bhs;
      // PDUs of 200000 bytes: not a multiple of 4, so pad and digest follow each.
      for (let at = 0, sn = 0; at < length; at += 200000, sn++) {
        const n = Math.min(200000, length - at);
        c.send(dataOut({ final: at + n === length, itt, ttt: r2t.bhs.w5, expStatSN: c.expStatSN, dataSN: sn, offset: offset + at }),
          payload.subarray(offset + at, offset + at + n));
      }
      got += length;
    }
    expect((await c.result(itt)).status).toBe(0);
    expect(unit.data.subarray(8192 * BLOCK, 8192 * BLOCK + payload.length).equals(payload)).toBe(true);
    await c.logout();
    // Immediate data of 200000 bytes (assembled in the command's buffer), then R2Ts for the rest.
    const d = await loggedIn([
      ['HeaderDigest', 'CRC32C'], ['DataDigest', 'CRC32C'], ['InitialR2T', 'Yes'], ['ImmediateData', 'Yes'],
      ['FirstBurstLength', '262144'], ['MaxBurstLength', String(MiB)],
    ]);
    const second = randomBytes(MiB + 512);
    const itt2 = d.command(rw10(0x2a, 20000, second.length / BLOCK), { edtl: second.length, write: true, data: second.subarray(0, 200000) });
    for (let got = 200000; got < second.length;) {
      const r2t = await d.expect(Opcode.R2T);
      expect(r2t.bhs.w10).toBe(got);
      const end = got + r2t.bhs.w11;
      for (let at = got, sn = 0; at < end; at += 200000, sn++) {
        const n = Math.min(200000, end - at);
        d.send(dataOut({ final: at + n === end, itt: itt2, ttt: r2t.bhs.w5, expStatSN: d.expStatSN, dataSN: sn, offset: at }), second.subarray(at, at + n));
      }
      got = end;
    }
    expect((await d.result(itt2)).status).toBe(0);
    expect(unit.data.subarray(20000 * BLOCK, 20000 * BLOCK + second.length).equals(second)).toBe(true);
    await d.logout();
  });

  it('takes immediate data, unsolicited Data-Out up to FirstBurstLength, then R2Ts for the rest', async () => {
    const c = await loggedIn([['InitialR2T', 'No'], ['ImmediateData', 'Yes'], ['FirstBurstLength', '8192'], ['MaxBurstLength', '8192']]);
    const payload = randomBytes(16 * 1024);
    const itt = c.command(rw10(0x2a, 3000, 32), { edtl: payload.length, write: true, final: false, data: payload.subarray(0, 4096) });
    c.send(dataOut({ final: true, itt, expStatSN: c.expStatSN, dataSN: 0, offset: 4096 }), payload.subarray(4096, 8192));
    const r2t = await c.expect(Opcode.R2T);
    expect(r2t.bhs.w10).toBe(8192);
    expect(r2t.bhs.w11).toBe(8192);
    c.send(dataOut({ final: true, itt, ttt: r2t.bhs.w5, expStatSN: c.expStatSN, dataSN: 0, offset: 8192 }), payload.subarray(8192));
    const r = await c.result(itt);
    expect(r.status).toBe(0);
    expect(unit.data.subarray(3000 * BLOCK, 3032 * BLOCK).equals(payload)).toBe(true);
    // A whole write as immediate data: no R2T at all.
    const small = randomBytes(4096);
    const itt2 = c.command(rw10(0x2a, 3100, 8), { edtl: 4096, write: true, data: small });
    expect((await c.result(itt2)).status).toBe(0);
    expect(unit.data.subarray(3100 * BLOCK, 3108 * BLOCK).equals(small)).toBe(true);
    await c.logout();
  });

  it('ends a command whose Data-Out breaks the sequence with CHECK CONDITION, and rejects Data-Out for an unknown task', async () => {
    const c = await loggedIn([['InitialR2T', 'Yes'], ['ImmediateData', 'No']]);
    c.send(dataOut({ final: true, itt: 0xabcdef, ttt: 55, expStatSN: c.expStatSN, dataSN: 0, offset: 0 }), Buffer.alloc(512));
    const rej = await c.expect(Opcode.REJECT);
    expect(rej.bhs.b2).toBe(RejectReason.INVALID_PDU_FIELD);
    expect(rej.data.readUInt32BE(16)).toBe(0xabcdef); // the rejected header comes back
    const before = Buffer.from(unit.data.subarray(0, 4096));
    for (const [dataSN, offset] of [[0, 512], [27, 0]]) {
      const itt = c.command(rw10(0x2a, 0, 8), { edtl: 4096, write: true });
      const r2t = await c.expect(Opcode.R2T);
      c.send(dataOut({ final: true, itt, ttt: r2t.bhs.w5, expStatSN: c.expStatSN, dataSN, offset }), Buffer.alloc(512, 0xee));
      const r = await c.result(itt);
      expect(r.status).toBe(ScsiStatus.CHECK_CONDITION);
      expect(r.sense?.[2]).toBe(0x0b); // ABORTED COMMAND
      expect(r.sense?.[12]).toBe(0x4b); // DATA PHASE ERROR
    }
    expect(unit.data.subarray(0, 4096).equals(before)).toBe(true); // nothing was written
    const itt = c.command(TUR);
    expect((await c.result(itt)).status).toBe(0);
    await c.logout();
  });
});

describe('iSCSI command numbering', () => {
  it('delivers commands in CmdSN order, ignores those outside the window, and slides MaxCmdSN', async () => {
    const c = await loggedIn();
    const base = c.cmdSN;
    // CmdSN base+1 first: held until base arrives.
    const second = c.command(TUR, { edtl: 0, cmdSN: base + 1 });
    expect(await c.silentFor(200)).toBe(true);
    const first = c.command(TUR, { edtl: 0, cmdSN: base });
    const a = await c.expect(Opcode.SCSI_RESPONSE);
    const b = await c.expect(Opcode.SCSI_RESPONSE);
    expect(new Set([a.bhs.itt, b.bhs.itt])).toEqual(new Set([first, second]));
    expect(b.bhs.w7).toBe(base + 2); // ExpCmdSN
    expect(b.bhs.w8 - b.bhs.w7 + 1).toBe(128); // a full window again
    c.cmdSN = base + 2;
    // Far outside the window, and a duplicate: silently ignored.
    c.command(TUR, { edtl: 0, cmdSN: base + 5000 });
    c.command(TUR, { edtl: 0, cmdSN: base });
    expect(await c.silentFor(200)).toBe(true);
    const itt = c.command(TUR);
    expect((await c.result(itt)).status).toBe(0);
    await c.logout();
  });

  it('answers NOP-Out pings with the same data, and pings an idle initiator', async () => {
    const c = await loggedIn();
    const data = Buffer.from('ping-data-123');
    c.send(nopOut({ itt: 0x4242, cmdSN: c.cmdSN, expStatSN: c.expStatSN }), data);
    const pong = await c.next();
    expect(pong.bhs.opcode).toBe(Opcode.NOP_IN);
    expect(pong.bhs.itt).toBe(0x4242);
    expect(pong.bhs.w5).toBe(RESERVED_TAG);
    expect(pong.data.toString()).toBe('ping-data-123');
    // Idle: the target pings (ITT 0xffffffff, a TTT to echo).
    const ping = await c.next(TUNING.nopIntervalMs + 1000);
    expect(ping.bhs.opcode).toBe(Opcode.NOP_IN);
    expect(ping.bhs.itt).toBe(RESERVED_TAG);
    expect(ping.bhs.w5).not.toBe(RESERVED_TAG);
    c.send(nopOut({ itt: RESERVED_TAG, ttt: ping.bhs.w5, cmdSN: c.cmdSN, expStatSN: c.expStatSN }));
    await c.logout();
  });

  it('closes a connection whose initiator stops answering pings', async () => {
    const mark = logLines.length;
    const c = await loggedIn();
    await c.waitClosed(TUNING.nopIntervalMs + TUNING.nopTimeoutMs + 2000);
    const closed = logsSince(mark, 'closing the iSCSI connection');
    expect(closed.some((l) => String(l.reason).includes('NOP-In ping') && String(l.remote).startsWith('127.0.0.1:'))).toBe(true);
  });
});

describe('iSCSI task management and logout', () => {
  it('ABORT TASK: the aborted command gets no response; the TMF response comes after it settled', async () => {
    const c = await loggedIn();
    let open!: () => void;
    unit.gate = new Promise((r) => { open = r; });
    const abortedBefore = unit.abortedSignals;
    const seen = unit.commands;
    try {
      const victim = c.command(TUR);
      const survivor = c.command(TUR);
      await until(() => unit.commands === seen + 2);
      c.send(taskManagementRequest({ fn: TmfFunction.ABORT_TASK, itt: 0x7001, referencedTag: victim, cmdSN: c.cmdSN, expStatSN: c.expStatSN, refCmdSN: c.cmdSN - 2 }));
      // The unit still holds the task: no TMF response yet.
      expect(await c.silentFor(150)).toBe(true);
      open();
      const first = await c.next();
      const second = await c.next();
      const byOp = new Map([first, second].map((p) => [p.bhs.opcode, p]));
      expect(byOp.get(Opcode.SCSI_RESPONSE)?.bhs.itt).toBe(survivor);
      expect(byOp.get(Opcode.TASK_MGMT_RESPONSE)?.bhs.b2).toBe(TmfResponse.FUNCTION_COMPLETE);
      expect(unit.abortedSignals).toBe(abortedBefore + 1);
      expect(await c.silentFor(100)).toBe(true); // nothing for the victim
    } finally {
      unit.gate = undefined;
      open();
    }
    // Unknown tag with a RefCmdSN outside the window: task does not exist.
    c.send(taskManagementRequest({ fn: TmfFunction.ABORT_TASK, itt: 0x7002, referencedTag: 0x999, cmdSN: c.cmdSN, expStatSN: c.expStatSN, refCmdSN: c.cmdSN - 50 }));
    expect((await c.expect(Opcode.TASK_MGMT_RESPONSE)).bhs.b2).toBe(TmfResponse.TASK_DOES_NOT_EXIST);
    // Never received but inside the window and before the TMF: considered received, the window moves past it.
    c.send(taskManagementRequest({ fn: TmfFunction.ABORT_TASK, itt: 0x7003, referencedTag: 0x998, cmdSN: c.cmdSN + 1, expStatSN: c.expStatSN, refCmdSN: c.cmdSN }));
    const tmf = await c.expect(Opcode.TASK_MGMT_RESPONSE);
    expect(tmf.bhs.b2).toBe(TmfResponse.FUNCTION_COMPLETE);
    expect(tmf.bhs.w7).toBe(c.cmdSN + 1); // ExpCmdSN moved past the lost command
    c.cmdSN++;
    const itt = c.command(TUR);
    expect((await c.result(itt)).status).toBe(0);
    await c.logout();
  });

  it('LUN RESET aborts tasks of every session on the LUN and resets the unit; other functions answer as they should', async () => {
    const a = await loggedIn();
    const b = await loggedIn();
    let open!: () => void;
    unit.gate = new Promise((r) => { open = r; });
    const seen = unit.commands;
    try {
      a.command(TUR);
      const bItt = b.command(TUR);
      await until(() => unit.commands === seen + 2);
      const resets = unit.resets.length;
      a.send(taskManagementRequest({ fn: TmfFunction.LOGICAL_UNIT_RESET, itt: 0x8001, cmdSN: a.cmdSN, expStatSN: a.expStatSN }));
      expect(await a.silentFor(100)).toBe(true);
      open();
      expect((await a.expect(Opcode.TASK_MGMT_RESPONSE)).bhs.b2).toBe(TmfResponse.FUNCTION_COMPLETE);
      expect(unit.resets.slice(resets)).toEqual(['lun']);
      // The other session's task ends with TASK ABORTED.
      const rb = await b.result(bItt);
      expect(rb.status).toBe(ScsiStatus.TASK_ABORTED);
    } finally {
      unit.gate = undefined;
      open();
    }
    const tmf = async (fn: number, lun = 0): Promise<number> => {
      a.send(taskManagementRequest({ fn, lun, itt: a.nextItt(), cmdSN: a.cmdSN, expStatSN: a.expStatSN }));
      return (await a.expect(Opcode.TASK_MGMT_RESPONSE)).bhs.b2;
    };
    expect(await tmf(TmfFunction.LOGICAL_UNIT_RESET, 9)).toBe(TmfResponse.LUN_DOES_NOT_EXIST);
    expect(await tmf(TmfFunction.ABORT_TASK_SET)).toBe(TmfResponse.FUNCTION_COMPLETE);
    expect(await tmf(TmfFunction.CLEAR_TASK_SET)).toBe(TmfResponse.FUNCTION_COMPLETE);
    expect(await tmf(TmfFunction.TARGET_WARM_RESET)).toBe(TmfResponse.FUNCTION_COMPLETE);
    expect(unit.resets.at(-1)).toBe('target');
    expect(await tmf(TmfFunction.TARGET_COLD_RESET)).toBe(TmfResponse.FUNCTION_NOT_SUPPORTED);
    expect(await tmf(TmfFunction.CLEAR_ACA)).toBe(TmfResponse.FUNCTION_NOT_SUPPORTED);
    expect(await tmf(TmfFunction.TASK_REASSIGN)).toBe(TmfResponse.ALLEGIANCE_REASSIGNMENT_NOT_SUPPORTED);
    expect(await tmf(42)).toBe(TmfResponse.FUNCTION_REJECTED);
    await a.logout();
    await b.logout();
  });

  it('logs out: commands in flight are answered first, then the Logout Response, then the connection closes', async () => {
    const c = await loggedIn();
    let open!: () => void;
    unit.gate = new Promise((r) => { open = r; });
    const lost = unit.lostNexus.length;
    const seen = unit.commands;
    try {
      const itt = c.command(TUR);
      await until(() => unit.commands === seen + 1);
      c.send(logoutRequest({ reason: 0, itt: 0x9001, cmdSN: c.cmdSN, expStatSN: c.expStatSN }));
      expect(await c.silentFor(100)).toBe(true);
      open();
      expect((await c.expect(Opcode.SCSI_RESPONSE)).bhs.itt).toBe(itt);
      const lo = await c.expect(Opcode.LOGOUT_RESPONSE);
      expect(lo.bhs.b2).toBe(0);
      expect(lo.bhs.w10 >>> 16).toBe(2); // Time2Wait
      await c.waitClosed();
      await until(() => unit.lostNexus.length > lost);
    } finally {
      unit.gate = undefined;
      open();
    }
    // Logout of a connection that is not ours, and connection recovery (ERL 2): refused, session goes on.
    const d = await loggedIn();
    d.send(logoutRequest({ reason: 1, cid: 9, itt: 1, cmdSN: d.cmdSN, expStatSN: d.expStatSN }));
    expect((await d.expect(Opcode.LOGOUT_RESPONSE)).bhs.b2).toBe(1);
    d.send(logoutRequest({ reason: 2, itt: 2, cmdSN: d.cmdSN, expStatSN: d.expStatSN }));
    expect((await d.expect(Opcode.LOGOUT_RESPONSE)).bhs.b2).toBe(2);
    await d.logout();
  });
});

describe('iSCSI robustness', () => {
  it('closes only the connection that sends garbage; another session keeps working', async () => {
    const mark = logLines.length;
    const good = await loggedIn();
    const bad = await loggedIn();
    // Garbage whose first 48 bytes announce a data segment far above the limit.
    const garbage = randomBytes(4096);
    garbage.writeUIntBE(0xfffff0, 5, 3);
    bad.raw(garbage);
    await bad.waitClosed();
    const pre = await RawInitiator.connect();
    pre.raw(Buffer.alloc(48, 0xff));
    await pre.waitClosed();
    const itt = good.command(inquiryCdb(36), { edtl: 36, read: true });
    expect((await good.result(itt)).status).toBe(0);
    const inq = await run('iscsi-inq', [url(IQN)]);
    expect(inq.exitCode, inq.stderr).toBe(0);
    const closes = logLines.slice(mark).filter((l) => /protocol violation|closing the iSCSI connection/.test(String(l.msg)));
    expect(closes.length).toBeGreaterThanOrEqual(2);
    expect(closes.every((l) => typeof l.remote === 'string' && typeof l.reason === 'string')).toBe(true);
    await good.logout();
  });

  it('closes the connection on a bad header digest, rejects a bad data digest, rejects an oversized segment', async () => {
    const keys: KeyPair[] = [['HeaderDigest', 'CRC32C'], ['DataDigest', 'CRC32C']];
    const a = await loggedIn(keys);
    expect(a.spec.headerDigest && a.spec.dataDigest).toBe(true);
    let itt = a.command(TUR);
    expect((await a.result(itt)).status).toBe(0);
    const pdu = encodePdu(nopOut({ itt: 5, cmdSN: a.cmdSN, expStatSN: a.expStatSN }), undefined, undefined, { header: true, data: true });
    pdu[50] ^= 0xff; // header digest
    a.raw(pdu);
    await a.waitClosed();
    expect(await a.silentFor(0)).toBe(true);

    const b = await loggedIn(keys);
    const bad = encodePdu(nopOut({ itt: 6, cmdSN: b.cmdSN, expStatSN: b.expStatSN }), Buffer.from('abcdefgh'), undefined, { header: true, data: true });
    bad[bad.length - 1] ^= 0xff; // data digest
    b.raw(bad);
    const rej = await b.expect(Opcode.REJECT);
    expect(rej.bhs.b2).toBe(RejectReason.DATA_DIGEST_ERROR);
    await b.waitClosed();

    const c = await loggedIn();
    itt = c.nextItt();
    const header = encodePdu(nopOut({ itt, cmdSN: c.cmdSN, expStatSN: c.expStatSN }));
    header.writeUIntBE(300 * 1024, 5, 3); // above our MaxRecvDataSegmentLength of 256 KiB
    c.raw(header);
    const over = await c.expect(Opcode.REJECT);
    expect(over.bhs.b2).toBe(RejectReason.PROTOCOL_ERROR);
    await c.waitClosed();
  });

  it('rejects unknown opcodes and SNACK, and keeps the connection', async () => {
    const c = await loggedIn();
    c.send({ opcode: 0x1c, immediate: true, flags: 0x80, itt: 77 });
    expect((await c.expect(Opcode.REJECT)).bhs.b2).toBe(RejectReason.COMMAND_NOT_SUPPORTED);
    c.send({ opcode: Opcode.SNACK_REQUEST, flags: 0x80, itt: 78 });
    expect((await c.expect(Opcode.REJECT)).bhs.b2).toBe(RejectReason.PROTOCOL_ERROR);
    c.send({ opcode: Opcode.SCSI_RESPONSE, flags: 0x80, itt: 79 });
    expect((await c.expect(Opcode.REJECT)).bhs.b2).toBe(RejectReason.PROTOCOL_ERROR);
    const itt = c.command(TUR);
    expect((await c.result(itt)).status).toBe(0);
    await c.logout();
  });

  it('bounds logins in progress: a flood is refused and times out, then real initiators log in again', async () => {
    const s2 = await startIscsiServer({ host: '127.0.0.1', port: 0, registry }, { maxLoginsInProgress: 4, loginTimeoutMs: 400 });
    try {
      const sockets: Socket[] = [];
      const closedCount = { n: 0 };
      for (let i = 0; i < 10; i++) {
        const s = connect(Number(s2.address.split(':')[1]), '127.0.0.1');
        s.on('error', () => {});
        s.on('close', () => { closedCount.n++; });
        sockets.push(s);
      }
      // Six refused at once, four time out.
      await until(() => closedCount.n >= 6, 2000);
      await until(() => closedCount.n === 10, 3000);
      const r = await run('iscsi-inq', [`iscsi://${s2.address}/${IQN}/0`]);
      expect(r.exitCode, r.stderr).toBe(0);
      await until(() => s2.sessionCount() === 0);
    } finally {
      await s2.close();
    }
  });

  it('closes with commands in flight: they are answered within the grace period', async () => {
    const s2 = await startIscsiServer({ host: '127.0.0.1', port: 0, registry }, { closeGraceMs: 2000 });
    const socket = connect(Number(s2.address.split(':')[1]), '127.0.0.1');
    await new Promise((r) => socket.once('connect', r));
    const c = new (RawInitiator as unknown as new (s: Socket) => RawInitiator)(socket);
    expect(await c.login()).toBe(0);
    let open!: () => void;
    unit.gate = new Promise((r) => { open = r; });
    const seen = unit.commands;
    try {
      const itt = c.command(TUR);
      await until(() => unit.commands === seen + 1);
      const closing = s2.close();
      setTimeout(() => open(), 100);
      expect((await c.result(itt)).status).toBe(0);
      await closing;
      await c.waitClosed();
    } finally {
      unit.gate = undefined;
      open();
    }
  });
});

describe('iSCSI fuzz (in process)', () => {
  it('survives garbage, mutated logins and random PDUs after login, and keeps serving', async () => {
    let a = Number(process.env.VSKY_FUZZ_SEED ?? 20261121);
    const rnd = (): number => { // mulberry32
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
    const login = encodePdu(loginRequest({ transit: true, csg: 1, nsg: 3, isid: '80aabbccddee', itt: 1, cmdSN: 1, expStatSN: 0 }),
      encodeTextKeys([['InitiatorName', 'iqn.2026-11.test:fuzz'], ['TargetName', IQN], ['HeaderDigest', 'CRC32C,None']]));
    const opcodes = [0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x10, 0x03, 0x1c, 0x3f];
    const rounds = Number(process.env.VSKY_FUZZ_ROUNDS ?? 90);
    for (let round = 0; round < rounds; round++) {
      const c = await RawInitiator.connect();
      const kind = round % 3;
      if (kind === 0) {
        c.raw(Buffer.from(Array.from({ length: 1 + Math.floor(rnd() * 600) }, () => Math.floor(rnd() * 256))));
      } else if (kind === 1) {
        const m = Buffer.from(login);
        for (let i = 0; i < 1 + Math.floor(rnd() * 4); i++) m[Math.floor(rnd() * m.length)] = Math.floor(rnd() * 256);
        c.raw(m);
      } else {
        expect(await c.login()).toBe(0);
        for (let i = 0; i < 5; i++) {
          const len = rnd() < 0.5 ? 0 : Math.floor(rnd() * 2000);
          const f: BhsFields = {
            opcode: opcodes[Math.floor(rnd() * opcodes.length)]!, immediate: rnd() < 0.5, flags: Math.floor(rnd() * 256),
            b2: Math.floor(rnd() * 256), w2: rnd() < 0.7 ? 0 : Math.floor(rnd() * 2 ** 32), itt: Math.floor(rnd() * 2 ** 32),
            w5: Math.floor(rnd() * 2 ** 32), w6: rnd() < 0.5 ? c.cmdSN : Math.floor(rnd() * 2 ** 32), w7: Math.floor(rnd() * 2 ** 32),
            w8: Math.floor(rnd() * 2 ** 32), w9: Math.floor(rnd() * 2 ** 32), w10: Math.floor(rnd() * 2 ** 32), w11: Math.floor(rnd() * 2 ** 32),
          };
          c.send(f, len > 0 ? randomBytes(len) : undefined);
        }
      }
      await Promise.race([c.closedPromise, new Promise((r) => setTimeout(r, 30))]);
      c.destroy();
    }
    const r = await run('iscsi-inq', [url(IQN)]);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(logLines.some((l) => l.msg === 'unexpected error handling a PDU')).toBe(false);
    await until(() => server.sessionCount() === 0, 5000);
  });
});
