import { AuthenticationError } from '../../errors.js';

// The data protocol's connection handshake (docs/data-protocol.md,
// "Authentication"): three fixed-size messages exchanged before the first
// request frame. Pure codec: bytes in, typed values or AuthenticationError out.
//
//   server -> client  HELLO   magic "VSKYAUTH" | version u8 | 3 zero bytes | server nonce (32)
//   client -> server  PROOF   magic "VSKYAUTH" | version u8 | 3 zero bytes | client nonce (32) | client MAC (32)
//   server -> client  VERDICT magic "VSKYAUTH" | verdict u8 | 3 zero bytes | server MAC (32; zeros when refused)
//
// MACs: HMAC-SHA256(cluster data key, label | server nonce | client nonce | channel binding),
// see transcript.ts.

export const AUTH_MAGIC = Buffer.from('VSKYAUTH', 'latin1');
export const AUTH_VERSION = 1;
export const NONCE_SIZE = 32;
export const MAC_SIZE = 32;
const PREFIX = AUTH_MAGIC.length + 4;
export const HELLO_SIZE = PREFIX + NONCE_SIZE;
export const PROOF_SIZE = PREFIX + NONCE_SIZE + MAC_SIZE;
export const VERDICT_SIZE = PREFIX + MAC_SIZE;

export const enum Verdict {
  ACCEPTED = 0,
  REFUSED = 1,
}

export interface Hello { serverNonce: Buffer }
export interface Proof { clientNonce: Buffer; mac: Buffer }
export interface VerdictMessage { verdict: Verdict; mac: Buffer }

function prefix(out: Buffer, byte: number): void {
  AUTH_MAGIC.copy(out, 0);
  out[AUTH_MAGIC.length] = byte;
  out.fill(0, AUTH_MAGIC.length + 1, PREFIX);
}

function need(buf: Buffer, size: number, what: string): void {
  if (buf.length !== size) throw new AuthenticationError(`${what}: ${buf.length} bytes, expected ${size}`, { what });
}

/**
 * Checks the first bytes of a handshake message as soon as they arrive:
 * a peer speaking anything else (a plaintext data client sending a request
 * frame, garbage) is refused without waiting for a whole message.
 */
export function checkMagic(head: Buffer, what: string): void {
  const n = Math.min(head.length, AUTH_MAGIC.length);
  if (!head.subarray(0, n).equals(AUTH_MAGIC.subarray(0, n))) {
    throw new AuthenticationError(`${what}: not a data protocol authentication message (no "VSKYAUTH" magic): `
      + 'the peer does not authenticate (started without --data-key?)', { what });
  }
}

export function encodeHello(serverNonce: Buffer): Buffer {
  const out = Buffer.alloc(HELLO_SIZE);
  prefix(out, AUTH_VERSION);
  serverNonce.copy(out, PREFIX, 0, NONCE_SIZE);
  return out;
}

function checkVersion(buf: Buffer, what: string): void {
  checkMagic(buf, what);
  const version = buf[AUTH_MAGIC.length]!;
  if (version !== AUTH_VERSION) throw new AuthenticationError(`${what}: authentication version ${version}, this build speaks ${AUTH_VERSION}`, { what, version });
}

export function decodeHello(buf: Buffer): Hello {
  need(buf, HELLO_SIZE, 'authentication hello');
  checkVersion(buf, 'authentication hello');
  return { serverNonce: Buffer.from(buf.subarray(PREFIX, PREFIX + NONCE_SIZE)) };
}

export function encodeProof(clientNonce: Buffer, mac: Buffer): Buffer {
  const out = Buffer.alloc(PROOF_SIZE);
  prefix(out, AUTH_VERSION);
  clientNonce.copy(out, PREFIX, 0, NONCE_SIZE);
  mac.copy(out, PREFIX + NONCE_SIZE, 0, MAC_SIZE);
  return out;
}

export function decodeProof(buf: Buffer): Proof {
  need(buf, PROOF_SIZE, 'authentication proof');
  checkVersion(buf, 'authentication proof');
  return {
    clientNonce: Buffer.from(buf.subarray(PREFIX, PREFIX + NONCE_SIZE)),
    mac: Buffer.from(buf.subarray(PREFIX + NONCE_SIZE, PROOF_SIZE)),
  };
}

export function encodeVerdict(verdict: Verdict, mac: Buffer | undefined): Buffer {
  const out = Buffer.alloc(VERDICT_SIZE);
  prefix(out, verdict);
  mac?.copy(out, PREFIX, 0, MAC_SIZE);
  return out;
}

export function decodeVerdict(buf: Buffer): VerdictMessage {
  need(buf, VERDICT_SIZE, 'authentication verdict');
  checkMagic(buf, 'authentication verdict');
  const verdict = buf[AUTH_MAGIC.length]!;
  if (verdict !== Verdict.ACCEPTED && verdict !== Verdict.REFUSED) {
    throw new AuthenticationError(`authentication verdict: unknown verdict ${verdict}`, { verdict });
  }
  return { verdict, mac: Buffer.from(buf.subarray(PREFIX, VERDICT_SIZE)) };
}
