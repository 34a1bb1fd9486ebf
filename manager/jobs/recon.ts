import { errorMessage } from '../../shared/errors.js';
import type { PeerClients } from '../node-clients.js';
import type { Registry } from '../registry.js';
import type { Volumes } from '../volumes.js';
import { trustedNodes } from './node-cas.js';

// Reconnaissance (oVirt's word): what became of a storage job, read from the
// storage nodes' chunk records, never from the manager's belief. For a job
// that started from generation g:
//
//   every chunk at g+1, LEGAL, this job's record "succeeded"   succeeded
//   some at g+1 succeeded, the rest at g DIRTY by this job      roll_forward (the work was
//                                                               done: the last CAS was cut off)
//   any chunk at g, DIRTY                                       interrupted (fence it)
//   every chunk at g, LEGAL, no record of this job              not_started (fence it)
//   every chunk at g+2 with this job's fenced record            fenced (already)
//   anything else                                               other (an admin looks)
//
// A fence takes the lease with a higher epoch, then compare-and-sets a fenced
// record and a bumped generation (g+2) on every node (runner.ts), so a worker
// that still runs somewhere can neither write (epoch) nor commit (generation).

/** A chunk's legality as reconnaissance reads it: a create's CREATING mark not cleared yet is LEGAL (no job touched it). */
const legalityOf = (l: string | undefined): string => (!l || l === 'CREATING' ? 'LEGAL' : l);

export type ReconVerdict = 'succeeded' | 'roll_forward' | 'interrupted' | 'not_started' | 'fenced' | 'other';

/** What one node's chunk records of the volume say (the first chunk's values; `mixed` when its chunks differ). */
export interface NodeEvidence {
  server: string;
  controlAddress: string;
  chunks: number;
  generation: number;
  legality: string;
  jobId: string;
  jobKind: string;
  jobOutcome: string;
  epoch: number;
  mixed: boolean;
  error: string;
}

export interface ReconReport {
  volume: string;
  jobId: string;
  expectedGeneration: number;
  verdict: ReconVerdict;
  explanation: string;
  nodes: NodeEvidence[];
}

/** The verdict about job `jobId` (started at generation g) from the nodes' evidence (pure). */
export function judge(jobId: string, g: number, nodes: readonly NodeEvidence[]): { verdict: ReconVerdict; explanation: string } {
  const unreachable = nodes.filter((n) => n.error);
  if (unreachable.length > 0) return { verdict: 'other', explanation: `cannot tell: ${unreachable.map((n) => `${n.server}: ${n.error}`).join('; ')}` };
  const held = nodes.filter((n) => n.chunks > 0);
  if (held.length === 0) return { verdict: 'other', explanation: 'no node holds a chunk of the volume' };
  if (held.some((n) => n.mixed)) return { verdict: 'other', explanation: 'a node holds chunks of the volume in different states' };
  const ours = (n: NodeEvidence) => n.jobId === jobId;
  const done = (n: NodeEvidence) => n.generation === g + 1 && n.legality === 'LEGAL' && ours(n) && n.jobOutcome === 'succeeded';
  const dirty = (n: NodeEvidence) => n.generation === g && n.legality === 'DIRTY';
  if (held.every(done)) return { verdict: 'succeeded', explanation: `every node is at generation ${g + 1}, LEGAL, with job ${jobId} succeeded` };
  if (held.every((n) => n.generation === g + 2 && ours(n) && n.jobOutcome === 'fenced')) {
    return { verdict: 'fenced', explanation: `job ${jobId} was already fenced (generation ${g + 2})` };
  }
  if (held.some(done) && held.every((n) => done(n) || (dirty(n) && ours(n)))) {
    return { verdict: 'roll_forward', explanation: `some nodes committed job ${jobId} (generation ${g + 1}), the others are DIRTY at ${g}: the work was done, the last compare-and-set was cut off` };
  }
  if (held.every((n) => n.generation === g) && held.some(dirty)) {
    return { verdict: 'interrupted', explanation: `the volume is DIRTY at generation ${g}: job ${jobId} was interrupted` };
  }
  if (held.every((n) => n.generation === g && n.legality === 'LEGAL' && !ours(n))) {
    return { verdict: 'not_started', explanation: `the volume is LEGAL at generation ${g} with no record of job ${jobId}: it never started` };
  }
  return { verdict: 'other', explanation: `the chunk records match no outcome of job ${jobId} from generation ${g}` };
}

export class Recon {
  constructor(
    private readonly registry: Registry,
    private readonly volumes: Volumes,
    private readonly peers: PeerClients,
  ) {}

  /** Reads every node holding a chunk of the volume; judges job `job` (default: the last job recorded on its chunks). */
  async investigate(name: string, job?: { id: string; expectedGeneration: number }): Promise<ReconReport> {
    const { volume, map } = this.volumes.entry(name);
    // Nodes holding only stale replicas are not asked: those are never trusted (node-cas.ts).
    const servers = new Map<string, string>();
    for (const addr of trustedNodes(this.registry, map).keys()) {
      servers.set(addr, this.registry.listServers().find((s) => s.controlAddress === addr)?.name ?? addr);
    }
    const nodes = await Promise.all([...servers].map(async ([controlAddress, server]): Promise<NodeEvidence> => {
      const ev: NodeEvidence = { server, controlAddress, chunks: 0, generation: 0, legality: '', jobId: '', jobKind: '', jobOutcome: '', epoch: 0, mixed: false, error: '' };
      try {
        const { chunks } = await this.peers.node.listChunks(controlAddress, { diskId: '' });
        for (const c of chunks) {
          const id = c.identity;
          if (!id || id.volumeId !== volume.id) continue;
          if (ev.chunks === 0) {
            Object.assign(ev, { generation: id.generation, legality: legalityOf(id.legality), jobId: id.jobId, jobKind: id.jobKind, jobOutcome: id.jobOutcome, epoch: id.epoch });
          } else if (id.generation !== ev.generation || legalityOf(id.legality) !== ev.legality || id.jobId !== ev.jobId || id.jobOutcome !== ev.jobOutcome) {
            ev.mixed = true;
          }
          ev.epoch = Math.max(ev.epoch, id.epoch);
          ev.chunks++;
        }
      } catch (err) {
        ev.error = errorMessage(err);
      }
      return ev;
    }));
    nodes.sort((a, b) => a.server.localeCompare(b.server));
    // Without a job: the last one recorded on the chunks, judged from the generation it started at.
    const last = nodes.find((n) => n.jobId && n.chunks > 0);
    const jobId = job?.id ?? last?.jobId ?? '';
    let g = job?.expectedGeneration ?? 0;
    if (!job && last) g = last.jobOutcome === 'succeeded' ? last.generation - 1 : last.jobOutcome === 'fenced' ? last.generation - 2 : last.generation;
    if (!jobId) {
      return { volume: name, jobId: '', expectedGeneration: volume.generation, verdict: 'other', explanation: 'no storage job is recorded on the volume\'s chunks', nodes };
    }
    return { volume: name, jobId, expectedGeneration: g, ...judge(jobId, g, nodes), nodes };
  }
}
