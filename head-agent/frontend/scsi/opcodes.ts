// The supported-command table: the dispatcher looks commands up here, and
// REPORT SUPPORTED OPERATION CODES (SPC-4 6.35) reports exactly this table,
// so the two cannot drift apart. Each entry names its handler, its CDB usage
// data (the bits the device server examines), and how reservations treat it.

import type { Access } from './persistent-reservations.js';
import { invalidFieldInCdb } from './sense.js';
import type { RsocRequest } from './cdb.js';

export interface CommandSpec {
  name: string;
  opcode: number;
  /** Service action, for opcodes that have them (SERVACTV=1). */
  sa?: number;
  /** CDB USAGE DATA; its length is the CDB length. Byte 0 is the opcode. */
  usage: readonly number[];
  /**
   * Persistent reservations (SPC-4 table 59, SBC-3 table 13): 'read' and
   * 'write' follow the type's access rules, 'free' is always allowed (or,
   * for the reservation commands themselves, checked by the handler).
   */
  access: Access | 'free';
  /** Allowed from other I_T nexuses while one holds a RESERVE(6) reservation. */
  legacyFree?: boolean;
  /** Neither reports nor clears a pending unit attention (SAM-5 5.14). */
  noUa?: boolean;
}

const C = 0x04; // CONTROL byte: NACA is examined (and refused)
const L4 = [0xff, 0xff, 0xff, 0xff];
const L8 = [...L4, ...L4];

