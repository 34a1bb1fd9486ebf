import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { NbdClient } from '../harness/nbd-client.js';
import { freePort } from '../harness/ports.js';
import { QemuVm, findQemu } from '../harness/qemu.js';

// Live migration of a real QEMU VM (qemu-system-x86_64 under TCG, no guest OS)
// whose virtio-blk disk is a VastSky volume over NBD: the source VM writes
// patterns with QEMU's block layer (HMP qemu-io), migrates to a destination
// QEMU started with -incoming, which reads them back and writes its own; those
// are then checked through a separate NBD connection to the export.
//
// The cluster runs two heads (two "hypervisors"). The destination should open
// the volume on head2 (the lease following the writer); until that exists the
// destination opens head1's export too (NBD serves several connections): see
// destinationExport().

const qemu = findQemu();
// CI installs qemu-system-x86 (deploy/install-deps.sh): there a missing QEMU fails the test instead.
const skip = !qemu && !process.env.CI;
if (skip) console.warn('live-migration.test.ts skipped: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86, or bash deploy/install-deps.sh)');

const VOLUME = 'migvm';
const SIZE = 64 * MiB; // 4 segments of 16 MiB in a test cluster
const K = 1024;

/** Guest writes before the migration, spread over the volume, one across a segment boundary. */
const SOURCE_WRITES = [
  { pattern: 0x5a, offset: 0, length: 64 * K },
  { pattern: 0xa5, offset: 16 * MiB - 32 * K, length: 64 * K }, // segments 0 and 1
  { pattern: 0x3c, offset: 40 * MiB, length: 1 * MiB },
  { pattern: 0x77, offset: SIZE - 64 * K, length: 64 * K }, // the last bytes
];
/** Guest writes on the destination after it took over. */
const DEST_WRITES = [
  { pattern: 0x66, offset: 2 * MiB, length: 64 * K },
  { pattern: 0x99, offset: 32 * MiB - 4 * K, length: 8 * K }, // segments 1 and 2
];

const hex = (b: number): string => `0x${b.toString(16).padStart(2, '0')}`;

/**
 * The NBD export the destination QEMU opens.
 * TODO(lease): destination on head2 via AttachVolume {migrate: true}: once `vsky volume attach
 * NAME --head head2 --migrate` exists, attach the volume to head2 here for the migration
 * (head1 keeps serving the source until the lease follows the writer) and return head2's
 * nbdUri; the NBD read-back below then checks the data on the export the destination used.
 */
async function destinationExport(_c: LocalCluster, _volume: string, sourceUri: string): Promise<string> {
  return sourceUri;
}

describe.skipIf(skip)('live migration of a QEMU VM whose disk is a volume', () => {
  let c: LocalCluster;
  let dir: string;
  let sourceUri: string;
  let destUri: string;
  let src: QemuVm | undefined;
  let dst: QemuVm | undefined;

  beforeAll(async () => {
    c = await startTestCluster({ heads: 2 });
    dir = join(c.opts.dir, 'qemu');
    mkdirSync(dir, { recursive: true });
    sourceUri = await c.ensureVolume(VOLUME, SIZE, 3, 'head1');
  });
  afterAll(async () => {
    await src?.stop();
    await dst?.stop();
    await destroyTestCluster(c);
  });

  it('runs two heads, the volume attached to head1', () => {
    expect(c.heads).toHaveLength(2);
    expect(c.headEndpoints.map((h) => h.name)).toEqual(['head1', 'head2']);
    expect(new URL(sourceUri).host).toBe(c.headEndpoints[0]!.nbd);
    expect(c.headEndpoints[1]!.nbd).not.toBe(c.headEndpoints[0]!.nbd);
  });

  it('the source VM writes through its virtio disk on head1', async () => {
    src = await QemuVm.start({ name: 'src', dir, nbdUri: sourceUri });
    expect((await src.status()).status).toBe('running');
    for (const w of SOURCE_WRITES) await src.qemuIoOk(`write -P ${hex(w.pattern)} ${w.offset} ${w.length}`);
    await src.qemuIoOk('flush');
    for (const w of SOURCE_WRITES) await src.qemuIoOk(`read -P ${hex(w.pattern)} ${w.offset} ${w.length}`);
  });

  it('migrates live to a destination QEMU', async () => {
    destUri = await destinationExport(c, VOLUME, sourceUri);
    const port = await freePort();
    dst = await QemuVm.start({ name: 'dst', dir, nbdUri: destUri, incomingPort: port });
    expect((await dst.status()).status).toBe('inmigrate');
    await src!.migrate(`tcp:127.0.0.1:${port}`);
    const info = await src!.waitMigration(30_000);
    expect(info.status).toBe('completed');
    await dst.waitStatus('running', 15_000);
    expect((await src!.status()).status).toBe('postmigrate');
  });

  it('the destination reads what the source wrote', async () => {
    for (const w of SOURCE_WRITES) {
      const out = await dst!.qemuIoOk(`read -P ${hex(w.pattern)} ${w.offset} ${w.length}`);
      expect(out).toContain(`read ${w.length}/${w.length} bytes at offset ${w.offset}`);
      expect(out).not.toContain('Pattern verification failed');
    }
    // The check can fail: a wrong pattern is reported.
    expect(await dst!.qemuIo(`read -P 0x00 0 ${64 * K}`)).toContain('Pattern verification failed');
  });

  it("the destination's writes reach the volume (read back over a separate NBD connection)", async () => {
    for (const w of DEST_WRITES) await dst!.qemuIoOk(`write -P ${hex(w.pattern)} ${w.offset} ${w.length}`);
    await dst!.qemuIoOk('flush');
    const nbd = await NbdClient.connect(destUri);
    try {
      expect(nbd.size).toBe(SIZE);
      for (const w of [...SOURCE_WRITES, ...DEST_WRITES]) {
        const got = await nbd.read(w.offset, w.length);
        expect(got.equals(Buffer.alloc(w.length, w.pattern)), `${hex(w.pattern)} at ${w.offset}`).toBe(true);
      }
      // Untouched space between the writes is still zero.
      expect((await nbd.read(64 * K, 64 * K)).equals(Buffer.alloc(64 * K))).toBe(true);
    } finally {
      nbd.close();
    }
  });
});
