import { nextCounter } from '../../shared/counters.js';
import { errorMessage } from '../../shared/errors.js';
import { moduleLogger } from '../../shared/logger.js';
import { formatSize } from '../../shared/units.js';
import type { PeerClients } from '../node-clients.js';
import type { Registry } from '../registry.js';
import type { VolumeRecord } from '../types.js';
import type { Volumes } from '../volumes.js';
import { casVolume } from './node-cas.js';
import { grownTo } from './online-resize.js';
import type { JobRecord } from './records.js';
import type { Recon, ReconReport } from './recon.js';

// Acting on reconnaissance's verdict (recon.ts, docs/jobs.md
// "Reconnaissance"): a job the previous manager left pending or running, or
// a copy whose host went silent, is decided from the storage nodes' chunk
// records: a success is recorded; a wipe or copy whose last CAS reached
// only some nodes is rolled forward; an interrupted or never started job is
// fenced (a higher epoch, then a fenced record at g+2 on every node); an
// online resize is never fenced (it would take the lease from a running VM).

const log = moduleLogger('manager.jobs');

/** What the runner lends the verdicts. */
export interface VerdictHost {
  volumes: Volumes;
  registry: Registry;
  peers: PeerClients;
  recon: Recon;
  /** Ends the job; `dirty`: whether the volume is left DIRTY (default: whether the job took its lease). */
  end(j: JobRecord, state: JobRecord['state'], error?: string, volume?: VolumeRecord, dirty?: boolean): Promise<void>;
  mapChanged?: (volumeId: number) => void;
}

export class Verdicts {
  constructor(private readonly host: VerdictHost) {}

