// Persistent reservations (SPC-4 5.13): registrations keyed by I_T nexus, at
// most one reservation, the PRgeneration counter, the access rules of SPC-4
// table 59 (which I_T nexus may read and write under which reservation type),
// and the PERSISTENT RESERVE IN data formats. State lives in memory: APTPL is
// not supported (PTPL_C = 0), so registrations do not survive the head agent.
//
// Every method either returns the unit attentions it caused (for the caller
// to queue on the named nexuses) or throws SenseError / StatusError.

import {
  Asc, SenseError, SenseKey, invalidFieldInCdb, invalidFieldInParameters, parameterListLengthError, reservationConflict,
} from './sense.js';

export const PrType = {
  WRITE_EXCLUSIVE: 1,
  EXCLUSIVE_ACCESS: 3,
  WRITE_EXCLUSIVE_REGISTRANTS_ONLY: 5,
  EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: 6,
  WRITE_EXCLUSIVE_ALL_REGISTRANTS: 7,
  EXCLUSIVE_ACCESS_ALL_REGISTRANTS: 8,
} as const;

export const PrOutAction = {
  REGISTER: 0,
  RESERVE: 1,
  RELEASE: 2,
  CLEAR: 3,
  PREEMPT: 4,
  PREEMPT_AND_ABORT: 5,
  REGISTER_AND_IGNORE_EXISTING_KEY: 6,
} as const;

export const PrInAction = { READ_KEYS: 0, READ_RESERVATION: 1, REPORT_CAPABILITIES: 2, READ_FULL_STATUS: 3 } as const;

const VALID_TYPES = new Set<number>(Object.values(PrType));
const LU_SCOPE = 0;

function allRegistrants(type: number): boolean {
  return type === PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS || type === PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS;
}

function registrantsOnly(type: number): boolean {
  return type === PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY || type === PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY;
}

/** How a command touches the medium, for the reservation access rules. */
export type Access = 'read' | 'write';

export interface UnitAttention {
  nexus: string;
  /** ASC << 8 | ASCQ. */
  code: number;
}

/** The PERSISTENT RESERVE OUT basic parameter list (SPC-4 6.16.3, 24 bytes). */
export interface ProutParams {
  key: bigint;
  saKey: bigint;
  specIPt: boolean;
  allTgPt: boolean;
  aptpl: boolean;
}

export function parseProutParams(data: Buffer | undefined, paramLength: number): ProutParams {
  // SPEC_I_PT and REGISTER AND MOVE (the only longer lists) are not
  // supported, so the list is exactly 24 bytes (SPC-4 6.16.3).
  const avail = Math.min(paramLength, data?.length ?? 0);
  if (paramLength !== 24 || avail < 24 || data === undefined) throw parameterListLengthError();
  const flags = data[20]!;
  return {
    key: data.readBigUInt64BE(0),
    saKey: data.readBigUInt64BE(8),
    specIPt: (flags & 0x08) !== 0,
    allTgPt: (flags & 0x04) !== 0,
    aptpl: (flags & 0x01) !== 0,
  };
}

interface Reservation {
  /** The nexus that reserved (for all-registrants types every registrant holds it). */
  holder: string;
  type: number;
  scope: number;
}

export class PersistentReservations {
  /** PRGENERATION (SPC-4 6.15.2): bumped by REGISTER*, CLEAR, PREEMPT*; 32-bit wrapping. */
  generation = 0;
  /** nexus -> reservation key, in registration order. */
  private readonly regs = new Map<string, bigint>();
  private res: Reservation | undefined;

  get registered(): number {
    return this.regs.size;
  }

  isRegistered(nexus: string): boolean {
    return this.regs.has(nexus);
  }

  private isHolder(nexus: string): boolean {
    const r = this.res;
    if (r === undefined) return false;
    return allRegistrants(r.type) ? this.regs.has(nexus) : r.holder === nexus;
  }

