// One session in full feature phase (MaxConnections=1, so one connection):
// it takes each PDU after login and routes it: SCSI commands and Data-Out
// to the task set, task management, text and logout requests through the
// CmdSN window (immediate ones at once), NOP-Out answered, SNACK and unknown
// opcodes rejected. A discovery session accepts only Text, NOP and Logout.

import { errorMessage } from '../../../shared/errors.js';
import { mayAccess } from './access.js';
import type { Logger } from '../../../shared/logger.js';
import { CommandWindow } from './command-window.js';
import {
  CLOSE_GRACE_MS, LogoutReason, LogoutResponse, MAX_PENDING_TMF, Opcode, RESERVED_TAG, RejectReason, TmfResponse, opcodeName,
} from './constants.js';
import { DataBudget } from './data-transfer.js';
import type { LoginResult } from './login.js';
import type { Bhs } from './pdu.js';
import type { PduWriter } from './pdu-writer.js';
import type { SessionHandle, SessionTable } from './session-table.js';
import { performTmf, tmfName } from './task-management.js';
import { TaskSet } from './task-set.js';
import type { IscsiTargetRegistry } from './target-registry.js';
import { TextExchange } from './text-exchange.js';

/** What the session needs from its connection. */
export interface ConnectionControl {
  /** Rejects a PDU (when given), then closes the connection: a protocol violation. */
  violation(reason: string, bhs: Bhs | undefined, rejectReason: number): void;
  /** After the Logout Response: flush and close. */
  endAfterLogout(): void;
  /** Ends the connection from outside (reinstatement, shutdown); resolves once closed. */
  close(reason: string): Promise<void>;
  /** A task settled (reading may resume). */
  taskSettled(): void;
}

export interface SessionOptions {
  log: Logger;
  trace: boolean;
  writer: PduWriter;
  control: ConnectionControl;
  login: LoginResult;
  tsih: number;
  cid: number;
  window: CommandWindow;
  registry: IscsiTargetRegistry;
  sessions: SessionTable;
  /** "host:port" the initiator reached (for SendTargets). */
  portal: string;
  portalGroupTag: number;
  maxDataBytes: number;
}

export class FullFeatureSession implements SessionHandle {
  readonly tsih: number;
  readonly isid: string;
  readonly initiatorName: string;
  readonly targetIqn: string | undefined;
  readonly nexus: string;
  private readonly opts: SessionOptions;
  private readonly log: Logger;
  private readonly writer: PduWriter;
  private readonly window: CommandWindow;
  private readonly tasks: TaskSet | undefined;
  private readonly text: TextExchange;
  private loggingOut = false;
  private pendingTmf = 0;

  constructor(opts: SessionOptions) {
    this.opts = opts;
    this.log = opts.log;
    this.writer = opts.writer;
    this.window = opts.window;
    const { login } = opts;
    this.tsih = opts.tsih;
    this.isid = login.isid;
    this.initiatorName = login.initiatorName;
    this.targetIqn = login.target?.iqn;
    // The iSCSI initiator port name (RFC 7143 4.2.7.1), what the unit keys reservations on.
    this.nexus = `${login.initiatorName},i,0x${login.isid}`;
    if (login.target !== undefined) {
      const control = opts.control;
      this.tasks = new TaskSet({
        log: opts.log, trace: opts.trace, writer: opts.writer, window: opts.window, params: login.params,
        budget: new DataBudget(opts.maxDataBytes), target: login.target, nexus: this.nexus,
        reject: (bhs, reason) => this.reject(bhs, reason),
        violation: (reason, bhs, rejectReason) => control.violation(reason, bhs, rejectReason),
        taskSettled: () => control.taskSettled(),
      });
    }
    this.text = new TextExchange({
      registry: opts.registry, initiatorName: login.initiatorName, target: login.target, portal: opts.portal,
      portalGroupTag: opts.portalGroupTag, params: login.params,
    });
  }

  /**
   * Why this session may no longer stay, or undefined: its target was
   * removed or replaced in the registry, or its ACL no longer names the
   * initiator (access rules changed while logged in).
   */
  accessRevoked(): string | undefined {
    const target = this.opts.login.target;
    if (target === undefined) return undefined;
    if (this.opts.registry.lookup(target.iqn) !== target) return 'its target was removed';
    if (!mayAccess(target, this.initiatorName)) return 'the target\'s ACL no longer names this initiator';
    return undefined;
  }

  /** FrameDecoder allocator: where a spanning Data-Out payload may be assembled in place. */
  placeDataOut(bhs: Bhs, payloadLength: number, headerDigest: number): Buffer | undefined {
    return this.tasks?.placeDataOut(bhs, payloadLength, headerDigest);
  }

