import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { waitUntil } from '../harness/leases.js';
import { vsky } from '../harness/vsky.js';

// Request ids across daemons: a CLI call carries x-request-id (--request-id,
// else generated); the manager logs it on its lines about the call and
// forwards it to the storage nodes and heads it calls, which log it too.
// Lines about a volume carry its name and id.

type Line = Record<string, unknown>;
let c: LocalCluster;

function logOf(daemon: string): Line[] {
  return readFileSync(join(c.opts.dir, 'logs', `${daemon}.log`), 'utf8').split('\n')
    .filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Line);
}
const withId = (daemon: string, id: string) => logOf(daemon).filter((l) => l.reqId === id);

beforeAll(async () => {
  c = await startTestCluster({ servers: 2, diskSize: 128 * MiB, chunkSize: 16 * MiB });
}, 120_000);
afterAll(() => destroyTestCluster(c));

describe('request ids', () => {
  it('volume create: the manager and the storage nodes it allocates chunks on log the CLI\'s id, with the volume\'s name and id', async () => {
    const r = await vsky(['volume', 'create', 'rq1', '--size', '32M', '--replicas', '2', '--thick', '--request-id', 'create-rq1-0001'], c.managerAddress);
    expect(r.exitCode, String(r.stderr)).toBe(0);
    const manager = withId('manager', 'create-rq1-0001');
    expect(manager.map((l) => l.msg)).toEqual(expect.arrayContaining(['placement planned', 'volume created']));
    const created = manager.find((l) => l.msg === 'volume created')!;
    expect(created).toMatchObject({ volume: 'rq1', volumeId: expect.any(Number) });
    const volumeId = created.volumeId;
    for (const node of ['node1', 'node2']) {
      const lines = withId(node, 'create-rq1-0001');
      expect(lines.length, `${node} logged the request`).toBeGreaterThan(0);
      expect(lines.filter((l) => l.msg === 'chunk allocated').every((l) => l.volumeId === volumeId)).toBe(true);
    }
    // Premise: the id is per call, not stuck on the daemons: lines of other calls do not carry it.
    expect(logOf('node1').some((l) => l.msg === 'chunk allocated' && l.reqId !== 'create-rq1-0001')).toBe(false);
  });

  it('volume attach: the manager and the head log the id; without --request-id one is generated and still crosses daemons', async () => {
    const r = await vsky(['volume', 'attach', 'rq1', '--request-id', 'attach-rq1-0002'], c.managerAddress);
    expect(r.exitCode, String(r.stderr)).toBe(0);
    expect(withId('manager', 'attach-rq1-0002').find((l) => String(l.msg).startsWith('volume attached'))).toMatchObject({ volume: 'rq1', volumeId: expect.any(Number) });
    await waitUntil(() => withId('head', 'attach-rq1-0002').some((l) => l.msg === 'volume attached'), 5_000, 'the head logs the attach');
    expect(withId('head', 'attach-rq1-0002').find((l) => l.msg === 'volume attached')).toMatchObject({ volume: 'rq1', volumeId: expect.any(Number) });

    expect((await vsky(['volume', 'detach', 'rq1'], c.managerAddress)).exitCode).toBe(0);
    const detached = logOf('head').filter((l) => l.msg === 'volume detached').at(-1)!;
    expect(detached).toMatchObject({ volume: 'rq1', volumeId: expect.any(Number), reqId: expect.stringMatching(/^[0-9a-f]{16}$/) });
    expect(withId('manager', String(detached.reqId)).some((l) => l.msg === 'volume detached')).toBe(true);
  });

  it('an error names the request id to look for; a bad id is refused before any call', async () => {
    const r = await vsky(['volume', 'show', 'no-such-volume', '--request-id', 'show-missing-0003'], c.managerAddress);
    expect(r.exitCode).toBe(1);
    expect(String(r.stderr)).toMatch(/request id: show-missing-0003/);
    const bad = await vsky(['volume', 'list', '--request-id', 'has space'], c.managerAddress);
    expect(bad.exitCode).toBe(1);
    expect(String(bad.stderr)).toMatch(/"has space" is not a request id/);
  });
});
