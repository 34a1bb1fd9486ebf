// The session's command numbering (RFC 7143 4.2.2.1): non-immediate requests
// carry a CmdSN and are delivered in CmdSN order; ExpCmdSN is the next one
// expected; MaxCmdSN the last one the initiator may send. A request ahead of
// ExpCmdSN but inside the window waits for the gap to fill; one outside the
// window, or a duplicate, is silently ignored, as the RFC requires.
//
// MaxCmdSN only moves forward (initiators ignore a smaller one): it grows by
// one each time an ordered request finishes, so at most `depth` ordered
// requests are ever outstanding (queued, waiting for data or executing).

/** Serial number arithmetic (RFC 1982) on 32 bits: a < b. */
export function snLess(a: number, b: number): boolean {
  return ((a - b) | 0) < 0;
}

export function snLessOrEqual(a: number, b: number): boolean {
  return ((a - b) | 0) <= 0;
}

export type Admission =
  /** Delivered now (and any queued successors with it). */
  | 'delivered'
  /** Inside the window ahead of a gap: delivered once the gap fills. */
  | 'queued'
  /** Outside the window or a duplicate: dropped. */
  | 'ignored';

export class CommandWindow {
  private exp: number;
  private max: number;
  private readonly pending = new Map<number, () => void>();
  private delivering = false;

  constructor(initialCmdSN: number, depth: number) {
    this.exp = initialCmdSN >>> 0;
    this.max = (initialCmdSN + depth - 1) >>> 0;
  }

  get expCmdSN(): number {
    return this.exp;
  }

  get maxCmdSN(): number {
    return this.max;
  }

  /** Requests waiting for a gap to fill. */
  get queued(): number {
    return this.pending.size;
  }

  /** ExpCmdSN <= sn <= MaxCmdSN. */
  inWindow(sn: number): boolean {
    return snLessOrEqual(this.exp, sn) && snLessOrEqual(sn, this.max);
  }

  /** Admits a non-immediate request; `deliver` runs when its turn comes. */
  submit(cmdSN: number, deliver: () => void): Admission {
    const sn = cmdSN >>> 0;
    if (!this.inWindow(sn) || this.pending.has(sn)) return 'ignored';
    this.pending.set(sn, deliver);
    if (sn !== this.exp) return 'queued';
    this.deliverReady();
    return 'delivered';
  }

  /** An ordered request finished (its response is sent): one more CmdSN fits. */
  release(): void {
    this.max = (this.max + 1) >>> 0;
  }

  /**
   * RFC 7143 11.5.1 (ABORT TASK, case b): a CmdSN inside the window that was
   * never received is considered received, so the window moves past it (the
   * caller checked that no request with it is queued). Returns false outside
   * the window.
   */
  consume(cmdSN: number): boolean {
    const sn = cmdSN >>> 0;
    if (!this.inWindow(sn)) return false;
    this.pending.set(sn, () => this.release());
    this.deliverReady();
    return true;
  }

  /** Drops every queued request (the session is ending). */
  clear(): void {
    this.pending.clear();
  }

  private deliverReady(): void {
    // A delivery that submits again must not recurse into this loop.
    if (this.delivering) return;
    this.delivering = true;
    try {
      for (let next = this.pending.get(this.exp); next !== undefined; next = this.pending.get(this.exp)) {
        this.pending.delete(this.exp);
        this.exp = (this.exp + 1) >>> 0;
        next();
      }
    } finally {
      this.delivering = false;
    }
  }
}
