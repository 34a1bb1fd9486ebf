// One SCSI task (RFC 7143 3.4.1: a command and its data transfers) as the
// task set tracks it, plus the pure pieces of turning PDUs into a
// ScsiCommand and a ScsiResult back into residuals: the CDB with its
// extended AHS, and the residual arithmetic of RFC 7143 11.4.5.

import type { CommandSignal, ScsiResult } from '../scsi/types.js';
import { AHS_EXTENDED_CDB, CMD_READ_BIT, CMD_WRITE_BIT, RESP_OVERFLOW_BIT, RESP_UNDERFLOW_BIT } from './constants.js';
import type { WriteCollector } from './data-transfer.js';
import type { Bhs } from './pdu.js';

/** How an aborted task ends: no response, or TASK ABORTED status (aborted by another session). */
export type AbortMode = 'silent' | 'task-aborted';

/**
 * A task's abort signal: what the SCSI layer uses of an AbortSignal, without
 * an EventTarget per command. Listeners run once, in order, at abort().
 */
export class TaskSignal implements CommandSignal {
  aborted = false;
  private listeners: (() => void)[] | undefined;

  addEventListener(_type: 'abort', listener: () => void): void {
    if (!this.aborted) (this.listeners ??= []).push(listener);
  }

  removeEventListener(_type: 'abort', listener: () => void): void {
    const i = this.listeners?.indexOf(listener) ?? -1;
    if (i >= 0) this.listeners!.splice(i, 1);
  }

  abort(): void {
    if (this.aborted) return;
    this.aborted = true;
    const listeners = this.listeners;
    this.listeners = undefined;
    if (listeners !== undefined) for (const l of listeners) l();
  }
}

export class Task {
  readonly itt: number;
  readonly lun: number;
  readonly lunHigh: number;
  readonly cmdSN: number;
  readonly immediate: boolean;
  readonly cdb: Buffer;
  readonly expectedLength: number;
  readonly read: boolean;
  readonly write: boolean;
  readonly signal = new TaskSignal();
  collector: WriteCollector | undefined;
  dataOut: Buffer | undefined;
  /** The pooled command buffer dataOut lies in, given back once the unit is done with it. */
  commandBuffer: Buffer | undefined;
  /** A result decided before execution (the command cannot be run). */
  preResult: ScsiResult | undefined;
  reserved = 0;
  grant: (() => void) | undefined;
  delivered = false;
  /** The CmdSN this ordered task used is given back to the window (once). */
  slotReleased = false;
  dataReady = false;
  started = false;
  done = false;
  aborted: AbortMode | undefined;
  abortTimer: NodeJS.Timeout | undefined;
  /** Created only when someone waits for the task (aborts, logout): most tasks never need it. */
  private settledPromise: Promise<void> | undefined;
  private resolveSettled: (() => void) | undefined;

  constructor(bhs: Bhs, lun: number, cdb: Buffer) {
    this.itt = bhs.itt;
    this.lun = lun;
    this.lunHigh = bhs.w2;
    this.cmdSN = bhs.w6;
    this.immediate = bhs.immediate;
    this.cdb = cdb;
    this.expectedLength = bhs.w5;
    this.read = (bhs.flags & CMD_READ_BIT) !== 0;
    this.write = (bhs.flags & CMD_WRITE_BIT) !== 0;
  }

  /** Resolves once the task has ended (at once when it already has). */
  get settled(): Promise<void> {
    if (this.settledPromise === undefined) {
      this.settledPromise = this.done ? Promise.resolve() : new Promise((r) => { this.resolveSettled = r; });
    }
    return this.settledPromise;
  }

  /** The task ended (done is set): wake whoever waits. */
  markSettled(): void {
    this.resolveSettled?.();
    this.resolveSettled = undefined;
  }
}

/** The CDB: 16 bytes in the BHS, plus an Extended CDB AHS for longer ones (RFC 7143 11.2.2.3). */
export function commandDescriptorBlock(bhs: Bhs, ahs: Buffer | undefined): Buffer | undefined {
  const base = Buffer.allocUnsafe(16);
  base.writeUInt32BE(bhs.w8, 0);
  base.writeUInt32BE(bhs.w9, 4);
  base.writeUInt32BE(bhs.w10, 8);
  base.writeUInt32BE(bhs.w11, 12);
  if (ahs === undefined) return base;
  for (let at = 0; at + 3 <= ahs.length;) {
    const length = ahs.readUInt16BE(at);
    const type = ahs[at + 2]!;
    const end = at + 3 + length;
    if (end > ahs.length) return undefined;
    if (type === AHS_EXTENDED_CDB) {
      if (length < 2) return undefined;
      // AHSLength counts the reserved byte plus the CDB bytes beyond 16.
      return Buffer.concat([base, ahs.subarray(at + 4, end)]);
    }
    at = end + ((4 - (end & 3)) & 3);
  }
  return base;
}

/**
 * The data to send and the residual to report (RFC 7143 11.4.5): for reads,
 * the Data-In cut to the expected length, overflow when the unit had more,
 * underflow when less; for writes, the difference between the Data-Out the
 * CDB called for (ScsiResult.dataOutLength) and the expected length.
 */
export function residuals(task: Task, result: ScsiResult): { data: Buffer | undefined; residualFlags: number; residual: number } {
  let data = result.dataIn;
  const edtl = task.expectedLength;
  const actual = data?.length ?? 0;
  const wanted = result.dataOutLength;
  if (!task.read && actual === 0) {
    if (wanted === undefined || wanted === edtl) return { data: undefined, residualFlags: 0, residual: 0 };
    return wanted > edtl
      ? { data: undefined, residualFlags: RESP_OVERFLOW_BIT, residual: wanted - edtl }
      : { data: undefined, residualFlags: RESP_UNDERFLOW_BIT, residual: edtl - wanted };
  }
  // Data-In for a command without the R bit cannot be sent: it all overflows.
  const allowed = task.read ? edtl : 0;
  if (actual > allowed) {
    data = allowed === 0 ? undefined : data!.subarray(0, allowed);
    return { data, residualFlags: RESP_OVERFLOW_BIT, residual: actual - allowed };
  }
  if (actual < allowed) return { data, residualFlags: RESP_UNDERFLOW_BIT, residual: allowed - actual };
  return { data, residualFlags: 0, residual: 0 };
}
