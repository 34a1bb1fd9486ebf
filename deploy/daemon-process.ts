import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, type WriteStream } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { TimeoutError, VskyError } from '../shared/errors.js';

// One daemon (`vsky manager|storage-node|head-agent ...`) run as a real child
// process: its JSON log lines go to a file, its {"msg":"ready"} line tells us
// it serves (and on which addresses), and it can be stopped, killed -9,
// paused (SIGSTOP) and restarted with the same arguments.

export type ReadyInfo = Record<string, unknown>;

function projectRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'proto'))) return dir;
    dir = dirname(dir);
  }
  throw new Error('cannot find the project root');
}

/** The compiled CLI entry (npm run build produces it). */
export function vskyEntry(): string {
  const entry = join(projectRoot(), 'dist', 'cli', 'vsky.js');
  if (!existsSync(entry)) throw new VskyError('ENOENT', `${entry} is missing: run \`npm run build\` first`);
  return entry;
}

export class DaemonProcess {
  readonly name: string;
  readonly args: string[];
  readonly logPath: string;
  /** Extra environment for the next start (e.g. crash points); change it between restarts. */
  env: NodeJS.ProcessEnv;
  /** Extra node flags for the next start, e.g. ['--cpu-prof']. */
  nodeArgs: string[] = [];
  private child: ChildProcess | undefined;
  private log: WriteStream | undefined;
  private exited: Promise<number | null> = Promise.resolve(null);
  /** The last lines the current run printed (stdout and stderr), for errors about a failed start. */
  private tail: string[] = [];
  ready: ReadyInfo = {};

  constructor(name: string, args: string[], logPath: string, env: NodeJS.ProcessEnv = {}) {
    this.name = name;
    this.args = args;
    this.logPath = logPath;
    this.env = env;
  }

  get pid(): number | undefined { return this.child?.pid; }
  get running(): boolean { return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null; }

  /** Spawns the daemon and resolves once it logged "ready" (rejects if it exits or times out first). */
  start(timeoutMs = 20_000): Promise<ReadyInfo> {
    this.log = createWriteStream(this.logPath, { flags: 'a' });
    const child = spawn(process.execPath, [...this.nodeArgs, vskyEntry(), ...this.args], {
      env: { ...process.env, ...this.env }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    const log = this.log;
    this.exited = new Promise((resolve) => child.once('exit', (code) => { log.end(); resolve(code); }));
    this.tail = [];
    child.stderr!.on('data', (d: Buffer) => { log.write(d); this.remember(d.toString()); });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new TimeoutError(`${this.name} not ready after ${timeoutMs} ms; see ${this.logPath}`)), timeoutMs);
      createInterface({ input: child.stdout! }).on('line', (line) => {
        log.write(`${line}\n`);
        this.remember(line);
        if (!line.includes('"ready"')) return;
        try {
          const rec = JSON.parse(line) as ReadyInfo;
          if (rec.msg !== 'ready') return;
          this.ready = rec;
          clearTimeout(timer);
          resolve(rec);
        } catch { /* not JSON: ignore */ }
      });
      // 'close' comes after the last output line was read, so the error can quote it.
      child.once('close', (code, signal) => {
        clearTimeout(timer);
        reject(new VskyError('EDAEMON', `${this.name} exited (code ${code}, signal ${signal}) before it was ready; see ${this.logPath}; it printed last:\n${this.tail.join('\n')}`));
      });
    });
  }

  private remember(text: string): void {
    for (const line of text.split('\n')) if (line.trim() !== '') this.tail.push(line.length > 600 ? `${line.slice(0, 600)}...` : line);
    if (this.tail.length > 12) this.tail.splice(0, this.tail.length - 12);
  }

  /** SIGTERM and wait (SIGKILL after graceMs). */
  async stop(graceMs = 5000): Promise<void> {
    if (!this.running) return;
    this.child!.kill('SIGCONT');
    this.child!.kill('SIGTERM');
    const timer = setTimeout(() => this.child?.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }

  /** kill -9, as a crash. */
  async kill9(): Promise<void> {
    if (!this.running) return;
    this.child!.kill('SIGKILL');
    await this.exited;
  }

  pause(): void { this.child?.kill('SIGSTOP'); }
  resume(): void { this.child?.kill('SIGCONT'); }

  async restart(timeoutMs?: number): Promise<ReadyInfo> {
    await this.stop();
    return this.start(timeoutMs);
  }

  waitExit(): Promise<number | null> { return this.exited; }
}