  /**
   * A job the previous process left pending or running: pending (never
   * started, or started and not yet durable as running) and running are
   * decided by reconnaissance from the nodes' chunk records.
   */
  async resolveInterrupted(j: JobRecord): Promise<void> {
    if (j.state === 'pending' && j.epoch === 0) {
      return this.host.end(j, 'failed', 'the manager restarted before the job started; nothing was touched; submit it again with a new id', undefined, false);
    }
    for (let attempt = 0; ; attempt++) {
      try {
        if (j.online) return await this.settleOnline(j);
        const report = await this.host.recon.investigate(j.volume, j);
        await this.settle(j, report);
        return;
      } catch (err) {
        log.warn({ job: j.id, err: errorMessage(err), attempt }, 'reconnaissance of an interrupted job failed; retrying');
        if (attempt >= 30) return this.host.end(j, 'failed', `interrupted by a manager restart; reconnaissance failed: ${errorMessage(err)}`, undefined, true);
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }

  /**
   * An online resize the previous process left running is never fenced (that
   * would take the lease from a running VM). If its new size was committed,
   * the holder may be using the new chunks: finish it (the final CAS under the
   * volume's epoch, g+1) and have the map pushed to the holder. Otherwise its
   * chunks are garbage (GC frees them) and it failed; the volume stays DIRTY at g.
   */
  private async settleOnline(j: JobRecord): Promise<void> {
    await this.host.volumes.exclusive(j.volume, async (e) => {
      const { volume } = e;
      const g = j.expectedGeneration;
      if (!grownTo(j, volume)) {
        return this.host.end(j, 'failed', `interrupted by a manager restart before its new size was committed: the size is unchanged (${formatSize(volume.size)}), its new chunks are garbage for GC; the volume stays DIRTY at generation ${g}`, volume, true);
      }
      const shape = { volumeSize: volume.size, segmentCount: volume.segmentCount };
      try {
        await casVolume(this.host.peers, this.host.registry, e.map, volume.id, { epoch: volume.epoch, expectedGeneration: g, generation: g + 1, legality: 'LEGAL', jobId: j.id, jobKind: j.kind, jobOutcome: 'succeeded', ...shape });
      } catch (err) {
        this.host.mapChanged?.(volume.id);
        return this.host.end(j, 'failed', `interrupted by a manager restart after its new size (${formatSize(volume.size)}) was committed; the final compare-and-set failed: ${errorMessage(err)}; the volume stays DIRTY at generation ${g}`, volume, true);
      }
      volume.generation = Math.max(volume.generation, g + 1);
      await this.host.end(j, 'succeeded', '', volume);
      this.host.mapChanged?.(volume.id);
    });
  }

  /** Acts on reconnaissance's verdict about job `j`: record a success, or fence. */
  async settle(j: JobRecord, report: ReconReport): Promise<void> {
    const e = this.host.volumes.entry(j.volume);
    const g = j.expectedGeneration;
    if (report.verdict === 'succeeded') {
      const v = e.volume;
      if (v.generation < g + 1) v.generation = g + 1;
      return this.host.end(j, 'succeeded', '', v);
    }
    const dirtyOnNodes = report.nodes.some((n) => n.chunks > 0 && n.legality === 'DIRTY');
    if (report.verdict === 'fenced') return this.host.end(j, 'fenced', report.explanation, e.volume, dirtyOnNodes);
    // Unknown: the volume may be DIRTY somewhere (or unreadable): it is treated as DIRTY.
    if (report.verdict === 'other') return this.host.end(j, 'failed', report.explanation, e.volume, true);
    // A wipe's and a copy's data were flushed before their last CAS began: the rest may be committed.
    if (report.verdict === 'roll_forward' && (j.kind === 'wipe' || j.kind === 'copy')) return this.rollForward(j, report);
    // interrupted or never started: fence it.
    await this.fence(j, report);
  }

  /**
   * A wipe whose last CAS reached only some nodes: every replica was zeroed
   * and flushed before it, so the rest are committed too (g -> g+1, under a
   * new epoch). A resize is fenced instead: its new chunk map was not
   * committed by the manager.
   */
  private async rollForward(j: JobRecord, report: ReconReport): Promise<void> {
    await this.host.volumes.exclusive(j.volume, async (e) => {
      const { volume } = e;
      const g = j.expectedGeneration;
      volume.epoch = nextCounter(volume.epoch, `volume ${volume.name}'s lease epoch`);
      await this.host.volumes.saveVolume(volume);
      for (const n of report.nodes) {
        if (n.chunks === 0) continue;
        await this.host.peers.node.setVolumeState!(n.controlAddress, {
          volumeId: volume.id, epoch: volume.epoch, expectedGeneration: g, generation: g + 1, legality: 'LEGAL', jobId: j.id, jobKind: j.kind, jobOutcome: 'succeeded',
        });
      }
      volume.generation = Math.max(volume.generation, g + 1);
      await this.host.end(j, 'succeeded', '', volume);
    });
  }

  /**
   * A fence: take the lease with a higher epoch, then compare-and-set a
   * fenced record and a bumped generation (g+2) on every node. Idempotent: a
   * node already fenced by this job accepts the same CAS again.
   */
  async fence(j: JobRecord, report: ReconReport): Promise<void> {
    await this.host.volumes.exclusive(j.volume, async (e) => {
      const { volume } = e;
      const g = j.expectedGeneration;
      volume.epoch = nextCounter(volume.epoch, `volume ${volume.name}'s lease epoch`);
      await this.host.volumes.saveVolume(volume);
      const legality = report.verdict === 'not_started' ? 'LEGAL' : 'DIRTY';
      const set = this.host.peers.node.setVolumeState!;
      for (const n of report.nodes) {
        if (n.chunks === 0) continue;
        // Against what reconnaissance saw there: g (interrupted, not started), g+1 (a resize's partial
        // commit) or g+2 (already fenced by this job: the same CAS is accepted again).
        await set(n.controlAddress, {
          volumeId: volume.id, epoch: volume.epoch, expectedGeneration: n.generation >= g && n.generation <= g + 2 ? n.generation : g, generation: g + 2, legality,
          jobId: j.id, jobKind: j.kind, jobOutcome: 'fenced', // the job's own kind: a manager rebuilt from storage restores its record
        });
      }
      volume.generation = Math.max(volume.generation, g + 2);
      await this.host.end(j, 'fenced', `${report.explanation}: fenced under epoch ${volume.epoch}, generation ${g + 2}${legality === 'DIRTY' ? ', the volume is DIRTY' : ''}`, volume, legality === 'DIRTY');
    });
  }
}
