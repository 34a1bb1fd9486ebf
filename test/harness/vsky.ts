import { execa, type Result } from 'execa';
import { vskyEntry } from '../../deploy/daemon-process.js';

// The CLI as tests run it. A test cluster registers how its manager is
// reached (startTestCluster: its TLS directory, or plain gRPC), so
// vsky(args, manager) talks to it with the admin certificate; a test passing
// its own --tls-*/--insecure flags overrides that (flags beat the environment).

const clusterEnv = new Map<string, NodeJS.ProcessEnv>();

/** How the CLI reaches the manager at `address`: VSKY_TLS_DIR=dir, or VSKY_INSECURE=1 when tlsDir is undefined. */
export function registerManagerTls(address: string, tlsDir: string | undefined): void {
  clusterEnv.set(address, tlsDir === undefined ? { VSKY_INSECURE: '1' } : { VSKY_TLS_DIR: tlsDir });
}

/** The environment the CLI needs for the manager at `address` (empty when it is not a test cluster's). */
export function cliEnv(address: string | undefined): NodeJS.ProcessEnv {
  return (address === undefined ? undefined : clusterEnv.get(address)) ?? {};
}

/** Runs the real `vsky` CLI against a manager; never throws (tests read exitCode/stderr). */
export function vsky(args: string[], manager?: string, timeoutMs = 60_000, env: NodeJS.ProcessEnv = {}): Promise<Result> {
  const full = manager ? [...args, '--manager', manager] : args;
  return execa(process.execPath, [vskyEntry(), ...full], { timeout: timeoutMs, reject: false, env: { ...cliEnv(manager), ...env } });
}

/** Runs `vsky ... --json` and parses stdout; throws with stderr on failure. */
export async function vskyJson<T = unknown>(args: string[], manager: string): Promise<T> {
  const r = await vsky([...args, '--json'], manager);
  if (r.exitCode !== 0) throw new Error(`vsky ${args.join(' ')} failed (${r.exitCode}): ${String(r.stderr)}`);
  return JSON.parse(String(r.stdout)) as T;
}
