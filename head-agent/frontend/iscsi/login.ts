// The login phase of one connection as a state machine without I/O (RFC 7143
// 6.3, 11.12, 11.13). It takes each Login Request and answers with the Login
// Response to send and what happens next: keep going, fail (send, then
// close), or complete (send, then full feature phase). Security stage:
// AuthMethod None or CHAP (MD5, one-way or mutual, see chap.ts); operational
// stage: negotiation.ts. Identification and authorization: the initiator
// names itself and the target; the registry says whether it may log in.

import { errorMessage, ProtocolError } from '../../../shared/errors.js';
import { mayAccess, sameIscsiName } from './access.js';
import type { IscsiTarget, IscsiTargetRegistry } from './target-registry.js';
import {
  checkInitiatorChallenge, decodeBinary, encodeBinary, makeChallenge, offersMd5, parseChapIdentifier,
  verifyChapResponse, CHAP_MD5, type ChapChallenge, chapResponse,
} from './chap.js';
import { CONTINUE_BIT, LOGIN_TRANSIT_BIT, LoginStatus, MAX_LOGIN_PDUS, Stage } from './constants.js';
import { Negotiator, selectFromList, type OperationalParams, type TargetOffer } from './negotiation.js';
import { duplicateKey, parseTextKeys, TextAccumulator, type KeyPair } from './text-keys.js';

export interface LoginRequest {
  transit: boolean;
  continues: boolean;
  csg: number;
  nsg: number;
  versionMax: number;
  versionMin: number;
  /** ISID as 12 hex digits. */
  isid: string;
  tsih: number;
  data: Buffer | undefined;
}

export interface LoginReply {
  transit: boolean;
  csg: number;
  nsg: number;
  /** Status-Class << 8 | Status-Detail. */
  status: number;
  keys: KeyPair[];
}

export type SessionType = 'Normal' | 'Discovery';

export interface LoginResult {
  sessionType: SessionType;
  initiatorName: string;
  initiatorAlias: string | undefined;
  /** The target, for a normal session. */
  target: IscsiTarget | undefined;
  isid: string;
  params: OperationalParams;
}

export type LoginStep =
  | { kind: 'continue'; reply: LoginReply }
  /** Send the reply (a failure status), then close the connection. */
  | { kind: 'fail'; reply: LoginReply; reason: string }
  /** Send the reply (the caller fills in the new TSIH), then enter full feature phase. */
  | { kind: 'complete'; reply: LoginReply; result: LoginResult };

export interface LoginEnvironment {
  registry: IscsiTargetRegistry;
  portalGroupTag: number;
  offer: TargetOffer;
  random: (n: number) => Buffer;
  /** True when a session with this TSIH exists (a login adding a connection to it). */
  sessionExists(tsih: number): boolean;
}

type AuthState = 'start' | 'chap-algorithm' | 'chap-response' | 'done';

/** A login failure: the status to send and why (for the log). */
class LoginFailure extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

/** The byte 1 of a Login Response. */
export function loginFlags(reply: LoginReply): number {
  return (reply.transit ? LOGIN_TRANSIT_BIT : 0) | (reply.csg << 2) | (reply.transit ? reply.nsg : 0);
}

export function parseLoginFlags(flags: number): { transit: boolean; continues: boolean; csg: number; nsg: number } {
  return { transit: (flags & LOGIN_TRANSIT_BIT) !== 0, continues: (flags & CONTINUE_BIT) !== 0, csg: (flags >> 2) & 3, nsg: flags & 3 };
}

export class LoginStateMachine {
  private readonly env: LoginEnvironment;
  private readonly text = new TextAccumulator();
  private pdus = 0;
  private first = true;
  private isid = '';
  /** The stage the next request must be in (advanced only by our T=1 replies). */
  private stage: number = Stage.SECURITY;
  private auth: AuthState = 'start';
  private challenge: ChapChallenge | undefined;
  private initiatorName = '';
  private initiatorAlias: string | undefined;
  private sessionType: SessionType = 'Normal';
  private target: IscsiTarget | undefined;
  private negotiator: Negotiator | undefined;
  private sentFirstReply = false;

