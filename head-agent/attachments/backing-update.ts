import { InvalidArgumentError, errorMessage } from '../../shared/errors.js';
import type { Logger } from '../../shared/logger.js';
import { parseHostPort } from '../../shared/units.js';
import type { Backing } from '../engine/backing.js';
import { Mirror } from '../engine/mirror.js';
import type { NodePool } from '../engine/node-pool.js';
import type { Replica } from '../engine/replica.js';
import { newReplica } from './segments.js';
import { replicaState, type VolumeMap } from './validate-map.js';

// A map pushed for an attached volume carries its backing chain as the
// manager has it now (docs/snapshots.md, "Failures"): after a resync, drain
// or spare moved a snapshot's replica, the head reads the new one. Only the
// replica sets change here, in place and in one tick (reads in flight finish
// on the replicas they were sent to, ReadOps retry within the list they
// started with); the chain's shape (which volumes, which segments are
// allocated, the written bits) changes only through an attach (snapshot,
// flatten). Snapshot chunks are read-only and reads carry no epoch, so a new
// replica needs no fence; one that is still resyncing is not read.

export type BackingChainMap = VolumeMap['backing'];

/** Applies the chain's replica sets to `backing`; returns what changed (for the log), or why nothing could be applied. */
export function applyBackingReplicas(backing: Backing | undefined, chain: BackingChainMap, pool: NodePool): { changed: string[]; skipped?: string } {
  if (backing === undefined || chain.length === 0) return { changed: [] };
  const ids = chain.map((b) => b.volumeId).join(',');
  const have = backing.levels.map((l) => l.volumeId).join(',');
  if (ids !== have) return { changed: [], skipped: `the map's backing chain (${ids}) is not the one attached (${have}); it takes effect at the next attach` };
  checkChain(chain);
  const plans: { mirror: Mirror; replicas: Replica[] }[] = [];
  const changed: string[] = [];
  chain.forEach((b, i) => {
    const level = backing.levels[i]!;
    for (const seg of b.segments) {
      const mirror = level.mirrors[seg.index];
      // A segment's allocation in the chain never changes in place (snapshots are never written).
      if (mirror === undefined || (mirror.replicas.length === 0) !== (seg.replicas.length === 0)) continue;
      const before = describe(mirror.replicas);
      const replicas = [...seg.replicas].sort((x, y) => x.slot - y.slot).map((loc) => {
        const kept = mirror.replicas.find((r) => r.isAt(loc));
        const r = kept ?? newReplica(pool, { volumeId: b.volumeId, name: b.name }, seg.index, loc);
        r.state = replicaState(loc.state);
        return r;
      });
      const after = describe(replicas);
      if (before === after) continue;
      plans.push({ mirror, replicas });
      changed.push(`${b.name} segment ${seg.index}: ${before} -> ${after}`);
    }
  });
  for (const { mirror, replicas } of plans) mirror.applyReplicas(replicas); // same tick: every read from now on sees the new sets
  return { changed };
}

function describe(replicas: readonly Replica[]): string {
  return replicas.map((r) => `${r.diskId}#${r.chunkIndex}@${r.address}:${r.state}`).join(' ');
}

/** Everything the manager controls is checked before anything is applied. */
function checkChain(chain: BackingChainMap): void {
  for (const b of chain) {
    for (const seg of b.segments) {
      if (!Array.isArray(seg.replicas) || seg.replicas.length > 31) {
        throw new InvalidArgumentError(`invalid backing map for ${b.name}: segment ${seg.index} has ${seg.replicas?.length ?? 0} replicas`, { volume: b.name });
      }
      for (const r of seg.replicas) {
        try {
          parseHostPort(r.dataAddress, 'replica data address');
        } catch (err) {
          throw new InvalidArgumentError(`invalid backing map for ${b.name}: segment ${seg.index} slot ${r.slot}: ${errorMessage(err)}`, { volume: b.name });
        }
      }
    }
  }
}

/** Logs what a backing update did (one line; the replica sets before and after). */
export function logBackingUpdate(log: Logger, volume: string, volumeId: number, out: { changed: string[]; skipped?: string }): void {
  if (out.skipped !== undefined) log.warn({ volume, volumeId, reason: out.skipped }, 'backing chain in the pushed map not applied');
  else if (out.changed.length > 0) log.info({ volume, volumeId, changed: out.changed }, 'backing chain replicas updated');
}
