// One iSCSI connection: the socket, the PDU decoder, the login phase (driving
// login.ts), then full feature phase (handing PDUs to session.ts). Reading
// pauses while the socket's write buffer is full and resumes on 'drain'; the
// CmdSN window and the data budget bound everything else. Liveness: a
// connection must finish login in time; in full feature phase
// initiator-liveness.ts pings a silent initiator and drops it if it does not
// answer, and closes a session whose target or ACL no longer allows it. Any malformed input closes this connection only, with a log
// line naming the remote address and the reason.

import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { withTimeout } from '../../../shared/bounded-wait.js';
import { errorMessage } from '../../../shared/errors.js';
import { FrameDecoder } from '../../../shared/frame-decoder.js';
import { isTraced, type Logger } from '../../../shared/logger.js';
import { switchToReceiveBuffer } from '../../../shared/net/receive-buffer-socket.js';
import { ReadGate, addSocketHandlers, removeSocketHandlers, type SocketHandlers } from '../client-socket.js';
import { CommandWindow } from './command-window.js';
import { LoginStatus, Opcode, RejectReason, opcodeName } from './constants.js';
import { LoginStateMachine, loginFlags, parseLoginFlags, type LoginStep } from './login.js';
import type { TargetOffer } from './negotiation.js';
import { checkDigests, isidText, PduError, PduSpec, splitPayload, tsihOf, type Bhs } from './pdu.js';
import { PduWriter } from './pdu-writer.js';
import { FullFeatureSession, type ConnectionControl } from './session.js';
import type { SessionTable } from './session-table.js';
import type { IscsiTargetRegistry } from './target-registry.js';
import { encodeTextKeys } from './text-keys.js';
import { InitiatorLiveness } from './initiator-liveness.js';

export interface ConnectionTuning {
  loginTimeoutMs: number;
  nopIntervalMs: number;
  nopTimeoutMs: number;
  closeGraceMs: number;
  cmdWindow: number;
  maxDataBytes: number;
}

export interface ConnectionEnvironment {
  registry: IscsiTargetRegistry;
  sessions: SessionTable;
  portalGroupTag: number;
  offer: TargetOffer;
  tuning: ConnectionTuning;
  /** Bound to this connection (id, remote address). */
  log: Logger;
}

type State = 'login' | 'completing' | 'ffp' | 'closing' | 'done';

/** Each connection's reused socket read buffer (several pipelined PDUs per read). */
const RECEIVE_BUFFER_SIZE = 256 * 1024;
/** Queued reply bytes before reading pauses: a few 64 KiB Data-In sequences, not one per command. */
const WRITE_HIGH_WATER_MARK = 256 * 1024;

export class IscsiConnection implements ConnectionControl {
  /** Resolves once the socket is closed and the session's tasks have returned (bounded). Never rejects. */
  readonly closed: Promise<void>;
  private readonly socket: Socket;
  private readonly env: ConnectionEnvironment;
  private readonly log: Logger;
  private readonly trace: boolean;
  private readonly spec = new PduSpec();
  private readonly decoder: FrameDecoder<Bhs>;
  private readonly writer: PduWriter;
  private readonly login: LoginStateMachine;
  /** ExpCmdSN/MaxCmdSN shown in login responses, before the session's window exists. */
  private readonly loginNumbers = { expCmdSN: 0, maxCmdSN: 0 };
  private state: State = 'login';
  private session: FullFeatureSession | undefined;
  private cid = 0;
  private readonly reading: ReadGate;
  private readonly liveness: InitiatorLiveness;
  private loginTimer: NodeJS.Timeout | undefined;
  private idleWaiter: (() => void) | undefined;
  private resolveClosed!: () => void;

