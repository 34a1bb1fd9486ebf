// PERSISTENT RESERVE IN / OUT (SPC-4 6.15, 6.16) over the unit's
// PersistentReservations, and the SPC-2 RESERVE(6) / RELEASE(6) pair, which
// SPC-4 5.13.3 (CRH=1) makes conflict with any persistent registration.

import type { ScsiCommand, ScsiResult } from './types.js';
import { ScsiStatus } from './types.js';
import { decodePersistentReserveIn, decodePersistentReserveOut } from './cdb.js';
import { PrInAction, parseProutParams } from './persistent-reservations.js';
import { GOOD, truncate } from './results.js';
import { invalidFieldInCdb, reservationConflict } from './sense.js';
import type { UnitContext } from './unit-context.js';

export function persistentReserveIn(ctx: UnitContext, cmd: ScsiCommand): ScsiResult {
  const req = decodePersistentReserveIn(cmd.cdb);
  let data: Buffer;
  switch (req.sa) {
    case PrInAction.READ_KEYS:
      data = ctx.pr.readKeys();
      break;
    case PrInAction.READ_RESERVATION:
      data = ctx.pr.readReservation();
      break;
    case PrInAction.REPORT_CAPABILITIES:
      data = ctx.pr.reportCapabilities();
      break;
    case PrInAction.READ_FULL_STATUS:
      data = ctx.pr.readFullStatus(ctx.identity.relativeTargetPort);
      break;
    default:
      throw invalidFieldInCdb(1, 4);
  }
  return truncate(data, req.allocLength);
}

export function persistentReserveOut(ctx: UnitContext, cmd: ScsiCommand): ScsiResult {
  const req = decodePersistentReserveOut(cmd.cdb);
  // An SPC-2 reservation held by another nexus blocks persistent reservations too.
  if (ctx.legacyHolder !== undefined && ctx.legacyHolder !== cmd.nexus) throw reservationConflict();
  const params = parseProutParams(cmd.dataOut, req.paramLength);
  const uas = ctx.pr.out(cmd.nexus, req.sa, req.scope, req.type, params);
  for (const ua of uas) ctx.ua.establish(ua.nexus, ua.code);
  return { status: ScsiStatus.GOOD, dataOutLength: req.paramLength };
}

/** RESERVE(6) (SPC-2 7.21): exclusive access for this nexus; re-reserving is a no-op. */
export function reserve6(ctx: UnitContext, cmd: ScsiCommand): ScsiResult {
  // Third-party and extent reservations (obsolete) are not supported.
  if ((cmd.cdb[1]! & 0x1f) !== 0) throw invalidFieldInCdb(1);
  if (ctx.pr.registered > 0) throw reservationConflict();
  if (ctx.legacyHolder !== undefined && ctx.legacyHolder !== cmd.nexus) throw reservationConflict();
  ctx.legacyHolder = cmd.nexus;
  return GOOD;
}

/** RELEASE(6) (SPC-2 7.17): releases this nexus's reservation; from any other nexus it does nothing. */
export function release6(ctx: UnitContext, cmd: ScsiCommand): ScsiResult {
  if ((cmd.cdb[1]! & 0x1f) !== 0) throw invalidFieldInCdb(1);
  if (ctx.pr.registered > 0) throw reservationConflict();
  if (ctx.legacyHolder === cmd.nexus) ctx.legacyHolder = undefined;
  return GOOD;
}
