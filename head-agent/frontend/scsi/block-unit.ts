// One SCSI direct-access block device (SBC-3) over a BlockDevice: the
// LogicalUnit the iSCSI transport calls. execute() runs the checks SAM-5
// orders before a command starts (abort, unit attention, opcode, reservation
// conflicts), then the command's handler, and turns whatever it throws into
// a status: SenseError -> CHECK CONDITION, StatusError -> its status,
// AbortedError -> TASK ABORTED.

import type { BlockDevice } from '../../engine/block-device.js';
import { errorMessage } from '../../../shared/errors.js';
import { isTraced, moduleLogger } from '../../../shared/logger.js';
import { checkControlByte, cdbLengthOf } from './cdb.js';
import { AbortedError } from './device-io.js';
import { unitIdentity } from './inquiry.js';
import { defaultModeState } from './mode-pages.js';
import { hasServiceActions, lookupCdb, type Command, type CommandName } from './opcodes.js';
import { PersistentReservations } from './persistent-reservations.js';
import { getLbaStatus, unmap, writeSame } from './provisioning-commands.js';
import { RangeLock } from './range-lock.js';
import { persistentReserveIn, persistentReserveOut, release6, reserve6 } from './reservation-commands.js';
import { compareAndWrite, read, synchronizeCache, verify, write, writeAndVerify } from './rw-commands.js';
import {
  Asc, SenseError, SenseKey, StatusError, checkCondition, invalidFieldInCdb, invalidOpcode, reservationConflict,
} from './sense.js';
import {
  inquiry, modeSelectCmd, modeSenseCmd, readCapacity10, readCapacity16, reportLuns, reportSupportedOpcodesCmd,
  requestSense, startStopUnit, testUnitReady,
} from './spc-commands.js';
import { ScsiStatus, type LogicalUnit, type ScsiCommand, type ScsiResult } from './types.js';
import { UnitAttentions } from './unit-attention.js';
import { PHYSICAL_BLOCK_BYTES, type UnitContext } from './unit-context.js';

export interface BlockUnitOptions {
  volumeId: number;
  volumeName: string;
  /** Logical block size; 512 (what VMs expect) unless told. Physical blocks are 4096 bytes either way. */
  blockSize?: 512 | 4096;
  /** RELATIVE TARGET PORT IDENTIFIER reported in VPD 83h and READ FULL STATUS (default 1). */
  targetPortId?: number;
}

type Handler = (ctx: UnitContext, cmd: ScsiCommand) => ScsiResult | Promise<ScsiResult>;

const prOut: Handler = persistentReserveOut;
const prIn: Handler = persistentReserveIn;

/** Every command in the table has a handler: the type makes a missing one a compile error. */
const HANDLERS: Record<CommandName, Handler> = {
  'TEST UNIT READY': testUnitReady,
  'REQUEST SENSE': requestSense,
  'READ(6)': read,
  'WRITE(6)': write,
  INQUIRY: inquiry,
  'MODE SELECT(6)': modeSelectCmd,
  'RESERVE(6)': reserve6,
  'RELEASE(6)': release6,
  'MODE SENSE(6)': modeSenseCmd,
  'START STOP UNIT': (_ctx, cmd) => startStopUnit(cmd),
  'READ CAPACITY(10)': readCapacity10,
  'READ(10)': read,
  'WRITE(10)': write,
  'WRITE AND VERIFY(10)': writeAndVerify,
  'VERIFY(10)': verify,
  'SYNCHRONIZE CACHE(10)': synchronizeCache,
  'WRITE SAME(10)': writeSame,
  UNMAP: unmap,
  'MODE SELECT(10)': modeSelectCmd,
  'MODE SENSE(10)': modeSenseCmd,
  'PERSISTENT RESERVE IN/0': prIn,
  'PERSISTENT RESERVE IN/1': prIn,
  'PERSISTENT RESERVE IN/2': prIn,
  'PERSISTENT RESERVE IN/3': prIn,
  'PERSISTENT RESERVE OUT/0': prOut,
  'PERSISTENT RESERVE OUT/1': prOut,
  'PERSISTENT RESERVE OUT/2': prOut,
  'PERSISTENT RESERVE OUT/3': prOut,
  'PERSISTENT RESERVE OUT/4': prOut,
  'PERSISTENT RESERVE OUT/5': prOut,
  'PERSISTENT RESERVE OUT/6': prOut,
  'READ(16)': read,
  'COMPARE AND WRITE': compareAndWrite,
  'WRITE(16)': write,
  'WRITE AND VERIFY(16)': writeAndVerify,
  'VERIFY(16)': verify,
  'SYNCHRONIZE CACHE(16)': synchronizeCache,
  'WRITE SAME(16)': writeSame,
  'READ CAPACITY(16)': readCapacity16,
  'GET LBA STATUS': getLbaStatus,
  'REPORT LUNS': (_ctx, cmd) => reportLuns(cmd.cdb, [cmd.lun]),
  'REPORT SUPPORTED OPERATION CODES': (_ctx, cmd) => reportSupportedOpcodesCmd(cmd),
  'READ(12)': read,
  'WRITE(12)': write,
  'WRITE AND VERIFY(12)': writeAndVerify,
  'VERIFY(12)': verify,
};

