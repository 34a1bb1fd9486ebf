// Operational key negotiation (RFC 7143 6.2, section 13) and the login state
// machine (stages, transitions, identification, CHAP), without sockets.

import { describe, expect, it } from 'vitest';
import { chapResponse, decodeBinary, encodeBinary } from '../../head-agent/frontend/iscsi/chap.js';
import { LoginStatus, Stage } from '../../head-agent/frontend/iscsi/constants.js';
import { LoginStateMachine, type LoginRequest, type LoginStep } from '../../head-agent/frontend/iscsi/login.js';
import { DEFAULT_TARGET_OFFER, Negotiator, parseNumber, selectFromList } from '../../head-agent/frontend/iscsi/negotiation.js';
import type { IscsiTarget, IscsiTargetRegistry } from '../../head-agent/frontend/iscsi/target-registry.js';
import { encodeTextKeys, type KeyPair } from '../../head-agent/frontend/iscsi/text-keys.js';

function answers(pairs: KeyPair[], discovery = false): { map: Map<string, string>; n: Negotiator } {
  const n = new Negotiator(DEFAULT_TARGET_OFFER, discovery);
  return { map: new Map(n.answer(pairs)), n };
}

describe('iSCSI operational negotiation', () => {
  it('applies each key\'s rule', () => {
    const { map, n } = answers([
      ['MaxBurstLength', '100000'], ['FirstBurstLength', '999999'], ['MaxOutstandingR2T', '1'], ['DefaultTime2Wait', '10'],
      ['DefaultTime2Retain', '5'], ['InitialR2T', 'Yes'], ['ImmediateData', 'No'], ['DataSequenceInOrder', 'No'],
      ['HeaderDigest', 'CRC32C'], ['DataDigest', 'None'], ['ErrorRecoveryLevel', '1'], ['MaxConnections', '8'],
    ]);
    expect(Object.fromEntries(map)).toEqual({
      MaxBurstLength: '100000',
      // FirstBurstLength is cut to MaxBurstLength (RFC 7143 13.14).
      FirstBurstLength: '100000',
      MaxOutstandingR2T: '1', DefaultTime2Wait: '10', DefaultTime2Retain: '0', InitialR2T: 'Yes', ImmediateData: 'No',
      DataSequenceInOrder: 'Yes', HeaderDigest: 'CRC32C', DataDigest: 'None', ErrorRecoveryLevel: '0', MaxConnections: '1',
    });
    expect(n.params).toMatchObject({
      maxBurstLength: 100000, firstBurstLength: 100000, initialR2T: true, immediateData: false, headerDigest: true,
      dataDigest: false, defaultTime2Wait: 10, errorRecoveryLevel: 0, maxOutstandingR2T: 1,
    });
  });

  it('records the initiator\'s MaxRecvDataSegmentLength without answering it, and declares ours once', () => {
    const { map, n } = answers([['MaxRecvDataSegmentLength', '4096'], ['InitiatorAlias', 'host']]);
    expect(map.size).toBe(0);
    expect(n.params.initiatorMaxRecvDataSegment).toBe(4096);
    expect(n.declarations()).toEqual([['MaxRecvDataSegmentLength', String(256 * 1024)]]);
    expect(n.declarations()).toEqual([]);
    // A bad declaration keeps the default.
    expect(answers([['MaxRecvDataSegmentLength', '100']]).n.params.initiatorMaxRecvDataSegment).toBe(8192);
  });

  it('rejects out-of-range and malformed values, and keeps the defaults', () => {
    const { map, n } = answers([
      ['MaxBurstLength', '511'], ['FirstBurstLength', '16777216'], ['MaxOutstandingR2T', '0'], ['InitialR2T', 'maybe'],
      ['DefaultTime2Wait', '3601'], ['HeaderDigest', 'MD5'], ['DataDigest', ''], ['ErrorRecoveryLevel', '-1'],
    ]);
    for (const v of map.values()) expect(v).toBe('Reject');
    expect(map.size).toBe(8);
    expect(n.params.maxBurstLength).toBe(262144);
    expect(n.params.initialR2T).toBe(true);
  });

  it('answers unknown keys NotUnderstood, obsolete ones by the book, and ignores answers to offers we never made', () => {
    const { map } = answers([
      ['X-vendor.thing', '1'], ['Frobnicate', 'Yes'], ['IFMarker', 'Yes'], ['IFMarkInt', '1~65535'], ['TargetAlias', 'x'],
      ['SendTargets', 'All'], ['iSCSIProtocolLevel', '2'], ['ImmediateData', 'NotUnderstood'],
    ]);
    expect(Object.fromEntries(map)).toEqual({
      'X-vendor.thing': 'NotUnderstood', Frobnicate: 'NotUnderstood', IFMarker: 'No', IFMarkInt: 'Irrelevant',
      TargetAlias: 'Irrelevant', SendTargets: 'Irrelevant', iSCSIProtocolLevel: '1',
    });
  });

  it('answers Irrelevant to normal-session keys in a discovery session', () => {
    const { map } = answers([['MaxBurstLength', '65536'], ['InitialR2T', 'No'], ['HeaderDigest', 'None']], true);
    expect(Object.fromEntries(map)).toEqual({ MaxBurstLength: 'Irrelevant', InitialR2T: 'Irrelevant', HeaderDigest: 'None' });
  });

  it('parses numbers and lists', () => {
    expect(parseNumber('65536')).toBe(65536);
    expect(parseNumber('0x10000')).toBe(65536);
    for (const bad of ['', '1e5', ' 1', '-1', '0x', '12345678901']) expect(parseNumber(bad)).toBeUndefined();
    expect(selectFromList('None,CRC32C', ['CRC32C', 'None'])).toBe('None');
    expect(selectFromList('SRP,CHAP', ['CHAP'])).toBe('CHAP');
    expect(selectFromList('KRB5,SRP', ['CHAP', 'None'])).toBeUndefined();
  });
});

