import { Heap } from '../heap.js';
import { allocIndex, isEligible, placeBefore, type ModelDisk, type ModelView } from './model-disk.js';

// Spare placement: where a replacement replica goes when one is lost or
// drained (manager/resync/spares.ts asks).

/** One replacement replica to place (manager/resync/spares.ts). */
export interface SpareRequest {
  volumeId: number;
  /** Servers holding another replica of the segment (any state): never used. */
  excludeServers: ReadonlySet<string>;
  /** The replaced replica's server: used only when no other server fits. */
  avoidServer?: string;
  /** Server label whose values the segment's replicas should differ in ('' = none). */
  spreadLabel?: string;
}

export interface SparePick {
  serverId: string;
  diskId: string;
  chunkIndex: number;
  /** How far the rules held: 'spread' (new server and label value), 'server' (label reused), 'avoided' (the replaced replica's server). */
  fit: 'spread' | 'server' | 'avoided';
}

/**
 * Chooses and reserves one spare chunk per request, in order: an eligible
 * disk on a server outside `excludeServers`, on a spread-label value the
 * segment's other replicas do not use when the labels allow, and off the
 * replaced replica's server unless nothing else fits. Among those, the disk
 * with the least resync work ahead (`resyncLoad`: the caller's count of
 * resyncs that will read from or write to it; each pick here adds one),
 * then the most free chunks. Rebuild time is set by the busiest disk, so a
 * disk with much free space (a new one) must not receive every spare of a
 * failure; free space still decides among equally loaded disks. One heap
 * serves the whole batch (a server failure asks for thousands). Undefined
 * where no disk fits; the other requests are still served. `onlyDisks`
 * (hot-spare mode) limits the candidates to those disks, same rules.
 */
export function placeSpares(view: ModelView, reqs: readonly SpareRequest[], resyncLoad: Map<string, number>,
  onlyDisks?: ReadonlySet<string>): Array<SparePick | undefined> {
  const loadOf = (d: ModelDisk) => resyncLoad.get(d.id) ?? 0;
  const heap = new Heap(
    [...view.disks.values()].filter((d) => d.used < d.chunkCount && isEligible(view, d) && (onlyDisks === undefined || onlyDisks.has(d.id))),
    (a, b) => (loadOf(a) !== loadOf(b) ? loadOf(a) < loadOf(b) : placeBefore(a, b)),
  );
  return reqs.map((req) => {
    const stash: ModelDisk[] = [];
    const found = bestSpare(view, heap, req, stash);
    let pick: SparePick | undefined;
    if (found) {
      const [best, fit] = found;
      const index = allocIndex(best, req.volumeId);
      best.tie = view.random();
      resyncLoad.set(best.id, loadOf(best) + 1);
      pick = { serverId: best.serverId, diskId: best.id, chunkIndex: index, fit };
    }
    for (const d of stash) if (d.used < d.chunkCount) heap.push(d);
    return pick;
  });
}

/** Pops disks (kept in `stash`) until one fits the request's rules, relaxing them in order. */
function bestSpare(view: ModelView, heap: Heap<ModelDisk>, req: SpareRequest, stash: ModelDisk[]): [ModelDisk, SparePick['fit']] | undefined {
  const labelOf = (serverId: string, label: string): string => view.servers.get(serverId)?.labels[label] ?? '';
  const label = req.spreadLabel ?? '';
  const usedValues = new Set<string>();
  if (label) for (const s of req.excludeServers) usedValues.add(labelOf(s, label));
  let sameLabel: ModelDisk | undefined;
  let avoided: ModelDisk | undefined;
  // Popped in preference order, so the first disk meeting each relaxed rule is the best one for it.
  while (heap.size > 0) {
    const d = heap.pop();
    stash.push(d);
    if (req.excludeServers.has(d.serverId)) continue;
    if (d.serverId === req.avoidServer) {
      avoided ??= d;
      continue;
    }
    if (label && usedValues.has(labelOf(d.serverId, label))) {
      sameLabel ??= d;
      continue;
    }
    return [d, 'spread'];
  }
  if (sameLabel) return [sameLabel, 'server'];
  if (avoided) return [avoided, 'avoided'];
  return undefined;
}