  private readonly onData = (chunk: Buffer): void => {
    this.liveness.heard();
    if (this.state === 'closing' || this.state === 'done') return;
    this.decoder.push(chunk);
    this.pump();
  };
  /**
   * net's onread: one socket read in this connection's reused receive buffer.
   * BHSs are parsed in place into numbers, every data segment is copied once
   * (Data-Out straight into its command's buffer), and own() copies out the
   * rest before the buffer is reused.
   */
  private readonly onRead = (nread: number, buf: Uint8Array): boolean => {
    this.liveness.heard();
    if (this.state === 'closing' || this.state === 'done') return true;
    this.decoder.pushTransient((buf as Buffer).subarray(0, nread));
    this.pump();
    this.decoder.own();
    return true;
  };
  /** endSocket() ran: input is drained and dropped until the initiator closes too. */
  private finSent = false;
  /** Bytes the accepted socket had read before the connection took it (normally none). */
  private pending: Buffer | undefined;
  private readonly onDrain = (): void => {
    this.writer.blocked = false;
    this.pump();
  };
  private readonly onEnd = (): void => {
    if (this.state === 'ffp') this.log.info('initiator closed the connection without logging out');
    void this.shutdown(this.env.tuning.closeGraceMs);
  };
  private readonly onError = (err: Error): void => {
    this.log.info({ err: errorMessage(err) }, 'iSCSI connection socket error');
    this.socket.destroy();
  };
  private readonly onClose = (): void => {
    this.teardown();
  };
  private readonly handlers: SocketHandlers = {
    data: this.onData, drain: this.onDrain, end: this.onEnd, error: this.onError, close: this.onClose,
  };

  constructor(accepted: Socket, env: ConnectionEnvironment) {
    // Reads go into one reused buffer instead of a fresh ArrayBuffer per read
    // (GC pressure under 64 KiB writes); a socket that cannot be moved keeps 'data' events.
    const switched = switchToReceiveBuffer(accepted, Buffer.allocUnsafe(RECEIVE_BUFFER_SIZE), this.onRead, true, WRITE_HIGH_WATER_MARK);
    const socket = switched?.socket ?? accepted;
    this.pending = switched?.pending;
    this.socket = socket;
    this.reading = new ReadGate(socket);
    this.env = env;
    this.log = env.log;
    this.trace = isTraced('iscsi');
    this.liveness = new InitiatorLiveness({
      active: () => this.state === 'ffp',
      accessRevoked: () => this.session?.accessRevoked(),
      writeBlocked: () => this.writer.blocked,
      close: (reason) => void this.close(reason),
      fail: (reason) => this.fail(reason),
      ping: (ttt) => this.writer.nopInPing(ttt),
    }, this.log, this.trace);
    this.decoder = new FrameDecoder(this.spec, (h, length) => (
      this.state === 'ffp' ? this.session?.placeDataOut(h, length, this.spec.headerDigest ? 4 : 0) : undefined));
    this.writer = new PduWriter(socket, this.spec, this.loginNumbers, randomBytes(4).readUInt32BE(0));
    this.login = new LoginStateMachine({
      registry: env.registry, portalGroupTag: env.portalGroupTag, offer: env.offer, random: randomBytes,
      sessionExists: (tsih) => env.sessions.exists(tsih),
    });
    this.closed = new Promise((resolve) => { this.resolveClosed = resolve; });
  }

  /** True once in full feature phase. */
  get loggedIn(): boolean {
    return this.session !== undefined;
  }

  start(): void {
    const s = this.socket;
    addSocketHandlers(s, this.handlers);
    this.loginTimer = setTimeout(() => {
      this.fail(`login did not complete within ${this.env.tuning.loginTimeoutMs} ms`);
    }, this.env.tuning.loginTimeoutMs);
    this.loginTimer.unref();
    if (s.destroyed) {
      this.teardown();
      return;
    }
    if (this.pending !== undefined) {
      this.decoder.push(this.pending);
      this.pending = undefined;
      this.pump();
    }
  }

  /**
   * Stops reading, lets in-flight commands finish and be answered (bounded
   * by `graceMs`), then closes. Resolves when closed, or after twice
   * `graceMs` if the unit never settles a command.
   */
  shutdown(graceMs: number): Promise<void> {
    if (this.state === 'login' || this.state === 'completing') {
      this.socket.destroy();
    } else if (this.state === 'ffp') {
      this.state = 'closing';
      this.updateReading();
      const end = (): void => {
        this.idleWaiter = undefined;
        this.endSocket();
      };
      if ((this.session?.activeTasks ?? 0) === 0) end();
      else {
        this.idleWaiter = end;
        setTimeout(() => this.socket.destroy(), graceMs).unref();
      }
    }
    return withTimeout(this.closed, 2 * graceMs, () => this.log.warn('commands still in flight at shutdown; abandoning them'));
  }

  // --- ConnectionControl (for the session) ---------------------------------------

  violation(reason: string, bhs: Bhs | undefined, rejectReason: number): void {
    if (this.state === 'closing' || this.state === 'done') return;
    this.log.warn({ reason, op: bhs === undefined ? undefined : opcodeName(bhs.opcode) }, 'iSCSI protocol violation; closing the connection');
    if (bhs !== undefined) this.writer.reject(bhs, rejectReason);
    this.state = 'closing';
    this.endSocket();
  }

