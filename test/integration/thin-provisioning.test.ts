import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { GiB, MiB } from '../../shared/constants.js';
import { destroyTestCluster, startTestCluster, chunksOnNodes } from '../harness/cluster.js';
import { IscsiSession } from '../harness/iscsi-session.js';
import { NbdClient, NbdError } from '../harness/nbd-client.js';
import { randomFile, run, tryRun } from '../harness/tools.js';
import { vsky, vskyJson } from '../harness/vsky.js';

// Thin provisioning (docs/thin-provisioning.md) with real processes and
// clients, on a cluster of the default local size (3 servers x 2 disks x
// 2 GiB sparse files, 256 MiB chunks: 42 chunks, 21 segments of a 2-replica
// volume): a 20 GiB thin volume (80 segments, far more than the pool),
// qemu-img convert into it, the allocation that follows the writes, the pool
// filled until a first write fails with ENOSPC through NBD (qemu-io and a raw
// client) and iSCSI (SPACE ALLOCATION FAILED WRITE PROTECT), nothing written
// harmed, a discarded segment freed and writes resuming; the manager
// SIGSTOPped: writes to allocated segments go on, a first write fails after
// --segment-allocate-timeout, and works after SIGCONT.

const SEG = 256 * MiB;
const SIZE = 20 * GiB;
const ALLOCATE_TIMEOUT_MS = 3000;
const INITIATOR = 'iqn.2026-12.test:thin';

interface VolumeInfo { name: string; thin: boolean; allocatedSegments: number; allocatedBytes: number; segmentCount: number; writtenBytes: number }

/** Bytes the storage nodes' sparse disk files really occupy. */
function diskFileBytes(dir: string): number {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.img'))
    .reduce((sum, f) => sum + statSync(join(dir, f)).blocks * 512, 0);
}
interface Status { provisionedBytes: number; allocatedBytes: number; overcommit: number; poolUsedFraction: number; poolLevel: string; capacityBytes: number }

function write10(lba: number, data: Buffer): Buffer {
  const c = Buffer.alloc(10);
  c[0] = 0x2a;
  c.writeUInt32BE(lba, 2);
  c.writeUInt16BE(data.length / 512, 7);
  return c;
}

