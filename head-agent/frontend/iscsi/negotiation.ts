// Pure operational parameter negotiation (RFC 7143 6.2 and section 13): the
// target answers each key the initiator offers with the negotiated result,
// following the key's rule (numerical minimum or maximum, boolean AND or OR,
// list selection, declarative), and records what was agreed. The target
// itself offers nothing (each offer would cost the initiator a round trip);
// it only declares its own MaxRecvDataSegmentLength. Login keys
// (InitiatorName, TargetName, SessionType, AuthMethod, CHAP_*) are login.ts's.

import {
  DEFAULT_MAX_RECV_DATA_SEGMENT, OUR_DEFAULT_TIME2RETAIN, OUR_DEFAULT_TIME2WAIT, OUR_FIRST_BURST, OUR_MAX_BURST,
  OUR_MAX_OUTSTANDING_R2T, OUR_MAX_RECV_DATA_SEGMENT,
} from './constants.js';
import type { KeyPair } from './text-keys.js';

export interface OperationalParams {
  headerDigest: boolean;
  dataDigest: boolean;
  /** The initiator's declared MaxRecvDataSegmentLength: our Data-In and Text segments are cut to it. */
  initiatorMaxRecvDataSegment: number;
  /** Ours: the largest data segment we accept in full feature phase. */
  targetMaxRecvDataSegment: number;
  maxBurstLength: number;
  firstBurstLength: number;
  initialR2T: boolean;
  immediateData: boolean;
  maxOutstandingR2T: number;
  dataPduInOrder: boolean;
  dataSequenceInOrder: boolean;
  defaultTime2Wait: number;
  defaultTime2Retain: number;
  errorRecoveryLevel: number;
  maxConnections: number;
}

/** What this target is willing to agree to. */
export interface TargetOffer {
  maxRecvDataSegment: number;
  maxBurst: number;
  firstBurst: number;
  maxOutstandingR2T: number;
  /** false: we accept unsolicited Data-Out (InitialR2T=No) if the initiator wants it. */
  initialR2T: boolean;
  immediateData: boolean;
  defaultTime2Wait: number;
  defaultTime2Retain: number;
  /** Digest names we accept, e.g. ['CRC32C', 'None']. */
  digests: readonly string[];
}

export const DEFAULT_TARGET_OFFER: TargetOffer = {
  maxRecvDataSegment: OUR_MAX_RECV_DATA_SEGMENT,
  maxBurst: OUR_MAX_BURST,
  firstBurst: OUR_FIRST_BURST,
  maxOutstandingR2T: OUR_MAX_OUTSTANDING_R2T,
  initialR2T: false,
  immediateData: true,
  defaultTime2Wait: OUR_DEFAULT_TIME2WAIT,
  defaultTime2Retain: OUR_DEFAULT_TIME2RETAIN,
  digests: ['CRC32C', 'None'],
};

/** RFC 7143 section 13 defaults: what holds for any key nobody negotiates. */
export function rfcDefaults(offer: TargetOffer = DEFAULT_TARGET_OFFER): OperationalParams {
  return {
    headerDigest: false,
    dataDigest: false,
    initiatorMaxRecvDataSegment: DEFAULT_MAX_RECV_DATA_SEGMENT,
    // We accept up to our own limit whether or not the initiator heard it
    // (one that did not will send at most the default 8192).
    targetMaxRecvDataSegment: offer.maxRecvDataSegment,
    maxBurstLength: 262144,
    firstBurstLength: 65536,
    initialR2T: true,
    immediateData: true,
    maxOutstandingR2T: 1,
    dataPduInOrder: true,
    dataSequenceInOrder: true,
    defaultTime2Wait: 2,
    defaultTime2Retain: 20,
    errorRecoveryLevel: 0,
    maxConnections: 1,
  };
}

type NumericKey = 'maxBurstLength' | 'firstBurstLength' | 'maxOutstandingR2T' | 'defaultTime2Wait' | 'defaultTime2Retain' | 'errorRecoveryLevel' | 'maxConnections';
type BooleanKey = 'initialR2T' | 'immediateData' | 'dataPduInOrder' | 'dataSequenceInOrder';

