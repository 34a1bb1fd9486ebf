import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { Cdb, IscsiSession } from '../harness/iscsi-session.js';
import { NbdClient } from '../harness/nbd-client.js';
import { tryRun } from '../harness/tools.js';
import { vsky } from '../harness/vsky.js';

// `vsky volume attach SNAPSHOT` exports it read-only (docs/snapshots.md):
// NBD_FLAG_READ_ONLY (nbdinfo), reads of the snapshot's data (qemu-io), writes
// refused with EPERM even from a client that ignores the flag; iSCSI: WP in
// MODE SENSE and DATA PROTECT / WRITE PROTECTED on a WRITE. The origin's data
// after the snapshot is not in it; detaching it leaves it as it was.

const INITIATOR = 'iqn.2026-12.test.vsky:snapro';

describe('read-only attach of a snapshot', () => {
  let c: LocalCluster;
  const m = () => c.managerAddress;
  const qemuIo = (uri: string, cmd: string, ro = false) => tryRun('qemu-io', ['-f', 'raw', ...(ro ? ['-r'] : []), '-c', cmd, uri], 60_000);
  const urls = (stdout: unknown) => {
    const lines = String(stdout).trim().split('\n');
    return { nbd: lines.find((l) => l.startsWith('nbd://'))!, iscsi: lines.find((l) => l.startsWith('iscsi://')) };
  };

  beforeAll(async () => {
    c = await startTestCluster();
  }, 120_000);
  afterAll(async () => {
    await destroyTestCluster(c);
  });

  it('NBD: read-only flag, reads, writes refused; iSCSI: write protect', async () => {
    expect((await vsky(['volume', 'create', 'base', '--size', '64M', '--replicas', '2'], m())).exitCode).toBe(0);
    const a = await vsky(['volume', 'attach', 'base'], m());
    expect(a.exitCode, String(a.stderr)).toBe(0);
    const base = urls(a.stdout).nbd;
    expect((await qemuIo(base, 'write -P 0x3c 0 1M')).exitCode).toBe(0);
    expect((await vsky(['snapshot', 'create', 'base', 's1'], m())).exitCode).toBe(0);
    expect((await qemuIo(base, 'write -P 0x4d 0 4096')).exitCode).toBe(0); // after the snapshot: not in it

    const s = await vsky(['volume', 'attach', 's1'], m());
    expect(s.exitCode, String(s.stderr)).toBe(0);
    const { nbd, iscsi } = urls(s.stdout);
    expect(nbd).toMatch(/^nbd:\/\/.*\/s1$/);

    const info = await tryRun('nbdinfo', ['--json', nbd], 30_000);
    expect(info.exitCode, String(info.stderr)).toBe(0);
    const exp = JSON.parse(String(info.stdout)).exports[0];
    expect(exp.is_read_only).toBe(true);
    const baseInfo = JSON.parse(String((await tryRun('nbdinfo', ['--json', base], 30_000)).stdout)).exports[0];
    expect(baseInfo.is_read_only).toBe(false); // the flag comes from the snapshot rule, not from every export

    const read = await qemuIo(nbd, 'read -P 0x3c 0 1M', true);
    expect(read.exitCode, String(read.stdout) + String(read.stderr)).toBe(0);
    expect(String(read.stdout)).not.toMatch(/verification failed/);
    const w = await qemuIo(nbd, 'write -P 0x11 0 4096');
    expect(w.exitCode).not.toBe(0); // qemu sees NBD_FLAG_READ_ONLY and will not open it for writing
    expect(String(w.stdout) + String(w.stderr)).toMatch(/permission denied|read-only|not permitted/i);
    // A client that ignores the flag: the server refuses with EPERM (1) and nothing changes.
    const raw = await NbdClient.connect(nbd);
    await expect(raw.write(0, Buffer.alloc(4096, 0x22))).rejects.toThrow(/NBD error 1\b/);
    expect((await raw.read(0, 4096)).every((b) => b === 0x3c)).toBe(true);
    raw.close();

    expect(iscsi).toBeDefined();
    const url = new URL(iscsi!);
    const session = await IscsiSession.open(url.host, url.pathname.split('/')[1]!, INITIATOR);
    try {
      await session.command(Cdb.testUnitReady()); // the power-on unit attention
      const sense = await session.command(Buffer.from([0x1a, 0, 0x3f, 0, 0xff, 0]), { readLength: 255 });
      expect(sense.status).toBe(0);
      expect(sense.data[2]! & 0x80).toBe(0x80); // WP
      const write10 = Buffer.from([0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
      const wr = await session.command(write10, { data: Buffer.alloc(512, 0x33) });
      expect(wr.status).toBe(2);
      expect(wr.sense).toEqual([0x07, 0x27, 0x00]); // DATA PROTECT, WRITE PROTECTED
      const rd = await session.command(Cdb.read10(0, 1), { readLength: 512 });
      expect(rd.status).toBe(0);
      expect(rd.data.every((b) => b === 0x3c)).toBe(true);
    } finally {
      await session.logout().catch(() => undefined);
    }

    // Detach; the snapshot is as it was (through a clone), and the origin has its later write.
    expect((await vsky(['volume', 'detach', 's1'], m())).exitCode).toBe(0);
    expect((await vsky(['volume', 'clone', 's1', 'c1'], m())).exitCode).toBe(0);
    const cl = urls((await vsky(['volume', 'attach', 'c1'], m())).stdout).nbd;
    const cr = await qemuIo(cl, 'read -P 0x3c 0 1M');
    expect(String(cr.stdout)).not.toMatch(/verification failed/);
    expect(cr.exitCode).toBe(0);
    expect(String((await qemuIo(base, 'read -P 0x4d 0 4096')).stdout)).not.toMatch(/verification failed/);
  }, 90_000);
});
