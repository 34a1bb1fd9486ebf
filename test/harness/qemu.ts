import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants as fsConstants, createWriteStream, rmSync, type WriteStream } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { delimiter, join } from 'node:path';

// Real QEMU for tests: a VM (qemu-system-x86_64 under TCG, no KVM needed, no
// guest OS: SeaBIOS finds nothing to boot and idles) whose virtio-blk disk is
// an NBD export, driven over QMP on a unix socket. Enough to live-migrate a VM
// whose disk is a VastSky volume and to do guest-like I/O on the disk with
// QEMU's own block layer (HMP `qemu-io`).
//
// Everything is loopback only and bounded in time; a VM is killed by its pid
// when it does not quit, and when the test process exits.
//
// QEMU 7.2 quirk: HMP `qemu-io` prints its output (and "Pattern verification
// failed") on QEMU's *stdout*, and returns '' to the monitor. qemuIo() brackets
// the command with two `help <marker>` commands (whose "command <marker> not
// found" also goes to stdout) and returns what was printed between the markers;
// when a newer QEMU answers on the monitor instead, it returns that.

const QEMU = 'qemu-system-x86_64';
/** The disk's block node name and the virtio-blk device id. */
export const DISK_NODE = 'disk0';
export const DISK_DEVICE = 'vd0';

/** Path of qemu-system-x86_64 on PATH, or undefined when it is not installed. */
export function findQemu(): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const p = join(dir, QEMU);
    try {
      accessSync(p, fsConstants.X_OK);
      return p;
    } catch { /* not here */ }
  }
  return undefined;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export class QmpError extends Error {
  constructor(readonly command: string, readonly errorClass: string, desc: string) {
    super(`QMP ${command}: ${errorClass}: ${desc}`);
  }
}

export interface QmpEvent { event: string; data?: Record<string, unknown>; timestamp?: { seconds: number; microseconds: number } }

interface PendingCommand { command: string; resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }

/** QMP over a unix socket: newline-delimited JSON, commands matched to replies by id, events collected. */
export class QmpClient {
  /** Every event received so far, oldest first (bounded). */
  readonly events: QmpEvent[] = [];
  private readonly pending = new Map<number, PendingCommand>();
  private readonly eventWaiters = new Set<(e: QmpEvent) => void>();
  private nextId = 1;
  private buf = '';
  private closedError: Error | undefined;

  private constructor(private readonly socket: Socket, private readonly label: string) {}