  constructor(env: LoginEnvironment) {
    this.env = env;
  }

  /** Who is logging in, once known (for log lines). */
  get who(): { initiator: string; target: string | undefined } {
    return { initiator: this.initiatorName, target: this.target?.iqn };
  }

  step(req: LoginRequest): LoginStep {
    try {
      return this.handle(req);
    } catch (err) {
      const status = err instanceof LoginFailure ? err.status : LoginStatus.INITIATOR_ERROR;
      if (!(err instanceof LoginFailure) && !(err instanceof ProtocolError)) throw err;
      return { kind: 'fail', reason: errorMessage(err), reply: { transit: false, csg: req.csg, nsg: 0, status, keys: [] } };
    }
  }

  private handle(req: LoginRequest): LoginStep {
    if (++this.pdus > MAX_LOGIN_PDUS) throw new LoginFailure(LoginStatus.INITIATOR_ERROR, `more than ${MAX_LOGIN_PDUS} login requests`);
    this.checkHeader(req);
    const whole = this.text.push(req.data, req.continues);
    // RFC 7143 11.12.2: a continued request gets an empty response in the same stage.
    if (whole === undefined) return { kind: 'continue', reply: { transit: false, csg: req.csg, nsg: 0, status: 0, keys: [] } };
    const pairs = parseTextKeys(whole);
    const dup = duplicateKey(pairs);
    if (dup !== undefined) throw new LoginFailure(LoginStatus.INITIATOR_ERROR, `key ${dup} sent twice`);
    const keys: KeyPair[] = [];
    this.identify(pairs);
    if (!this.sentFirstReply) {
      this.sentFirstReply = true;
      // RFC 7143 13.9: the target returns its portal group tag in the first response of a normal session.
      if (this.sessionType === 'Normal') keys.push(['TargetPortalGroupTag', String(this.env.portalGroupTag)]);
    }
    const negotiator = this.negotiator!;
    const operational = pairs.filter(([k]) => Negotiator.handles(k));
    if (req.csg === Stage.SECURITY) {
      keys.push(...this.security(pairs));
    } else {
      if (this.auth !== 'done' && this.authRequired()) {
        throw new LoginFailure(LoginStatus.AUTH_FAILURE, 'initiator skipped authentication for a target that requires CHAP');
      }
      const stray = pairs.find(([k]) => k === 'AuthMethod' || k.startsWith('CHAP_'));
      if (stray !== undefined) throw new LoginFailure(LoginStatus.INITIATOR_ERROR, `security key ${stray[0]} in the operational stage`);
      this.auth = 'done';
      keys.push(...negotiator.declarations());
    }
    keys.push(...negotiator.answer(operational));
    const transit = req.transit && this.auth === 'done';
    const reply: LoginReply = { transit, csg: req.csg, nsg: transit ? req.nsg : 0, status: LoginStatus.SUCCESS, keys };
    if (!transit) return { kind: 'continue', reply };
    if (req.nsg === Stage.FULL_FEATURE) {
      return {
        kind: 'complete', reply,
        result: {
          sessionType: this.sessionType, initiatorName: this.initiatorName, initiatorAlias: this.initiatorAlias,
          target: this.target, isid: this.isid, params: negotiator.params,
        },
      };
    }
    this.stage = req.nsg;
    return { kind: 'continue', reply };
  }

