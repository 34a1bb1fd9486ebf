import type { Command } from 'commander';
import { adminCommand, call, withManager } from '../admin.js';
import { intArg } from '../options.js';
import { submitted } from './job.js';

// vsky volume copy SRC DST: a storage job hosted by a head agent (docs/jobs.md,
// "copy"): the written regions of SRC are copied to DST (created like SRC
// with --create, thin unless --thick, or an existing volume of the same size
// whose other regions are zeroed); DST goes from generation g to g+1. Both
// must be detached. A thin DST gets chunks only where SRC holds data.

export function registerCopyCommand(program: Command): void {
  const volume = program.commands.find((c) => c.name() === 'volume');
  if (!volume) return;
  adminCommand(volume, 'copy', 'copy a detached volume into another (a storage job on a head agent: DST generation g -> g+1)')
    .argument('<src>', 'source volume (detached)')
    .argument('<dst>', 'destination volume (detached, same size), or a new name with --create')
    .option('--create', 'create DST like SRC (same size and replica count), thin unless --thick')
    .option('--thick', 'with --create: reserve every chunk of DST now (default: thin; a thin DST gets chunks only where SRC holds data)')
    .option('--host <head>', 'the head agent that runs the copy (default: an up head with the fewest running jobs)')
    .option('--expected-generation <g>', 'the generation DST must be at (default: its current one)', intArg)
    .option('--throttle-mibps <n>', 'hold the copy to this rate (MiB/s; default unthrottled)', intArg)
    .option('--job-id <id>', 'job id of your choosing (a retry with the same id is the same job)')
    .option('--wait', 'wait for the job to end (progress bar on a terminal)')
    .action((src: string, dst: string, o) => withManager(o, async (m) => {
      const args: Record<string, string> = { source: src };
      if (o.create) args.create = 'true';
      if (o.thick) args.thick = 'true';
      if (o.host) args.host = o.host;
      if (o.throttleMibps) args.throttle_mibps = String(o.throttleMibps);
      const j = await call(m, 'SubmitJob', { jobId: o.jobId ?? '', kind: 'copy', volume: dst, expectedGeneration: o.expectedGeneration ?? 0, args });
      await submitted(o, m, j);
    }));
}