  endAfterLogout(): void {
    if (this.state === 'done') return;
    this.state = 'closing';
    this.endSocket();
  }

  close(reason: string): Promise<void> {
    if (this.state !== 'done') {
      this.log.info({ reason }, 'closing the iSCSI session');
      this.state = 'closing';
      this.socket.destroy();
    }
    return this.closed;
  }

  taskSettled(): void {
    if (this.idleWaiter !== undefined && (this.session?.activeTasks ?? 0) === 0) this.idleWaiter();
  }

  // --- Reading --------------------------------------------------------------------

  private pump(): void {
    while ((this.state === 'login' || this.state === 'ffp') && !this.writer.blocked) {
      let frame;
      try {
        frame = this.decoder.next();
      } catch (err) {
        this.malformed(err);
        return;
      }
      if (frame === undefined) break;
      try {
        this.frame(frame.header, frame.payload);
      } catch (err) {
        // A bug, not bad input (bad input is handled where it is parsed):
        // this connection goes, the process stays.
        this.log.error({ err: errorMessage(err), stack: err instanceof Error ? err.stack : undefined }, 'unexpected error handling a PDU');
        this.fail('internal error');
        return;
      }
    }
    this.updateReading();
  }

  private updateReading(): void {
    this.reading.set(this.finSent || ((this.state === 'login' || this.state === 'ffp') && !this.writer.blocked));
  }

  private malformed(err: unknown): void {
    const bhs = err instanceof PduError ? err.bhs : undefined;
    if (this.state === 'ffp' && bhs !== undefined) {
      this.violation(errorMessage(err), bhs, RejectReason.PROTOCOL_ERROR);
    } else {
      this.fail(errorMessage(err));
    }
  }

  private frame(h: Bhs, payload: Buffer | undefined): void {
    const digests = checkDigests(this.spec, h, payload);
    // ErrorRecoveryLevel 0: a bad header digest loses the framing; close.
    if (digests === 'header') return this.fail(`header digest error on a ${opcodeName(h.opcode)} PDU`);
    if (digests === 'data') return this.violation(`data digest error on a ${opcodeName(h.opcode)} PDU`, h, RejectReason.DATA_DIGEST_ERROR);
    const parts = splitPayload(this.spec, h, payload);
    if (this.state === 'login') return this.loginPdu(h, parts.data);
    if (this.trace) this.log.debug({ op: opcodeName(h.opcode), itt: h.itt, length: h.dataLength }, 'PDU');
    this.session!.handle(h, parts.ahs, parts.data);
  }

  // --- Login ------------------------------------------------------------------------

  private loginPdu(h: Bhs, data: Buffer | undefined): void {
    if (h.opcode !== Opcode.LOGIN_REQUEST) return this.fail(`${opcodeName(h.opcode)} PDU before login completed`);
    const flags = parseLoginFlags(h.flags);
    this.cid = h.w5 >>> 16;
    // The login's CmdSN is the session's first; it does not advance during login.
    this.loginNumbers.expCmdSN = h.w6;
    this.loginNumbers.maxCmdSN = (h.w6 + this.env.tuning.cmdWindow - 1) >>> 0;
    const step = this.login.step({ ...flags, versionMax: h.b2, versionMin: h.b3, isid: isidText(h), tsih: tsihOf(h), data });
    const reply = {
      flags: loginFlags(step.reply), isidHigh: h.w2, isidLow16: h.w3 >>> 16, tsih: 0, itt: h.itt, status: step.reply.status,
    };
    if (step.kind === 'continue') {
      this.writer.loginResponse(reply, encodeTextKeys(step.reply.keys));
    } else if (step.kind === 'fail') {
      this.log.warn({ ...this.login.who, status: `0x${step.reply.status.toString(16).padStart(4, '0')}`, reason: step.reason }, 'iSCSI login refused');
      this.writer.loginResponse(reply, encodeTextKeys(step.reply.keys));
      this.state = 'closing';
      this.endSocket();
    } else {
      this.state = 'completing';
      this.updateReading();
      void this.completeLogin(step, h, reply).catch((err: unknown) => {
        this.log.error({ err: errorMessage(err) }, 'iSCSI login failed unexpectedly');
        this.socket.destroy();
      });
    }
  }

