/**
 * Mutations in flight on a volume (shared by its mirrors): detach waits for
 * them to settle before the final flush, so no acknowledged write is left
 * out of it. Each mutation is counted in the phase current when it began, so
 * barrier() can wait for everything begun before it without waiting for
 * what begins after (a busy volume is never idle): the write-intent sweep and
 * a starting resync use it.
 */
export class MutationTracker {
  private active = 0;
  private waiters: (() => void)[] = [];
  private phase = 0;
  private readonly perPhase = [0, 0];
  private drained: (() => void) | undefined;
  private barriers: Promise<void> = Promise.resolve();

  get inFlight(): number {
    return this.active;
  }

  /** Counts a mutation in; returns its phase, to hand back to end(). */
  begin(): number {
    this.active++;
    const p = this.phase;
    this.perPhase[p]!++;
    return p;
  }

  end(phase: number): void {
    if (--this.perPhase[phase]! === 0 && phase !== this.phase && this.drained !== undefined) {
      const drained = this.drained;
      this.drained = undefined;
      drained();
    }
    if (--this.active === 0 && this.waiters.length > 0) {
      const waiters = this.waiters;
      this.waiters = [];
      for (const w of waiters) w();
    }
  }

  /** Resolves once nothing is in flight. */
  idle(): Promise<void> {
    if (this.active === 0) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Resolves once every mutation begun before this call has ended. */
  barrier(): Promise<void> {
    const run = (): Promise<void> | undefined => {
      const old = this.phase;
      this.phase = old ^ 1;
      if (this.perPhase[old] === 0) return undefined;
      return new Promise<void>((resolve) => { this.drained = resolve; });
    };
    // One barrier at a time: the next flips the phase back only once the
    // previous phase has drained.
    this.barriers = this.barriers.then(run);
    return this.barriers;
  }
}
