import type { VolumeRecord } from '../types.js';
import type { JobRecord } from './records.js';

// A DIRTY volume (docs/jobs.md "DIRTY volumes"): a storage job marked it
// DIRTY on its nodes and did not end with success (aborted, failed, fenced,
// or interrupted and decided so by reconnaissance). Its content is whatever
// the job left half done, so a fresh attach is refused, with the fixes, until
// a job on it succeeds; `--allow-dirty` attaches anyway (logged, and recorded
// in the event log as volume.attach_dirty). A volume that was attached when
// it became DIRTY (an online resize that failed) stays attached: that is the
// job host's business; the refusal applies from its next fresh attach.

/** Sets or clears the volume's DIRTY mark for job `j`'s end; returns whether it changed. */
export function markDirty(v: VolumeRecord, j: JobRecord, dirty: boolean): boolean {
  if (!dirty) {
    if (!v.dirty) return false;
    delete v.dirty;
    return true;
  }
  if (v.dirty?.jobId === j.id && v.dirty.state === j.state) return false;
  v.dirty = { jobId: j.id, kind: j.kind, state: j.state, sinceMs: j.endedMs };
  return true;
}

/** What to run to make the volume LEGAL again after job kind `kind`. */
function rerun(v: VolumeRecord, kind: string): string {
  if (kind === 'copy') return `re-run the copy (vsky volume copy SRC ${v.name})`;
  if (kind === 'resize') return `re-run the resize (vsky volume resize ${v.name} --size SIZE)`;
  return `re-run the wipe (vsky volume wipe ${v.name})`;
}

/** Why a fresh attach of `v` is refused ('' it is not DIRTY). */
export function dirtyRefusal(v: VolumeRecord): string {
  const d = v.dirty;
  if (!d) return '';
  const fixes = d.kind === 'wipe' ? rerun(v, d.kind) : `${rerun(v, d.kind)}, wipe it (vsky volume wipe ${v.name})`;
  return `volume ${v.name} is DIRTY: its last storage job (${d.kind} job ${d.jobId}) ended ${d.state}, so its content may be half changed; `
    + `it cannot be attached until a job on it succeeds: ${fixes}, or attach it anyway with --allow-dirty (logged and recorded in the event log)`;
}
