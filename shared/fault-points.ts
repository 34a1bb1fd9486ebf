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
