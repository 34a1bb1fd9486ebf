// The write data of a session's SCSI tasks (RFC 7143 10.7, 11.7): immediate
// data in the command PDU, unsolicited Data-Out up to FirstBurstLength, then
// Data-Out solicited by R2T within the connection's data budget. Payloads
// are assembled in place where they can be: the FrameDecoder asks
// placeDataOut() for the buffer a spanning PDU's payload goes to (the
// command's pooled buffer), so a write's data is copied once from the
// socket. The task set (task-set.ts) runs a task once its data is ready.

import { CMD_WRITE_BIT, FINAL_BIT, MAX_TRANSFER_BYTES, Opcode, RejectReason } from './constants.js';
import { allocateCommandBuffer, HEAD_SLACK, WriteCollector } from './data-transfer.js';
import type { Bhs } from './pdu.js';
import { dataPhaseError, transferTooLong } from './target-commands.js';
import type { Task } from './task.js';
import type { TaskContext } from './task-set.js';

/** What the intake calls back into the task set for. */
export interface IntakeHooks {
  /** The task's data is ready (or it will not run): start it when its turn came. */
  maybeStart(task: Task): void;
  /** An aborted task got the Data-Out it waited for. */
  maybeFinishAborted(task: Task): void;
  /** A task that will not run still takes the Data-Out owed to it, but not forever. */
  armDataWait(task: Task): void;
}

export class WriteIntake {
  private readonly ctx: TaskContext;
  private readonly tasks: Map<number, Task>;
  private readonly hooks: IntakeHooks;
  private nextTtt = 1;
  /** A command buffer placeCommand() handed out, for the command being decoded. */
  private prepared: { itt: number; raw: Buffer } | undefined;
  /** Bytes an in-place Data-Out's header digest overwrote, to put back (dataOut). */
  private overwritten: { itt: number; view: Buffer; saved: number } | undefined;

  constructor(ctx: TaskContext, tasks: Map<number, Task>, hooks: IntakeHooks) {
    this.ctx = ctx;
    this.tasks = tasks;
    this.hooks = hooks;
  }

  /** The buffer placeCommand() assembled this command's immediate data in, if any (taken once). */
  takePrepared(itt: number): Buffer | undefined {
    const prepared = this.prepared?.itt === itt ? this.prepared.raw : undefined;
    this.prepared = undefined;
    return prepared;
  }

  /** A new write task's data: the whole write as immediate data, or a collector waiting for the rest. */
  start(task: Task, immediate: Buffer | undefined, final: boolean, prepared: Buffer | undefined): void {
    const { ctx } = this;
    const edtl = task.expectedLength;
    if (!task.write || edtl === 0) {
      // A read above the largest transfer would make the unit allocate it all.
      if (edtl > MAX_TRANSFER_BYTES) task.preResult = transferTooLong();
      task.dataReady = true;
      return;
    }
    const p = ctx.params;
    const unsolicited = Math.min(edtl, p.firstBurstLength);
    if (edtl > MAX_TRANSFER_BYTES) {
      // Swallow whatever unsolicited data comes, then answer without running.
      task.preResult = transferTooLong();
      task.collector = new WriteCollector(edtl, undefined, unsolicited, !final, { maxBurst: p.maxBurstLength, maxOutstandingR2T: 1 });
      task.collector.drain();
      task.dataReady = task.collector.drained;
      return;
    }
    if (immediate !== undefined && immediate.length === edtl) {
      // The whole write came inside the command PDU: hand the view on, no copy.
      ctx.budget.force(edtl);
      task.reserved = edtl;
      task.dataOut = immediate;
      if (prepared !== undefined && immediate.buffer === prepared.buffer) task.commandBuffer = prepared;
      task.dataReady = true;
      return;
    }
    const limits = { maxBurst: p.maxBurstLength, maxOutstandingR2T: p.maxOutstandingR2T };
    let collector: WriteCollector | undefined;
    const grant = (): void => {
      task.grant = undefined;
      task.reserved = edtl;
      collector!.attach();
      this.afterData(task);
    };
    let granted: boolean;
    if (edtl <= p.firstBurstLength) {
      // Unsolicited data is on its way whatever our budget says; the window bounds it.
      ctx.budget.force(edtl);
      granted = true;
    } else {
      granted = ctx.budget.reserve(edtl, grant);
    }
    if (granted) task.reserved = edtl;
    else task.grant = grant;
    collector = new WriteCollector(edtl, immediate, unsolicited, !final, limits, granted ? { raw: prepared } : undefined);
    task.collector = collector;
    if (granted) this.afterData(task);
  }