  /** SPC-4 5.13.1 table 59 (and SBC-3 table 13): does this access by `nexus` conflict? */
  conflicts(nexus: string, access: Access): boolean {
    const r = this.res;
    if (r === undefined || this.isHolder(nexus)) return false;
    switch (r.type) {
      case PrType.WRITE_EXCLUSIVE:
        return access === 'write';
      case PrType.EXCLUSIVE_ACCESS:
        return true;
      case PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY:
      case PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS:
        return access === 'write' && !this.regs.has(nexus);
      default: // EA-RO, EA-AR
        return !this.regs.has(nexus);
    }
  }

  /** Runs one PERSISTENT RESERVE OUT service action; returns the unit attentions it establishes. */
  out(nexus: string, sa: number, scope: number, type: number, p: ProutParams): UnitAttention[] {
    if (p.specIPt) throw invalidFieldInParameters(20, 3);
    if (p.allTgPt) throw invalidFieldInParameters(20, 2);
    if (p.aptpl) throw invalidFieldInParameters(20, 0);
    switch (sa) {
      case PrOutAction.REGISTER:
        return this.register(nexus, p, false);
      case PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY:
        return this.register(nexus, p, true);
      case PrOutAction.RESERVE:
        this.checkRegistered(nexus, p.key);
        this.checkScopeType(scope, type);
        return this.reserve(nexus, type);
      case PrOutAction.RELEASE:
        this.checkRegistered(nexus, p.key);
        return this.release(nexus, scope, type);
      case PrOutAction.CLEAR:
        this.checkRegistered(nexus, p.key);
        return this.clear(nexus);
      case PrOutAction.PREEMPT:
      case PrOutAction.PREEMPT_AND_ABORT:
        this.checkRegistered(nexus, p.key);
        this.checkScopeType(scope, type);
        return this.preempt(nexus, p.saKey, type);
      default:
        // REGISTER AND MOVE, REPLACE LOST RESERVATION and reserved values.
        throw invalidFieldInCdb(1, 4);
    }
  }

  private checkRegistered(nexus: string, key: bigint): void {
    const mine = this.regs.get(nexus);
    if (mine === undefined || mine !== key) throw reservationConflict();
  }

  private checkScopeType(scope: number, type: number): void {
    if (scope !== LU_SCOPE) throw invalidFieldInCdb(2, 7);
    if (!VALID_TYPES.has(type)) throw invalidFieldInCdb(2, 3);
  }

  private bump(): void {
    this.generation = (this.generation + 1) >>> 0;
  }

  /** REGISTER / REGISTER AND IGNORE EXISTING KEY (SPC-4 5.13.7). */
  private register(nexus: string, p: ProutParams, ignoreExisting: boolean): UnitAttention[] {
    const mine = this.regs.get(nexus);
    if (mine === undefined) {
      if (!ignoreExisting && p.key !== 0n) throw reservationConflict();
      if (p.saKey === 0n) return []; // unregistered nexus registering key 0: nothing to do
      this.regs.set(nexus, p.saKey);
      this.bump();
      return [];
    }
    if (!ignoreExisting && p.key !== mine) throw reservationConflict();
    this.bump();
    if (p.saKey !== 0n) {
      this.regs.set(nexus, p.saKey);
      return [];
    }
    return this.unregister(nexus);
  }

  /** Removes `nexus`'s registration and releases what it held (SPC-4 5.13.11.2.3). */
  private unregister(nexus: string): UnitAttention[] {
    this.regs.delete(nexus);
    const r = this.res;
    if (r === undefined) return [];
    if (allRegistrants(r.type)) {
      // An all-registrants reservation lasts while anyone is registered.
      if (this.regs.size === 0) this.res = undefined;
      return [];
    }
    if (r.holder !== nexus) return [];
    this.res = undefined;
    // Only registrants-only reservations tell the other registrants (SPC-4 5.13.11.2.3).
    return registrantsOnly(r.type) ? this.others(nexus, Asc.RESERVATIONS_RELEASED) : [];
  }