  /**
   * Connects (retrying while QEMU has not created the socket yet), reads the
   * greeting and negotiates capabilities. `alive` stops the retries early (QEMU exited).
   */
  static async connect(path: string, label: string, timeoutMs = 10_000, alive: () => boolean = () => true): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs;
    let lastErr: unknown;
    for (;;) {
      if (!alive()) throw new Error(`${label}: QEMU exited before its QMP socket ${path} answered (last error: ${String(lastErr)})`);
      try {
        const socket = await new Promise<Socket>((resolve, reject) => {
          const s = connect({ path });
          s.once('connect', () => { s.off('error', reject); resolve(s); });
          s.once('error', reject);
        });
        const client = new QmpClient(socket, label);
        await client.handshake(Math.max(1000, deadline - Date.now()));
        return client;
      } catch (err) {
        lastErr = err;
        if (Date.now() > deadline) throw new Error(`${label}: no QMP on ${path} after ${timeoutMs} ms: ${String(err)}`);
        await sleep(50);
      }
    }
  }

  private handshake(timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.socket.destroy(); reject(new Error(`${this.label}: no QMP greeting after ${timeoutMs} ms`)); }, timeoutMs);
      let greeted = false;
      this.socket.setEncoding('utf8');
      this.socket.on('data', (chunk: string) => {
        this.buf += chunk;
        for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
          const line = this.buf.slice(0, nl).trim();
          this.buf = this.buf.slice(nl + 1);
          if (!line) continue;
          let msg: Record<string, unknown>;
          try { msg = JSON.parse(line) as Record<string, unknown>; } catch { continue; }
          if (!greeted) {
            if (!('QMP' in msg)) continue;
            greeted = true;
            clearTimeout(timer);
            this.execute('qmp_capabilities', undefined, timeoutMs).then(() => resolve(), reject);
            continue;
          }
          this.dispatch(msg);
        }
      });
      const onGone = (err?: Error): void => {
        clearTimeout(timer);
        this.closedError ??= err ?? new Error(`${this.label}: QMP connection closed`);
        for (const p of this.pending.values()) { clearTimeout(p.timer); p.reject(new Error(`${this.label}: QMP ${p.command}: ${this.closedError.message}`)); }
        this.pending.clear();
        if (!greeted) reject(this.closedError);
      };
      this.socket.on('error', (err) => onGone(err));
      this.socket.on('close', () => onGone());
    });
  }

  private dispatch(msg: Record<string, unknown>): void {
    if (typeof msg.event === 'string') {
      const ev = msg as unknown as QmpEvent;
      if (this.events.length >= 1000) this.events.shift();
      this.events.push(ev);
      for (const w of [...this.eventWaiters]) w(ev);
      return;
    }
    const id = typeof msg.id === 'number' ? msg.id : undefined;
    const p = id === undefined ? undefined : this.pending.get(id);
    if (!p) return; // a reply to nothing we are waiting for (timed out): drop it
    this.pending.delete(id!);
    clearTimeout(p.timer);
    const error = msg.error as { class?: string; desc?: string } | undefined;
    if (error) p.reject(new QmpError(p.command, error.class ?? 'GenericError', error.desc ?? JSON.stringify(error)));
    else p.resolve(msg.return);
  }

  /** Runs a QMP command and resolves with its "return" (rejects with QmpError, or on timeout). */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = 10_000): Promise<T> {
    if (this.closedError) return Promise.reject(new Error(`${this.label}: QMP ${command}: ${this.closedError.message}`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${this.label}: QMP ${command} not answered after ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.socket.write(`${JSON.stringify(args === undefined ? { execute: command, id } : { execute: command, arguments: args, id })}\n`);
    });
  }

  /** Resolves with the first event named `name` (also one already received after `since`). */
  waitEvent(name: string, timeoutMs = 10_000, since = 0): Promise<QmpEvent> {
    const seen = this.events.slice(since).find((e) => e.event === name);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const waiter = (e: QmpEvent): void => {
        if (e.event !== name) return;
        clearTimeout(timer);
        this.eventWaiters.delete(waiter);
        resolve(e);
      };
      const timer = setTimeout(() => {
        this.eventWaiters.delete(waiter);
        reject(new Error(`${this.label}: no QMP event ${name} after ${timeoutMs} ms`));
      }, timeoutMs);
      this.eventWaiters.add(waiter);
    });
  }

  get closed(): boolean { return this.closedError !== undefined; }

  close(): void { this.socket.destroy(); }
}

export interface QemuVmOptions {
  /** Names the VM's log and QMP socket, and its errors. */
  name: string;
  /** Where the QMP socket and the log (`qemu-<name>.log`: stderr and stdout) go, e.g. the test dir. */
  dir: string;
  /** nbd://HOST:PORT/EXPORT; or host, port and export separately. */
  nbdUri?: string;
  host?: string;
  port?: number;
  export?: string;
  /** Start as a migration destination waiting on tcp:127.0.0.1:incomingPort. */
  incomingPort?: number;
  memoryMiB?: number;
  /** Bound for QEMU to come up and answer QMP (default 15 s). */
  startTimeoutMs?: number;
}

export interface QemuStatus { status: string; running: boolean }

interface MigrationInfo { status?: string; 'error-desc'?: string; 'total-time'?: number; downtime?: number; ram?: { transferred?: number } }

/** One qemu-system-x86_64 process with an NBD-backed virtio-blk disk and a QMP socket. */
export class QemuVm {
  readonly name: string;
  readonly logPath: string;
  readonly args: string[];
  private qmp!: QmpClient;
  private stdout = '';
  /** The end of QEMU's stderr, for error messages. */
  private stderrTail = '';
  private ioSeq = 0;
  private spawnError: Error | undefined;
  private readonly exited: Promise<void>;
  private readonly killOnExit = (): void => { try { this.child.kill('SIGKILL'); } catch { /* gone */ } };