type Rule =
  | { kind: 'min' | 'max'; lo: number; hi: number; ours: (o: TargetOffer) => number; field: NumericKey }
  | { kind: 'or' | 'and'; ours: (o: TargetOffer) => boolean; field: BooleanKey }
  | { kind: 'digest'; field: 'headerDigest' | 'dataDigest' }
  /** The initiator's MaxRecvDataSegmentLength: recorded, not answered. */
  | { kind: 'initiator-mrdsl' }
  /** Declarations the initiator makes that need no answer. */
  | { kind: 'declarative' }
  /** Obsolete marker keys (RFC 3720 IFMarker/OFMarker): AND with our No. */
  | { kind: 'no' }
  /** Keys that only matter when something else was agreed (marker intervals). */
  | { kind: 'irrelevant' }
  /** A fixed answer (a list or numerical key where we have one value). */
  | { kind: 'fixed'; value: string }
  /** Valid only in another context (full feature phase, or the target's to send). */
  | { kind: 'not-here' };

const MAX_24BIT = 16777215;

const RULES: Record<string, Rule> = {
  HeaderDigest: { kind: 'digest', field: 'headerDigest' },
  DataDigest: { kind: 'digest', field: 'dataDigest' },
  MaxRecvDataSegmentLength: { kind: 'initiator-mrdsl' },
  MaxBurstLength: { kind: 'min', lo: 512, hi: MAX_24BIT, ours: (o) => o.maxBurst, field: 'maxBurstLength' },
  FirstBurstLength: { kind: 'min', lo: 512, hi: MAX_24BIT, ours: (o) => o.firstBurst, field: 'firstBurstLength' },
  MaxOutstandingR2T: { kind: 'min', lo: 1, hi: 65535, ours: (o) => o.maxOutstandingR2T, field: 'maxOutstandingR2T' },
  // Multiple connections per session need ERL-2-style allegiance handling: one is enough.
  MaxConnections: { kind: 'min', lo: 1, hi: 65535, ours: () => 1, field: 'maxConnections' },
  DefaultTime2Wait: { kind: 'max', lo: 0, hi: 3600, ours: (o) => o.defaultTime2Wait, field: 'defaultTime2Wait' },
  DefaultTime2Retain: { kind: 'min', lo: 0, hi: 3600, ours: (o) => o.defaultTime2Retain, field: 'defaultTime2Retain' },
  // Error recovery level 0 only: any failure ends the session.
  ErrorRecoveryLevel: { kind: 'min', lo: 0, hi: 2, ours: () => 0, field: 'errorRecoveryLevel' },
  InitialR2T: { kind: 'or', ours: (o) => o.initialR2T, field: 'initialR2T' },
  ImmediateData: { kind: 'and', ours: (o) => o.immediateData, field: 'immediateData' },
  // We always want data in order: it lets Data-Out land in place.
  DataPDUInOrder: { kind: 'or', ours: () => true, field: 'dataPduInOrder' },
  DataSequenceInOrder: { kind: 'or', ours: () => true, field: 'dataSequenceInOrder' },
  IFMarker: { kind: 'no' },
  OFMarker: { kind: 'no' },
  IFMarkInt: { kind: 'irrelevant' },
  OFMarkInt: { kind: 'irrelevant' },
  // RFC 7144: we implement the RFC 7143 level.
  iSCSIProtocolLevel: { kind: 'fixed', value: '1' },
  TaskReporting: { kind: 'fixed', value: 'RFC3720' },
  InitiatorAlias: { kind: 'declarative' },
  TargetAlias: { kind: 'not-here' },
  TargetAddress: { kind: 'not-here' },
  TargetPortalGroupTag: { kind: 'not-here' },
  SendTargets: { kind: 'not-here' },
};

/** Keys irrelevant in a discovery session (RFC 7143 section 13, "Irrelevant when"). */
const NORMAL_ONLY = new Set([
  'MaxConnections', 'InitialR2T', 'ImmediateData', 'MaxBurstLength', 'FirstBurstLength', 'MaxOutstandingR2T',
  'DataPDUInOrder', 'DataSequenceInOrder',
]);

/** Values that are themselves answers; an initiator sends them only to answer our offers (we make none). */
const ANSWER_VALUES = new Set(['NotUnderstood', 'Irrelevant', 'Reject']);