  /** RESERVE (SPC-4 5.13.9). */
  private reserve(nexus: string, type: number): UnitAttention[] {
    const r = this.res;
    if (r !== undefined) {
      // Re-reserving what one holds is a no-op; anything else conflicts.
      if (this.isHolder(nexus) && r.type === type) return [];
      throw reservationConflict();
    }
    this.res = { holder: nexus, type, scope: LU_SCOPE };
    return [];
  }

  /** RELEASE (SPC-4 5.13.11.2.2). */
  private release(nexus: string, scope: number, type: number): UnitAttention[] {
    const r = this.res;
    if (r === undefined || !this.isHolder(nexus)) return []; // nothing held: GOOD, no change
    if (scope !== r.scope || type !== r.type) {
      throw new SenseError({ key: SenseKey.ILLEGAL_REQUEST, code: Asc.INVALID_RELEASE_OF_PERSISTENT_RESERVATION });
    }
    this.res = undefined;
    return type === PrType.WRITE_EXCLUSIVE || type === PrType.EXCLUSIVE_ACCESS ? [] : this.others(nexus, Asc.RESERVATIONS_RELEASED);
  }

  /** CLEAR (SPC-4 5.13.11.2.6): drops every registration and the reservation. */
  private clear(nexus: string): UnitAttention[] {
    const uas = this.others(nexus, Asc.RESERVATIONS_PREEMPTED);
    this.regs.clear();
    this.res = undefined;
    this.bump();
    return uas;
  }

  /** PREEMPT / PREEMPT AND ABORT (SPC-4 5.13.11.2.4-5). */
  private preempt(nexus: string, saKey: bigint, type: number): UnitAttention[] {
    const r = this.res;
    const uas: UnitAttention[] = [];
    const removeMatching = (keepSelf: boolean): number => {
      let n = 0;
      for (const [nx, k] of [...this.regs]) {
        if (k !== saKey || (keepSelf && nx === nexus)) continue;
        this.regs.delete(nx);
        if (nx !== nexus) uas.push({ nexus: nx, code: Asc.REGISTRATIONS_PREEMPTED });
        n++;
      }
      return n;
    };

    if (r === undefined) {
      // No reservation: PREEMPT only removes registrations (SPC-4 5.13.11.4.3).
      if (saKey === 0n) throw invalidFieldInParameters(8);
      if (removeMatching(false) === 0) throw reservationConflict();
    } else if (allRegistrants(r.type)) {
      if (saKey === 0n) {
        // Preempt everyone else and take the reservation (SPC-4 5.13.11.4.4).
        for (const nx of [...this.regs.keys()]) {
          if (nx === nexus) continue;
          this.regs.delete(nx);
          uas.push({ nexus: nx, code: Asc.REGISTRATIONS_PREEMPTED });
        }
        this.res = { holder: nexus, type, scope: LU_SCOPE };
      } else if (removeMatching(false) === 0) {
        throw reservationConflict();
      }
    } else if (saKey === this.regs.get(r.holder)) {
      // Preempt the holder: drop the matching registrations (not our own) and
      // reserve for the preempting nexus with the CDB's type.
      removeMatching(true);
      const changed = r.type !== type;
      this.res = { holder: nexus, type, scope: LU_SCOPE };
      if (changed) {
        for (const nx of this.regs.keys()) {
          if (nx !== nexus && !uas.some((u) => u.nexus === nx)) uas.push({ nexus: nx, code: Asc.RESERVATIONS_RELEASED });
        }
      }
    } else {
      if (saKey === 0n) throw invalidFieldInParameters(8);
      if (removeMatching(false) === 0) throw reservationConflict();
    }
    this.bump();
    return uas;
  }

