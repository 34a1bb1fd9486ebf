import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { moduleLogger } from '../shared/logger.js';

// The head's VastSky-style integer id (hsvrid, docs/xmlrpc.md), kept in its
// state directory once the manager gave it (heartbeat replies carry it) and
// reported with every registration, so a manager rebuilt from storage
// (docs/rebuild-from-storage.md) gives it back. Two files:
//   int-id.json  {"version":1,"clusterId":"...","hsvrid":N}: what is reported
//   hsvrid       "hsvr-%08x\n", VastSky's /var/lib/vas/hsvrid format, for
//                VastSky's XCP driver (VASSR.py reads its hsvrid from there)
// Advisory (the manager's database is the authority while it exists): replaced
// by rename without fsync, and a file that does not read back is reported
// and ignored.

const FILE = 'int-id.json';
const VASTSKY_FILE = 'hsvrid';
const log = moduleLogger('head-int-id');

export interface HeadIntId { clusterId: string; hsvrid: number }

export class HeadIntIdFile {
  private saving = false;
  private constructor(private readonly dir: string, private current: HeadIntId) {}

  static async load(dir: string): Promise<HeadIntIdFile> {
    await mkdir(dir, { recursive: true });
    const path = join(dir, FILE);
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      return new HeadIntIdFile(dir, { clusterId: '', hsvrid: 0 });
    }
    try {
      const p = JSON.parse(text) as { version?: unknown; clusterId?: unknown; hsvrid?: unknown };
      const id = p.hsvrid;
      if (p.version !== 1 || typeof p.clusterId !== 'string' || typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id > 0xffff_ffff) {
        throw new Error('unexpected content');
      }
      return new HeadIntIdFile(dir, { clusterId: p.clusterId, hsvrid: id });
    } catch (err) {
      log.error({ path, err: (err as Error).message }, 'the id file does not read back: ignored (the manager gives the id again)');
      return new HeadIntIdFile(dir, { clusterId: '', hsvrid: 0 });
    }
  }

  get value(): HeadIntId { return { ...this.current }; }

  /** Keeps the id a heartbeat reply carries (0 or no cluster: nothing to keep); writes only on a change. */
  async update(clusterId: string, hsvrid: number): Promise<void> {
    if (!clusterId || hsvrid === 0 || this.saving) return;
    if (clusterId === this.current.clusterId && hsvrid === this.current.hsvrid) return;
    this.saving = true;
    try {
      await writeAtomic(this.dir, FILE, `${JSON.stringify({ version: 1, clusterId, hsvrid })}\n`);
      await writeAtomic(this.dir, VASTSKY_FILE, `hsvr-${hsvrid.toString(16).padStart(8, '0')}\n`);
    } finally {
      this.saving = false;
    }
    log.info({ hsvrid, previous: this.current.hsvrid || undefined }, 'VastSky hsvrid from the manager kept');
    this.current = { clusterId, hsvrid };
  }
}

async function writeAtomic(dir: string, name: string, text: string): Promise<void> {
  const tmp = join(dir, `.${name}.tmp-${process.pid}`);
  await writeFile(tmp, text);
  await rename(tmp, join(dir, name));
}
