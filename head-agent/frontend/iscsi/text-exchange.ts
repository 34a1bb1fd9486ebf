// Text Requests in full feature phase (RFC 7143 11.10, 11.11): SendTargets
// (the targets this initiator may log in to, with their addresses, RFC 7143
// appendix C) and declarations. Long text goes both ways in pieces: an
// initiator's request continued with the C bit gets empty responses until
// its last piece; a response longer than the initiator's
// MaxRecvDataSegmentLength goes out in pieces, each asked for by an empty
// Text Request carrying the Target Transfer Tag of the previous one.

import { ProtocolError } from '../../../shared/errors.js';
import { mayAccess } from './access.js';
import { CONTINUE_BIT, FINAL_BIT, RESERVED_TAG } from './constants.js';
import { parseNumber, type OperationalParams } from './negotiation.js';
import type { IscsiTarget, IscsiTargetRegistry } from './target-registry.js';
import { duplicateKey, encodeTextKeys, parseTextKeys, splitText, TextAccumulator, type KeyPair } from './text-keys.js';

export interface TextEnvironment {
  registry: IscsiTargetRegistry;
  initiatorName: string;
  /** The session's target; undefined in a discovery session. */
  target: IscsiTarget | undefined;
  /** "host:port" the initiator reached us on (IPv6 hosts in brackets). */
  portal: string;
  portalGroupTag: number;
  params: OperationalParams;
}

export interface TextReply {
  flags: number;
  ttt: number;
  text: Buffer;
}

export class TextExchange {
  private readonly env: TextEnvironment;
  private readonly request = new TextAccumulator();
  /** Response pieces not yet sent, and the tag the initiator must echo to get the next. */
  private pending: Buffer[] = [];
  private pendingTtt = RESERVED_TAG;
  private nextTtt = 1;

  constructor(env: TextEnvironment) {
    this.env = env;
  }

  /** Answers one Text Request. Throws ProtocolError for malformed text (the caller rejects the PDU). */
  handle(flags: number, ttt: number, data: Buffer | undefined): TextReply {
    const final = (flags & FINAL_BIT) !== 0;
    const continues = (flags & CONTINUE_BIT) !== 0;
    if (ttt !== RESERVED_TAG) {
      // The initiator asks for the next piece of our response (or continues its own text).
      if (ttt === this.pendingTtt && this.pending.length > 0 && (data === undefined || data.length === 0)) return this.nextPiece();
      if (ttt !== this.pendingTtt) throw new ProtocolError(`Text Request with unknown Target Transfer Tag 0x${ttt.toString(16)}`);
    } else {
      // RFC 7143 11.10.4: a new request (TTT 0xffffffff) resets any exchange in progress.
      this.pending = [];
      this.pendingTtt = RESERVED_TAG;
      this.request.reset();
    }
    if (continues && final) throw new ProtocolError('Text Request with both F and C set');
    const whole = this.request.push(data, continues);
    if (whole === undefined) {
      // More request text follows: answer empty, with a tag to continue on.
      this.pendingTtt = this.allocateTtt();
      return { flags: 0, ttt: this.pendingTtt, text: Buffer.alloc(0) };
    }
    const pairs = parseTextKeys(whole);
    const dup = duplicateKey(pairs);
    if (dup !== undefined) throw new ProtocolError(`key ${dup} sent twice`);
    const text = encodeTextKeys(this.answer(pairs));
    this.pending = splitText(text, this.env.params.initiatorMaxRecvDataSegment);
    this.pendingTtt = RESERVED_TAG;
    return this.nextPiece();
  }

  private nextPiece(): TextReply {
    const piece = this.pending.shift() ?? Buffer.alloc(0);
    if (this.pending.length === 0) {
      this.pendingTtt = RESERVED_TAG;
      return { flags: FINAL_BIT, ttt: RESERVED_TAG, text: piece };
    }
    this.pendingTtt = this.allocateTtt();
    return { flags: CONTINUE_BIT, ttt: this.pendingTtt, text: piece };
  }

  private answer(pairs: readonly KeyPair[]): KeyPair[] {
    const out: KeyPair[] = [];
    for (const [key, value] of pairs) {
      if (key === 'SendTargets') {
        out.push(...this.sendTargets(value));
      } else if (key === 'MaxRecvDataSegmentLength') {
        // Declarative, and may change in full feature phase: it bounds our next Data-In.
        const n = parseNumber(value);
        if (n !== undefined && n >= 512 && n <= 16777215) this.env.params.initiatorMaxRecvDataSegment = n;
      } else if (KNOWN_LOGIN_ONLY.has(key)) {
        // Parameters fixed at login cannot be renegotiated here.
        out.push([key, 'Reject']);
      } else {
        out.push([key, 'NotUnderstood']);
      }
    }
    return out;
  }

  /** RFC 7143 appendix C: All (discovery), empty (this session's target), or one name. */
  private sendTargets(value: string): KeyPair[] {
    const { env } = this;
    let targets: IscsiTarget[];
    if (value === 'All') {
      targets = env.registry.list();
    } else if (value === '') {
      targets = env.target === undefined ? [] : [env.target];
    } else {
      const t = env.registry.lookup(value);
      targets = t === undefined ? [] : [t];
    }
    const out: KeyPair[] = [];
    for (const t of targets) {
      if (!mayAccess(t, env.initiatorName)) continue;
      out.push(['TargetName', t.iqn], ['TargetAddress', `${env.portal},${env.portalGroupTag}`]);
    }
    return out;
  }

  private allocateTtt(): number {
    const t = this.nextTtt;
    this.nextTtt = this.nextTtt >= 0x7ffffffe ? 1 : this.nextTtt + 1;
    return t;
  }
}

const KNOWN_LOGIN_ONLY = new Set([
  'HeaderDigest', 'DataDigest', 'MaxBurstLength', 'FirstBurstLength', 'MaxOutstandingR2T', 'MaxConnections',
  'DefaultTime2Wait', 'DefaultTime2Retain', 'ErrorRecoveryLevel', 'InitialR2T', 'ImmediateData', 'DataPDUInOrder',
  'DataSequenceInOrder', 'IFMarker', 'OFMarker', 'IFMarkInt', 'OFMarkInt', 'SessionType', 'InitiatorName',
  'TargetName', 'AuthMethod', 'TargetPortalGroupTag', 'iSCSIProtocolLevel', 'TaskReporting',
]);