// --- The login state machine --------------------------------------------------

const OPEN = 'iqn.2026-11.ts.vastsky:open';
const CHAP = 'iqn.2026-11.ts.vastsky:chap';
const MUTUAL = 'iqn.2026-11.ts.vastsky:mutual';
const targets: IscsiTarget[] = [
  { iqn: OPEN, luns: new Map(), access: { initiators: [] } },
  { iqn: CHAP, luns: new Map(), access: { initiators: ['iqn.i:one'], chap: { user: 'u', secret: 'secret-one-12' } } },
  { iqn: MUTUAL, luns: new Map(), access: { initiators: [], chap: { user: 'u', secret: 'secret-one-12' }, mutualChap: { user: 't', secret: 'secret-two-34' } } },
];
const registry: IscsiTargetRegistry = { lookup: (iqn) => targets.find((t) => t.iqn === iqn), list: () => targets };

function machine(existing: number[] = []): LoginStateMachine {
  let counter = 0;
  return new LoginStateMachine({
    registry, portalGroupTag: 3, offer: DEFAULT_TARGET_OFFER,
    random: (n) => Buffer.alloc(n, ++counter),
    sessionExists: (tsih) => existing.includes(tsih),
  });
}

function req(csg: number, nsg: number, keys: KeyPair[], o: Partial<LoginRequest> = {}): LoginRequest {
  return { transit: nsg > csg, continues: false, csg, nsg, versionMax: 0, versionMin: 0, isid: '00023d000001', tsih: 0, data: encodeTextKeys(keys), ...o };
}

function keysOf(step: LoginStep): Map<string, string> {
  return new Map(step.reply.keys);
}

