/**
 * Resolves when every piece succeeded; rejects with the first failure, but
 * only once every piece has settled: no piece may still be writing into the
 * caller's buffer, or onto a replica, after the request was answered (a client
 * retrying a failed write must not race its own earlier pieces).
 */
export async function settleAll(pieces: Promise<unknown>[]): Promise<void> {
  const results = await Promise.allSettled(pieces);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}
