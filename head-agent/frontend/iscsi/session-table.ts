// Every session of one server, by TSIH, with the lookups login needs:
// session reinstatement finds the old session of the same initiator, ISID
// and target (RFC 7143 6.3.5: a new login with an ISID in use closes the old
// session), and task management finds the other sessions of a target (LUN
// RESET aborts their tasks too).

import { sameIscsiName } from './access.js';

export interface SessionHandle {
  readonly tsih: number;
  /** ISID as 12 hex digits. */
  readonly isid: string;
  readonly initiatorName: string;
  /** The target IQN of a normal session; undefined for discovery. */
  readonly targetIqn: string | undefined;
  /** Ends the session: aborts its tasks, closes its connection. Resolves once it is gone. */
  close(reason: string): Promise<void>;
  /**
   * Aborts this session's tasks on `lun` (all LUNs when undefined) on behalf
   * of another session's task management; they end with TASK ABORTED status.
   * Resolves once they have all settled.
   */
  abortTasks(lun: number | undefined, reason: string): Promise<void>;
}

function sameTarget(a: string | undefined, b: string | undefined): boolean {
  return a === undefined || b === undefined ? a === b : sameIscsiName(a, b);
}

export class SessionTable {
  private readonly byTsih = new Map<number, SessionHandle>();
  private nextTsih = 1 + Math.floor(Math.random() * 0xfffe);

  /** A free non-zero TSIH, or undefined when all 65535 are taken. */
  allocateTsih(): number | undefined {
    for (let i = 0; i < 0xffff; i++) {
      const t = this.nextTsih;
      this.nextTsih = t === 0xffff ? 1 : t + 1;
      if (!this.byTsih.has(t)) return t;
    }
    return undefined;
  }

  add(s: SessionHandle): void {
    this.byTsih.set(s.tsih, s);
  }

  remove(s: SessionHandle): void {
    if (this.byTsih.get(s.tsih) === s) this.byTsih.delete(s.tsih);
  }

  exists(tsih: number): boolean {
    return this.byTsih.has(tsih);
  }

  /** The session a new login with this (initiator, ISID, target) reinstates, if any. */
  findForReinstatement(initiatorName: string, isid: string, targetIqn: string | undefined): SessionHandle | undefined {
    for (const s of this.byTsih.values()) {
      if (sameIscsiName(s.initiatorName, initiatorName) && s.isid === isid && sameTarget(s.targetIqn, targetIqn)) return s;
    }
    return undefined;
  }

  /** Normal sessions to `iqn`. */
  forTarget(iqn: string): SessionHandle[] {
    return [...this.byTsih.values()].filter((s) => s.targetIqn === iqn);
  }

  /** Normal sessions to `iqn`, or every session (discovery included) when undefined. */
  count(iqn?: string): number {
    if (iqn === undefined) return this.byTsih.size;
    let n = 0;
    for (const s of this.byTsih.values()) if (s.targetIqn === iqn) n++;
    return n;
  }

  all(): SessionHandle[] {
    return [...this.byTsih.values()];
  }
}