const ABORTED: ScsiResult = Object.freeze({ status: ScsiStatus.TASK_ABORTED });

export function createBlockUnit(device: BlockDevice, opts: BlockUnitOptions): LogicalUnit {
  return new BlockUnit(device, opts);
}

class BlockUnit implements LogicalUnit {
  private readonly ctx: UnitContext;
  private readonly trace: boolean;

  constructor(device: BlockDevice, opts: BlockUnitOptions) {
    const blockSize = opts.blockSize ?? 512;
    if (blockSize !== 512 && blockSize !== 4096) throw new RangeError(`block size ${String(blockSize)} is not 512 or 4096`);
    if (device.size < blockSize) throw new RangeError(`device ${device.name} (${device.size} bytes) holds no ${blockSize}-byte block`);
    this.ctx = {
      device,
      blockSize,
      // A trailing partial block is not addressable.
      numBlocks: Math.floor(device.size / blockSize),
      lbppbe: Math.log2(PHYSICAL_BLOCK_BYTES / blockSize),
      identity: unitIdentity(opts.volumeId, opts.volumeName, opts.targetPortId ?? 1),
      lock: new RangeLock(),
      mode: defaultModeState(device.readOnly === true),
      pr: new PersistentReservations(),
      ua: new UnitAttentions(),
      legacyHolder: undefined,
      log: moduleLogger('scsi', { volume: opts.volumeName, volumeId: opts.volumeId }),
    };
    this.trace = isTraced('scsi');
  }

  async execute(cmd: ScsiCommand): Promise<ScsiResult> {
    const result = await this.run(cmd);
    // Aborted during execution: whatever happened, the transport wants TASK ABORTED.
    if (cmd.signal.aborted) return ABORTED;
    if (this.trace) {
      this.ctx.log.debug({ nexus: cmd.nexus, cdb: cmd.cdb.toString('hex'), status: result.status,
        sense: result.sense?.toString('hex') }, 'scsi command');
    }
    return result;
  }

