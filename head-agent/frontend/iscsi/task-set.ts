// The SCSI tasks of one session: a SCSI Command PDU becomes a task; its
// write data is collected (immediate, unsolicited, then solicited by R2T,
// see write-intake.ts and data-transfer.ts); once the command window has delivered it in CmdSN
// order and its data is complete, it runs on the logical unit (the seam in
// scsi/types.ts), and its ScsiResult goes back as Data-In and status.
//
// Bounds: ordered tasks by the CmdSN window, immediate ones by a count;
// data bytes by the connection's DataBudget (R2Ts and reads wait for room).
// Aborts (task management, session end) reach the unit through the task's
// AbortSignal; an aborted task sends no response unless another session
// aborted it (then TASK ABORTED status, as with TAS=1).

import type { Logger } from '../../../shared/logger.js';
import { errorMessage } from '../../../shared/errors.js';
import { ScsiStatus, type ScsiResult } from '../scsi/types.js';
import type { CommandWindow } from './command-window.js';
import {
  ABORT_DATA_WAIT_MS, CMD_WRITE_BIT, FINAL_BIT, MAX_IMMEDIATE_COMMANDS, MAX_TRANSFER_BYTES, Opcode, RESERVED_TAG, RejectReason,
} from './constants.js';
import { releaseCommandBuffer, type DataBudget } from './data-transfer.js';
import type { OperationalParams } from './negotiation.js';
import { decodeLun, type Bhs } from './pdu.js';
import type { PduWriter } from './pdu-writer.js';
import { internalFailure, isTargetCommand, missingLun, targetReportLuns, transferTooLong } from './target-commands.js';
import type { IscsiTarget } from './target-registry.js';
import { commandDescriptorBlock, residuals, Task, type AbortMode } from './task.js';
import { WriteIntake } from './write-intake.js';

export interface TaskContext {
  readonly log: Logger;
  readonly trace: boolean;
  readonly writer: PduWriter;
  readonly window: CommandWindow;
  readonly budget: DataBudget;
  readonly params: OperationalParams;
  readonly target: IscsiTarget;
  /** The I_T nexus handed to the unit (initiator port name). */
  readonly nexus: string;
  /** Rejects one PDU; the connection goes on. */
  reject(bhs: Bhs, reason: number): void;
  /** A protocol violation: Reject, then close the connection. */
  violation(reason: string, bhs: Bhs, rejectReason: number): void;
  /** A task ended (the connection may be waiting for that). */
  taskSettled(): void;
}

export class TaskSet {
  private readonly ctx: TaskContext;
  private readonly tasks = new Map<number, Task>();
  private immediateCount = 0;
  private readonly intake: WriteIntake;

  constructor(ctx: TaskContext) {
    this.ctx = ctx;
    this.intake = new WriteIntake(ctx, this.tasks, {
      maybeStart: (task) => this.maybeStart(task),
      maybeFinishAborted: (task) => this.maybeFinishAborted(task),
      armDataWait: (task) => this.armDataWait(task),
    });
  }

  get size(): number {
    return this.tasks.size;
  }

  find(itt: number): Task | undefined {
    return this.tasks.get(itt);
  }

  /** Tasks on `lun`, or all when undefined. */
  list(lun?: number): Task[] {
    const all = [...this.tasks.values()];
    return lun === undefined ? all : all.filter((t) => t.lun === lun);
  }

  // --- SCSI Command -----------------------------------------------------------

