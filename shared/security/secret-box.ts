import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { AuthenticationError } from '../errors.js';

// Secrets at rest (iSCSI CHAP secrets in the manager's LevelDB): sealed with
// AES-256-GCM under a key kept in a file outside the database
// (--secret-key-file, key-file.ts). A sealed value is a string
//
//   vsky-sealed:v1:<base64 of 12-byte IV | 16-byte tag | ciphertext>
//
// and carries `context` (e.g. "volume/0000000003:chapSecret") as additional
// authenticated data: a sealed value copied into another record or field
// does not open there. A fresh random IV per seal.

const PREFIX = 'vsky-sealed:v1:';
const IV_SIZE = 12;
const TAG_SIZE = 16;

export class SecretBox {
  private readonly key: Buffer;

  constructor(key: Buffer) {
    if (key.length !== 32) throw new AuthenticationError(`a secret key is 32 bytes, got ${key.length}`);
    this.key = Buffer.from(key);
  }

  static isSealed(value: string): boolean {
    return value.startsWith(PREFIX);
  }

  seal(plain: string, context: string): string {
    const iv = randomBytes(IV_SIZE);
    const cipher = createCipheriv('aes-256-gcm', this.key, iv);
    cipher.setAAD(Buffer.from(context, 'utf8'));
    const body = Buffer.concat([cipher.update(plain, 'utf8'), cipher.final()]);
    return PREFIX + Buffer.concat([iv, cipher.getAuthTag(), body]).toString('base64');
  }

  /** The plain text of a sealed value; throws AuthenticationError if it is not ours, altered, or sealed for another context. */
  open(sealed: string, context: string): string {
    if (!SecretBox.isSealed(sealed)) throw new AuthenticationError(`${context}: not a sealed secret`);
    const raw = Buffer.from(sealed.slice(PREFIX.length), 'base64');
    if (raw.length < IV_SIZE + TAG_SIZE) throw new AuthenticationError(`${context}: sealed secret truncated (${raw.length} bytes)`);
    const decipher = createDecipheriv('aes-256-gcm', this.key, raw.subarray(0, IV_SIZE));
    decipher.setAAD(Buffer.from(context, 'utf8'));
    decipher.setAuthTag(raw.subarray(IV_SIZE, IV_SIZE + TAG_SIZE));
    try {
      return Buffer.concat([decipher.update(raw.subarray(IV_SIZE + TAG_SIZE)), decipher.final()]).toString('utf8');
    } catch {
      throw new AuthenticationError(`${context}: the sealed secret does not open with this key (another --secret-key-file, or altered)`);
    }
  }
}
