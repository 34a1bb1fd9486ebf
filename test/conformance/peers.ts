import { spawn, type ChildProcess } from 'node:child_process';
import { truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { freePort } from '../harness/ports.js';

// Peers measured beside us: tgt (the C iSCSI target) and nbdkit (the C NBD
// server), each on a local sparse file, on loopback, stopped with their runner.

export interface Peer { url: string; stop(): Promise<void> }

async function waitFor(cond: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`${what} did not come up within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function stopChild(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
    setTimeout(() => child.kill('SIGKILL'), 3000).unref();
  });
}

/** tgtd on 127.0.0.1:<free port> exporting `file` as LUN 1 of one target (LUN 0 is tgt's controller). */
export async function startTgt(dir: string, size: number): Promise<Peer> {
  const file = join(dir, 'tgt.img');
  writeFileSync(file, '');
  truncateSync(file, size);
  const port = await freePort();
  const iqn = 'iqn.2026-11.org.example:tgt-peer';
  // tgtd's control socket is per "control port"; pick one unlikely to clash with a system tgtd.
  const cport = String(1000 + (port % 20000));
  const child = spawn('tgtd', ['-f', '-C', cport, '--iscsi', `portal=127.0.0.1:${port}`], { stdio: 'ignore' });
  const adm = (args: string[]): Promise<unknown> => execa('tgtadm', ['-C', cport, '--lld', 'iscsi', ...args], { timeout: 10_000 });
  await waitFor(async () => (await adm(['--op', 'show', '--mode', 'target']).then(() => true, () => false)), 10_000, 'tgtd');
  await adm(['--op', 'new', '--mode', 'target', '--tid', '1', '-T', iqn]);
  await adm(['--op', 'new', '--mode', 'logicalunit', '--tid', '1', '--lun', '1', '-b', file]);
  await adm(['--op', 'bind', '--mode', 'target', '--tid', '1', '-I', 'ALL']);
  return { url: `iscsi://127.0.0.1:${port}/${iqn}/1`, stop: () => stopChild(child) };
}

/** nbdkit's file plugin on 127.0.0.1:<free port>. */
export async function startNbdkit(dir: string, size: number): Promise<Peer> {
  const file = join(dir, 'nbdkit.img');
  writeFileSync(file, '');
  truncateSync(file, size);
  const port = await freePort();
  const child = spawn('nbdkit', ['--exit-with-parent', '-f', '-i', '127.0.0.1', '-p', String(port), 'file', `file=${file}`], { stdio: 'ignore' });
  const url = `nbd://127.0.0.1:${port}/`;
  await waitFor(async () => (await execa('nbdinfo', ['--size', url], { reject: false })).exitCode === 0, 10_000, 'nbdkit');
  return { url, stop: () => stopChild(child) };
}
