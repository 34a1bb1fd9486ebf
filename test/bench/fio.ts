import { execa } from 'execa';

// One client for every target: fio's nbd engine (libnbd). Each job returns
// bandwidth, IOPS and completion-latency percentiles from fio's JSON output.

export interface FioJob {
  name: string;
  rw: 'write' | 'read' | 'randread' | 'randwrite';
  bs: string;
  iodepth: number;
  seconds: number;
}

export interface FioResult { mibps: number; iops: number; p50us: number; p99us: number }

export const STANDARD_JOBS: FioJob[] = [
  { name: '64K seq write QD16', rw: 'write', bs: '64k', iodepth: 16, seconds: 6 },
  { name: '64K seq read QD16', rw: 'read', bs: '64k', iodepth: 16, seconds: 6 },
  { name: '4K rand read QD16', rw: 'randread', bs: '4k', iodepth: 16, seconds: 6 },
  { name: '4K rand write QD16', rw: 'randwrite', bs: '4k', iodepth: 16, seconds: 6 },
  { name: '4K rand read QD1', rw: 'randread', bs: '4k', iodepth: 1, seconds: 5 },
  { name: '4K rand write QD1', rw: 'randwrite', bs: '4k', iodepth: 1, seconds: 5 },
];

interface FioJson {
  jobs: { read: FioSide; write: FioSide }[];
}
interface FioSide { bw_bytes: number; iops: number; clat_ns?: { percentile?: Record<string, number> } }

export async function runFio(uri: string, job: FioJob): Promise<FioResult> {
  const args = [
    '--name=bench', '--ioengine=nbd', `--uri=${uri}`, `--rw=${job.rw}`, `--bs=${job.bs}`,
    `--iodepth=${job.iodepth}`, `--runtime=${job.seconds}`, '--time_based', '--numjobs=1',
    '--output-format=json', '--percentile_list=50:99', '--randrepeat=0',
  ];
  const r = await execa('fio', args, { timeout: (job.seconds + 60) * 1000 });
  const json = JSON.parse(String(r.stdout).slice(String(r.stdout).indexOf('{'))) as FioJson;
  const side = job.rw.includes('read') ? json.jobs[0]!.read : json.jobs[0]!.write;
  const pct = side.clat_ns?.percentile ?? {};
  return {
    mibps: side.bw_bytes / (1024 * 1024),
    iops: side.iops,
    p50us: (pct['50.000000'] ?? 0) / 1000,
    p99us: (pct['99.000000'] ?? 0) / 1000,
  };
}

/** Sequential write over the whole device so reads hit written data on every target. */
export async function fillDevice(uri: string): Promise<void> {
  await execa('fio', ['--name=fill', '--ioengine=nbd', `--uri=${uri}`, '--rw=write', '--bs=1m', '--iodepth=8', '--output-format=terse'], { timeout: 600_000 });
}
