import type { IntIdCounters } from '../../proto/generated/vsky/common/IntIdCounters.js';
import type { NodeTable } from './plan.js';

// The VastSky-style integer ids (manager/xmlrpc/ids.ts) a rebuild from
// storage gives back: servers' and disks' come from what their nodes report
// keeping (noted as claims by manager/int-id-claims.ts), volumes' from the
// lvolid their chunk records carry, and the counters continue above the
// highest any node of this cluster heard, so an id the lost database issued
// (to an object since deleted, or to a head not back yet) is not issued again.
// The claims are adopted by the first id pass of the manager (conflicts: the
// first keeps it, the other gets a fresh id, and the event log says so).

export type Counters = Required<IntIdCounters>;

/** The lvolid most of a volume's chunks carry (0: none; ties: the lowest). */
export function commonLvolid(chunks: Iterable<{ lvolid: number }>): number {
  const counts = new Map<number, number>();
  for (const c of chunks) if (c.lvolid > 0) counts.set(c.lvolid, (counts.get(c.lvolid) ?? 0) + 1);
  let best = 0;
  let bestCount = 0;
  for (const [id, n] of counts) {
    if (n > bestCount || (n === bestCount && id < best)) {
      best = id;
      bestCount = n;
    }
  }
  return best;
}

/** The highest counters the nodes of this cluster heard from the lost manager (0: none heard). */
export function reportedCounters(nodes: NodeTable[], clusterId: string): Counters {
  const out: Counters = { hsvr: 0, ssvr: 0, pdsk: 0, lvol: 0 };
  if (!clusterId) return out;
  for (const { server } of nodes) {
    const n = server.nextIntIds;
    if (!n || server.intIdsClusterId !== clusterId) continue;
    out.hsvr = Math.max(out.hsvr, n.hsvr);
    out.ssvr = Math.max(out.ssvr, n.ssvr);
    out.pdsk = Math.max(out.pdsk, n.pdsk);
    out.lvol = Math.max(out.lvol, n.lvol);
  }
  return out;
}
