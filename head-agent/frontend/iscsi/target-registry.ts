import type { LogicalUnit } from '../scsi/types.js';

// What the iSCSI server exports: targets by IQN, each with LUN 0 (one target
// per volume, so access control and hand-off are per volume), and who may
// log in to it.

export interface ChapCredentials { user: string; secret: string }

export interface TargetAccess {
  /** Initiator IQNs allowed to log in; empty = any initiator. */
  initiators: string[];
  /** One-way CHAP: the initiator proves it knows this secret; undefined = AuthMethod None accepted. */
  chap?: ChapCredentials;
  /** Mutual CHAP: the target proves itself to the initiator with this. */
  mutualChap?: ChapCredentials;
}

export interface IscsiTarget {
  /** iqn.2026-11.ts.vastsky:<volume name> */
  iqn: string;
  /** LUN number -> unit (volumes export LUN 0 only). */
  luns: ReadonlyMap<number, LogicalUnit>;
  access: TargetAccess;
}

export interface IscsiTargetRegistry {
  lookup(iqn: string): IscsiTarget | undefined;
  list(): IscsiTarget[];
}

export const IQN_PREFIX = 'iqn.2026-11.ts.vastsky:';
