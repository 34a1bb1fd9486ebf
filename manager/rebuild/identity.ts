import { MAX_REPLICAS } from '../../shared/constants.js';
import { MAX_ID_SLOT, few, identityKey, plural, sameIdentity, type Found, type SetAsideChunk } from './found.js';

// Rule 2 of a rebuild from storage (manager/rebuild/plan.ts has the rules):
// each volume's identity (name, size, K, segment count) is the one most of its
// chunks carry. Chunks that carry another, a tie between two identities, an
// identity that does not add up, a segment or identity slot out of range: set
// aside as conflicts. What remains of each volume is a candidate for the
// later rules.

/** A volume whose identity its chunks agree on, with the chunks that carry it. */
export interface Candidate {
  id: number;
  /** The chunks carrying the identity, in range. */
  chunks: Found[];
  /** Every chunk of the volume id (DELETING and CREATING marks are read from them all). */
  all: Found[];
  name: string;
  size: number;
  replicas: number;
  segmentCount: number;
}

/** The candidates of `groups` (chunks by volume id), ascending by id; what is set aside goes to `setAside` and `conflicts`. */
export function volumeCandidates(groups: Map<number, Found[]>, chunkSize: number, setAside: SetAsideChunk[], conflicts: string[]): Candidate[] {
  const candidates: Candidate[] = [];
  const aside = (chunks: Iterable<Found>, reason: string) => {
    for (const f of chunks) setAside.push({ diskId: f.diskId, chunkIndex: f.chunkIndex, volumeId: f.volumeId, reason });
  };
  const ids = [...groups.keys()].sort((a, b) => a - b);
  for (const id of ids) {
    const all = groups.get(id)!;
    // Most volumes agree throughout: compare fields, build keys only when they do not.
    const first = all[0]!;
    const agree = all.every((f) => sameIdentity(f, first));
    const counts = new Map<string, number>();
    if (!agree) for (const f of all) counts.set(identityKey(f), (counts.get(identityKey(f)) ?? 0) + 1);
    let key = '';
    let best = agree ? all.length : 0;
    let tie = false;
    for (const [k, n] of counts) {
      if (n > best) { key = k; best = n; tie = false; } else if (n === best) tie = true;
    }
    const describe = (f: Found) => `"${f.name}" ${f.size} bytes, ${f.segmentCount} segments, K=${f.replicas}`;
    if (tie) {
      const ways = [...counts.entries()].filter(([, n]) => n === best).map(([k]) => describe(all.find((f) => identityKey(f) === k)!));
      const why = `volume ${id}: its chunks disagree on its identity (${best} each say ${ways.join(' / ')})`;
      conflicts.push(`${why}; not built, its ${plural(all.length, 'chunk')} set aside`);
      aside(all, why);
      continue;
    }
    const ref = agree ? first : all.find((f) => identityKey(f) === key)!;
    const minority = agree ? [] : all.filter((f) => !sameIdentity(f, ref));
    if (minority.length > 0) {
      const why = `volume ${id} (${ref.name}): chunk identity differs from the other ${best} chunks' (${describe(ref)})`;
      conflicts.push(`${why}: ${plural(minority.length, 'chunk')} (${few(minority.map((f) => `${f.diskId}#${f.chunkIndex} says ${describe(f)}`))}) not placed, not freed`);
      aside(minority, why);
    }
    let chunks = agree ? all : all.filter((f) => sameIdentity(f, ref));
    const { name, size, replicas, segmentCount } = ref;
    const problem = !name ? 'no volume name'
      : !(Number.isSafeInteger(size) && size > 0) ? `size ${size}`
        : !(Number.isInteger(replicas) && replicas >= 1 && replicas <= MAX_REPLICAS) ? `${replicas} replicas (1..${MAX_REPLICAS})`
          : segmentCount !== Math.ceil(size / chunkSize) ? `${segmentCount} segments, but ${size} bytes in chunks of ${chunkSize} make ${Math.ceil(size / chunkSize)}`
            : '';
    if (problem) {
      const why = `volume ${id} (${name}): its identity does not add up (${problem})`;
      conflicts.push(`${why}; not built, its ${plural(chunks.length, 'chunk')} set aside`);
      aside(chunks, why);
      continue;
    }
    const outOfRange = chunks.filter((f) => !(f.segment < segmentCount && f.idSlot <= MAX_ID_SLOT));
    if (outOfRange.length > 0) {
      const why = `volume ${id} (${name}): segment or identity slot out of range`;
      conflicts.push(`${why}: ${plural(outOfRange.length, 'chunk')} (${few(outOfRange.map((f) => `${f.diskId}#${f.chunkIndex} segment ${f.segment} slot ${f.idSlot}`))}) not placed, not freed`);
      aside(outOfRange, why);
      chunks = chunks.filter((f) => f.segment < segmentCount && f.idSlot <= MAX_ID_SLOT);
    }
    if (chunks.length === 0) continue;
    candidates.push({ id, chunks, all, name, size, replicas, segmentCount });
  }
  return candidates;
}