  private others(nexus: string, code: number): UnitAttention[] {
    const uas: UnitAttention[] = [];
    for (const nx of this.regs.keys()) if (nx !== nexus) uas.push({ nexus: nx, code });
    return uas;
  }

  // --- PERSISTENT RESERVE IN data (SPC-4 6.15) ------------------------------

  /** READ KEYS: PRGENERATION, ADDITIONAL LENGTH, then each registered key. */
  readKeys(): Buffer {
    const keys = [...this.regs.values()];
    const b = Buffer.alloc(8 + 8 * keys.length);
    b.writeUInt32BE(this.generation, 0);
    b.writeUInt32BE(8 * keys.length, 4);
    keys.forEach((k, i) => b.writeBigUInt64BE(k, 8 + 8 * i));
    return b;
  }

  /** READ RESERVATION: the reservation key (0 for all-registrants types), scope and type. */
  readReservation(): Buffer {
    const r = this.res;
    const b = Buffer.alloc(r === undefined ? 8 : 24);
    b.writeUInt32BE(this.generation, 0);
    if (r === undefined) return b;
    b.writeUInt32BE(16, 4);
    b.writeBigUInt64BE(allRegistrants(r.type) ? 0n : this.regs.get(r.holder) ?? 0n, 8);
    b[21] = (r.scope << 4) | r.type;
    return b;
  }

  /**
   * REPORT CAPABILITIES: CRH=1 (RESERVE/RELEASE conflict with registrations,
   * SPC-4 5.13.3), no SIP_C / ATP_C / PTPL_C, TMV=1 with every type supported.
   */
  reportCapabilities(): Buffer {
    const b = Buffer.alloc(8);
    b.writeUInt16BE(8, 0);
    b[2] = 0x10; // CRH
    b[3] = 0x80; // TMV; ALLOW COMMANDS 000b
    b[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02; // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
    b[5] = 0x01; // EX_AC_AR
    return b;
  }

  /** READ FULL STATUS: one descriptor per registration, with its TransportID (SPC-4 6.15.5). */
  readFullStatus(relativeTargetPort: number): Buffer {
    const descs: Buffer[] = [];
    for (const [nx, key] of this.regs) {
      const tid = iscsiTransportId(nx);
      const d = Buffer.alloc(24 + tid.length);
      d.writeBigUInt64BE(key, 0);
      if (this.isHolder(nx) && this.res !== undefined) {
        d[12] = 0x01; // R_HOLDER
        d[13] = (this.res.scope << 4) | this.res.type;
      }
      d.writeUInt16BE(relativeTargetPort & 0xffff, 18);
      d.writeUInt32BE(tid.length, 20);
      tid.copy(d, 24);
      descs.push(d);
    }
    const body = Buffer.concat(descs);
    const b = Buffer.alloc(8 + body.length);
    b.writeUInt32BE(this.generation, 0);
    b.writeUInt32BE(body.length, 4);
    body.copy(b, 8);
    return b;
  }
}

/**
 * An iSCSI TransportID (SPC-4 7.6.4.6) for a nexus named
 * "<iSCSI name>,i,0x<ISID>[...]": format 01b (name + ISID) when the ISID is
 * there, else format 00b (name only). NUL-terminated, padded to 4 bytes,
 * at least 20 bytes long.
 */
export function iscsiTransportId(nexus: string): Buffer {
  const m = /^(.*?),i,0x([0-9a-fA-F]+)/.exec(nexus);
  const text = m !== null ? `${m[1]},i,0x${m[2]}` : nexus.split(',')[0] ?? nexus;
  const nameLen = Buffer.byteLength(text) + 1;
  const padded = Math.max(16, Math.ceil(nameLen / 4) * 4);
  const b = Buffer.alloc(4 + padded);
  b[0] = (m !== null ? 0x40 : 0x00) | 0x05; // FORMAT CODE, PROTOCOL IDENTIFIER = iSCSI
  b.writeUInt16BE(padded, 2);
  b.write(text, 4);
  return b;
}
