import { afterAll, describe, expect, it } from 'vitest';
import { ForwardGroup, ForwardResultsError, settleForward } from '../../head-agent/engine/forward-group.js';
import type { ReplicaFailure } from '../../head-agent/engine/failure-handler.js';
import { Replica } from '../../head-agent/engine/replica.js';
import { NodeConnection } from '../../shared/data-protocol/client/node-connection.js';
import { decodeRoute, encodeForwardResults } from '../../shared/data-protocol/forward-codec.js';
import { Opcode, Status } from '../../shared/data-protocol/frame.js';
import { ReadOnlyChunkError } from '../../shared/data-protocol/status.js';
import { InvalidArgumentError, IoError, StaleEpochError, TransportError } from '../../shared/errors.js';

// The head's reading of a forwarded write's reply (forward-group.ts): every
// replica's outcome as fan-out would have seen it. Pure: the connections are
// never opened.

const conns = ['127.0.0.1:7001', '127.0.0.2:7002', '127.0.0.3:7003'].map((a) => new NodeConnection(a));
afterAll(() => Promise.all(conns.map((c) => c.close())));

function members(): Replica[] {
  return conns.map((conn, slot) => new Replica(conn, {
    volumeId: 7, volumeName: 'v', segment: 2, slot, state: 'in_sync', serverId: `s${slot}`, diskId: `d${slot}`,
  }));
}

function results(statuses: number[]): string {
  return encodeForwardResults(statuses.map((status, slot) => ({ slot, status, message: status === Status.OK ? '' : `refused ${slot}` }))).toString('utf8');
}

describe('ForwardGroup', () => {
  it('routes to the other members, primary first, under its generation', () => {
    const g = new ForwardGroup(members(), 5);
    expect([g.volumeId, g.segment, g.slot]).toEqual([7, 2, 0]);
    expect(decodeRoute(g.route, 0, g.route.length)).toEqual({
      generation: 5, entries: [{ slot: 1, address: '127.0.0.2:7002' }, { slot: 2, address: '127.0.0.3:7003' }],
    });
  });

  it('OK: every member acknowledged, nothing failed', () => {
    const failures: ReplicaFailure[] = [];
    expect(settleForward(new ForwardGroup(members(), 1), undefined, false, failures)).toBeUndefined();
    expect(failures).toEqual([]);
  });

  it('FORWARD_RESULTS: each member its own typed outcome; a fenced secondary is a StaleEpochError for it', () => {
    const ms = members();
    const g = new ForwardGroup(ms, 1);
    const err = g.replyError(Opcode.FORWARD_WRITE, Status.FORWARD_RESULTS, results([Status.OK, Status.IO_ERROR, Status.STALE_EPOCH]));
    expect(err).toBeInstanceOf(ForwardResultsError);
    const failures: ReplicaFailure[] = [];
    expect(settleForward(g, err, false, failures)).toBeUndefined();
    expect(failures.map((f) => [f.replica.slot, f.error.constructor.name])).toEqual([[1, 'IoError'], [2, 'StaleEpochError']]);
    expect(failures[1]!.error.message).toMatch(/replica 2 of segment 2 of volume v on 127\.0\.0\.3:7003.*refused 2/);
  });

  it('a refusal by rule at the primary (nothing forwarded) is that refusal for every member', () => {
    for (const [status, cls] of [[Status.STALE_EPOCH, StaleEpochError], [Status.READ_ONLY, ReadOnlyChunkError], [Status.OUT_OF_RANGE, InvalidArgumentError]] as const) {
      const g = new ForwardGroup(members(), 1);
      const failures: ReplicaFailure[] = [];
      expect(settleForward(g, g.replyError(Opcode.FORWARD_WRITE, status, 'no'), false, failures)).toBeUndefined();
      expect(failures).toHaveLength(3);
      for (const f of failures) expect(f.error).toBeInstanceOf(cls);
    }
  });

  it('a failed primary: its failure, and the others to send to again', () => {
    const ms = members();
    const failures: ReplicaFailure[] = [];
    const rest = settleForward(new ForwardGroup(ms, 1), new TransportError('gone'), false, failures);
    expect(rest).toEqual([ms[1], ms[2]]);
    expect(failures.map((f) => f.replica.slot)).toEqual([0]);
  });

  it('results that do not parse or name a slot outside the route: the primary failed (the others re-sent), never taken as written', () => {
    for (const text of ['garbage', encodeForwardResults([{ slot: 9, status: 0, message: '' }]).toString('utf8')]) {
      const ms = members();
      const g = new ForwardGroup(ms, 1);
      const err = g.replyError(Opcode.FORWARD_WRITE, Status.FORWARD_RESULTS, text);
      expect(err).toBeInstanceOf(IoError);
      const failures: ReplicaFailure[] = [];
      expect(settleForward(g, err, false, failures)).toEqual([ms[1], ms[2]]);
    }
  });

  it('a member missing from the results is its failure', () => {
    const ms = members();
    const g = new ForwardGroup(ms, 1);
    const text = encodeForwardResults([{ slot: 0, status: 0, message: '' }, { slot: 1, status: Status.IO_ERROR, message: 'x' }]).toString('utf8');
    const failures: ReplicaFailure[] = [];
    settleForward(g, g.replyError(Opcode.FORWARD_WRITE, Status.FORWARD_RESULTS, text), false, failures);
    expect(failures.map((f) => f.replica.slot).sort()).toEqual([1, 2]);
  });
});