  private constructor(private readonly child: ChildProcess, name: string, args: string[], logPath: string, private readonly log: WriteStream) {
    this.name = name;
    this.args = args;
    this.logPath = logPath;
    this.exited = new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve();
      child.once('exit', () => resolve());
      child.once('error', (err) => { this.spawnError = err; resolve(); });
    });
  }

  get pid(): number | undefined { return this.child.pid; }
  get running(): boolean { return this.spawnError === undefined && this.child.exitCode === null && this.child.signalCode === null; }

  /** The qemu-system-x86_64 arguments for these options (the QMP socket path given). */
  static commandLine(opts: QemuVmOptions, qmpSocket: string): string[] {
    let host = opts.host;
    let port = opts.port;
    let exportName = opts.export ?? '';
    if (opts.nbdUri) {
      const u = new URL(opts.nbdUri);
      if (u.protocol !== 'nbd:') throw new Error(`${opts.name}: ${opts.nbdUri} is not an nbd:// URI`);
      host = u.hostname;
      port = Number(u.port || 10809);
      exportName = decodeURIComponent(u.pathname.replace(/^\//, ''));
    }
    if (!host || !port) throw new Error(`${opts.name}: give nbdUri, or host and port`);
    if (!/^127\./.test(host)) throw new Error(`${opts.name}: NBD server ${host} is not on loopback`);
    // -blockdev keyval strings escape ',' by doubling it.
    const exp = exportName.replace(/,/g, ',,');
    const args = [
      '-accel', 'tcg', '-nodefaults', '-no-user-config', '-display', 'none', '-machine', 'pc', '-m', String(opts.memoryMiB ?? 64),
      '-qmp', `unix:${qmpSocket},server=on,wait=off`,
      '-blockdev', `driver=nbd,node-name=${DISK_NODE},server.type=inet,server.host=${host},server.port=${port},export=${exp},cache.direct=on`,
      '-device', `virtio-blk-pci,drive=${DISK_NODE},id=${DISK_DEVICE},share-rw=on`,
    ];
    if (opts.incomingPort !== undefined) args.push('-incoming', `tcp:127.0.0.1:${opts.incomingPort}`);
    return args;
  }

  /** Spawns QEMU and connects to its QMP socket; kills it if it does not come up in time. */
  static async start(opts: QemuVmOptions): Promise<QemuVm> {
    const bin = findQemu();
    if (!bin) throw new Error(`${QEMU} is not installed (Debian: apt-get install qemu-system-x86; deploy/install-deps.sh does it)`);
    const sock = join(opts.dir, `qemu-${opts.name}.qmp`);
    if (sock.length > 100) throw new Error(`${opts.name}: QMP socket path ${sock} is too long for a unix socket`);
    rmSync(sock, { force: true });
    const args = QemuVm.commandLine(opts, sock);
    const logPath = join(opts.dir, `qemu-${opts.name}.log`);
    const log = createWriteStream(logPath, { flags: 'a' });
    log.write(`# ${bin} ${args.join(' ')}\n`);
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const vm = new QemuVm(child, opts.name, args, logPath, log);
    process.once('exit', vm.killOnExit);
    child.once('error', (err) => log.write(`# spawn error: ${String(err)}\n`));
    log.on('error', () => undefined); // a log write must never fail the test
    // 'close', not 'exit': stdout and stderr may still deliver data after the exit.
    child.once('close', (code, signal) => { log.write(`# exited: code ${code}, signal ${signal}\n`); log.end(); });
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (d: string) => {
      vm.stderrTail = (vm.stderrTail + d).slice(-2000);
      log.write(d);
    });
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (d: string) => {
      vm.stdout += d;
      log.write(d);
    });
    try {
      vm.qmp = await QmpClient.connect(sock, `qemu ${opts.name}`, opts.startTimeoutMs ?? 15_000, () => vm.running);
    } catch (err) {
      await vm.kill();
      const stderr = vm.stderrTail.trim();
      throw new Error(`${String(err instanceof Error ? err.message : err)}${stderr ? `\nQEMU stderr: ${stderr}` : ''}\nsee ${logPath}`);
    }
    return vm;
  }

  /** A raw QMP command. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<T> {
    return this.qmp.execute<T>(command, args, timeoutMs);
  }

  /** QMP events received so far. */
  get events(): readonly QmpEvent[] { return this.qmp.events; }

  /** An HMP command line through QMP `human-monitor-command`; resolves with what the monitor printed. */
  hmp(commandLine: string, timeoutMs = 15_000): Promise<string> {
    return this.qmp.execute<string>('human-monitor-command', { 'command-line': commandLine }, timeoutMs);
  }

  /**
   * A qemu-io command (e.g. `write -P 0x5a 0 64k`, `read -P 0x5a 0 64k`, `flush`) on the
   * disk's block node, through HMP `qemu-io disk0 "CMD"` (a node name: no -d; `-d` wants a
   * qdev id with a BlockBackend, here `vd0/virtio-backend`, not `vd0`). Resolves with its output.
   */
  async qemuIo(cmd: string, timeoutMs = 15_000): Promise<string> {
    if (/["\\\n]/.test(cmd)) throw new Error(`qemu-io command must not contain quotes, backslashes or newlines: ${cmd}`);
    const n = ++this.ioSeq;
    const begin = `vsky-qemu-io-begin-${process.pid}-${n}`;
    const end = `vsky-qemu-io-end-${process.pid}-${n}`;
    const deadline = Date.now() + timeoutMs;
    const left = (): number => Math.max(1, deadline - Date.now());
    const mark = await this.hmp(`qemu-io ${DISK_NODE} "help ${begin}"`, left());
    const reply = await this.hmp(`qemu-io ${DISK_NODE} "${cmd}"`, left());
    if (mark.includes(begin)) return reply; // this QEMU answers qemu-io on the monitor
    await this.hmp(`qemu-io ${DISK_NODE} "help ${end}"`, left());
    const beginLine = `command ${begin} not found\n`;
    const endLine = `command ${end} not found\n`;
    while (!this.stdout.includes(endLine)) {
      if (Date.now() > deadline) throw new Error(`${this.name}: qemu-io "${cmd}": no output on QEMU's stdout after ${timeoutMs} ms; see ${this.logPath}`);
      if (!this.running) throw new Error(`${this.name}: QEMU exited during qemu-io "${cmd}"; see ${this.logPath}`);
      await sleep(10);
    }
    const from = this.stdout.indexOf(beginLine);
    const to = this.stdout.indexOf(endLine);
    const out = from >= 0 && from < to ? this.stdout.slice(from + beginLine.length, to) : this.stdout.slice(0, to);
    this.stdout = this.stdout.slice(to + endLine.length);
    return reply + out;
  }

  /**
   * As qemuIo, and throws (with the output) unless it succeeded: no "failed"/"error" line
   * (e.g. "Pattern verification failed", "read failed: Input/output error"), and for
   * read/write, the "read|wrote N/N bytes" line.
   */
  async qemuIoOk(cmd: string, timeoutMs?: number): Promise<string> {
    const out = await this.qemuIo(cmd, timeoutMs);
    const verb = cmd.trim().split(/\s+/)[0];
    const done = verb === 'read' ? /^read (\d+)\/\1 bytes at offset \d+/m : verb === 'write' ? /^wrote (\d+)\/\1 bytes at offset \d+/m : undefined;
    if (/failed|error/i.test(out) || (done && !done.test(out))) throw new Error(`${this.name}: qemu-io "${cmd}" did not succeed:\n${out}`);
    return out;
  }

  /** QMP query-status: "running", "inmigrate", "postmigrate", "paused", ... */
  status(): Promise<QemuStatus> {
    return this.qmp.execute<QemuStatus>('query-status');
  }

  /** Polls query-status until it is `status` (bounded). */
  async waitStatus(status: string, timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = await this.status();
      if (s.status === status) return;
      if (Date.now() > deadline) throw new Error(`${this.name}: VM status still "${s.status}" after ${timeoutMs} ms, waiting for "${status}"`);
      await sleep(50);
    }
  }

  /** Starts migrating to `uri` (e.g. tcp:127.0.0.1:PORT, the destination's -incoming). */
  async migrate(uri: string): Promise<void> {
    if (!/^tcp:127\.\d+\.\d+\.\d+:\d+$/.test(uri)) throw new Error(`${this.name}: migrate only to a loopback tcp: URI, got ${uri}`);
    await this.qmp.execute('migrate', { uri });
  }

  /** Polls query-migrate until "completed"; throws with the status (and error) on failure or timeout. */
  async waitMigration(timeoutMs = 30_000): Promise<MigrationInfo> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const info = await this.qmp.execute<MigrationInfo>('query-migrate');
      if (info.status === 'completed') return info;
      if (info.status === 'failed' || info.status === 'cancelled' || info.status === undefined) {
        throw new Error(`${this.name}: migration ${info.status ?? 'not started'}${info['error-desc'] ? `: ${info['error-desc']}` : ''}; see ${this.logPath}`);
      }
      if (Date.now() > deadline) {
        await this.qmp.execute('migrate_cancel').catch(() => undefined);
        throw new Error(`${this.name}: migration still "${info.status}" after ${timeoutMs} ms (cancelled); see ${this.logPath}`);
      }
      await sleep(50);
    }
  }

  /** QMP quit, then SIGKILL by pid if QEMU has not exited within graceMs. */
  async stop(graceMs = 5000): Promise<void> {
    if (this.running && this.qmp && !this.qmp.closed) {
      // QEMU may close the socket before (or instead of) answering quit.
      await this.qmp.execute('quit', undefined, graceMs).catch(() => undefined);
    }
    await Promise.race([this.exited, sleep(graceMs)]);
    await this.kill();
  }

  /** SIGKILL by pid and wait for the exit. */
  async kill(): Promise<void> {
    if (this.running) {
      this.child.kill('SIGKILL');
      await Promise.race([this.exited, sleep(5000)]);
    }
    this.qmp?.close();
    process.off('exit', this.killOnExit);
  }
}
