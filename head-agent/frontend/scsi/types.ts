// The seam between the iSCSI transport (head-agent/frontend/iscsi/) and the SCSI
// block-device command layer (head-agent/frontend/scsi/). The transport turns PDUs
// into ScsiCommands (collecting all Data-Out first) and ScsiResults back into
// Data-In + SCSI Response PDUs (truncating data to the expected length and
// computing residuals). The command layer knows nothing about iSCSI.

/** SAM-5 status codes. */
export const ScsiStatus = {
  GOOD: 0x00,
  CHECK_CONDITION: 0x02,
  CONDITION_MET: 0x04,
  BUSY: 0x08,
  RESERVATION_CONFLICT: 0x18,
  TASK_SET_FULL: 0x28,
  ACA_ACTIVE: 0x30,
  TASK_ABORTED: 0x40,
} as const;

export interface ScsiCommand {
  lun: number;
  /** The CDB (6 to 16 bytes). */
  cdb: Buffer;
  /**
   * The I_T nexus: initiator port name + target port, stable for a session,
   * e.g. "iqn.1994-05.com.example:host1,i,0x23d000000001". Persistent
   * reservations key registrations on it.
   */
  nexus: string;
  /** All Data-Out the initiator sent for this command (immediate, unsolicited and solicited), or undefined. */
  dataOut: Buffer | undefined;
  /** Expected Data Transfer Length from the command PDU (bytes). */
  expectedLength: number;
  /** Initiator task tag, for task management. */
  taskTag: number;
  /** Aborted by ABORT TASK / ABORT TASK SET / LUN RESET / TARGET RESET. */
  signal: CommandSignal;
}

/**
 * What the command layer uses of an abort signal. An AbortSignal has it;
 * the iSCSI transport passes a lighter one per task (an AbortController per
 * command cost ~3.6% of the head's CPU under 64 KiB writes).
 */
export interface CommandSignal {
  readonly aborted: boolean;
  addEventListener(type: 'abort', listener: () => void, options?: { once?: boolean }): void;
  removeEventListener(type: 'abort', listener: () => void): void;
}

export interface ScsiResult {
  status: number;
  /**
   * Data-In (the transport sends at most expectedLength of it and reports the
   * residual). May come from the frontends' I/O pool (io-buffers.ts): the
   * transport gives it back once written, so the unit keeps no reference.
   */
  dataIn?: Buffer;
  /** Fixed-format sense data (SPC-4 4.5.3) when status is CHECK CONDITION. */
  sense?: Buffer;
  /**
   * Commands with Data-Out: the bytes of Data-Out the CDB called for (its
   * SCSI transfer length or parameter list length), which may differ from
   * expectedLength. The transport reports the difference as the residual
   * (overflow when this is larger, underflow when smaller, RFC 7143
   * 11.4.5). Undefined for commands without Data-Out.
   */
  dataOutLength?: number;
}

/** One logical unit (a volume). */
export interface LogicalUnit {
  execute(cmd: ScsiCommand): Promise<ScsiResult>;
  /** LUN RESET / TARGET WARM RESET side effects (unit attention, clear task set state); PR registrations survive. */
  reset(kind: 'lun' | 'target'): void;
  /** A nexus went away (logout / connection closed). */
  nexusLost(nexus: string): void;
}
