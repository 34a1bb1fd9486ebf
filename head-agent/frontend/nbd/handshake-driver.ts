// Drives the NBD handshake over one socket: sends the greeting, feeds the
// client flags and option frames to the Handshake state machine, writes its
// replies, and resolves with the chosen export (plus any bytes that arrived
// after the final option, which belong to the transmission phase, and the
// socket to serve it on: a TLS socket after NBD_OPT_STARTTLS) or with the
// reason the connection was closed. Removes all its listeners before resolving.

import * as tls from 'node:tls';
import type { Socket } from 'node:net';
import type { BlockDevice, ExportRegistry } from '../../engine/block-device.js';
import { errorMessage, ProtocolError } from '../../../shared/errors.js';
import { FrameDecoder } from '../../../shared/frame-decoder.js';
import type { Logger } from '../../../shared/logger.js';
import { CLIENT_FLAGS_SPEC, OPTION_SPEC, encodeGreeting } from './codec.js';
import { CLOSE_GRACE_MS } from './constants.js';
import { Handshake, type HandshakeStep, type NbdTlsMode } from './handshake.js';

export type NegotiationResult =
  | { kind: 'transmit'; socket: Socket; device: BlockDevice; exportName: string; structured: boolean; leftover: Buffer | undefined; size: number; blockStatus: boolean }
  | { kind: 'closed'; reason: string };

/** The head's NBD TLS settings (--nbd-tls*). */
export interface NbdTlsSettings {
  mode: Exclude<NbdTlsMode, 'off'>;
  context: tls.SecureContext;
  /** Ask for and check client certificates against the CA (--nbd-tls-ca given). */
  verifyClients: boolean;
}

export function negotiate(plain: Socket, registry: ExportRegistry, log: Logger, tlsSettings?: NbdTlsSettings): Promise<NegotiationResult> {
  return new Promise((resolve) => {
    const handshake = new Handshake(registry, tlsSettings?.mode ?? 'off');
    const flagsDecoder = new FrameDecoder(CLIENT_FLAGS_SPEC);
    let optionDecoder = new FrameDecoder(OPTION_SPEC);
    let socket = plain;
    let gotFlags = false;
    let settled = false;

    const listen = (s: Socket): void => {
      s.on('data', onData);
      s.on('drain', onDrain);
      s.on('error', onError);
      s.on('close', onClose);
      s.on('end', onEnd);
    };
    const unlisten = (s: Socket): void => {
      s.off('data', onData);
      s.off('drain', onDrain);
      s.off('error', onError);
      s.off('close', onClose);
      s.off('end', onEnd);
    };

    const finish = (result: NegotiationResult): void => {
      if (settled) return;
      settled = true;
      unlisten(socket);
      if (result.kind === 'closed') socket.on('error', ignoreError);
      resolve(result);
    };

    const hangUp = (reason: string, clean: boolean): void => {
      if (clean) log.debug({ reason }, 'NBD negotiation ended by the client');
      else log.warn({ reason }, 'NBD negotiation failed; closing the connection');
      finish({ kind: 'closed', reason });
      // Let queued replies (an ABORT's ACK) reach the client, then close;
      // destroy anyway if the client stops reading.
      if (!socket.destroyed) {
        const s = socket;
        s.end(() => s.destroy());
        setTimeout(() => s.destroy(), CLOSE_GRACE_MS).unref();
      }
    };

    /** NBD_OPT_STARTTLS was ACKed: the TLS handshake, then negotiation goes on over the TLS socket. */
    const startTls = (settings: NbdTlsSettings): void => {
      if (optionDecoder.bufferedBytes > 0) {
        hangUp('client sent data after NBD_OPT_STARTTLS before our reply', false);
        return;
      }
      unlisten(socket);
      const secure = new tls.TLSSocket(socket, {
        isServer: true, secureContext: settings.context, requestCert: settings.verifyClients, rejectUnauthorized: settings.verifyClients,
      });
      socket = secure;
      secure.on('error', onError);
      secure.on('close', onClose);
      secure.once('secure', () => {
        secure.off('error', onError);
        secure.off('close', onClose);
        handshake.tlsStarted();
        optionDecoder = new FrameDecoder(OPTION_SPEC);
        log.debug({ protocol: secure.getProtocol(), client: secure.getPeerCertificate()?.subject?.CN }, 'NBD connection upgraded to TLS');
        listen(secure);
      });
    };

    /** Writes the step's replies; returns true when this socket's negotiation is over (or moves to TLS). */
    const apply = (step: HandshakeStep, chunk: Buffer, decoder: { readonly bufferedBytes: number }): boolean => {
      if (step.replies.length > 0 && socket.writable) {
        socket.cork();
        let ok = true;
        for (const r of step.replies) ok = socket.write(r);
        socket.uncork();
        if (!ok) socket.pause();
      }
      if (step.kind === 'continue') return false;
      if (step.kind === 'close') {
        hangUp(step.reason, step.clean);
        return true;
      }
      if (step.kind === 'starttls') {
        startTls(tlsSettings!);
        return true;
      }
      // The final option ended inside `chunk`, so every byte the decoder
      // still holds is the tail of `chunk`.
      const left = decoder.bufferedBytes;
      finish({
        kind: 'transmit', socket, device: step.device, exportName: step.exportName, structured: step.structured, size: step.size, blockStatus: step.blockStatus,
        leftover: left > 0 ? chunk.subarray(chunk.length - left) : undefined,
      });
      return true;
    };

    function onData(chunk: Buffer): void {
      if (settled) return;
      try {
        let rest: Buffer | undefined = chunk;
        if (!gotFlags) {
          flagsDecoder.push(chunk);
          const frame = flagsDecoder.next();
          if (frame === undefined) return;
          gotFlags = true;
          if (apply(handshake.clientFlags(frame.header), chunk, flagsDecoder)) return;
          const left = flagsDecoder.bufferedBytes;
          rest = left > 0 ? chunk.subarray(chunk.length - left) : undefined;
          if (rest === undefined) return;
        }
        const decoder = optionDecoder;
        decoder.push(rest);
        for (;;) {
          const frame = decoder.next();
          if (frame === undefined) return;
          if (apply(handshake.option(frame.header, frame.payload), rest, decoder)) return;
        }
      } catch (err) {
        // Garbage on the wire (bad magic, oversized option) or a registry
        // failure: this connection goes, the server stays.
        const reason = err instanceof ProtocolError ? err.message : `internal error: ${errorMessage(err)}`;
        log.warn({ reason }, 'NBD negotiation failed; closing the connection');
        finish({ kind: 'closed', reason });
        socket.destroy();
      }
    }
    function onDrain(): void { socket.resume(); }
    function onError(err: Error): void {
      if (socket instanceof tls.TLSSocket) {
        // A failed TLS handshake (no or a bad client certificate, a plaintext client after our ACK): refused and logged.
        log.warn({ reason: errorMessage(err) }, 'NBD TLS failed; closing the connection');
        finish({ kind: 'closed', reason: `TLS: ${errorMessage(err)}` });
        socket.destroy();
        return;
      }
      log.debug({ err: errorMessage(err) }, 'socket error during NBD negotiation');
    }
    function onClose(): void {
      finish({ kind: 'closed', reason: 'client closed the connection during negotiation' });
    }
    function onEnd(): void {
      // The client will send nothing more: nothing left to negotiate.
      if (!settled) hangUp('client closed the connection during negotiation', true);
    }

    listen(socket);
    socket.write(encodeGreeting());
  });
}

function ignoreError(): void {}
