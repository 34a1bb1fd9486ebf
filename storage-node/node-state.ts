import { randomUUID } from 'node:crypto';
import { mkdir, open, readFile, rename } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { CorruptMetadataError } from '../shared/errors.js';

// The little a node keeps outside its disks, in its data directory:
//   server-id   the node's stable UUID, generated on first start
//   disks.json  paths of the disks to open at start ({"version":1,"disks":[...]})
//   int-ids.json  the VastSky-style ids the manager gave (storage-node/int-ids.ts)
// Everything else (chunks, owners, epochs) lives on the disks themselves, so a
// disk moved to another node is recovered from the disk alone. Files are
// replaced atomically (write temp, fsync, rename, fsync the directory).

const SERVER_ID_FILE = 'server-id';
const DISKS_FILE = 'disks.json';
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export class NodeState {
  readonly dataDir: string;
  readonly serverId: string;
  private disks: string[];
  private saving: Promise<void> = Promise.resolve();

  private constructor(dataDir: string, serverId: string, disks: string[]) {
    this.dataDir = dataDir;
    this.serverId = serverId;
    this.disks = disks;
  }

  static async load(dataDir: string): Promise<NodeState> {
    const dir = resolve(dataDir);
    await mkdir(dir, { recursive: true });
    let serverId = (await readOptional(join(dir, SERVER_ID_FILE)))?.trim();
    if (serverId === undefined || serverId === '') {
      serverId = randomUUID();
      await writeAtomic(dir, SERVER_ID_FILE, `${serverId}\n`);
    } else if (!UUID_RE.test(serverId)) {
      throw new CorruptMetadataError(`${join(dir, SERVER_ID_FILE)} does not hold a UUID`, { dataDir: dir });
    }
    const text = await readOptional(join(dir, DISKS_FILE));
    let disks: string[] = [];
    if (text !== undefined) {
      try {
        const parsed = JSON.parse(text) as { disks?: unknown };
        if (!Array.isArray(parsed.disks) || !parsed.disks.every((d) => typeof d === 'string')) throw new Error('no "disks" list');
        disks = parsed.disks as string[];
      } catch (err) {
        throw new CorruptMetadataError(`${join(dir, DISKS_FILE)} is not a valid disk list: ${(err as Error).message}`, { dataDir: dir });
      }
    }
    return new NodeState(dir, serverId, disks);
  }

  diskPaths(): string[] {
    return [...this.disks];
  }

  rememberDisk(path: string): Promise<void> {
    if (this.disks.includes(path)) return this.saving;
    this.disks.push(path);
    return this.save();
  }

  forgetDisk(path: string): Promise<void> {
    this.disks = this.disks.filter((d) => d !== path);
    return this.save();
  }

  private save(): Promise<void> {
    const text = `${JSON.stringify({ version: 1, disks: this.disks }, null, 2)}\n`;
    this.saving = this.saving.catch(() => {}).then(() => writeAtomic(this.dataDir, DISKS_FILE, text));
    return this.saving;
  }
}

export async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

export async function writeAtomic(dir: string, name: string, text: string): Promise<void> {
  const tmp = join(dir, `.${name}.tmp`);
  const fh = await open(tmp, 'w', 0o644);
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, join(dir, name));
  const dh = await open(dir, 'r');
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}
