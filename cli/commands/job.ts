import cliProgress from 'cli-progress';
import type { Command } from 'commander';
import type { JobInfo__Output } from '../../proto/generated/vsky/manager/JobInfo.js';
import { formatSize } from '../../shared/units.js';
import { adminCommand, call, withManager } from '../admin.js';
import { emit, printTable } from '../output.js';
import { intArg, sizeArg } from '../options.js';

// Storage jobs (docs/jobs.md): vsky job list|show|abort|watch, and the volume
// commands that submit them (vsky volume wipe|resize) or investigate them
// (vsky volume recon).

const FINAL = new Set(['aborted', 'succeeded', 'failed', 'fenced']);

export function describe(j: JobInfo__Output): string {
  const args = Object.entries(j.args).map(([k, v]) => `${k}=${v}`).join(' ');
  return `job ${j.jobId}: ${j.kind} of ${j.volume}${args ? ` (${args})` : ''} from generation ${j.expectedGeneration}: ${j.state}`
    + `${j.host ? ` on ${j.kind === 'copy' ? 'head ' : ''}${j.host}` : ''}${j.epoch ? `, epoch ${j.epoch}` : ''}${j.total ? `, ${progressText(j)}` : ''}`
    + `${j.waiting ? `\n  ${j.waiting}` : ''}${j.error ? `\n  ${j.error}` : ''}\n`;
}

/** Bytes per second so far (from the job's start to its last report), 0 when unknown. */
export function jobRate(j: Pick<JobInfo__Output, 'done' | 'startedMs' | 'updatedMs' | 'endedMs'>): number {
  const until = j.updatedMs || j.endedMs;
  return j.startedMs && until > j.startedMs ? (j.done * 1000) / (until - j.startedMs) : 0;
}

function progressText(j: JobInfo__Output): string {
  if (j.kind === 'copy' || j.kind === 'resync' || j.kind === 'drain') {
    const rate = jobRate(j);
    const eta = rate > 0 && j.done < j.total ? `, ETA ${Math.ceil((j.total - j.done) / rate)} s` : '';
    return `${formatSize(j.done)} of ${formatSize(j.total)} copied${rate > 0 ? `, ${formatSize(Math.round(rate))}/s` : ''}${eta}`;
  }
  if (j.kind === 'flatten') return `${formatSize(j.done)} of ${formatSize(j.total)} examined, ${formatSize(j.copied)} copied`;
  return j.kind === 'wipe' ? `${formatSize(j.done)} of ${formatSize(j.total)} zeroed` : `${j.done} of ${j.total} chunks allocated`;
}

/** Polls the job until it ends; a progress bar on a terminal. Returns its last state. */
export async function watch(m: Parameters<Parameters<typeof withManager>[1]>[0], jobId: string, quiet: boolean, intervalMs = 200): Promise<JobInfo__Output> {
  let j = await call(m, 'GetJob', { jobId });
  const bar = !quiet && process.stderr.isTTY
    ? new cliProgress.SingleBar({ format: ` ${j.kind} ${j.volume} |{bar}| {percentage}% {state}`, hideCursor: true }, cliProgress.Presets.shades_classic)
    : undefined;
  bar?.start(Math.max(1, j.total), j.done, { state: j.state });
  try {
    while (!FINAL.has(j.state)) {
      await new Promise((r) => setTimeout(r, intervalMs));
      j = await call(m, 'GetJob', { jobId });
      bar?.setTotal(Math.max(1, j.total));
      bar?.update(j.done, { state: j.state });
    }
  } finally {
    bar?.stop();
  }
  return j;
}

/** After a submit: print the job, or (--wait) follow it to its end; exit 1 unless it succeeded. */
export function submitted(o: { json?: boolean; wait?: boolean }, m: Parameters<Parameters<typeof withManager>[1]>[0], j: JobInfo__Output): Promise<void> {
  if (!o.wait) return Promise.resolve(emit(o, j, () => process.stdout.write(`${describe(j)}  follow it: vsky job watch ${j.jobId}\n`)));
  return watch(m, j.jobId, Boolean(o.json)).then((last) => {
    emit(o, last, () => process.stdout.write(describe(last)));
    if (last.state !== 'succeeded') process.exitCode = 1;
  });
}

