import { createHmac, timingSafeEqual } from 'node:crypto';
import { AuthenticationError } from '../../errors.js';
import { MAC_SIZE } from './messages.js';

// The MACs of the handshake. Each side proves it holds the cluster data key
// over both nonces (the server's fresh nonce defeats replay of a recorded
// proof; the client's defeats a server replaying a recorded verdict) and
// over the channel binding: with --data-tls, 32 bytes of TLS keying material
// (RFC 5705 exporter), so a proof cannot be relayed into another TLS
// session; empty on plain TCP. Labels differ per direction so one side's MAC
// is never a valid answer for the other.

export const DATA_KEY_SIZE = 32;
const CLIENT_LABEL = Buffer.from('vsky data auth v1: client', 'latin1');
const SERVER_LABEL = Buffer.from('vsky data auth v1: server', 'latin1');
/** Label of the RFC 5705 exporter giving the channel binding under TLS. */
export const TLS_EXPORTER_LABEL = 'EXPORTER-vsky-data-auth';

export type Side = 'client' | 'server';

export function transcriptMac(key: Buffer, side: Side, serverNonce: Buffer, clientNonce: Buffer, binding: Buffer): Buffer {
  if (key.length !== DATA_KEY_SIZE) throw new AuthenticationError(`data key must be ${DATA_KEY_SIZE} bytes, got ${key.length}`);
  return createHmac('sha256', key)
    .update(side === 'client' ? CLIENT_LABEL : SERVER_LABEL)
    .update(serverNonce).update(clientNonce).update(binding)
    .digest();
}

/** Constant-time comparison of a received MAC with the expected one. */
export function macMatches(expected: Buffer, received: Buffer): boolean {
  return received.length === MAC_SIZE && expected.length === MAC_SIZE && timingSafeEqual(expected, received);
}
