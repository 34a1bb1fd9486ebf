import { VskyError } from '../../shared/errors.js';
import { mapLimit, type PeerClients } from '../node-clients.js';
import type { Registry } from '../registry.js';
import { forEachReplica, type ChunkMapRecord } from '../types.js';

// The storage-node compare-and-set of a volume's state (SetVolumeState,
// docs/jobs.md), as the job runner and the reconnaissance verdicts send it:
// one call per node holding a replica of the volume, in parallel.
//
// Nodes whose every replica of the volume is stale in the map are left out:
// a stale replica is never read nor trusted (it is replaced and resynced from
// an in-sync one), so its node's chunk records need not follow the job, and a
// node that is down with only stale replicas does not stop a job.

export interface VolumeStateCas {
  epoch: number;
  expectedGeneration: number;
  generation: number;
  legality: 'LEGAL' | 'DIRTY';
  jobId: string;
  jobKind: string;
  jobOutcome: string;
  volumeSize?: number;
  segmentCount?: number;
  raiseLagging?: boolean;
}

/** The volume's nodes that hold a replica not marked stale: control address -> data address. */
export function trustedNodes(registry: Registry, map: ChunkMapRecord): Map<string, string> {
  const out = new Map<string, string>();
  const seen = new Set<string>();
  forEachReplica(map, (ref) => {
    if (ref.state === 'stale' || seen.has(ref.diskId)) return;
    seen.add(ref.diskId);
    const s = registry.serverOfDisk(ref.diskId);
    if (s) out.set(s.controlAddress, s.dataAddress);
  });
  return out;
}

/** The CAS on each of `nodes` (control addresses) in parallel; per node, its error or undefined. */
export async function casNodes(peers: PeerClients, nodes: readonly string[], volumeId: number, req: VolumeStateCas): Promise<Map<string, unknown>> {
  const set = peers.node.setVolumeState;
  if (!set) throw new VskyError('EINTERNAL', 'the storage-node client has no SetVolumeState');
  const results = await mapLimit(nodes, 16, (a) => set(a, { volumeId, ...req }));
  return new Map(nodes.map((a, i) => [a, results[i]!.status === 'rejected' ? (results[i] as PromiseRejectedResult).reason : undefined]));
}

/** The CAS on every trusted node of the volume; the first refusal is thrown. */
export async function casVolume(peers: PeerClients, registry: Registry, map: ChunkMapRecord, volumeId: number, req: VolumeStateCas): Promise<void> {
  firstError(await casNodes(peers, [...trustedNodes(registry, map).keys()], volumeId, req));
}

/** Throws the first node's error of a casNodes result. */
export function firstError(results: ReadonlyMap<string, unknown>): void {
  for (const err of results.values()) if (err !== undefined) throw err;
}

/** A node that did not answer (transport error or timeout), as opposed to one that refused. */
export function unreachable(err: unknown): boolean {
  return err instanceof VskyError && (err.code === 'ETRANSPORT' || err.code === 'ETIMEDOUT');
}
