import { execa, type Result } from 'execa';
import { vskyEntry } from '../../deploy/daemon-process.js';

/** Runs the real `vsky` CLI against a manager; never throws (tests read exitCode/stderr). */
export function vsky(args: string[], manager?: string, timeoutMs = 60_000): Promise<Result> {
  const full = manager ? [...args, '--manager', manager] : args;
  return execa(process.execPath, [vskyEntry(), ...full], { timeout: timeoutMs, reject: false });
}

/** Runs `vsky ... --json` and parses stdout; throws with stderr on failure. */
export async function vskyJson<T = unknown>(args: string[], manager: string): Promise<T> {
  const r = await vsky([...args, '--json'], manager);
  if (r.exitCode !== 0) throw new Error(`vsky ${args.join(' ')} failed (${r.exitCode}): ${String(r.stderr)}`);
  return JSON.parse(String(r.stdout)) as T;
}
