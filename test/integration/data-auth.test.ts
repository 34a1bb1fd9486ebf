import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { encodeRequestHeader } from '../../shared/data-protocol/codec.js';
import { Opcode, REQUEST_HEADER_SIZE, Status } from '../../shared/data-protocol/frame.js';
import { ClientHandshake } from '../../shared/data-protocol/auth/handshake.js';
import { HELLO_SIZE } from '../../shared/data-protocol/auth/messages.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { clusterDataSecurity } from '../harness/data-auth.js';
import { daemonLog, showVolume, waitUntil } from '../harness/leases.js';
import { RawDataClient, expectStatus } from '../harness/raw-data-client.js';
import { randomFile, run, sameContent } from '../harness/tools.js';
import { makeTestCerts } from '../harness/certs.js';
import { expectReplicasEqual } from '../harness/replicas.js';

// Data protocol authentication (docs/security.md): a storage node reads no
// request frame from a connection that has not proved it holds the cluster's
// data key. Attackers here speak the real protocol (the real codec) and aim
// at a real replica with the volume's current epoch, so only the
// authentication stands between them and the chunk; the same frame from an
// authenticated client does change it (the premise).

const WRITE_BYTES = 64 * 1024;

interface Target { address: string; host: string; port: number; volumeId: number; slot: number; epoch: number; node: string }

/** A well-formed WRITE of `data` at offset 0 of the target chunk, under the volume's current epoch. */
function writeFrame(t: Target, data: Buffer): Buffer {
  const header = encodeRequestHeader({
    opcode: Opcode.WRITE, flags: 0, requestId: 1, volumeId: t.volumeId, segment: 0, slot: t.slot,
    epoch: t.epoch, offset: 0, length: data.length, generation: 0,
  }, Buffer.alloc(REQUEST_HEADER_SIZE));
  return Buffer.concat([header, data]);
}

/** Connects, runs `script` on the socket, resolves with every byte the node sent and whether it closed within ms. */
function session(t: Target, script: (s: Socket, received: () => Buffer) => void, ms = 8000): Promise<{ closed: boolean; bytes: Buffer }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const s = connect(t.port, t.host, () => script(s, () => Buffer.concat(chunks)));
    const timer = setTimeout(() => { s.destroy(); resolve({ closed: false, bytes: Buffer.concat(chunks) }); }, ms);
    s.on('data', (d: Buffer) => chunks.push(d));
    s.on('error', () => {});
    s.on('close', () => { clearTimeout(timer); resolve({ closed: true, bytes: Buffer.concat(chunks) }); });
  });
}