  /** Tasks in flight (SCSI commands not yet answered). */
  get activeTasks(): number {
    return this.tasks?.size ?? 0;
  }

  /** One PDU in full feature phase; digests already checked. */
  handle(bhs: Bhs, ahs: Buffer | undefined, data: Buffer | undefined): void {
    switch (bhs.opcode) {
      case Opcode.SCSI_COMMAND:
        if (this.tasks === undefined) return this.reject(bhs, RejectReason.PROTOCOL_ERROR);
        if (this.loggingOut) return this.reject(bhs, RejectReason.WAITING_FOR_LOGOUT);
        // Once its volume is detached (or re-attached as a new unit), no command may reach the old unit.
        if (this.opts.registry.lookup(this.opts.login.target!.iqn) !== this.opts.login.target) {
          void this.close('its target was removed');
          return;
        }
        return this.tasks.command(bhs, ahs, data);
      case Opcode.DATA_OUT:
        if (this.tasks === undefined) return this.reject(bhs, RejectReason.PROTOCOL_ERROR);
        return this.tasks.dataOut(bhs, data);
      case Opcode.NOP_OUT:
        return this.nopOut(bhs, data);
      case Opcode.TASK_MGMT_REQUEST:
        if (this.tasks === undefined) return this.reject(bhs, RejectReason.PROTOCOL_ERROR);
        return this.ordered(bhs, (release) => this.taskManagement(bhs, release));
      case Opcode.TEXT_REQUEST:
        return this.ordered(bhs, (release) => this.textRequest(bhs, data, release));
      case Opcode.LOGOUT_REQUEST:
        return this.ordered(bhs, (release) => this.logout(bhs, release));
      case Opcode.LOGIN_REQUEST:
        return this.opts.control.violation('Login Request in full feature phase', bhs, RejectReason.PROTOCOL_ERROR);
      case Opcode.SNACK_REQUEST:
        // SNACK needs ErrorRecoveryLevel > 0; we negotiated 0.
        return this.reject(bhs, RejectReason.PROTOCOL_ERROR);
      default:
        // Target opcodes sent to us are protocol errors; anything else is unknown.
        return this.reject(bhs, bhs.opcode >= 0x20 ? RejectReason.PROTOCOL_ERROR : RejectReason.COMMAND_NOT_SUPPORTED);
    }
  }