  /**
   * The FrameDecoder's allocator for a PDU whose payload spans socket
   * chunks: a Data-Out that fits its task's buffer is assembled right there
   * (see WriteCollector.placement). `headerDigest` is 4 when on: those bytes
   * land just before the data and are put back by dataOut().
   */
  placeDataOut(bhs: Bhs, payloadLength: number, headerDigest: number): Buffer | undefined {
    if (bhs.opcode === Opcode.SCSI_COMMAND) return this.placeCommand(bhs, headerDigest);
    if (bhs.opcode !== Opcode.DATA_OUT || bhs.ahsLength !== 0) return undefined;
    const task = this.tasks.get(bhs.itt);
    if (task === undefined || task.aborted !== undefined || task.preResult !== undefined) return undefined;
    const trailer = payloadLength - headerDigest - bhs.dataLength;
    const target = task.collector?.placement(bhs.w5, bhs.w9, bhs.w10, bhs.dataLength, trailer, headerDigest);
    if (target !== undefined && headerDigest > 0) this.overwritten = { itt: bhs.itt, view: target, saved: target.readUInt32BE(0) };
    return target;
  }

  /**
   * A write with immediate data: its command buffer (pooled) is taken now,
   * so the immediate data lands in it directly (the header digest, if any,
   * falls in the head slack). When more data is to come, only if the budget
   * has room, so this never holds more than it may; the whole write as
   * immediate data is held anyway (startData forces it into the budget).
   */
  private placeCommand(bhs: Bhs, headerDigest: number): Buffer | undefined {
    const edtl = bhs.w5;
    if ((bhs.flags & CMD_WRITE_BIT) === 0 || bhs.ahsLength !== 0 || bhs.dataLength === 0 || edtl < bhs.dataLength) return undefined;
    if (edtl > MAX_TRANSFER_BYTES || this.tasks.has(bhs.itt)) return undefined;
    // The whole write as immediate data is taken whatever the budget (startData forces it).
    if (edtl > bhs.dataLength && !this.ctx.budget.hasRoomFor(edtl)) return undefined;
    const raw = allocateCommandBuffer(edtl);
    this.prepared = { itt: bhs.itt, raw };
    return raw.subarray(HEAD_SLACK - headerDigest);
  }

  dataOut(bhs: Bhs, data: Buffer | undefined): void {
    const placed = this.overwritten;
    if (placed !== undefined) {
      // The header digest of an in-place payload overwrote the 4 bytes before its data.
      this.overwritten = undefined;
      if (placed.itt === bhs.itt) placed.view.writeUInt32BE(placed.saved, 0);
    }
    const task = this.tasks.get(bhs.itt);
    const collector = task?.collector;
    if (task === undefined || collector === undefined) return this.ctx.reject(bhs, RejectReason.INVALID_PDU_FIELD);
    const final = (bhs.flags & FINAL_BIT) !== 0;
    const error = collector.dataOut(bhs.w5, bhs.w9, bhs.w10, data, final);
    if (task.aborted !== undefined) {
      // An aborted task only waits for the Data-Out it already asked for.
      this.hooks.maybeFinishAborted(task);
      return;
    }
    if (error !== undefined) {
      // The framing is intact, only this task's data is wrong: the task ends
      // with CHECK CONDITION, the connection goes on (RFC 7143 7.1.2 lets
      // ERL 0 terminate the task instead of the connection).
      this.ctx.log.warn({ itt: task.itt, reason: error }, 'Data-Out sequence error; ending the command with CHECK CONDITION');
      task.preResult = dataPhaseError();
      collector.drain();
      collector.dataOut(bhs.w5, bhs.w9, bhs.w10, undefined, final);
      this.hooks.armDataWait(task);
    }
    this.afterData(task);
  }

  /** After data arrived or the buffer was attached: complete, or ask for more. */
  private afterData(task: Task): void {
    const collector = task.collector!;
    if (task.preResult !== undefined) {
      task.dataReady = collector.drained;
      this.hooks.maybeStart(task);
      return;
    }
    if (collector.complete && collector.attached) {
      task.dataOut = collector.data;
      task.commandBuffer = collector.commandBuffer;
      task.dataReady = true;
      this.hooks.maybeStart(task);
      return;
    }
    const { ctx } = this;
    for (const r of collector.nextR2Ts(() => this.allocateTtt())) {
      if (ctx.trace) ctx.log.debug({ itt: task.itt, ...r }, 'R2T');
      ctx.writer.r2t({ lunHigh: task.lunHigh, itt: task.itt, ttt: r.ttt, r2tSN: r.r2tSN, offset: r.offset, length: r.length });
    }
  }

  private allocateTtt(): number {
    const t = this.nextTtt;
    this.nextTtt = this.nextTtt >= 0xfffffffe ? 1 : this.nextTtt + 1;
    return t;
  }
}