  /** Version, ISID/TSIH and stage checks (RFC 7143 11.12). */
  private checkHeader(req: LoginRequest): void {
    if (this.first) {
      if (req.versionMin > 0) throw new LoginFailure(LoginStatus.UNSUPPORTED_VERSION, `initiator needs iSCSI version ${req.versionMin} or later; we speak 0`);
      if (req.tsih !== 0) {
        // Adding a connection to an existing session: MaxConnections is 1.
        const status = this.env.sessionExists(req.tsih) ? LoginStatus.TOO_MANY_CONNECTIONS : LoginStatus.SESSION_DOES_NOT_EXIST;
        throw new LoginFailure(status, `login to existing session TSIH ${req.tsih}: one connection per session`);
      }
      this.isid = req.isid;
      if (req.csg !== Stage.SECURITY && req.csg !== Stage.OPERATIONAL) {
        throw new LoginFailure(LoginStatus.INITIATOR_ERROR, `first login request in stage ${req.csg}`);
      }
      this.stage = req.csg;
      this.first = false;
    } else if (req.isid !== this.isid || req.tsih !== 0) {
      throw new LoginFailure(LoginStatus.INITIATOR_ERROR, 'ISID or TSIH changed during login');
    }
    if (req.csg !== this.stage) throw new LoginFailure(LoginStatus.INITIATOR_ERROR, `login request in stage ${req.csg}, expected ${this.stage}`);
    if (req.transit && req.continues) throw new LoginFailure(LoginStatus.INITIATOR_ERROR, 'login request with both T and C set');
    if (req.transit && (req.nsg <= req.csg || req.nsg === 2)) {
      throw new LoginFailure(LoginStatus.INITIATOR_ERROR, `invalid stage transition ${req.csg} -> ${req.nsg}`);
    }
  }

  /** InitiatorName, SessionType and TargetName: checked once, and must not change. */
  private identify(pairs: readonly KeyPair[]): void {
    const get = (k: string): string | undefined => pairs.find(([key]) => key === k)?.[1];
    const name = get('InitiatorName');
    const type = get('SessionType');
    const targetName = get('TargetName');
    const alias = get('InitiatorAlias');
    if (this.negotiator !== undefined) {
      if ((name !== undefined && !sameIscsiName(name, this.initiatorName)) || (type !== undefined && type !== this.sessionType) ||
        (targetName !== undefined && this.target !== undefined && !sameIscsiName(targetName, this.target.iqn))) {
        throw new LoginFailure(LoginStatus.INITIATOR_ERROR, 'InitiatorName, SessionType or TargetName changed during login');
      }
      return;
    }
    if (name === undefined || name.length === 0) throw new LoginFailure(LoginStatus.MISSING_PARAMETER, 'first login request without InitiatorName');
    if (name.length > 223) throw new LoginFailure(LoginStatus.INITIATOR_ERROR, 'InitiatorName longer than 223 bytes');
    this.initiatorName = name;
    this.initiatorAlias = alias;
    if (type !== undefined && type !== 'Normal' && type !== 'Discovery') {
      throw new LoginFailure(LoginStatus.SESSION_TYPE_NOT_SUPPORTED, `SessionType ${type.slice(0, 32)}`);
    }
    this.sessionType = type === 'Discovery' ? 'Discovery' : 'Normal';
    if (this.sessionType === 'Normal') {
      if (targetName === undefined || targetName.length === 0) throw new LoginFailure(LoginStatus.MISSING_PARAMETER, 'normal session without TargetName');
      const target = this.env.registry.lookup(targetName);
      if (target === undefined) throw new LoginFailure(LoginStatus.TARGET_NOT_FOUND, `no target ${targetName.slice(0, 256)}`);
      if (!mayAccess(target, name)) {
        throw new LoginFailure(LoginStatus.AUTHORIZATION_FAILURE, `initiator ${name} is not allowed to access ${target.iqn}`);
      }
      this.target = target;
    }
    this.negotiator = new Negotiator(this.env.offer, this.sessionType === 'Discovery');
  }

  private authRequired(): boolean {
    return this.target?.access.chap !== undefined;
  }

