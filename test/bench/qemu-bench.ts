import { execa } from 'execa';

// `qemu-img bench` as the common client for iSCSI targets (Debian's fio has no
// libiscsi engine): sequential I/O at queue depth 16, O_DIRECT-style (-t none).

export interface QemuJob { name: string; size: number; write: boolean; count: number }

export const ISCSI_JOBS: QemuJob[] = [
  { name: '64K seq write QD16', size: 65536, write: true, count: 16384 },
  { name: '64K seq read QD16', size: 65536, write: false, count: 16384 },
  { name: '4K read QD16', size: 4096, write: false, count: 100_000 },
  { name: '4K write QD16', size: 4096, write: true, count: 50_000 },
];

export interface QemuResult { mibps: number; iops: number }

export async function runQemuBench(url: string, job: QemuJob): Promise<QemuResult> {
  const args = ['bench', '-f', 'raw', '-t', 'none', '-d', '16', '-c', String(job.count), '-s', String(job.size), ...(job.write ? ['-w'] : []), url];
  const r = await execa('qemu-img', args, { timeout: 300_000 });
  const m = /Run completed in ([\d.]+) seconds/.exec(String(r.stdout));
  if (!m) throw new Error(`qemu-img bench printed no timing: ${String(r.stdout)}`);
  const seconds = Number(m[1]);
  return { mibps: (job.count * job.size) / seconds / (1024 * 1024), iops: job.count / seconds };
}