  /**
   * Runs a non-SCSI request in CmdSN order (immediate ones at once). `release`
   * gives its CmdSN back to the window: called just before the response, so
   * the response carries the larger MaxCmdSN.
   */
  private ordered(bhs: Bhs, run: (release: () => void) => void): void {
    if (bhs.immediate) {
      run(() => {});
      return;
    }
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      this.window.release();
    };
    const admission = this.window.submit(bhs.w6, () => run(release));
    if (admission === 'ignored' && this.opts.trace) {
      this.log.debug({ op: opcodeName(bhs.opcode), cmdSN: bhs.w6, exp: this.window.expCmdSN }, 'request outside the CmdSN window ignored');
    }
  }

  private nopOut(bhs: Bhs, data: Buffer | undefined): void {
    // ITT 0xffffffff: an answer to our ping (or a ping wanting no answer);
    // the connection already noted that the initiator is alive.
    if (bhs.itt === RESERVED_TAG) return;
    if (bhs.w5 !== RESERVED_TAG) return this.reject(bhs, RejectReason.INVALID_PDU_FIELD);
    // Copy: an ordered ping may wait in the window longer than a socket chunk should be pinned.
    const echo = data === undefined ? undefined
      : Buffer.from(data.subarray(0, Math.min(data.length, this.maxSegment())));
    this.ordered(bhs, (release) => {
      release();
      this.writer.nopInReply({ lunHigh: bhs.w2, itt: bhs.itt }, echo);
    });
  }

  private taskManagement(bhs: Bhs, release: () => void): void {
    const tasks = this.tasks!;
    const fn = bhs.flags & 0x7f;
    if (this.pendingTmf >= MAX_PENDING_TMF) {
      release();
      this.writer.tmfResponse(bhs.itt, TmfResponse.FUNCTION_REJECTED);
      return;
    }
    this.pendingTmf++;
    this.log.info({ fn: tmfName(fn), itt: bhs.itt, ref: bhs.w5 }, 'task management request');
    void performTmf({
      log: this.log, tasks, window: this.window, target: this.opts.login.target!, sessions: this.opts.sessions, self: this,
    }, bhs).then((response) => {
      this.log.info({ fn: tmfName(fn), itt: bhs.itt, response }, 'task management done');
      return response;
    }, (err: unknown) => {
      this.log.error({ err: errorMessage(err) }, 'task management failed');
      return TmfResponse.FUNCTION_REJECTED;
    }).then((response) => {
      this.pendingTmf--;
      release();
      this.writer.tmfResponse(bhs.itt, response);
    });
  }

  private textRequest(bhs: Bhs, data: Buffer | undefined, release: () => void): void {
    let reply;
    try {
      reply = this.text.handle(bhs.flags, bhs.w5, data);
    } catch (err) {
      this.log.warn({ err: errorMessage(err) }, 'bad Text Request rejected');
      release();
      return this.reject(bhs, RejectReason.PROTOCOL_ERROR);
    }
    release();
    this.writer.textResponse({ flags: reply.flags, itt: bhs.itt, ttt: reply.ttt }, reply.text);
  }

  private logout(bhs: Bhs, release: () => void): void {
    const reason = bhs.flags & 0x7f;
    const cid = bhs.w5 >>> 16;
    const respond = (response: number): void => {
      release();
      const p = this.opts.login.params;
      this.writer.logoutResponse({ itt: bhs.itt, response, time2Wait: p.defaultTime2Wait, time2Retain: p.defaultTime2Retain });
    };
    if (reason === LogoutReason.REMOVE_CONNECTION_FOR_RECOVERY) return respond(LogoutResponse.RECOVERY_NOT_SUPPORTED);
    if (reason === LogoutReason.CLOSE_CONNECTION && cid !== this.opts.cid) return respond(LogoutResponse.CID_NOT_FOUND);
    if (reason !== LogoutReason.CLOSE_CONNECTION && reason !== LogoutReason.CLOSE_SESSION) {
      release();
      return this.reject(bhs, RejectReason.INVALID_PDU_FIELD);
    }
    this.loggingOut = true;
    this.log.info({ reason: reason === LogoutReason.CLOSE_SESSION ? 'close session' : 'close connection' }, 'initiator logs out');
    // Commands in flight finish and are answered first (bounded), then the response.
    void this.settleTasks(CLOSE_GRACE_MS).then(() => {
      respond(LogoutResponse.SUCCESS);
      this.opts.control.endAfterLogout();
    });
  }

  private reject(bhs: Bhs, reason: number): void {
    if (this.opts.trace) this.log.debug({ op: opcodeName(bhs.opcode), itt: bhs.itt, reason }, 'Reject');
    this.writer.reject(bhs, reason);
  }

  private maxSegment(): number {
    return this.opts.login.params.initiatorMaxRecvDataSegment;
  }

  /** Waits until no task is in flight, or `ms` passed (then aborts what is left). */
  private async settleTasks(ms: number): Promise<void> {
    const tasks = this.tasks;
    if (tasks === undefined || tasks.size === 0) return;
    const all = Promise.all(tasks.list().map((t) => t.settled));
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((r) => { timer = setTimeout(() => r('late'), ms); timer.unref(); });
    const outcome = await Promise.race([all, late]);
    clearTimeout(timer);
    if (outcome === 'late') {
      this.log.warn({ tasks: tasks.size }, 'tasks still in flight at logout; aborting them');
      await tasks.abortAll();
    }
  }

  // --- SessionHandle ------------------------------------------------------------

  close(reason: string): Promise<void> {
    return this.opts.control.close(reason);
  }

  abortTasks(lun: number | undefined, reason: string): Promise<void> {
    const tasks = this.tasks;
    if (tasks === undefined) return Promise.resolve();
    const affected = tasks.list(lun);
    if (affected.length > 0) this.log.info({ lun, tasks: affected.length, reason }, 'tasks aborted by another session');
    return Promise.all(affected.map((t) => tasks.abort(t, 'task-aborted'))).then(() => undefined);
  }

  /**
   * The connection is gone: queued requests are dropped, tasks aborted, the
   * units told that the nexus went away. Resolves once running tasks returned.
   */
  async ended(): Promise<void> {
    this.window.clear();
    this.opts.sessions.remove(this);
    if (this.tasks !== undefined) await this.tasks.abortAll();
    const target = this.opts.login.target;
    if (target !== undefined) {
      for (const unit of target.luns.values()) {
        try {
          unit.nexusLost(this.nexus);
        } catch (err) {
          this.log.warn({ err: errorMessage(err) }, 'logical unit failed nexusLost');
        }
      }
    }
  }
}