/** Parses an iSCSI numerical value (decimal or 0x hex); undefined when malformed. */
export function parseNumber(value: string): number | undefined {
  if (/^[0-9]{1,10}$/.test(value)) return Number(value);
  if (/^0[xX][0-9a-fA-F]{1,8}$/.test(value)) return Number.parseInt(value.slice(2), 16);
  return undefined;
}

export class Negotiator {
  readonly params: OperationalParams;
  private readonly offer: TargetOffer;
  private readonly discovery: boolean;
  private declared = false;

  constructor(offer: TargetOffer, discovery: boolean) {
    this.offer = offer;
    this.discovery = discovery;
    this.params = rfcDefaults(offer);
  }

  /** True for keys this negotiator answers (operational keys, known or not). */
  static handles(key: string): boolean {
    return !LOGIN_KEYS.has(key) && !key.startsWith('CHAP_');
  }

  /** Answers the operational keys of one request, in order. Never throws. */
  answer(pairs: readonly KeyPair[]): KeyPair[] {
    const out: KeyPair[] = [];
    for (const [key, value] of pairs) {
      const reply = this.answerOne(key, value);
      if (reply !== undefined) out.push([key, reply]);
    }
    // RFC 7143 13.14: FirstBurstLength must not exceed MaxBurstLength.
    if (this.params.firstBurstLength > this.params.maxBurstLength) {
      this.params.firstBurstLength = this.params.maxBurstLength;
      const i = out.findIndex(([k]) => k === 'FirstBurstLength');
      if (i >= 0) out[i] = ['FirstBurstLength', String(this.params.firstBurstLength)];
    }
    return out;
  }

  /** Our declarations, once per login: the largest data segment we accept. */
  declarations(): KeyPair[] {
    if (this.declared) return [];
    this.declared = true;
    return [['MaxRecvDataSegmentLength', String(this.offer.maxRecvDataSegment)]];
  }

  private answerOne(key: string, value: string): string | undefined {
    if (ANSWER_VALUES.has(value)) return undefined;
    const rule = RULES[key];
    // RFC 7143 6.2: unknown keys (including X- and X# extensions) are answered NotUnderstood.
    if (rule === undefined) return 'NotUnderstood';
    if (this.discovery && NORMAL_ONLY.has(key)) return 'Irrelevant';
    const p = this.params;
    switch (rule.kind) {
      case 'digest': {
        const choice = selectFromList(value, this.offer.digests);
        if (choice === undefined) return 'Reject';
        p[rule.field] = choice === 'CRC32C';
        return choice;
      }
      case 'initiator-mrdsl': {
        const n = parseNumber(value);
        // A bad declaration leaves the default; declarations are not answered.
        if (n !== undefined && n >= 512 && n <= MAX_24BIT) p.initiatorMaxRecvDataSegment = n;
        return undefined;
      }
      case 'min':
      case 'max': {
        const n = parseNumber(value);
        if (n === undefined || n < rule.lo || n > rule.hi) return 'Reject';
        const ours = rule.ours(this.offer);
        const result = rule.kind === 'min' ? Math.min(n, ours) : Math.max(n, ours);
        p[rule.field] = result;
        return String(result);
      }
      case 'or':
      case 'and': {
        if (value !== 'Yes' && value !== 'No') return 'Reject';
        const theirs = value === 'Yes';
        const ours = rule.ours(this.offer);
        const result = rule.kind === 'or' ? theirs || ours : theirs && ours;
        p[rule.field] = result;
        return result ? 'Yes' : 'No';
      }
      case 'no':
        if (value !== 'Yes' && value !== 'No') return 'Reject';
        return 'No';
      case 'irrelevant':
        return 'Irrelevant';
      case 'fixed':
        return rule.value;
      case 'declarative':
        return undefined;
      case 'not-here':
        return 'Irrelevant';
    }
  }
}

/** Login keys that are not operational parameters (login.ts handles them). */
const LOGIN_KEYS = new Set(['InitiatorName', 'TargetName', 'SessionType', 'AuthMethod']);

/** List negotiation: the first value in the offerer's list that we accept (RFC 7143 6.2.1). */
export function selectFromList(offered: string, acceptable: readonly string[]): string | undefined {
  for (const v of offered.split(',')) {
    const match = acceptable.find((a) => a.toLowerCase() === v.toLowerCase());
    if (match !== undefined) return match;
  }
  return undefined;
}