describe('thin volumes: allocation at first write, a full pool, discards that free space', () => {
  let c: LocalCluster;
  let work: string;
  let nbd: string;
  let iscsi: string;
  const m = () => c.managerAddress;
  const info = async (): Promise<VolumeInfo> => (await vskyJson<VolumeInfo[]>(['volume', 'list', '--json'], m())).find((v) => v.name === 'thin1')!;
  const qemuWrite = (offset: number, pattern: number, len = '64k') => tryRun('qemu-io', ['-f', 'raw', '-c', `write -P ${pattern} ${offset} ${len}`, nbd], 60_000);
  const qemuRead = (offset: number, pattern: number, len = '64k') => tryRun('qemu-io', ['-f', 'raw', '-c', `read -P ${pattern} ${offset} ${len}`, nbd], 60_000);

  beforeAll(async () => {
    c = await startTestCluster({ diskSize: 2 * GiB, chunkSize: SEG, headArgs: ['--segment-allocate-timeout', String(ALLOCATE_TIMEOUT_MS)] });
    work = mkdtempSync(join(tmpdir(), 'vsky-thin-'));
  }, 120_000);
  afterAll(async () => {
    await destroyTestCluster(c);
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('a 20 GiB thin volume on a 12 GiB pool: created with no chunk, thick refused; status shows the overcommit', async () => {
    const thick = await vsky(['volume', 'create', 'big', '--size', '20G', '--replicas', '2', '--thick'], m());
    expect(thick.exitCode).not.toBe(0);
    expect(String(thick.stderr)).toMatch(/not enough free space/);
    const created = await vsky(['volume', 'create', 'thin1', '--size', '20G', '--replicas', '2'], m());
    expect(created.exitCode, String(created.stderr)).toBe(0);
    expect(String(created.stdout)).toMatch(/created thin volume thin1/);
    expect(await info()).toMatchObject({ thin: true, allocatedSegments: 0, allocatedBytes: 0, segmentCount: 80 });
    expect(await chunksOnNodes(c, 'thin1')).toHaveLength(0);
    const s = await vskyJson<Status>(['status', '--json'], m());
    expect(s.provisionedBytes).toBe(SIZE * 2);
    expect(s.overcommit).toBeGreaterThan(3); // 40 GiB promised on ~10.5 GiB of chunks
    const text = String((await vsky(['status'], m())).stdout);
    expect(text).toMatch(/overcommit: \d+\.\d\dx/);
    const urls = await vsky(['volume', 'attach', 'thin1'], m());
    expect(urls.exitCode, String(urls.stderr)).toBe(0);
    [nbd, iscsi] = String(urls.stdout).trim().split('\n') as [string, string];
    expect(iscsi).toMatch(/^iscsi:\/\//);
  });

  it('reads of unallocated segments are zeros; qemu-img convert of 200 MiB reads back identical and allocates one segment', async () => {
    const zeros = await qemuRead(10 * GiB, 0, '1M');
    expect(zeros.exitCode, String(zeros.stdout) + String(zeros.stderr)).toBe(0);
    expect((await info()).allocatedSegments).toBe(0); // a read allocates nothing
    const src = join(work, 'src.img');
    randomFile(src, 200 * MiB);
    await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, nbd], 180_000);
    // Read back: nbdcopy of the first 200 MiB to a file, compared with qemu-img.
    const back = join(work, 'back.img');
    await run('qemu-img', ['create', '-f', 'raw', back, String(200 * MiB)]);
    const reader = await NbdClient.connect(nbd);
    try {
      const want = readFileSync(src);
      for (let off = 0; off < 200 * MiB; off += 8 * MiB) {
        expect((await reader.read(off, 8 * MiB)).equals(want.subarray(off, off + 8 * MiB)), `offset ${off}`).toBe(true);
      }
      expect((await reader.read(200 * MiB, MiB)).equals(Buffer.alloc(MiB))).toBe(true); // past the image: zeros
    } finally {
      reader.close();
    }
    const cmp = await tryRun('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, `json:{"driver":"raw","size":${200 * MiB},"file":{"driver":"nbd","server":{"type":"inet","host":"${new URL(nbd).hostname}","port":"${new URL(nbd).port}"},"export":"thin1"}}`], 120_000);
    expect(cmp.exitCode, String(cmp.stdout) + String(cmp.stderr)).toBe(0);
    const v = await info();
    // 200 MiB written: one 256 MiB segment (within a segment of what was written).
    expect(v.allocatedSegments).toBe(1);
    expect(v.allocatedBytes - 200 * MiB).toBeLessThan(SEG);
    const chunks = await chunksOnNodes(c, 'thin1');
    expect(chunks).toHaveLength(2);
    expect(chunks.map((x) => x.slot).sort()).toEqual([0, 1]);
    expect(chunks.every((x) => x.thin && x.segment === 0)).toBe(true); // the record says thin (a rebuild from storage reads it)
    const show = await vskyJson<{ map: { segments: { index: number; replicas: { serverId: string }[] }[] } }>(['volume', 'show', 'thin1', '--json'], m());
    const seg0 = show.map.segments.find((x) => x.index === 0)!;
    expect(new Set(seg0.replicas.map((r) => r.serverId)).size).toBe(2); // distinct servers, as a thick placement
    expect(show.map.segments.filter((x) => x.replicas.length > 0)).toHaveLength(1);
  }, 400_000);

  it('a partial discard gives the space back: the disk files shrink by it on every replica, written bytes drop, the data around it stays', async () => {
    const before = diskFileBytes(c.opts.dir);
    const written = (await info()).writtenBytes;
    const d = await tryRun('qemu-io', ['-f', 'raw', '-c', `discard ${128 * MiB} ${64 * MiB}`, nbd], 60_000);
    expect(d.exitCode, String(d.stdout) + String(d.stderr)).toBe(0);
    const v = await info();
    expect(v.allocatedSegments).toBe(1); // a partial discard keeps the segment's chunks
    expect(written - v.writtenBytes).toBe(64 * MiB);
    // Two replicas each gave back 64 MiB (the manager's own files change a little meanwhile).
    expect(before - diskFileBytes(c.opts.dir)).toBeGreaterThanOrEqual(2 * 64 * MiB - 4 * MiB);
    const src = readFileSync(join(work, 'src.img'));
    const reader = await NbdClient.connect(nbd);
    try {
      const want = Buffer.from(src.subarray(127 * MiB, 193 * MiB));
      want.fill(0, MiB, 65 * MiB);
      for (let at = 0; at < want.length; at += 8 * MiB) {
        const n = Math.min(8 * MiB, want.length - at);
        expect((await reader.read(127 * MiB + at, n)).equals(want.subarray(at, at + n)), `offset ${127 * MiB + at}`).toBe(true);
      }
      await reader.write(150 * MiB, Buffer.alloc(4096, 0x5a)); // a first write into the hole
      expect((await reader.read(150 * MiB - 4096, 3 * 4096)).equals(Buffer.concat([Buffer.alloc(4096), Buffer.alloc(4096, 0x5a), Buffer.alloc(4096)]))).toBe(true);
    } finally {
      reader.close();
    }
  }, 120_000);

  it('manager SIGSTOPped: writes to allocated segments go on; a first write fails with ENOSPC after the timeout; SIGCONT and it works', async () => {
    const pid = c.manager.pid!;
    process.kill(pid, 'SIGSTOP');
    try {
      const onAllocated = await qemuWrite(MiB, 0x11);
      expect(onAllocated.exitCode, String(onAllocated.stderr) + String(onAllocated.stdout)).toBe(0);
      expect(String(onAllocated.stdout)).not.toMatch(/failed/);
      const started = Date.now();
      const first = await qemuWrite(3 * SEG, 0x22);
      const took = Date.now() - started;
      expect(String(first.stdout) + String(first.stderr)).toMatch(/No space left on device/);
      expect(took).toBeGreaterThanOrEqual(ALLOCATE_TIMEOUT_MS - 200);
      expect(took).toBeLessThan(ALLOCATE_TIMEOUT_MS + 15_000);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    expect((await qemuRead(3 * SEG, 0)).exitCode).toBe(0); // the failed write changed nothing
    const again = await qemuWrite(3 * SEG, 0x22);
    expect(String(again.stdout) + String(again.stderr)).not.toMatch(/failed/);
    expect((await qemuRead(3 * SEG, 0x22)).exitCode).toBe(0);
    expect((await qemuRead(MiB, 0x11)).exitCode).toBe(0);
    expect((await info()).allocatedSegments).toBe(2);
  }, 120_000);

  it('fill the pool: the next first write fails with ENOSPC through NBD and iSCSI, nothing written is harmed; a discarded segment frees space and writes resume', async () => {
    const client = await NbdClient.connect(nbd);
    const mark = (seg: number) => Buffer.alloc(4096, seg & 0xff);
    let seg = 4;
    let full: NbdError | undefined;
    const written: number[] = [0, 3];
    try {
      for (; seg < 80; seg++) {
        try {
          await client.write(seg * SEG, mark(seg));
          written.push(seg);
        } catch (err) {
          full = err as NbdError;
          break;
        }
      }
    } finally {
      client.close();
    }
    // Premise: the pool really filled (21 segments of 2 chunks fit in 42 chunks).
    expect(full, 'the pool never filled').toBeInstanceOf(NbdError);
    expect(full!.errno).toBe(28); // NBD_ENOSPC
    expect(written.length).toBeGreaterThanOrEqual(18);
    const s = await vskyJson<Status>(['status', '--json'], m());
    expect(s.poolLevel).toBe('critical');
    expect(String((await vsky(['status'], m())).stdout)).toMatch(/CRITICAL/);
    const events = String((await vsky(['events', '--kind', 'pool.threshold'], m())).stdout) + String((await vsky(['events', '--kind', 'segment.allocate_failed'], m())).stdout);
    expect(events).toMatch(/critical/);
    expect(events).toMatch(/pool full/);

    // qemu-io (a real NBD client): ENOSPC, at once.
    const started = Date.now();
    const q = await qemuWrite(seg * SEG, 0x33);
    expect(String(q.stdout) + String(q.stderr)).toMatch(/No space left on device/);
    expect(Date.now() - started).toBeLessThan(ALLOCATE_TIMEOUT_MS);
    // iSCSI: DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT (27/07), which QEMU maps to ENOSPC.
    const portal = new URL(iscsi).host;
    const iqn = new URL(iscsi).pathname.split('/')[1]!;
    const session = await IscsiSession.open(portal, iqn, INITIATOR);
    try {
      await session.command(Buffer.alloc(6)); // consume the power-on unit attention
      const w = await session.command(write10((seg * SEG) / 512, Buffer.alloc(4096, 0x44)), { data: Buffer.alloc(4096, 0x44) });
      expect(w.status).toBe(2);
      expect(w.sense).toEqual([0x07, 0x27, 0x07]);
      const ok = await session.command(write10((3 * SEG + 2 * MiB) / 512, Buffer.alloc(4096, 0x55)), { data: Buffer.alloc(4096, 0x55) });
      expect(ok.status, `sense ${String(ok.sense)}`).toBe(0); // an allocated segment still takes writes
      // GET LBA STATUS: the unallocated segment is DEALLOCATED up to the next allocated one; an allocated one MAPPED.
      const lbaStatus = async (lba: number) => {
        const cdb = Buffer.alloc(16);
        cdb[0] = 0x9e; cdb[1] = 0x12;
        cdb.writeBigUInt64BE(BigInt(lba), 2);
        cdb.writeUInt32BE(24, 10);
        const r = await session.command(cdb, { readLength: 24 });
        expect(r.status, `sense ${String(r.sense)}`).toBe(0);
        return { blocks: r.data.readUInt32BE(16), status: r.data[20]! & 0x0f };
      };
      expect(await lbaStatus((seg * SEG) / 512)).toEqual({ blocks: (80 - seg) * (SEG / 512), status: 1 });
      expect((await lbaStatus(0)).status).toBe(0);
    } finally {
      await session.logout().catch(() => undefined);
    }
    const viaQemuIscsi = await tryRun('qemu-io', ['-f', 'raw', '-c', `write -P 0x66 ${seg * SEG} 4k`, iscsi], 60_000);
    expect(String(viaQemuIscsi.stdout) + String(viaQemuIscsi.stderr)).toMatch(/No space left on device/);

    // Nothing already written was harmed.
    const src = readFileSync(join(work, 'src.img'));
    const check = await NbdClient.connect(nbd);
    try {
      expect((await check.read(0, 4 * MiB)).subarray(MiB, MiB + 65536).equals(Buffer.alloc(65536, 0x11))).toBe(true);
      expect((await check.read(100 * MiB, MiB)).equals(src.subarray(100 * MiB, 101 * MiB))).toBe(true);
      for (const x of written.filter((n) => n >= 4)) expect((await check.read(x * SEG, 4096)).equals(mark(x)), `segment ${x}`).toBe(true);
      expect((await check.read(seg * SEG, 4096)).equals(Buffer.alloc(4096))).toBe(true); // the refused writes left zeros
    } finally {
      check.close();
    }

    // Discard a whole segment: its chunks go back to the pool, it reads zeros, first writes work again.
    const before = (await info()).allocatedSegments;
    const victim = written[written.length - 1]!;
    const d = await tryRun('qemu-io', ['-f', 'raw', '-c', `discard ${victim * SEG} ${SEG}`, nbd], 60_000);
    expect(d.exitCode, String(d.stdout) + String(d.stderr)).toBe(0);
    expect((await info()).allocatedSegments).toBe(before - 1);
    expect((await qemuRead(victim * SEG, 0, '4k')).exitCode).toBe(0);
    const deadline = Date.now() + 20_000;
    let resumed = await qemuWrite(seg * SEG, 0x77, '4k');
    while (/No space left/.test(String(resumed.stdout)) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 500)); // the nodes scrub and free the chunks first (rule 7)
      resumed = await qemuWrite(seg * SEG, 0x77, '4k');
    }
    expect(String(resumed.stdout) + String(resumed.stderr)).not.toMatch(/failed/);
    expect((await qemuRead(seg * SEG, 0x77, '4k')).exitCode).toBe(0);
    expect((await info()).allocatedSegments).toBe(before);
  }, 400_000);
});