describe('data protocol authentication', () => {
  let c: LocalCluster;
  let uri: string;
  let t: Target;
  let key: Buffer;

  beforeAll(async () => {
    c = await startTestCluster();
    uri = await c.ensureVolume('da', 32 * MiB, 3);
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 1M', uri]);
    const { info, map } = await showVolume(c, 'da');
    const r = map.segments[0]!.replicas[0]!;
    const [host, port] = r.dataAddress.split(':');
    const node = c.nodes.find((n) => n.ready.dataAddress === r.dataAddress)!.name;
    t = { address: r.dataAddress, host: host!, port: Number(port), volumeId: map.volumeId, slot: r.slot, epoch: Number(info.epoch), node };
    key = clusterDataSecurity(c).key!;
    expect(t.epoch).toBeGreaterThan(0);
  }, 120_000);
  afterAll(() => destroyTestCluster(c));

  /** The first 64 KiB of the target chunk, read over an authenticated connection. */
  async function chunkHead(): Promise<Buffer> {
    const client = await RawDataClient.connect(t.address, key);
    try {
      const r = await client.send({ opcode: Opcode.READ, volumeId: t.volumeId, segment: 0, slot: t.slot, offset: 0, length: WRITE_BYTES });
      expectStatus(r, Status.OK);
      return r.payload;
    } finally {
      client.close();
    }
  }

  async function stillServing(): Promise<void> {
    const r = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x5a 0 1M', uri]);
    expect(String(r.stdout)).not.toMatch(/Pattern verification failed/);
    expect(c.nodes.every((n) => n.running) && c.head.running).toBe(true);
  }

  const refusals = (): string[] => daemonLog(c, t.node).split('\n').filter((l) => l.includes('data connection refused'));

  it('a WRITE without authenticating changes nothing; the node logs the refusal and closes', async () => {
    expect((await chunkHead()).every((b) => b === 0x5a)).toBe(true);
    const before = refusals().length;
    const r = await session(t, (s) => s.write(writeFrame(t, Buffer.alloc(WRITE_BYTES, 0xee))));
    expect(r.closed).toBe(true);
    // The node's hello and nothing else: no reply to the WRITE.
    expect(r.bytes.length).toBe(HELLO_SIZE);
    expect((await chunkHead()).every((b) => b === 0x5a)).toBe(true);
    const lines = await waitUntil(() => (refusals().length > before ? refusals().slice(before) : undefined), 5000, 'refusal logged');
    const line = JSON.parse(lines[0]!) as { remote: string; reason: string };
    expect(line.remote).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(line.reason).toMatch(/no "VSKYAUTH" magic/);
    await stillServing();
  });

  it('a client with a wrong key, pipelining a WRITE behind its proof, changes nothing', async () => {
    const before = refusals().length;
    const wrong = new ClientHandshake(randomBytes(32), Buffer.alloc(0));
    const r = await session(t, (s) => {
      s.once('data', (hello: Buffer) => {
        const step = wrong.push(hello);
        if (step.kind === 'send') s.write(Buffer.concat([step.send, writeFrame(t, Buffer.alloc(WRITE_BYTES, 0xee))]));
      });
    });
    expect(r.closed).toBe(true);
    expect((await chunkHead()).every((b) => b === 0x5a)).toBe(true);
    await waitUntil(() => refusals().slice(before).some((l) => l.includes('another data key')), 5000, 'wrong key logged');
    // Our own client library, with a wrong key, is told why.
    await expect(RawDataClient.connect(t.address, randomBytes(32))).rejects.toThrow(/refused this data key/);
    await stillServing();
  });

  it('premise: the same frame over an authenticated connection does write the chunk', async () => {
    const client = await RawDataClient.connect(t.address, key);
    try {
      const data = Buffer.alloc(WRITE_BYTES, 0x5a); // the bytes the volume already holds: the head's view stays true
      data.write('authenticated', 0);
      const r = await client.send({ opcode: Opcode.WRITE, volumeId: t.volumeId, segment: 0, slot: t.slot, epoch: t.epoch, offset: 0, length: data.length }, data);
      expectStatus(r, Status.OK);
      expect((await chunkHead()).subarray(0, 13).toString()).toBe('authenticated');
      const undo = await client.send({ opcode: Opcode.WRITE, volumeId: t.volumeId, segment: 0, slot: t.slot, epoch: t.epoch, offset: 0, length: WRITE_BYTES }, Buffer.alloc(WRITE_BYTES, 0x5a));
      expectStatus(undo, Status.OK);
    } finally {
      client.close();
    }
    await stillServing();
  });

  it('fuzz: random, truncated and stalled handshakes on many connections never crash the node', async () => {
    const before = refusals().length;
    const good = await new Promise<Buffer>((resolve) => {
      // A real proof from an earlier connection: replayed, it must fail (fresh nonce).
      const hs = new ClientHandshake(key, Buffer.alloc(0));
      const s = connect(t.port, t.host);
      s.once('data', (hello: Buffer) => { const step = hs.push(hello); s.destroy(); resolve(step.kind === 'send' ? step.send : Buffer.alloc(0)); });
    });
    const cases: Buffer[] = [];
    for (let i = 0; i < 120; i++) {
      const kind = i % 4;
      if (kind === 0) cases.push(randomBytes(1 + (i * 37) % 300));
      else if (kind === 1) cases.push(good.subarray(0, (i * 7) % good.length)); // truncated, then closed
      else if (kind === 2) cases.push(good); // replayed
      else cases.push(Buffer.concat([good.subarray(0, 12), randomBytes(64 + i)])); // magic then garbage
    }
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < cases.length) {
        const bytes = cases[next++]!;
        await session(t, (s) => {
          s.once('data', () => { s.write(bytes); if (bytes.length < 20) setTimeout(() => s.end(), 20); });
        }, 8000);
      }
    };
    await Promise.all(Array.from({ length: 12 }, worker));
    // Connections that stall mid-handshake are cut by the node's timeout.
    const stalled = await session(t, (s) => s.once('data', () => s.write(good.subarray(0, 10))), 9000);
    expect(stalled.closed).toBe(true);
    expect(c.nodes.every((n) => n.running)).toBe(true);
    expect(refusals().length - before).toBeGreaterThanOrEqual(60);
    expect((await chunkHead()).every((b) => b === 0x5a)).toBe(true);
    await stillServing();
  }, 120_000);
});

describe('data protocol over TLS (--data-tls), authenticated inside', () => {
  let c: LocalCluster;
  let work: string;
  let uri: string;

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'vsky-data-tls-'));
    const certs = makeTestCerts(join(work, 'pki'));
    c = await startTestCluster({ dataSecurity: { tls: { cert: certs.peerCert, key: certs.peerKey, ca: certs.ca } } });
    uri = await c.ensureVolume('dt', 32 * MiB, 3);
  }, 120_000);
  afterAll(async () => {
    await destroyTestCluster(c);
    rmSync(work, { recursive: true, force: true });
  });

  it('heads write and read every replica through TLS; the copies agree', async () => {
    const src = join(work, 'src.img');
    const back = join(work, 'back.img');
    randomFile(src, 8 * MiB);
    await run('nbdcopy', [src, uri], 120_000);
    await run('nbdcopy', [uri, back], 120_000);
    expect(await sameContent(src, back)).toBe(true);
    await expectReplicasEqual(c, 'dt', 3); // read from each node on its own, over TLS with the key
  });

  it('a plain TCP client gets no hello (TLS first), changes nothing, and the refusal is logged', async () => {
    const { map } = await showVolume(c, 'dt');
    const r = map.segments[0]!.replicas[0]!;
    const [host, port] = r.dataAddress.split(':');
    const node = c.nodes.find((n) => n.ready.dataAddress === r.dataAddress)!.name;
    const t: Target = { address: r.dataAddress, host: host!, port: Number(port), volumeId: map.volumeId, slot: r.slot, epoch: 1 << 20, node };
    const got = await session(t, (s) => s.write(writeFrame(t, Buffer.alloc(WRITE_BYTES, 0xee))));
    expect(got.closed).toBe(true);
    expect(got.bytes.includes(Buffer.from('VSKYAUTH'))).toBe(false);
    await waitUntil(() => daemonLog(c, node).includes('TLS handshake failed'), 5000, 'TLS refusal logged');
    const r2 = await run('qemu-io', ['-f', 'raw', '-c', 'read -v 0 16', uri]);
    expect(String(r2.stdout)).not.toMatch(/ee ee ee ee/);
  });
});