  command(bhs: Bhs, ahs: Buffer | undefined, data: Buffer | undefined): void {
    const { ctx } = this;
    // The buffer placeCommand() assembled this command's immediate data in, if any.
    const prepared = this.intake.takePrepared(bhs.itt);
    const p = ctx.params;
    const write = (bhs.flags & CMD_WRITE_BIT) !== 0;
    const final = (bhs.flags & FINAL_BIT) !== 0;
    const edtl = bhs.w5;
    const immediateLength = data?.length ?? 0;
    if (bhs.itt === RESERVED_TAG) return ctx.reject(bhs, RejectReason.INVALID_PDU_FIELD);
    if (this.tasks.has(bhs.itt)) return ctx.reject(bhs, RejectReason.TASK_IN_PROGRESS);
    if (immediateLength > 0 && (!write || !p.immediateData || immediateLength > p.firstBurstLength || immediateLength > edtl)) {
      return ctx.violation(`SCSI command with ${immediateLength} bytes of immediate data not allowed here`, bhs, RejectReason.PROTOCOL_ERROR);
    }
    if (!final && (!write || p.initialR2T || immediateLength >= Math.min(edtl, p.firstBurstLength))) {
      return ctx.violation('SCSI command announces unsolicited Data-Out that is not allowed', bhs, RejectReason.PROTOCOL_ERROR);
    }
    if (bhs.immediate) {
      if (this.immediateCount >= MAX_IMMEDIATE_COMMANDS) return ctx.reject(bhs, RejectReason.IMMEDIATE_COMMAND_REJECT);
    } else if (!ctx.window.inWindow(bhs.w6)) {
      // RFC 7143 3.2.2.1: outside the window (or a duplicate): silently ignored.
      if (ctx.trace) ctx.log.debug({ cmdSN: bhs.w6, exp: ctx.window.expCmdSN, max: ctx.window.maxCmdSN }, 'SCSI command outside the CmdSN window ignored');
      return;
    }
    const cdb = commandDescriptorBlock(bhs, ahs);
    if (cdb === undefined) return ctx.violation('malformed extended CDB AHS', bhs, RejectReason.PROTOCOL_ERROR);
    const lun = decodeLun(bhs.w2, bhs.w3) ?? 0xffff;
    const task = new Task(bhs, lun, cdb);
    this.tasks.set(task.itt, task);
    if (task.immediate) this.immediateCount++;
    if (ctx.trace) ctx.log.debug({ itt: task.itt, cmdSN: task.cmdSN, op: cdb[0], edtl, lun }, 'SCSI command');
    this.intake.start(task, data, final, prepared);
    if (task.immediate) {
      task.delivered = true;
      this.maybeStart(task);
    } else {
      ctx.window.submit(task.cmdSN, () => this.delivered(task));
    }
  }

  // --- Data-Out (write-intake.ts) ---------------------------------------------------

  /** The FrameDecoder's allocator for a PDU whose payload spans socket chunks (see WriteIntake). */
  placeDataOut(bhs: Bhs, payloadLength: number, headerDigest: number): Buffer | undefined {
    return this.intake.placeDataOut(bhs, payloadLength, headerDigest);
  }

  dataOut(bhs: Bhs, data: Buffer | undefined): void {
    this.intake.dataOut(bhs, data);
  }

  /** A task that will not run still takes the Data-Out owed to it, but not forever. */
  private armDataWait(task: Task): void {
    if (task.collector === undefined || task.collector.drained || task.abortTimer !== undefined) return;
    task.abortTimer = setTimeout(() => {
      task.abortTimer = undefined;
      if (task.aborted !== undefined) {
        if (!task.started) this.finish(task);
      } else {
        task.dataReady = true;
        this.maybeStart(task);
      }
    }, ABORT_DATA_WAIT_MS);
    task.abortTimer.unref();
  }

  // --- Execution ------------------------------------------------------------------

  private delivered(task: Task): void {
    task.delivered = true;
    // Ended (aborted) before its turn: its CmdSN is used up now.
    if (task.done) this.releaseSlot(task);
    else this.maybeStart(task);
  }

  /** Gives an ordered task's CmdSN back to the window once it was delivered (MaxCmdSN + 1). */
  private releaseSlot(task: Task): void {
    if (task.immediate || !task.delivered || task.slotReleased) return;
    task.slotReleased = true;
    this.ctx.window.release();
  }

  private maybeStart(task: Task): void {
    if (task.aborted !== undefined) return this.maybeFinishAborted(task);
    if (!task.delivered || !task.dataReady || task.started) return;
    task.started = true;
    void this.run(task);
  }

  private async run(task: Task): Promise<void> {
    const { ctx } = this;
    let result: ScsiResult;
    try {
      if (task.read && task.expectedLength > 0 && task.reserved === 0) await this.reserveRead(task);
      result = task.preResult ?? await this.execute(task);
    } catch (err) {
      ctx.log.warn({ itt: task.itt, op: task.cdb[0], lun: task.lun, err: errorMessage(err) }, 'logical unit failed a command');
      result = internalFailure();
    }
    // The unit is done with the Data-Out, and all of it had arrived (nothing is assembled into it any more).
    if (task.commandBuffer !== undefined) {
      releaseCommandBuffer(task.commandBuffer);
      task.commandBuffer = undefined;
      task.dataOut = undefined;
    }
    if (task.aborted === undefined) this.respond(task, result);
    this.finish(task);
  }

