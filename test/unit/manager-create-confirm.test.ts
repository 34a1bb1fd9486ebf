import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { TransportError } from '../../shared/errors.js';

// A create's last step (manager/volumes.ts, manager/storage-notes.ts): the
// chunks are allocated CREATING, and after the commit every node holding one
// gets the committed note, which clears the mark. A node that does not take
// it leaves the volume `unconfirmed` (persisted), and GC passes send it again
// until every node took it. The fake nodes here keep the mark as a real node
// does (storage-node/manager-notes.ts, its own tests).

const { ManagerCore } = await import('../../manager/core.js');
const { FakePeers } = await import('../harness/manager-fake-peers.js');

type Core = Awaited<ReturnType<typeof ManagerCore.open>>;
const CHUNK = 64 * 1024 * 1024;
let dir: string;
let core: Core | undefined;

beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'vsky-create-confirm-')); });
afterEach(async () => {
  await core?.close();
  core = undefined;
  rmSync(dir, { recursive: true, force: true });
});

/** Fake nodes that keep the CREATING mark until a committed note; `refusing` nodes do not take notes. */
function peersKeepingMarks(refusing: Set<string>) {
  const peers = new FakePeers();
  for (let i = 0; i < 3; i++) peers.addNode(`srv${i}`).addDisk(`d${i}`, 8, CHUNK);
  peers.node.keepVolumeNote = async (address, req) => {
    const n = peers.nodes.get(address);
    if (!n || n.down || refusing.has(address)) throw new TransportError(`cannot reach ${address}`);
    if (!req.committed) return;
    for (const d of n.disks.values()) for (const id of d.chunks.values()) if (id.volumeId === req.volumeId && id.legality === 'CREATING') id.legality = 'LEGAL';
  };
  return peers;
}

const marks = (peers: InstanceType<typeof FakePeers>, address: string) =>
  [...peers.nodes.get(address)!.disks.values()].flatMap((d) => [...d.chunks.values()].map((id) => id.legality));

describe('create: the CREATING mark and its confirmation', () => {
  it('clears the mark on every node once committed; a node that missed it is retried by GC until it takes it', async () => {
    const refusing = new Set<string>();
    const peers = peersKeepingMarks(refusing);
    const [a, b] = [...peers.nodes.keys()];
    refusing.add(b!);
    core = await ManagerCore.open({ dataDir: dir, chunkSize: CHUNK, heartbeatTimeoutMs: 60_000 }, peers);
    for (const n of peers.nodes.values()) await core.registry.registerServer(n.nodeInfo());

    await core.volumes.create({ name: 'v', size: 2 * CHUNK, replicas: 3, spreadLabel: '' });
    // Premise: the chunks were allocated CREATING; the node that took the note cleared them, the other did not.
    expect(marks(peers, a!)).toEqual(['LEGAL', 'LEGAL']);
    expect(marks(peers, b!)).toEqual(['CREATING', 'CREATING']);
    expect(core.volumes.find('v')!.volume.unconfirmed).toBe(true);

    // Persisted: a restarted manager still knows the create is not confirmed everywhere.
    await core.close();
    core = await ManagerCore.open({ dataDir: dir, chunkSize: CHUNK, heartbeatTimeoutMs: 60_000 }, peers);
    for (const n of peers.nodes.values()) await core.registry.registerServer(n.nodeInfo());
    expect(core.volumes.find('v')!.volume.unconfirmed).toBe(true);
    await core.gc.run('test');
    expect(core.volumes.find('v')!.volume.unconfirmed).toBe(true); // still refused: kept

    refusing.clear();
    await core.gc.run('test');
    expect(marks(peers, b!)).toEqual(['LEGAL', 'LEGAL']);
    expect(core.volumes.find('v')!.volume.unconfirmed).toBeUndefined();
    await core.close();
    core = await ManagerCore.open({ dataDir: dir, chunkSize: CHUNK, heartbeatTimeoutMs: 60_000 }, peers);
    expect(core.volumes.find('v')!.volume.unconfirmed).toBeUndefined();
  });

  it('a create every node confirmed is never marked unconfirmed', async () => {
    const peers = peersKeepingMarks(new Set());
    core = await ManagerCore.open({ dataDir: dir, chunkSize: CHUNK, heartbeatTimeoutMs: 60_000 }, peers);
    for (const n of peers.nodes.values()) await core.registry.registerServer(n.nodeInfo());
    await core.volumes.create({ name: 'w', size: CHUNK, replicas: 2, spreadLabel: '' });
    expect(core.volumes.find('w')!.volume.unconfirmed).toBeUndefined();
    expect([...peers.nodes.keys()].flatMap((addr) => marks(peers, addr))).toEqual(['LEGAL', 'LEGAL']);
  });
});
