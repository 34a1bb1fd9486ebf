import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { NodeConnection } from '../../shared/data-protocol/client/node-connection.js';
import type { RoutedTarget } from '../../shared/data-protocol/client/data-request.js';
import { decodeForwardResults, encodeRoute } from '../../shared/data-protocol/forward-codec.js';
import { Opcode, Status, statusName } from '../../shared/data-protocol/frame.js';
import { call } from '../../shared/grpc.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { makeTestCerts } from '../harness/certs.js';
import { clusterDataSecurity } from '../harness/data-auth.js';
import { daemonLog, waitUntil } from '../harness/leases.js';
import { expectReplicasEqual, readEveryReplica } from '../harness/replicas.js';
import { randomFile, run, sameContent, tryRun } from '../harness/tools.js';
import { VerifyingWriter } from '../harness/verifier.js';
import { vsky } from '../harness/vsky.js';

// Primary forwarding (VSKY_REPLICATION=forward on the head,
// docs/replication-topology.md) with real processes: a 3-replica volume
// written and read back by nbdcopy and every replica compared; a primary
// killed -9 and one SIGSTOPped under a verifying writer (no acknowledged write
// lost, the replica recorded stale and the volume back to full redundancy);
// stale epochs and stale route generations refused by their rules, whether
// the refusing node is the primary or a node it forwards to, and a fenced
// forward terminal for the real head.

const FORWARD = { head: { VSKY_REPLICATION: 'forward' } };

/** A raw FORWARD_WRITE target: keeps the reply's status and message. */
class RawTarget implements RoutedTarget {
  constructor(readonly volumeId: number, readonly segment: number, readonly slot: number, readonly route: Buffer) {}
  replyError(_opcode: number, status: number, message: string): Error {
    return Object.assign(new Error(`${statusName(status)}: ${message}`), { status, text: message });
  }
}

interface RawReply { status: number; text: string }

async function rawForward(conn: NodeConnection, t: RawTarget, epoch: number, offset: number, data: Buffer): Promise<RawReply> {
  try {
    await conn.request(t, Opcode.FORWARD_WRITE, 0, epoch, offset, data.length, data, t.route.length);
    return { status: Status.OK, text: '' };
  } catch (err) {
    const e = err as Error & Partial<RawReply>;
    if (e.status === undefined) throw err;
    return { status: e.status, text: e.text ?? '' };
  }
}

