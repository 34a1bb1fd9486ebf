import { randomBytes } from 'node:crypto';
import { chmodSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { AuthenticationError, errorMessage } from '../errors.js';

// Key files (the cluster data key, the manager's secret key): 32 random
// bytes, raw or as 64 hex digits (`openssl rand -hex 32`), readable by their
// owner only. A key others can read is refused: it is no longer a secret.

export const KEY_FILE_SIZE = 32;

/** Reads a key file; throws AuthenticationError naming the fix (chmod, the size) when it is unusable. */
export function readKeyFile(path: string, flag: string): Buffer {
  let mode: number;
  let raw: Buffer;
  try {
    mode = statSync(path).mode;
    raw = readFileSync(path);
  } catch (err) {
    throw new AuthenticationError(`${flag} ${path}: cannot read the key file: ${errorMessage(err)}`, { path });
  }
  if ((mode & 0o077) !== 0) {
    throw new AuthenticationError(`${flag} ${path}: mode ${(mode & 0o777).toString(8).padStart(4, '0')} lets others read the key: `
      + `run \`chmod 600 ${path}\` (and keep it owned by the daemon's user)`, { path, mode: mode & 0o777 });
  }
  return parseKey(raw, `${flag} ${path}`);
}

/** 32 raw bytes, or 64 hex digits with an optional trailing newline. */
export function parseKey(raw: Buffer, what: string): Buffer {
  if (raw.length === KEY_FILE_SIZE) return Buffer.from(raw);
  const text = raw.toString('latin1').trim();
  if (/^[0-9a-fA-F]{64}$/.test(text)) return Buffer.from(text, 'hex');
  throw new AuthenticationError(`${what}: a key file holds ${KEY_FILE_SIZE} random bytes (or 64 hex digits), this one has ${raw.length} bytes: `
    + `make one with \`openssl rand -out FILE ${KEY_FILE_SIZE} && chmod 600 FILE\``, { size: raw.length });
}

/** Writes a fresh random key, mode 0600 (the umask cannot widen it). */
export function createKeyFile(path: string): void {
  writeFileSync(path, randomBytes(KEY_FILE_SIZE), { mode: 0o600, flag: 'wx' });
  chmodSync(path, 0o600);
}
