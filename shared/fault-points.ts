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

// Failure points: VSKY_FAIL_AT=storage-node.allocate:2 makes the 2nd pass
// through that point (and only that one) throw an IoError, as a refusing
// peer would; tests use them to check that a failure midway rolls back.
// Off unless the variable names the point.

const failures = new Map<string, { at: number; passes: number }>();
for (const item of (process.env.VSKY_FAIL_AT ?? '').split(',').filter(Boolean)) {
  const [name, count] = item.split(':');
  failures.set(name!, { at: Math.max(1, Number(count ?? 1) || 1), passes: 0 });
}

export function failPoint(name: string): void {
  const f = failures.get(name);
  if (f === undefined) return;
  if (++f.passes !== f.at) return;
  process.stderr.write(`VSKY_FAIL_AT: failing at ${name}\n`);
  throw new IoError(`VSKY_FAIL_AT: injected failure at ${name} (pass ${f.passes})`, { faultPoint: name });
}
