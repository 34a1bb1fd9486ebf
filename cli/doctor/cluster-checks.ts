import type { ClusterStatus__Output } from '../../proto/generated/vsky/manager/ClusterStatus.js';
import type { DiskRow__Output } from '../../proto/generated/vsky/manager/DiskRow.js';
import type { HeadInfo__Output } from '../../proto/generated/vsky/manager/HeadInfo.js';
import type { JobInfo__Output } from '../../proto/generated/vsky/manager/JobInfo.js';
import type { ServerInfo__Output } from '../../proto/generated/vsky/manager/ServerInfo.js';
import { finding, type Finding } from './findings.js';

// The cluster checks of `vsky doctor`, pure: from what the manager answered
// (and whether the peers answered the doctor itself) to findings.

export interface ClusterSnapshot {
  manager: string;
  status: ClusterStatus__Output;
  servers: ServerInfo__Output[];
  disks: DiskRow__Output[];
  heads: HeadInfo__Output[];
  jobs: JobInfo__Output[];
  /** Control addresses the doctor could not reach itself, with the error (server and head gRPC). */
  unreachable: Map<string, string>;
  /** This host's clock minus the manager's (ms), measured over the Status call. */
  localClockOffsetMs: number;
}

export interface Thresholds {
  /** A disk at or above this fraction of its chunks used is near full. */
  diskFull: number;
  /** The pool (all active disks) at or above this fraction allocated. */
  poolFull: number;
  /** Clock offset allowed between the manager and a head or this host (ms). */
  maxClockSkewMs: number;
}

/** The lease margin: a quarter of the manager's lease TTL (8 s -> 2 s). */
export function defaultMaxClockSkewMs(leaseTtlMs: number): number {
  return Math.max(250, Math.floor(leaseTtlMs / 4));
}

export function clusterFindings(s: ClusterSnapshot, t: Thresholds): Finding[] {
  return [
    ...serverFindings(s), ...diskFindings(s, t), ...headFindings(s, t), ...clockFinding(s, t),
    ...volumeFindings(s), ...dirtyVolumeFindings(s),
  ];
}

function serverFindings(s: ClusterSnapshot): Finding[] {
  const out: Finding[] = [];
  for (const sv of s.servers.filter((x) => x.state !== 'removed')) {
    const target = `storage server ${sv.name} (${sv.controlAddress})`;
    if (sv.state === 'failed') {
      out.push(finding('server', 'error', target, `the manager marked it failed: ${silence(sv.lastHeartbeatMs, s.status.managerTimeMs)}`,
        `on ${sv.name}: systemctl status vsky-storage-node; journalctl -u vsky-storage-node; check that the manager reaches ports 7710/7711 `
        + `(docs/install.md, firewall). If the host is gone for good: vsky server remove ${sv.name} --force (its replicas resync elsewhere)`));
      continue;
    }
    const err = s.unreachable.get(sv.controlAddress);
    if (err !== undefined) {
      out.push(finding('server', 'warning', target, `the manager hears it, but this host cannot reach its control port: ${err}`,
        'a firewall or routing between this host and the storage network; the manager and heads may still reach it'));
    } else {
      out.push(finding('server', 'ok', target, 'active and reachable'));
    }
  }
  if (s.servers.length === 0) out.push(finding('server', 'warning', 'cluster', 'no storage server registered', 'start vsky-storage-node on the storage hosts (docs/install.md)'));
  return out;
}

function diskFindings(s: ClusterSnapshot, t: Thresholds): Finding[] {
  const out: Finding[] = [];
  const active = s.disks.filter((d) => d.state === 'active');
  for (const d of s.disks.filter((x) => x.state === 'failed')) {
    out.push(finding('disk', 'error', `disk ${d.diskId} (${d.path}) on ${d.serverName}`, `failed${d.stateReason ? `: ${d.stateReason}` : ''}`,
      `replace it: vsky disk remove ${d.diskId} --force, then add the new disk to the storage node's config file and restart it (or vsky disk add)`));
  }
  for (const d of active) {
    const used = d.chunkCount > 0 ? d.usedChunks / d.chunkCount : 0;
    if (used < t.diskFull) continue;
    out.push(finding('disk', used >= 1 ? 'error' : 'warning', `disk ${d.diskId} (${d.path}) on ${d.serverName}`,
      `${d.usedChunks} of ${d.chunkCount} chunks used (${pct(used)})`,
      'add disks or servers (new volumes and resyncs need free chunks on distinct servers), or delete unused volumes'));
  }
  const capacity = active.reduce((n, d) => n + d.chunkCount, 0);
  const used = active.reduce((n, d) => n + d.usedChunks, 0);
  const fraction = capacity > 0 ? used / capacity : 0;
  out.push(fraction >= t.poolFull
    ? finding('disk', 'warning', 'pool', `${pct(fraction)} of the chunks of the active disks allocated`, 'add capacity before failures need room to resync')
    : finding('disk', 'ok', 'pool', `${pct(fraction)} allocated over ${active.length} active disk(s)`));
  return out;
}

