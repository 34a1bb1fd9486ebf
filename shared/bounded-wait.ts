// Waiting for something that may never happen, but not forever.

/** Resolves with `p`, or after `ms` (calling `onLate`), whichever comes first. */
export function withTimeout(p: Promise<void>, ms: number, onLate: () => void): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<void>((resolve) => {
    timer = setTimeout(() => {
      onLate();
      resolve();
    }, ms);
    timer.unref();
  });
  return Promise.race([p.then(() => clearTimeout(timer)), late]);
}