describe('primary forwarding: data path and rules', () => {
  let c: LocalCluster;
  let uri: string;
  let work: string;
  let src: string;
  const SIZE = 32 * MiB;

  beforeAll(async () => {
    c = await startTestCluster({ headArgs: ['--replication', 'forward'] }); // the flag here, VSKY_REPLICATION below
    uri = await c.ensureVolume('fw', SIZE, 3);
    work = mkdtempSync(join(tmpdir(), 'vsky-fw-'));
    src = join(work, 'src.img');
    randomFile(src, SIZE);
  });
  afterAll(async () => {
    await destroyTestCluster(c);
    rmSync(work, { recursive: true, force: true });
  });

  it('nbdcopy writes through the primaries, reads back identical, and every replica holds every byte', async () => {
    await run('nbdcopy', ['--flush', src, uri]);
    expect(await sameContent(src, uri)).toBe(true);
    // The premise: the writes went through primaries that forwarded them.
    const forwarding = c.nodes.filter((_, i) => /forwarding connection to storage node/.test(daemonLog(c, `node${i + 1}`)));
    expect(forwarding.length).toBeGreaterThan(0);
    const expected = readFileSync(src);
    const { chunkSize, copies } = await readEveryReplica(c, 'fw');
    expect(copies).toHaveLength(2 * 3);
    for (const copy of copies) {
      const want = expected.subarray(copy.segment * chunkSize, copy.segment * chunkSize + copy.data.length);
      expect(copy.data.equals(want), `segment ${copy.segment} slot ${copy.slot}`).toBe(true);
    }
  });

  it('qemu-io FUA writes and a flush through the primary read back', async () => {
    const r = await run('qemu-io', ['-f', 'raw', '-c', 'write -f -P 0x5a 1M 256k', '-c', 'flush', '-c', 'read -P 0x5a 1M 256k', uri]);
    expect(String(r.stdout)).not.toMatch(/verification failed|error/i);
    await expectReplicasEqual(c, 'fw');
  });

  it('a stale epoch or a stale route generation is refused by its rule, and a fenced forward is terminal for the head', async () => {
    const m = c.client();
    const { info, map } = await call(m, 'ShowVolume', { name: 'fw' }).finally(() => m.close());
    const epoch = Number(info!.epoch);
    const seg = map!.segments[0]!;
    const [p, s1, s2] = seg.replicas;
    const security = clusterDataSecurity(c);
    const conns = new Map<string, NodeConnection>();
    const conn = (a: string): NodeConnection => conns.get(a) ?? conns.set(a, new NodeConnection(a, { security })).get(a)!;
    const before = await readEveryReplica(c, 'fw');
    const data = Buffer.alloc(4096, 0xee);
    const route = encodeRoute(1, [{ slot: s1!.slot, address: s1!.dataAddress }, { slot: s2!.slot, address: s2!.dataAddress }]);
    try {
      // 1. The primary's own epoch check refuses the whole request: nothing is forwarded.
      const stale = await rawForward(conn(p!.dataAddress), new RawTarget(map!.volumeId, 0, p!.slot, route), epoch - 1, 0, data);
      expect(statusName(stale.status)).toBe('STALE_EPOCH');
      expect(stale.text).toMatch(new RegExp(`epoch ${epoch - 1} is below volume ${map!.volumeId}'s epoch ${epoch}`));
      const after = await readEveryReplica(c, 'fw');
      for (let i = 0; i < after.copies.length; i++) expect(after.copies[i]!.data.equals(before.copies[i]!.data)).toBe(true);

      // 2. A forwarded leg under an older route generation than the chunk took (1, from the head): STALE_ROUTE.
      const late = await rawForward(conn(s1!.dataAddress), new RawTarget(map!.volumeId, 0, s1!.slot, encodeRoute(0, [])), epoch, 0, data);
      expect(statusName(late.status)).toBe('STALE_ROUTE');
      expect(late.text).toMatch(/route generation 0 at epoch \d+ is older than 1/);

      // 3. One replica's node fenced at epoch+1: the primary writes and forwards, the fenced node refuses, and
      //    the primary reports that refusal for that replica (the others' outcomes with it).
      await conn(s2!.dataAddress).request(new RawTarget(map!.volumeId, 0, s2!.slot, route), Opcode.FENCE, 0, epoch + 1, 0, 0, undefined, 0);
      const fenced = await rawForward(conn(p!.dataAddress), new RawTarget(map!.volumeId, 0, p!.slot, route), epoch, 0, data);
      expect(statusName(fenced.status)).toBe('FORWARD_RESULTS');
      const results = decodeForwardResults(fenced.text);
      expect(results.map((r) => [r.slot, statusName(r.status)])).toEqual([[p!.slot, 'OK'], [s1!.slot, 'OK'], [s2!.slot, 'STALE_EPOCH']]);
      expect(results[2]!.message).toMatch(new RegExp(`forwarded to ${s2!.dataAddress}: .*epoch ${epoch} is below volume ${map!.volumeId}'s epoch ${epoch + 1}`));

      // 4. The real head's next forwarded write into segment 0 meets the same refusal: fenced, terminal (the write fails).
      const w = await tryRun('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 64k', uri]);
      expect(`${String(w.stdout)}${String(w.stderr)}`).toMatch(/failed|error/i);
      // The head's log line may reach its file a moment after the client saw the failure.
      await waitUntil(() => /STALE_EPOCH|stale/.test(daemonLog(c, 'head')), 5000, 'the head to log the stale-epoch refusal');
    } finally {
      await Promise.all([...conns.values()].map((x) => x.close()));
    }
  });
});

describe('primary forwarding over --data-tls', () => {
  let c: LocalCluster;
  let work: string;
  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'vsky-fw-tls-'));
    const certs = makeTestCerts(join(work, 'pki'));
    c = await startTestCluster({ env: FORWARD, dataSecurity: { tls: { cert: certs.peerCert, key: certs.peerKey, ca: certs.ca } } });
  }, 120_000);
  afterAll(async () => {
    await destroyTestCluster(c);
    rmSync(work, { recursive: true, force: true });
  });

  it('the primaries forward over TLS with the data key; data reads back and the replicas agree', async () => {
    const uri = await c.ensureVolume('fwtls', 32 * MiB, 3);
    const src = join(work, 'src.img');
    randomFile(src, 8 * MiB);
    await run('nbdcopy', ['--flush', src, uri], 120_000);
    const back = join(work, 'back.img');
    await run('nbdcopy', [uri, back], 120_000);
    expect(readFileSync(back).subarray(0, 8 * MiB).equals(readFileSync(src))).toBe(true);
    expect(c.nodes.some((_, i) => /forwarding connection to storage node/.test(daemonLog(c, `node${i + 1}`)))).toBe(true);
    await expectReplicasEqual(c, 'fwtls');
  });
});

interface VolumeRow { name: string; degraded: boolean; resyncs: number }

