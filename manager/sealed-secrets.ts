import { AuthenticationError } from '../shared/errors.js';
import type { SecretBox } from '../shared/security/secret-box.js';
import { SecretBox as Box } from '../shared/security/secret-box.js';
import type { VolumeRecord } from './types.js';

// Which fields of the manager's records are secrets, and their sealing on
// the way into LevelDB and opening on the way out (manager/store.ts). In
// memory the records hold them in clear (heads get them at attach over
// gRPC); on disk only sealed (shared/security/secret-box.ts). Each sealed
// value is bound to its record key and field.

const SECRET_FIELDS = ['chapSecret', 'mutualSecret'] as const;

/** Seals a volume record's secrets in place (the record is the batch's own copy). */
export function sealVolume(key: string, record: VolumeRecord, box: SecretBox): void {
  const access = record.access;
  if (access === undefined) return;
  for (const f of SECRET_FIELDS) {
    const v = access[f];
    if (v && !Box.isSealed(v)) access[f] = box.seal(v, `${key}:${f}`);
  }
}

/**
 * Opens a stored volume record's secrets in place; returns true when one was
 * stored in clear (written before a --secret-key-file was given: the caller
 * re-seals it).
 */
export function openVolume(key: string, record: VolumeRecord, box: SecretBox | undefined): boolean {
  const access = record.access;
  if (access === undefined) return false;
  let clear = false;
  for (const f of SECRET_FIELDS) {
    const v = access[f];
    if (!v) continue;
    if (!Box.isSealed(v)) { clear = true; continue; }
    if (box === undefined) {
      throw new AuthenticationError(`the manager database holds sealed iSCSI secrets (${key}) but no --secret-key-file was given: `
        + 'start the manager with the key file it used before');
    }
    access[f] = box.open(v, `${key}:${f}`);
  }
  return clear;
}
