import { IoError } from './errors.js';

// Crash points for chaos tests: off unless VSKY_CRASH_AT names one, e.g.
// VSKY_CRASH_AT=manager.create.allocated:5 makes the process kill itself with
// SIGKILL (a real kill -9, nothing flushed) the 5th time it passes that point.
// Production never sets the variable; the check is one Map lookup.

const remaining = new Map<string, number>();
for (const item of (process.env.VSKY_CRASH_AT ?? '').split(',').filter(Boolean)) {
  const [name, count] = item.split(':');
  remaining.set(name!, Math.max(1, Number(count ?? 1) || 1));
}

export function crashPoint(name: string): void {
  const left = remaining.get(name);
  if (left === undefined) return;
  if (left > 1) {
    remaining.set(name, left - 1);
    return;
  }
  process.stderr.write(`VSKY_CRASH_AT: crashing at ${name}\n`);
  process.kill(process.pid, 'SIGKILL');
}

// Pause points: VSKY_PAUSE_AT=head.job.flushed makes the process SIGSTOP
// itself the first time it passes that point (a host frozen at the worst
// moment, e.g. between a job's flush and its final compare-and-set); the test
// resumes it with SIGCONT. Off unless the variable names the point.
const pauses = new Set((process.env.VSKY_PAUSE_AT ?? '').split(',').filter(Boolean));

export function pausePoint(name: string): void {
  if (!pauses.delete(name)) return;
  process.stderr.write(`VSKY_PAUSE_AT: stopping at ${name}\n`);
  process.kill(process.pid, 'SIGSTOP');
}

// Failure points: VSKY_FAIL_AT=storage-node.allocate:2 makes the 2nd pass
// through that point (and only that one) throw an IoError, as a refusing
// peer would; `name@scope:N` counts only the passes for that scope (a volume
// name: storage-node.allocate@vm1:2 fails the 2nd allocation of a chunk of
// vm1). Tests use them to check that a failure midway rolls back. Off unless
// the variable names the point.

const failures = new Map<string, { at: number; passes: number }>();
for (const item of (process.env.VSKY_FAIL_AT ?? '').split(',').filter(Boolean)) {
  const colon = item.lastIndexOf(':');
  const [name, count] = colon > 0 ? [item.slice(0, colon), item.slice(colon + 1)] : [item, '1'];
  failures.set(name, { at: Math.max(1, Number(count) || 1), passes: 0 });
}

export function failPoint(name: string, scope?: string): void {
  if (failures.size === 0) return;
  for (const key of scope === undefined ? [name] : [name, `${name}@${scope}`]) {
    const f = failures.get(key);
    if (f === undefined || ++f.passes !== f.at) continue;
    process.stderr.write(`VSKY_FAIL_AT: failing at ${key}\n`);
    throw new IoError(`VSKY_FAIL_AT: injected failure at ${key} (pass ${f.passes})`, { faultPoint: key });
  }
}