export const COMMANDS = [
  { name: 'TEST UNIT READY', opcode: 0x00, usage: [0x00, 0, 0, 0, 0, C], access: 'free', legacyFree: true },
  { name: 'REQUEST SENSE', opcode: 0x03, usage: [0x03, 0x01, 0, 0, 0xff, C], access: 'free', legacyFree: true, noUa: true },
  { name: 'READ(6)', opcode: 0x08, usage: [0x08, 0x1f, 0xff, 0xff, 0xff, C], access: 'read' },
  { name: 'WRITE(6)', opcode: 0x0a, usage: [0x0a, 0x1f, 0xff, 0xff, 0xff, C], access: 'write' },
  { name: 'INQUIRY', opcode: 0x12, usage: [0x12, 0x01, 0xff, 0xff, 0xff, C], access: 'free', legacyFree: true, noUa: true },
  { name: 'MODE SELECT(6)', opcode: 0x15, usage: [0x15, 0x11, 0, 0, 0xff, C], access: 'write' },
  { name: 'RESERVE(6)', opcode: 0x16, usage: [0x16, 0, 0, 0, 0, C], access: 'free' },
  { name: 'RELEASE(6)', opcode: 0x17, usage: [0x17, 0, 0, 0, 0, C], access: 'free', legacyFree: true },
  { name: 'MODE SENSE(6)', opcode: 0x1a, usage: [0x1a, 0x08, 0xff, 0xff, 0xff, C], access: 'read' },
  { name: 'START STOP UNIT', opcode: 0x1b, usage: [0x1b, 0x01, 0, 0x0f, 0xf7, C], access: 'write' },
  { name: 'READ CAPACITY(10)', opcode: 0x25, usage: [0x25, 0, ...L4, 0, 0, 0x01, C], access: 'free' },
  { name: 'READ(10)', opcode: 0x28, usage: [0x28, 0xf8, ...L4, 0, 0xff, 0xff, C], access: 'read' },
  { name: 'WRITE(10)', opcode: 0x2a, usage: [0x2a, 0xf8, ...L4, 0, 0xff, 0xff, C], access: 'write' },
  { name: 'WRITE AND VERIFY(10)', opcode: 0x2e, usage: [0x2e, 0xf6, ...L4, 0, 0xff, 0xff, C], access: 'write' },
  { name: 'VERIFY(10)', opcode: 0x2f, usage: [0x2f, 0xf6, ...L4, 0, 0xff, 0xff, C], access: 'read' },
  { name: 'SYNCHRONIZE CACHE(10)', opcode: 0x35, usage: [0x35, 0x02, ...L4, 0, 0xff, 0xff, C], access: 'write' },
  { name: 'WRITE SAME(10)', opcode: 0x41, usage: [0x41, 0xfe, ...L4, 0, 0xff, 0xff, C], access: 'write' },
  { name: 'UNMAP', opcode: 0x42, usage: [0x42, 0x01, 0, 0, 0, 0, 0, 0xff, 0xff, C], access: 'write' },
  { name: 'MODE SELECT(10)', opcode: 0x55, usage: [0x55, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, C], access: 'write' },
  { name: 'MODE SENSE(10)', opcode: 0x5a, usage: [0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, C], access: 'read' },
  ...[0, 1, 2, 3].map((sa) => ({
    name: `PERSISTENT RESERVE IN/${sa}`, opcode: 0x5e, sa, usage: [0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, C], access: 'free' as const,
  })),
  ...[0, 1, 2, 3, 4, 5, 6].map((sa) => ({
    name: `PERSISTENT RESERVE OUT/${sa}`, opcode: 0x5f, sa, usage: [0x5f, 0x1f, 0xff, 0, 0, ...L4, C], access: 'free' as const,
  })),
  { name: 'READ(16)', opcode: 0x88, usage: [0x88, 0xf8, ...L8, ...L4, 0, C], access: 'read' },
  { name: 'COMPARE AND WRITE', opcode: 0x89, usage: [0x89, 0xf8, ...L8, 0, 0, 0, 0xff, 0, C], access: 'write' },
  { name: 'WRITE(16)', opcode: 0x8a, usage: [0x8a, 0xf8, ...L8, ...L4, 0, C], access: 'write' },
  { name: 'WRITE AND VERIFY(16)', opcode: 0x8e, usage: [0x8e, 0xf6, ...L8, ...L4, 0, C], access: 'write' },
  { name: 'VERIFY(16)', opcode: 0x8f, usage: [0x8f, 0xf6, ...L8, ...L4, 0, C], access: 'read' },
  { name: 'SYNCHRONIZE CACHE(16)', opcode: 0x91, usage: [0x91, 0x02, ...L8, ...L4, 0, C], access: 'write' },
  { name: 'WRITE SAME(16)', opcode: 0x93, usage: [0x93, 0xf9, ...L8, ...L4, 0, C], access: 'write' },
  { name: 'READ CAPACITY(16)', opcode: 0x9e, sa: 0x10, usage: [0x9e, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, ...L4, 0, C], access: 'free' },
  { name: 'GET LBA STATUS', opcode: 0x9e, sa: 0x12, usage: [0x9e, 0x1f, ...L8, ...L4, 0, C], access: 'read' },
  { name: 'REPORT LUNS', opcode: 0xa0, usage: [0xa0, 0, 0xff, 0, 0, 0, ...L4, 0, C], access: 'free', legacyFree: true, noUa: true },
  {
    name: 'REPORT SUPPORTED OPERATION CODES', opcode: 0xa3, sa: 0x0c,
    usage: [0xa3, 0x1f, 0x87, 0xff, 0xff, 0xff, ...L4, 0, C], access: 'free',
  },
  { name: 'READ(12)', opcode: 0xa8, usage: [0xa8, 0xf8, ...L4, ...L4, 0, C], access: 'read' },
  { name: 'WRITE(12)', opcode: 0xaa, usage: [0xaa, 0xf8, ...L4, ...L4, 0, C], access: 'write' },
  { name: 'WRITE AND VERIFY(12)', opcode: 0xae, usage: [0xae, 0xf6, ...L4, ...L4, 0, C], access: 'write' },
  { name: 'VERIFY(12)', opcode: 0xaf, usage: [0xaf, 0xf6, ...L4, ...L4, 0, C], access: 'read' },
] as const satisfies readonly CommandSpec[];

