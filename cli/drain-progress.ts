import cliProgress from 'cli-progress';
import type { DiskRow__Output } from '../proto/generated/vsky/manager/DiskRow.js';
import type { ManagerClient } from '../shared/grpc.js';
import { call } from './admin.js';

// Waiting for a graceful removal (`vsky disk remove`, `vsky server remove`):
// the manager drains the disks (copies every replica elsewhere) and then
// removes them. This polls ListDisks and shows the chunks moved so far as a
// progress bar (on a terminal), with the manager's note when the drain waits
// for something only an admin can give (capacity on another server).

export interface DrainWait {
  /** The disks being drained (one for disk remove, all of a server's). */
  diskIds: string[];
  label: string;
  intervalMs: number;
  /** Print nothing (JSON mode): only wait. */
  quiet: boolean;
}

/** Resolves with the disks' final rows once every one is removed. */
export async function waitForDrain(m: ManagerClient, w: DrainWait): Promise<DiskRow__Output[]> {
  const ids = new Set(w.diskIds);
  const fetch = async () => (await call(m, 'ListDisks', { server: '' })).disks.filter((d) => ids.has(d.diskId));
  let rows = await fetch();
  const total = Math.max(1, rows.reduce((n, d) => n + (d.state === 'removed' ? 0 : d.usedChunks), 0));
  const bar = !w.quiet && process.stderr.isTTY
    ? new cliProgress.SingleBar({ format: ` ${w.label} |{bar}| {value}/{total} chunks moved | ETA {eta_formatted} {note}`, hideCursor: true }, cliProgress.Presets.shades_classic)
    : undefined;
  bar?.start(total, 0, { note: '' });
  let lastNote = '';
  try {
    while (rows.some((d) => d.state !== 'removed')) {
      await new Promise((r) => setTimeout(r, w.intervalMs));
      rows = await fetch();
      const left = rows.reduce((n, d) => n + (d.state === 'removed' ? 0 : d.usedChunks), 0);
      const note = rows.map((d) => d.drainNote).find((n) => n) ?? '';
      bar?.update(Math.max(0, total - left), { note: note ? '(waiting: see below)' : '' });
      if (note && note !== lastNote && !w.quiet) process.stderr.write(`\n${w.label}: ${note}\n`);
      lastNote = note;
    }
  } finally {
    bar?.update(total);
    bar?.stop();
  }
  return rows;
}
