// Task management functions (RFC 7143 11.5, 11.6 and 4.2.3.3): what each
// function aborts, and the response. The response goes out only after every
// affected task has settled (its unit returned and the Data-Out owed to our
// R2Ts arrived), so the initiator may reuse their tags at once. Tasks of the
// requesting session end silently; tasks of other sessions that a LUN or
// target reset reaches end with TASK ABORTED status.

import type { Logger } from '../../../shared/logger.js';
import { snLess } from './command-window.js';
import type { CommandWindow } from './command-window.js';
import { TmfFunction, TmfResponse } from './constants.js';
import { decodeLun, type Bhs } from './pdu.js';
import type { SessionHandle, SessionTable } from './session-table.js';
import type { TaskSet } from './task-set.js';
import type { IscsiTarget } from './target-registry.js';

export interface TmfContext {
  readonly log: Logger;
  readonly tasks: TaskSet;
  readonly window: CommandWindow;
  readonly target: IscsiTarget;
  readonly sessions: SessionTable;
  /** The requesting session (its own tasks are not aborted "on behalf of another"). */
  readonly self: SessionHandle;
}

/** RFC 7144 functions (QUERY TASK, QUERY TASK SET, I_T NEXUS RESET, QUERY ASYNC EVENT): known, not implemented. */
const RFC7144_FUNCTIONS = new Set([9, 10, 11, 12]);

export function tmfName(fn: number): string {
  return Object.entries(TmfFunction).find(([, v]) => v === fn)?.[0] ?? `FUNCTION_${fn}`;
}

/** Performs the function of a Task Management Function Request; resolves with the response code. */
export async function performTmf(ctx: TmfContext, bhs: Bhs): Promise<number> {
  const fn = bhs.flags & 0x7f;
  const lun = decodeLun(bhs.w2, bhs.w3);
  const lunExists = lun !== undefined && ctx.target.luns.has(lun);
  switch (fn) {
    case TmfFunction.ABORT_TASK:
      if (!lunExists) return TmfResponse.LUN_DOES_NOT_EXIST;
      return abortTask(ctx, lun, bhs);
    case TmfFunction.ABORT_TASK_SET:
      if (!lunExists) return TmfResponse.LUN_DOES_NOT_EXIST;
      await Promise.all(ctx.tasks.list(lun).map((t) => ctx.tasks.abort(t, 'silent')));
      return TmfResponse.FUNCTION_COMPLETE;
    case TmfFunction.CLEAR_TASK_SET:
      if (!lunExists) return TmfResponse.LUN_DOES_NOT_EXIST;
      await abortEverywhere(ctx, lun, 'CLEAR TASK SET');
      return TmfResponse.FUNCTION_COMPLETE;
    case TmfFunction.LOGICAL_UNIT_RESET:
      if (!lunExists) return TmfResponse.LUN_DOES_NOT_EXIST;
      await abortEverywhere(ctx, lun, 'LOGICAL UNIT RESET');
      ctx.target.luns.get(lun)!.reset('lun');
      ctx.log.info({ lun }, 'logical unit reset');
      return TmfResponse.FUNCTION_COMPLETE;
    case TmfFunction.TARGET_WARM_RESET:
      await abortEverywhere(ctx, undefined, 'TARGET WARM RESET');
      for (const unit of ctx.target.luns.values()) unit.reset('target');
      ctx.log.info('target warm reset');
      return TmfResponse.FUNCTION_COMPLETE;
    case TmfFunction.TARGET_COLD_RESET:
      // A cold reset also drops every connection to the target; we do not offer it.
      return TmfResponse.FUNCTION_NOT_SUPPORTED;
    case TmfFunction.CLEAR_ACA:
      // We never establish ACA (NACA is not supported).
      return TmfResponse.FUNCTION_NOT_SUPPORTED;
    case TmfFunction.TASK_REASSIGN:
      // Needs ErrorRecoveryLevel 2 (RFC 7143 11.5.1).
      return TmfResponse.ALLEGIANCE_REASSIGNMENT_NOT_SUPPORTED;
    default:
      return RFC7144_FUNCTIONS.has(fn) ? TmfResponse.FUNCTION_NOT_SUPPORTED : TmfResponse.FUNCTION_REJECTED;
  }
}

/** ABORT TASK, with RFC 7143 11.5.1's rules for a task that is not (yet) here. */
async function abortTask(ctx: TmfContext, lun: number, bhs: Bhs): Promise<number> {
  const referenced = bhs.w5;
  const refCmdSN = bhs.w8;
  const task = ctx.tasks.find(referenced);
  if (task !== undefined && task.lun === lun) {
    await ctx.tasks.abort(task, 'silent');
    return TmfResponse.FUNCTION_COMPLETE;
  }
  // Case b: never received, but its CmdSN is inside the window and before
  // this request's: consider it received (and done), so the window moves on.
  const tmfCmdSN = bhs.w6;
  const queuedElsewhere = ctx.tasks.list().some((t) => !t.immediate && t.cmdSN === refCmdSN);
  if (task === undefined && !queuedElsewhere && ctx.window.inWindow(refCmdSN) && snLess(refCmdSN, tmfCmdSN)) {
    ctx.window.consume(refCmdSN);
    return TmfResponse.FUNCTION_COMPLETE;
  }
  // Case c: the task completed already, or its CmdSN was never valid.
  return TmfResponse.TASK_DOES_NOT_EXIST;
}

/** Aborts tasks on `lun` (all when undefined) in this session and in every other session to the target. */
async function abortEverywhere(ctx: TmfContext, lun: number | undefined, why: string): Promise<void> {
  const own = ctx.tasks.list(lun).map((t) => ctx.tasks.abort(t, 'silent'));
  const others = ctx.sessions.forTarget(ctx.target.iqn)
    .filter((s) => s !== ctx.self)
    .map((s) => s.abortTasks(lun, why));
  await Promise.all([...own, ...others]);
}