export function registerJobCommands(program: Command): void {
  const job = program.command('job').description('storage jobs (wipe, resize, copy, flatten; resyncs and drains shown read-only): list, show, abort, watch');

  adminCommand(job, 'list', 'list storage jobs')
    .option('--volume <name>', 'only this volume\'s jobs')
    .action((o) => withManager(o, async (m) => {
      const { jobs } = await call(m, 'ListJobs', { volume: o.volume ?? '' });
      emit(o, jobs, () => printTable(jobs.map((j) => ({ ...j, progress: j.waiting && j.state === 'pending' ? j.waiting : j.total ? progressText(j) : '' })),
        { jobId: 'ID', kind: 'KIND', volume: 'VOLUME', expectedGeneration: 'GEN', state: 'STATE', epoch: 'EPOCH', progress: 'PROGRESS', error: 'ERROR' }));
    }));

  adminCommand(job, 'show', 'show one storage job')
    .argument('<id>', 'job id')
    .action((jobId: string, o) => withManager(o, async (m) => {
      const j = await call(m, 'GetJob', { jobId });
      emit(o, j, () => process.stdout.write(describe(j)));
    }));

  adminCommand(job, 'abort', 'stop a storage job (the volume stays DIRTY at its generation)')
    .argument('<id>', 'job id')
    .action((jobId: string, o) => withManager(o, async (m) => {
      const j = await call(m, 'AbortJob', { jobId });
      emit(o, j, () => process.stdout.write(describe(j)));
    }));

  adminCommand(job, 'watch', 'follow a storage job until it ends (progress bar on a terminal); exits 1 unless it succeeded')
    .argument('<id>', 'job id')
    .action((jobId: string, o) => withManager(o, async (m) => {
      const j = await watch(m, jobId, Boolean(o.json));
      emit(o, j, () => process.stdout.write(describe(j)));
      if (j.state !== 'succeeded') process.exitCode = 1;
    }));

  const volume = program.commands.find((c) => c.name() === 'volume');
  if (!volume) return;


  adminCommand(volume, 'wipe', 'zero a detached volume (a storage job: generation g -> g+1)')
    .argument('<name>', 'volume name')
    .option('--job-id <id>', 'job id of your choosing (a retry with the same id is the same job)')
    .option('--generation <g>', 'the generation the volume must be at (default: its current one)', intArg)
    .option('--wait', 'wait for the job to end (progress bar on a terminal)')
    .action((name: string, o) => withManager(o, async (m) => {
      const j = await call(m, 'SubmitJob', { jobId: o.jobId ?? '', kind: 'wipe', volume: name, expectedGeneration: o.generation ?? 0, args: {} });
      await submitted(o, m, j);
    }));

  adminCommand(volume, 'resize', 'grow a volume, detached or attached (online: the holder keeps its lease; a storage job: generation g -> g+1)')
    .argument('<name>', 'volume name')
    .requiredOption('--size <size>', 'the new size, e.g. 20G (volumes only grow)', sizeArg)
    .option('--job-id <id>', 'job id of your choosing (a retry with the same id is the same job)')
    .option('--generation <g>', 'the generation the volume must be at (default: its current one)', intArg)
    .option('--wait', 'wait for the job to end (progress bar on a terminal)')
    .addHelpText('after', '\nOn an attached volume the VM keeps running: new NBD connections see the new size (connections\n'
      + 'open before keep the old one: NBD cannot announce a resize), iSCSI initiators get CAPACITY DATA HAS\n'
      + 'CHANGED on their next command. See docs/jobs.md.')
    .action((name: string, o) => withManager(o, async (m) => {
      const j = await call(m, 'SubmitJob', { jobId: o.jobId ?? '', kind: 'resize', volume: name, expectedGeneration: o.generation ?? 0, args: { size: String(o.size) } });
      await submitted(o, m, j);
    }));

  adminCommand(volume, 'recon', 'reconnaissance: what the storage nodes\' chunk records say about the volume\'s last storage job')
    .argument('<name>', 'volume name')
    .action((name: string, o) => withManager(o, async (m) => {
      const r = await call(m, 'ReconVolume', { name });
      emit(o, r, () => {
        process.stdout.write(`volume ${r.volume}: ${r.jobId ? `job ${r.jobId} from generation ${r.expectedGeneration}: ` : ''}${r.verdict}\n  ${r.explanation}\n`);
        printTable(r.nodes.map((n) => ({ ...n, job: n.jobId ? `${n.jobId} ${n.jobKind} ${n.jobOutcome}` : '-', note: n.error || (n.mixed ? 'chunks differ' : '') })),
          { server: 'SERVER', chunks: 'CHUNKS', generation: 'GEN', legality: 'LEGALITY', job: 'LAST JOB', epoch: 'EPOCH', note: 'NOTE' });
      });
    }));
}