  private async completeLogin(step: Extract<LoginStep, { kind: 'complete' }>, h: Bhs, reply: Parameters<PduWriter['loginResponse']>[0]): Promise<void> {
    const { env } = this;
    const r = step.result;
    // RFC 7143 6.3.5: a login with the ISID of a live session reinstates it: the old one goes.
    const old = env.sessions.findForReinstatement(r.initiatorName, r.isid, r.target?.iqn);
    if (old !== undefined) {
      this.log.info({ initiator: r.initiatorName, isid: r.isid, oldTsih: old.tsih }, 'session reinstatement: closing the old session');
      await old.close('reinstated by a new login with the same ISID');
    }
    if (this.state !== 'completing') return;
    const tsih = env.sessions.allocateTsih();
    if (tsih === undefined) {
      this.log.warn('no free TSIH; login refused');
      this.writer.loginResponse({ ...reply, flags: loginFlags({ ...step.reply, transit: false }), status: LoginStatus.OUT_OF_RESOURCES }, Buffer.alloc(0));
      this.state = 'closing';
      this.endSocket();
      return;
    }
    const window = new CommandWindow(h.w6, env.tuning.cmdWindow);
    this.writer.setWindow(window);
    const local = this.socket.localAddress ?? '127.0.0.1';
    const session = new FullFeatureSession({
      log: this.log.child({ tsih, initiator: r.initiatorName, target: r.target?.iqn ?? 'discovery' }), trace: this.trace,
      writer: this.writer, control: this, login: r, tsih, cid: this.cid, window, registry: env.registry, sessions: env.sessions,
      portal: `${local.includes(':') ? `[${local}]` : local}:${this.socket.localPort ?? 0}`, portalGroupTag: env.portalGroupTag,
      maxDataBytes: env.tuning.maxDataBytes,
    });
    this.session = session;
    env.sessions.add(session);
    this.writer.loginResponse({ ...reply, tsih }, encodeTextKeys(step.reply.keys));
    // Digests and our larger segment limit start with the next PDU, both ways (RFC 7143 13.1, 13.12).
    const p = r.params;
    this.spec.headerDigest = p.headerDigest;
    this.spec.dataDigest = p.dataDigest;
    this.spec.maxDataSegment = p.targetMaxRecvDataSegment;
    this.state = 'ffp';
    clearTimeout(this.loginTimer);
    this.liveness.start(env.tuning.nopIntervalMs, env.tuning.nopTimeoutMs);
    this.log.info({
      tsih, type: r.sessionType, initiator: r.initiatorName, target: r.target?.iqn, headerDigest: p.headerDigest,
      dataDigest: p.dataDigest, mrdsl: p.initiatorMaxRecvDataSegment, maxBurst: p.maxBurstLength, firstBurst: p.firstBurstLength,
      immediateData: p.immediateData, initialR2T: p.initialR2T,
    }, 'iSCSI login');
    this.pump();
  }

  // --- Closing --------------------------------------------------------------------------

  /** Closes at once: the peer is broken or hostile, or gone silent. */
  private fail(reason: string): void {
    if (this.state === 'done') return;
    this.log.warn({ reason }, 'closing the iSCSI connection');
    this.state = 'closing';
    this.socket.destroy();
  }

  /** Flushes what was written, then closes; destroys anyway if the peer stops reading. */
  private endSocket(): void {
    // Our side is done: what the initiator still sends is read and dropped,
    // so that its FIN is seen and the socket closes (a socket reading into a
    // reused buffer stops reading from the kernel while paused).
    this.finSent = true;
    this.updateReading();
    const s = this.socket;
    if (s.destroyed) return;
    s.end();
    setTimeout(() => s.destroy(), this.env.tuning.closeGraceMs).unref();
  }

  /** The one place that removes every listener and timer of this connection. */
  private teardown(): void {
    if (this.state === 'done') return;
    this.state = 'done';
    clearTimeout(this.loginTimer);
    this.liveness.stop();
    this.idleWaiter = undefined;
    const s = this.socket;
    removeSocketHandlers(s, this.handlers);
    if (!s.destroyed) s.destroy();
    const session = this.session;
    if (session === undefined) {
      this.resolveClosed();
      return;
    }
    void withTimeout(session.ended(), 2 * this.env.tuning.closeGraceMs, () => {
      this.log.warn('logical unit still running commands of a closed session');
    }).then(() => this.resolveClosed());
  }
}