function headFindings(s: ClusterSnapshot, t: Thresholds): Finding[] {
  const out: Finding[] = [];
  for (const h of s.heads) {
    const target = `head ${h.name} (${h.controlAddress})`;
    if (h.state === 'failed') {
      out.push(finding('head', h.attached.length > 0 ? 'error' : 'warning', target,
        `the manager marked it failed: ${silence(h.lastHeartbeatMs, s.status.managerTimeMs)}${h.attached.length ? `; it holds ${h.attached.join(', ')}` : ''}`,
        `on ${h.name}: systemctl status vsky-head-agent; journalctl -u vsky-head-agent. If the hypervisor is gone, attach its volumes elsewhere (vsky volume attach NAME --head OTHER --force once its lease expired)`));
      continue;
    }
    const err = s.unreachable.get(h.controlAddress);
    if (err !== undefined) {
      out.push(finding('head', 'warning', target, `the manager hears it, but this host cannot reach its control port: ${err}`,
        'a firewall between this host and the hypervisor (port 7720)'));
    }
    if (h.clockOffsetKnown && Math.abs(h.clockOffsetMs) > t.maxClockSkewMs) {
      out.push(finding('clock', 'error', target, `its clock is ${signed(h.clockOffsetMs)} ms off the manager's (margin ${t.maxClockSkewMs} ms: a quarter of the lease TTL)`,
        `run NTP on both hosts (apt-get install chrony; chronyc tracking) so clocks agree well within the lease margin`));
    } else if (h.clockOffsetKnown) {
      out.push(finding('clock', 'ok', target, `clock ${signed(h.clockOffsetMs)} ms off the manager's`));
    }
  }
  return out;
}

function clockFinding(s: ClusterSnapshot, t: Thresholds): Finding[] {
  const off = s.localClockOffsetMs;
  const target = `this host vs the manager (${s.manager})`;
  return Math.abs(off) > t.maxClockSkewMs
    ? [finding('clock', 'warning', target, `this host's clock is ${signed(off)} ms off the manager's (margin ${t.maxClockSkewMs} ms)`,
      'run NTP on every host of the cluster (chrony); certificates and leases depend on agreeing clocks')]
    : [finding('clock', 'ok', target, `${signed(off)} ms`)];
}

function volumeFindings(s: ClusterSnapshot): Finding[] {
  // A server that is down (failed, or silent to this host) is the usual reason nothing resyncs: with as many
  // servers as replicas its replicas have nowhere else to go, and they resync once it is back (a restart).
  const down = s.servers.filter((sv) => sv.state === 'failed' || s.unreachable.has(sv.controlAddress)).map((sv) => sv.name);
  const idle = down.length > 0
    ? `storage server(s) ${down.join(', ')} down: the replicas they missed resync once they are back (a restart or an upgrade: `
      + 'wait for it, and take no other server down meanwhile); one gone for good: add a server, or vsky server remove NAME --force'
    : 'the cluster has no room for a new replica on a distinct server: add a disk or a server (vsky resync list says what waits)';
  return s.status.volumeList.filter((v) => v.degraded).map((v) => finding('volume', 'warning', `volume ${v.name} (id ${v.volumeId})`,
    v.resyncs > 0 ? `degraded: ${v.resyncs} resync(s) at ${pct(v.resyncProgress)}` : 'degraded and no resync running',
    v.resyncs > 0 ? 'wait for the resync (vsky resync watch); do not take another replica offline meanwhile' : idle));
}

/** A volume whose last job did not succeed stays DIRTY at its generation (docs/jobs.md). */
function dirtyVolumeFindings(s: ClusterSnapshot): Finding[] {
  const last = new Map<number, JobInfo__Output>();
  for (const j of s.jobs) {
    const prev = last.get(j.volumeId);
    if (!prev || j.createdMs >= prev.createdMs) last.set(j.volumeId, j);
  }
  const live = new Set(s.status.volumeList.map((v) => v.volumeId));
  const out: Finding[] = [];
  for (const j of last.values()) {
    if (!live.has(j.volumeId) || !['aborted', 'failed', 'fenced'].includes(j.state)) continue;
    out.push(finding('volume', 'error', `volume ${j.volume} (id ${j.volumeId})`,
      `DIRTY: its last job ${j.jobId} (${j.kind}) ended ${j.state}${j.error ? `: ${j.error}` : ''}; its content is not what generation ${j.expectedGeneration} says`,
      `vsky volume recon ${j.volume} shows what each node holds; run the job again (same kind) or wipe the volume before using it`));
  }
  return out;
}

function pct(f: number): string {
  return `${(100 * f).toFixed(1)}%`;
}

function signed(ms: number): string {
  return ms > 0 ? `+${ms}` : String(ms);
}

function silence(lastMs: number, nowMs: number): string {
  return lastMs ? `no heartbeat for ${((nowMs - lastMs) / 1000).toFixed(0)} s` : 'never heard from';
}