describe('iSCSI login state machine', () => {
  it('logs in to an open target in one operational request', () => {
    const step = machine().step(req(Stage.OPERATIONAL, Stage.FULL_FEATURE, [
      ['InitiatorName', 'iqn.i:one'], ['TargetName', OPEN], ['SessionType', 'Normal'], ['MaxBurstLength', '65536'],
    ]));
    expect(step.kind).toBe('complete');
    if (step.kind !== 'complete') return;
    expect(step.reply.transit).toBe(true);
    expect(step.reply.nsg).toBe(Stage.FULL_FEATURE);
    expect(keysOf(step).get('TargetPortalGroupTag')).toBe('3');
    expect(keysOf(step).get('MaxRecvDataSegmentLength')).toBe(String(256 * 1024));
    expect(step.result.target?.iqn).toBe(OPEN);
    expect(step.result.params.maxBurstLength).toBe(65536);
  });

  it('walks security (None) then operational stages, and holds T until the initiator asks', () => {
    const m = machine();
    let step = m.step(req(Stage.SECURITY, Stage.OPERATIONAL, [['InitiatorName', 'iqn.i:x'], ['TargetName', OPEN], ['AuthMethod', 'None']]));
    expect(step.kind).toBe('continue');
    expect(step.reply.transit).toBe(true);
    expect(keysOf(step).get('AuthMethod')).toBe('None');
    step = m.step(req(Stage.OPERATIONAL, Stage.OPERATIONAL, [['HeaderDigest', 'None']], { transit: false }));
    expect(step.kind).toBe('continue');
    expect(step.reply.transit).toBe(false);
    step = m.step(req(Stage.OPERATIONAL, Stage.FULL_FEATURE, []));
    expect(step.kind).toBe('complete');
  });

  it('runs one-way CHAP and refuses a wrong response', () => {
    for (const good of [true, false]) {
      const m = machine();
      let step = m.step(req(Stage.SECURITY, Stage.OPERATIONAL, [['InitiatorName', 'iqn.i:one'], ['TargetName', CHAP], ['AuthMethod', 'CHAP,None']]));
      expect(keysOf(step).get('AuthMethod')).toBe('CHAP');
      expect(step.reply.transit).toBe(false);
      step = m.step(req(Stage.SECURITY, 0, [['CHAP_A', '5']], { transit: false }));
      const k = keysOf(step);
      const id = Number(k.get('CHAP_I'));
      const challenge = decodeBinary(k.get('CHAP_C')!);
      const secret = good ? 'secret-one-12' : 'wrong';
      step = m.step(req(Stage.SECURITY, Stage.OPERATIONAL, [['CHAP_N', 'u'], ['CHAP_R', encodeBinary(chapResponse(id, secret, challenge))]]));
      if (good) {
        expect(step.kind).toBe('continue');
        expect(step.reply.transit).toBe(true);
        expect(m.step(req(Stage.OPERATIONAL, Stage.FULL_FEATURE, [])).kind).toBe('complete');
      } else {
        expect(step.kind).toBe('fail');
        expect(step.reply.status).toBe(LoginStatus.AUTH_FAILURE);
      }
    }
  });

  it('answers AuthMethod and CHAP_A sent in one request', () => {
    const m = machine();
    const step = m.step(req(Stage.SECURITY, Stage.OPERATIONAL, [
      ['InitiatorName', 'iqn.i:one'], ['TargetName', CHAP], ['AuthMethod', 'CHAP'], ['CHAP_A', '5'],
    ]));
    const k = keysOf(step);
    expect(k.get('AuthMethod')).toBe('CHAP');
    expect(k.get('CHAP_A')).toBe('5');
    expect(decodeBinary(k.get('CHAP_C')!)).toHaveLength(32);
    expect(step.reply.transit).toBe(false);
  });

  it('answers mutual CHAP and refuses a reflected challenge', () => {
    for (const reflect of [false, true]) {
      const m = machine();
      m.step(req(Stage.SECURITY, Stage.OPERATIONAL, [['InitiatorName', 'iqn.i:one'], ['TargetName', MUTUAL], ['AuthMethod', 'CHAP']]));
      const k = keysOf(m.step(req(Stage.SECURITY, 0, [['CHAP_A', '5']], { transit: false })));
      const challenge = decodeBinary(k.get('CHAP_C')!);
      const mine = reflect ? challenge : Buffer.alloc(20, 0x5a);
      const step = m.step(req(Stage.SECURITY, Stage.OPERATIONAL, [
        ['CHAP_N', 'u'], ['CHAP_R', encodeBinary(chapResponse(Number(k.get('CHAP_I')), 'secret-one-12', challenge))],
        ['CHAP_I', '9'], ['CHAP_C', encodeBinary(mine)],
      ]));
      if (reflect) {
        expect(step.kind).toBe('fail');
        expect(step.kind === 'fail' && step.reason).toMatch(/reflected/);
      } else {
        expect(keysOf(step).get('CHAP_N')).toBe('t');
        expect(decodeBinary(keysOf(step).get('CHAP_R')!)).toEqual(chapResponse(9, 'secret-two-34', mine));
      }
    }
  });

  it('fails logins with the right status', () => {
    const base: KeyPair[] = [['InitiatorName', 'iqn.i:one']];
    const cases: [LoginRequest, number, number[]?][] = [
      [req(1, 3, [['TargetName', OPEN]]), LoginStatus.MISSING_PARAMETER],
      [req(1, 3, base), LoginStatus.MISSING_PARAMETER],
      [req(1, 3, [...base, ['TargetName', 'iqn.nope']]), LoginStatus.TARGET_NOT_FOUND],
      [req(1, 3, [['InitiatorName', 'iqn.i:two'], ['TargetName', CHAP]]), LoginStatus.AUTHORIZATION_FAILURE],
      [req(1, 3, [...base, ['TargetName', CHAP]]), LoginStatus.AUTH_FAILURE],
      [req(0, 1, [...base, ['TargetName', CHAP], ['AuthMethod', 'None']]), LoginStatus.AUTH_FAILURE],
      [req(0, 1, [...base, ['TargetName', OPEN], ['AuthMethod', 'KRB5']]), LoginStatus.AUTH_FAILURE],
      [req(1, 3, [...base, ['TargetName', OPEN], ['SessionType', 'Weird']]), LoginStatus.SESSION_TYPE_NOT_SUPPORTED],
      [req(1, 3, [...base, ['TargetName', OPEN], ['MaxBurstLength', '1'], ['MaxBurstLength', '2']]), LoginStatus.INITIATOR_ERROR],
      [req(1, 3, [...base, ['TargetName', OPEN]], { versionMin: 1 }), LoginStatus.UNSUPPORTED_VERSION],
      [req(1, 3, [...base, ['TargetName', OPEN]], { tsih: 5 }), LoginStatus.TOO_MANY_CONNECTIONS, [5]],
      [req(1, 3, [...base, ['TargetName', OPEN]], { tsih: 6 }), LoginStatus.SESSION_DOES_NOT_EXIST, [5]],
      [req(1, 2, [...base, ['TargetName', OPEN]]), LoginStatus.INITIATOR_ERROR],
      [req(3, 3, [...base, ['TargetName', OPEN]], { transit: false }), LoginStatus.INITIATOR_ERROR],
      [req(1, 3, [...base, ['TargetName', OPEN], ['CHAP_A', '5']]), LoginStatus.INITIATOR_ERROR],
      [req(0, 1, [...base, ['TargetName', OPEN], ['CHAP_N', 'x']]), LoginStatus.INITIATOR_ERROR],
      [req(1, 3, [...base, ['TargetName', OPEN]], { continues: true }), LoginStatus.INITIATOR_ERROR],
      [{ ...req(1, 3, []), data: Buffer.from('garbage without nul') }, LoginStatus.INITIATOR_ERROR],
    ];
    for (const [r, status, existing] of cases) {
      const step = machine(existing).step(r);
      expect(step.kind, JSON.stringify(step.reply.keys)).toBe('fail');
      expect(step.reply.status.toString(16)).toBe(status.toString(16));
      expect(step.reply.transit).toBe(false);
    }
  });

  it('compares iSCSI names without regard to case', () => {
    const step = machine().step(req(1, 3, [['InitiatorName', 'IQN.I:ONE'], ['TargetName', CHAP], ['AuthMethod', 'None']]));
    // Past the ACL (it names iqn.i:one); stopped only by CHAP.
    expect(step.reply.status).toBe(LoginStatus.AUTH_FAILURE);
  });

  it('refuses a change of ISID or stage during login, and too many login PDUs', () => {
    const m = machine();
    m.step(req(0, 1, [['InitiatorName', 'iqn.i:x'], ['TargetName', OPEN]], { transit: false }));
    expect(m.step(req(0, 1, [], { transit: false, isid: '00023d000002' })).kind).toBe('fail');
    const n = machine();
    n.step(req(0, 1, [['InitiatorName', 'iqn.i:x'], ['TargetName', OPEN]], { transit: false }));
    // The target did not agree to transit, so stage 1 is not reached.
    expect(n.step(req(1, 3, [])).kind).toBe('fail');
    const p = machine();
    p.step(req(0, 1, [['InitiatorName', 'iqn.i:x'], ['TargetName', OPEN]], { transit: false }));
    let last: LoginStep | undefined;
    for (let i = 0; i < 40 && last?.kind !== 'fail'; i++) last = p.step(req(0, 1, [], { transit: false }));
    expect(last?.kind).toBe('fail');
  });

  it('joins continued login text', () => {
    const m = machine();
    const text = encodeTextKeys([['InitiatorName', 'iqn.i:x'], ['TargetName', OPEN]]);
    const first = m.step({ ...req(1, 3, []), transit: false, continues: true, data: text.subarray(0, 7) });
    expect(first.kind).toBe('continue');
    expect(first.reply.keys).toEqual([]);
    expect(m.step({ ...req(1, 3, []), data: text.subarray(7) }).kind).toBe('complete');
  });

  it('logs in to a discovery session without a target', () => {
    const step = machine().step(req(1, 3, [['InitiatorName', 'iqn.i:x'], ['SessionType', 'Discovery'], ['MaxBurstLength', '512']]));
    expect(step.kind).toBe('complete');
    if (step.kind !== 'complete') return;
    expect(step.result.sessionType).toBe('Discovery');
    expect(step.result.target).toBeUndefined();
    expect(keysOf(step).has('TargetPortalGroupTag')).toBe(false);
    expect(keysOf(step).get('MaxBurstLength')).toBe('Irrelevant');
  });
});