  /** Waits for room for the read's data; an abort ends the wait (execute() then answers TASK ABORTED). */
  private reserveRead(task: Task): Promise<void> {
    return new Promise((resolve) => {
      const grant = (): void => {
        task.grant = undefined;
        task.reserved = task.expectedLength;
        resolve();
      };
      if (this.ctx.budget.reserve(task.expectedLength, grant)) {
        grant();
        return;
      }
      task.grant = grant;
      task.signal.addEventListener('abort', () => resolve());
    });
  }

  private async execute(task: Task): Promise<ScsiResult> {
    const { ctx } = this;
    if (task.aborted !== undefined) return { status: ScsiStatus.TASK_ABORTED };
    if (isTargetCommand(task.cdb)) return targetReportLuns(task.cdb, ctx.target.luns.keys());
    const unit = ctx.target.luns.get(task.lun);
    if (unit === undefined) return missingLun(task.cdb);
    return unit.execute({
      lun: task.lun, cdb: task.cdb, nexus: ctx.nexus, dataOut: task.dataOut, expectedLength: task.expectedLength,
      taskTag: task.itt, signal: task.signal,
    });
  }

  /**
   * Sends the result, cut to the expected length, with residuals (RFC 7143
   * 11.4.5): of the Data-In for reads, of the Data-Out the CDB called for
   * (ScsiResult.dataOutLength) for writes.
   */
  private respond(task: Task, result: ScsiResult): void {
    const { ctx } = this;
    const { data, residualFlags, residual } = residuals(task, result);
    // The window grows before the status goes out, so the response itself advertises it.
    this.releaseSlot(task);
    ctx.writer.commandResult(
      { itt: task.itt, status: result.status, sense: result.sense, residualFlags, residual },
      data, ctx.params.initiatorMaxRecvDataSegment, ctx.params.maxBurstLength, result.dataIn);
  }

  private finish(task: Task): void {
    if (task.done) return;
    task.done = true;
    const { ctx } = this;
    if (task.abortTimer !== undefined) clearTimeout(task.abortTimer);
    if (task.grant !== undefined) ctx.budget.cancel(task.grant);
    if (task.reserved > 0) ctx.budget.release(task.reserved);
    task.reserved = 0;
    this.tasks.delete(task.itt);
    if (task.immediate) this.immediateCount--;
    this.releaseSlot(task);
    if (task.aborted === 'task-aborted') {
      // Aborted on behalf of another session: this initiator still gets a status.
      ctx.writer.commandResult({ itt: task.itt, status: ScsiStatus.TASK_ABORTED, sense: undefined, residualFlags: 0, residual: 0 }, undefined, 1, 1);
    }
    task.markSettled();
    ctx.taskSettled();
  }

  // --- Aborts -----------------------------------------------------------------------

  /**
   * Aborts a task: the unit sees the signal; no response is sent (`silent`)
   * or TASK ABORTED (`task-aborted`). Resolves once the task has settled:
   * the unit returned, and Data-Out owed to our R2Ts arrived (bounded).
   */
  abort(task: Task, mode: AbortMode): Promise<void> {
    if (task.done || task.aborted !== undefined) return task.settled;
    task.aborted = mode;
    task.signal.abort();
    task.collector?.drain();
    if (task.grant !== undefined) {
      this.ctx.budget.cancel(task.grant);
      task.grant = undefined;
    }
    if (task.abortTimer !== undefined) {
      clearTimeout(task.abortTimer);
      task.abortTimer = undefined;
    }
    this.armDataWait(task);
    this.maybeFinishAborted(task);
    return task.settled;
  }

  /** Aborts every task without waiting for Data-Out (the connection is gone). */
  abortAll(): Promise<void> {
    const all = [...this.tasks.values()];
    for (const t of all) {
      void this.abort(t, 'silent');
      if (!t.started) this.finish(t);
    }
    return Promise.all(all.map((t) => t.settled)).then(() => undefined);
  }

  private maybeFinishAborted(task: Task): void {
    if (task.done || task.started) return;
    if (task.collector !== undefined && !task.collector.drained) return;
    this.finish(task);
  }
}