  /** The security stage's keys, in the order CHAP needs them. */
  private security(pairs: readonly KeyPair[]): KeyPair[] {
    const get = (k: string): string | undefined => pairs.find(([key]) => key === k)?.[1];
    const out: KeyPair[] = [];
    const method = get('AuthMethod');
    if (method !== undefined) {
      if (this.auth !== 'start') throw new LoginFailure(LoginStatus.INITIATOR_ERROR, 'AuthMethod negotiated twice');
      const choice = selectFromList(method, this.authRequired() ? ['CHAP'] : ['None']);
      if (choice === undefined) {
        throw new LoginFailure(LoginStatus.AUTH_FAILURE, this.authRequired()
          ? `target requires CHAP; initiator offered AuthMethod=${method.slice(0, 64)}`
          : `initiator offered only AuthMethod=${method.slice(0, 64)}; this target has no CHAP secret`);
      }
      out.push(['AuthMethod', choice]);
      this.auth = choice === 'CHAP' ? 'chap-algorithm' : 'done';
      // Some initiators offer CHAP_A in the same request: answer it at once.
      if (get('CHAP_A') === undefined) return out;
    }
    const algorithm = get('CHAP_A');
    if (algorithm !== undefined) {
      if (this.auth !== 'chap-algorithm') throw new LoginFailure(LoginStatus.INITIATOR_ERROR, 'CHAP_A out of sequence');
      if (!offersMd5(algorithm)) throw new LoginFailure(LoginStatus.AUTH_FAILURE, `CHAP_A=${algorithm.slice(0, 32)} does not offer MD5 (5)`);
      this.challenge = makeChallenge(this.env.random);
      this.auth = 'chap-response';
      out.push(['CHAP_A', String(CHAP_MD5)], ['CHAP_I', String(this.challenge.id)], ['CHAP_C', encodeBinary(this.challenge.challenge)]);
      return out;
    }
    if (get('CHAP_N') !== undefined || get('CHAP_R') !== undefined) {
      if (this.auth !== 'chap-response') throw new LoginFailure(LoginStatus.INITIATOR_ERROR, 'CHAP_N/CHAP_R out of sequence');
      out.push(...this.verifyChap(get));
      this.auth = 'done';
      return out;
    }
    if (this.auth === 'start' && !this.authRequired()) {
      // No AuthMethod offered: the default is None (RFC 7143 13.2 lists None as always acceptable).
      this.auth = 'done';
    }
    return out;
  }

  private verifyChap(get: (k: string) => string | undefined): KeyPair[] {
    const creds = this.target!.access.chap!;
    const user = get('CHAP_N');
    const response = get('CHAP_R');
    if (user === undefined || response === undefined) throw new LoginFailure(LoginStatus.AUTH_FAILURE, 'CHAP_N and CHAP_R must come together');
    const ours = this.challenge!;
    if (user !== creds.user) throw new LoginFailure(LoginStatus.AUTH_FAILURE, `unknown CHAP user ${user.slice(0, 64)}`);
    let got: Buffer;
    try {
      got = decodeBinary(response);
    } catch (err) {
      throw new LoginFailure(LoginStatus.AUTH_FAILURE, `bad CHAP_R: ${errorMessage(err)}`);
    }
    if (!verifyChapResponse(ours.id, creds.secret, ours.challenge, got)) {
      throw new LoginFailure(LoginStatus.AUTH_FAILURE, `wrong CHAP response for user ${user.slice(0, 64)}`);
    }
    const theirId = get('CHAP_I');
    const theirChallenge = get('CHAP_C');
    if (theirId === undefined && theirChallenge === undefined) return [];
    // Mutual CHAP: the initiator wants the target to prove itself.
    if (theirId === undefined || theirChallenge === undefined) throw new LoginFailure(LoginStatus.AUTH_FAILURE, 'CHAP_I and CHAP_C must come together');
    const mutual = this.target!.access.mutualChap;
    if (mutual === undefined) throw new LoginFailure(LoginStatus.AUTH_FAILURE, 'initiator asked for mutual CHAP; this target has no mutual CHAP secret');
    // RFC 7143 12.1.3: one secret must never serve both directions.
    if (mutual.secret === creds.secret) throw new LoginFailure(LoginStatus.AUTH_FAILURE, 'mutual CHAP secret equals the initiator secret; refusing');
    let id: number;
    let challenge: Buffer;
    try {
      id = parseChapIdentifier(theirId);
      challenge = decodeBinary(theirChallenge);
    } catch (err) {
      throw new LoginFailure(LoginStatus.AUTH_FAILURE, `bad mutual CHAP challenge: ${errorMessage(err)}`);
    }
    const refusal = checkInitiatorChallenge(challenge, ours.challenge);
    if (refusal !== undefined) throw new LoginFailure(LoginStatus.AUTH_FAILURE, `mutual CHAP: ${refusal}`);
    return [['CHAP_N', mutual.user], ['CHAP_R', encodeBinary(chapResponse(id, mutual.secret, challenge))]];
  }
}