async function volumeRow(c: LocalCluster, name: string): Promise<VolumeRow | undefined> {
  const r = await vsky(['volume', 'list', '--json'], c.managerAddress);
  return r.exitCode === 0 ? (JSON.parse(String(r.stdout)) as VolumeRow[]).find((x) => x.name === name) : undefined;
}

async function waitFor(what: string, ms: number, ok: (v: VolumeRow) => boolean, c: LocalCluster, name: string): Promise<number> {
  const start = Date.now();
  for (;;) {
    const v = await volumeRow(c, name);
    if (v !== undefined && ok(v)) return Date.now() - start;
    if (Date.now() - start > ms) throw new Error(`${name}: not ${what} after ${ms} ms: ${JSON.stringify(v)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Waits for the manager's replica.stale event of `name`; returns its reason. */
async function waitStaleEvent(c: LocalCluster, name: string, ms: number): Promise<string> {
  const deadline = Date.now() + ms;
  let last = '';
  while (Date.now() < deadline) {
    const r = await vsky(['events', '--kind', 'replica.stale', '--target', `volume:${name}`, '--json'], c.managerAddress);
    last = String(r.stdout);
    if (r.exitCode === 0) {
      const events = JSON.parse(last) as { reason?: string; message?: string }[];
      if (events.length > 0) return JSON.stringify(events[0]).slice(0, 300);
    }
    await new Promise((res) => setTimeout(res, 200));
  }
  throw new Error(`no replica.stale event for ${name} within ${ms} ms: ${last}`);
}

/** The node (index into c.nodes) of segment 0's slot 0: the primary of its forwarded writes. */
async function primaryNode(c: LocalCluster, name: string): Promise<number> {
  const m = c.client();
  const map = (await call(m, 'ShowVolume', { name }).finally(() => m.close())).map!;
  const addr = map.segments[0]!.replicas[0]!.dataAddress;
  return c.nodes.findIndex((n) => n.ready.dataAddress === addr);
}

describe('primary forwarding: the primary fails under a verifying writer', () => {
  let c: LocalCluster;
  beforeAll(async () => {
    c = await startTestCluster({ servers: 4, heartbeatTimeoutMs: 2000, env: FORWARD });
  });
  afterAll(() => destroyTestCluster(c));

  async function fault(name: string, act: (node: number) => Promise<void>): Promise<void> {
    const uri = await c.ensureVolume(name, 32 * MiB, 3);
    const w = new VerifyingWriter({ uri, blocks: (32 * MiB) / 4096, queueDepth: 8 });
    w.start();
    await new Promise((r) => setTimeout(r, 1000));
    w.resetStall();
    const node = await primaryNode(c, name);
    await act(node);
    // The premise: the failed primary's replicas were recorded stale (the manager's event) ...
    const stale = await waitStaleEvent(c, name, 20_000);
    console.log(`${name}: ${stale}`);
    const acked = w.stats.writesAcked;
    // ... and the volume got back to full redundancy by itself while writes went on.
    const back = await waitFor('fully redundant', 90_000, (v) => !v.degraded && v.resyncs === 0, c, name);
    await new Promise((r) => setTimeout(r, 500));
    await w.stop();
    console.log(`${name}: write stall ${w.stats.maxStallMs} ms; redundant ${back} ms after degraded; ${w.stats.writesAcked} writes acknowledged, `
      + `${w.stats.writeErrors} failed, ${w.stats.readsChecked} reads checked`);
    expect(w.stats.writesAcked).toBeGreaterThan(acked);
    expect(w.stats.violations).toEqual([]);
    expect(await w.verifyAll()).toEqual([]);
    w.close();
    await expectReplicasEqual(c, name);
  }

  it('kill -9 of a primary: no acknowledged write lost, its replicas go stale and the volume rebuilds', async () => {
    let killed = -1;
    await fault('fk9', async (node) => {
      killed = node;
      await c.nodes[node]!.kill9();
    });
    expect(daemonLog(c, 'head')).toMatch(/fk9/);
    await c.nodes[killed]!.start();
    await c.waitRegistered();
  }, 150_000);

  it('SIGSTOP of a primary for 4 s: writes are re-sent around it, its late forwards cannot land, nothing lost', async () => {
    await fault('fstop', async (node) => {
      c.nodes[node]!.pause();
      await new Promise((r) => setTimeout(r, 4000));
      c.nodes[node]!.resume();
    });
    // Whether the paused primary still had forwards to send when it woke depends on timing: printed, not asserted.
    const refused = c.nodes.map((_, i) => (daemonLog(c, `node${i + 1}`).match(/late forward refused/g) ?? []).length);
    console.log(`fstop: late forwards refused (STALE_ROUTE) per node: ${refused.join(' ')}`);
  }, 150_000);
});