export type CommandName = (typeof COMMANDS)[number]['name'];
export type Command = CommandSpec & { name: CommandName };

/** Opcodes whose service action selects the command, and where the SA field is. */
const SA_FIELD: ReadonlyMap<number, (cdb: Buffer) => number> = new Map([
  [0x5e, (cdb: Buffer) => cdb[1]! & 0x1f],
  [0x5f, (cdb: Buffer) => cdb[1]! & 0x1f],
  [0x9e, (cdb: Buffer) => cdb[1]! & 0x1f],
  [0xa3, (cdb: Buffer) => cdb[1]! & 0x1f],
]);

const BY_KEY = new Map<number, Command>();
for (const c of COMMANDS as readonly Command[]) BY_KEY.set(c.opcode * 0x10000 + (c.sa ?? 0), c);

export function hasServiceActions(opcode: number): boolean {
  return SA_FIELD.has(opcode);
}

export function findCommand(opcode: number, sa: number): Command | undefined {
  return BY_KEY.get(opcode * 0x10000 + (hasServiceActions(opcode) ? sa : 0));
}

/** The command a CDB asks for, or undefined (INVALID COMMAND OPERATION CODE). */
export function lookupCdb(cdb: Buffer): Command | undefined {
  const opcode = cdb[0]!;
  const sa = SA_FIELD.get(opcode)?.(cdb) ?? 0;
  return findCommand(opcode, sa);
}

// Command timeouts descriptor (SPC-4 6.35.4): nominal and recommended, seconds.
const NOMINAL_TIMEOUT_S = 5;
const RECOMMENDED_TIMEOUT_S = 60;

function timeoutsDescriptor(): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(0x0a, 0);
  b.writeUInt32BE(NOMINAL_TIMEOUT_S, 4);
  b.writeUInt32BE(RECOMMENDED_TIMEOUT_S, 8);
  return b;
}

/** REPORT SUPPORTED OPERATION CODES parameter data, before truncation. */
export function reportSupportedOpcodes(req: RsocRequest): Buffer {
  if (req.options === 0) {
    const descs: Buffer[] = [];
    for (const c of COMMANDS as readonly Command[]) {
      const d = Buffer.alloc(8);
      d[0] = c.opcode;
      d.writeUInt16BE(c.sa ?? 0, 2);
      d[5] = (req.rctd ? 0x02 : 0) | (c.sa !== undefined ? 0x01 : 0); // CTDP, SERVACTV
      d.writeUInt16BE(c.usage.length, 6);
      descs.push(d);
      if (req.rctd) descs.push(timeoutsDescriptor());
    }
    const body = Buffer.concat(descs);
    const head = Buffer.alloc(4);
    head.writeUInt32BE(body.length, 0);
    return Buffer.concat([head, body]);
  }
  const withSa = hasServiceActions(req.opcode);
  // 001b: the opcode alone (an error for opcodes with service actions);
  // 010b: opcode + service action (an error for those without); 011b: either.
  if (req.options === 1 && withSa) throw invalidFieldInCdb(2, 0);
  if (req.options === 2 && !withSa) throw invalidFieldInCdb(2, 1);
  if (req.options > 3) throw invalidFieldInCdb(2, 2);
  const c = findCommand(req.opcode, req.sa);
  const head = Buffer.alloc(4);
  if (c === undefined) {
    head[1] = 0x01; // SUPPORT 001b: not supported
    return head;
  }
  head[1] = (req.rctd ? 0x80 : 0) | 0x03; // CTDP, SUPPORT 011b: supported as the standard says
  head.writeUInt16BE(c.usage.length, 2);
  const parts: Buffer[] = [head, Buffer.from(c.usage)];
  if (req.rctd) parts.push(timeoutsDescriptor());
  return Buffer.concat(parts);
}
