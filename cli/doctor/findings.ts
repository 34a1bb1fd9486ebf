// What `vsky doctor` reports: one finding per thing it looked at that is not
// right (or, at level "ok"/"info", that it looked and what it saw), each
// naming what to do. Problems (warning, error) make the exit code non-zero.

export type Level = 'ok' | 'info' | 'warning' | 'error';

export interface Finding {
  /** Which check: clock, disk, server, head, volume, job, certificate, filesystem, manager, config. */
  check: string;
  level: Level;
  /** What it is about: "disk 3f0c... on storage1", "volume vm7 (id 12)", a file. */
  target: string;
  message: string;
  /** What to do about it ('' when nothing). */
  action: string;
}

export function finding(check: string, level: Level, target: string, message: string, action = ''): Finding {
  return { check, level, target, message, action };
}

export function isProblem(f: Finding): boolean {
  return f.level === 'warning' || f.level === 'error';
}

const ORDER: Record<Level, number> = { error: 0, warning: 1, info: 2, ok: 3 };

/** Problems first (errors, then warnings), then what was fine. */
export function sortFindings(findings: Finding[]): Finding[] {
  return [...findings].sort((a, b) => ORDER[a.level] - ORDER[b.level]);
}

/** The human report: one block per finding, then a one-line verdict. */
export function renderFindings(findings: Finding[]): string {
  const lines: string[] = [];
  for (const f of sortFindings(findings)) {
    lines.push(`${f.level.toUpperCase().padEnd(7)} ${f.check}: ${f.target}: ${f.message}`);
    if (f.action) lines.push(`        -> ${f.action}`);
  }
  const problems = findings.filter(isProblem);
  const errors = problems.filter((f) => f.level === 'error').length;
  lines.push(problems.length === 0
    ? `no problem found (${findings.length} check(s))`
    : `${problems.length} problem(s): ${errors} error(s), ${problems.length - errors} warning(s)`);
  return `${lines.join('\n')}\n`;
}