  private async run(cmd: ScsiCommand): Promise<ScsiResult> {
    if (cmd.signal.aborted) return ABORTED;
    const ctx = this.ctx;
    const nexus = cmd.nexus;
    ctx.ua.touch(nexus);
    this.noteCapacity();
    if (cmd.cdb.length === 0) return checkCondition(invalidOpcode().sense);
    const spec = lookupCdb(cmd.cdb);
    // SAM-5 5.14: a pending unit attention fails any command but INQUIRY,
    // REPORT LUNS and REQUEST SENSE (even one we do not support).
    if (spec?.noUa !== true) {
      const ua = ctx.ua.take(nexus);
      if (ua !== undefined) return checkCondition({ key: SenseKey.UNIT_ATTENTION, code: ua });
    }
    try {
      if (spec === undefined) {
        // A known opcode with an unknown service action is a bad CDB field, not a bad opcode.
        throw hasServiceActions(cmd.cdb[0]!) ? invalidFieldInCdb(1, 4) : invalidOpcode();
      }
      const c = cmd.cdb.length >= spec.usage.length ? cmd : { ...cmd, cdb: padCdb(cmd.cdb) };
      checkControlByte(c.cdb, cdbLengthOf(spec.opcode));
      this.checkReservations(spec, nexus);
      return await HANDLERS[spec.name](ctx, c);
    } catch (err) {
      return this.failure(err, cmd);
    }
  }

  /**
   * The device grew (an online resize, docs/jobs.md): READ CAPACITY reports
   * the new size from now on, and every I_T nexus known to the unit gets
   * CAPACITY DATA HAS CHANGED (ASC/ASCQ 2A/09, SPC-4) on its next
   * command, this one included, so initiators re-read the capacity. Checked
   * on every command (one division): the unit needs no hook into the engine.
   */
  private noteCapacity(): void {
    const ctx = this.ctx;
    const blocks = Math.floor(ctx.device.size / ctx.blockSize);
    if (blocks === ctx.numBlocks) return;
    ctx.log.info({ from: ctx.numBlocks, to: blocks, blockSize: ctx.blockSize, nexuses: ctx.ua.size }, 'capacity changed: unit attention 2A/09 for every nexus');
    ctx.numBlocks = blocks;
    ctx.ua.establishAll(Asc.CAPACITY_DATA_HAS_CHANGED);
  }

  /** RESERVATION CONFLICT for commands an SPC-2 or persistent reservation keeps from this nexus. */
  private checkReservations(spec: Command, nexus: string): void {
    const holder = this.ctx.legacyHolder;
    if (holder !== undefined && holder !== nexus && spec.legacyFree !== true) throw reservationConflict();
    if (spec.access !== 'free' && this.ctx.pr.conflicts(nexus, spec.access)) throw reservationConflict();
  }

  private failure(err: unknown, cmd: ScsiCommand): ScsiResult {
    if (err instanceof SenseError) return checkCondition(err.sense);
    if (err instanceof StatusError) return { status: err.status };
    if (err instanceof AbortedError) return ABORTED;
    this.ctx.log.error({ err, nexus: cmd.nexus, cdb: cmd.cdb.toString('hex') }, `scsi command failed: ${errorMessage(err)}`);
    return checkCondition({ key: SenseKey.HARDWARE_ERROR, code: Asc.INTERNAL_TARGET_FAILURE });
  }

  /**
   * LUN RESET / TARGET RESET (SAM-5 6.3): the transport aborts the tasks;
   * here the SPC-2 reservation is released and every nexus gets a reset unit
   * attention (29h/00h for both: libiscsi-based initiators, QEMU among them,
   * retry exactly that one). Persistent reservations survive. Mode
   * parameters deliberately survive too: SAM-5 would restore the defaults,
   * but an initiator that turned WCE off does not re-read the caching page
   * after a reset and would keep skipping SYNCHRONIZE CACHE while its writes
   * silently became write-back again.
   */
  reset(_kind: 'lun' | 'target'): void {
    const ctx = this.ctx;
    ctx.legacyHolder = undefined;
    ctx.ua.establishAll(Asc.POWER_ON_RESET);
  }

  /** I_T nexus loss: its SPC-2 reservation and unit attentions go; PR registrations stay (SPC-4 5.13.1). */
  nexusLost(nexus: string): void {
    const ctx = this.ctx;
    if (ctx.legacyHolder === nexus) ctx.legacyHolder = undefined;
    ctx.ua.forget(nexus);
  }
}

function padCdb(cdb: Buffer): Buffer {
  const b = Buffer.alloc(16);
  cdb.copy(b);
  return b;
}
