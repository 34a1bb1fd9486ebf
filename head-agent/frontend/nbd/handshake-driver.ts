// Drives the NBD handshake over one socket: sends the greeting, feeds the
// client flags and option frames to the Handshake state machine, writes its
// replies, and resolves with the chosen export (plus any bytes that arrived
// after the final option, which belong to the transmission phase) or with the
// reason the connection was closed. Removes all its listeners before resolving.

import type { Socket } from 'node:net';
import type { BlockDevice, ExportRegistry } from '../../engine/block-device.js';
import { errorMessage, ProtocolError } from '../../../shared/errors.js';
import { FrameDecoder } from '../../../shared/frame-decoder.js';
import type { Logger } from '../../../shared/logger.js';
import { CLIENT_FLAGS_SPEC, OPTION_SPEC, encodeGreeting } from './codec.js';
import { CLOSE_GRACE_MS } from './constants.js';
import { Handshake, type HandshakeStep } from './handshake.js';

export type NegotiationResult =
  | { kind: 'transmit'; device: BlockDevice; exportName: string; structured: boolean; leftover: Buffer | undefined; size: number }
  | { kind: 'closed'; reason: string };

export function negotiate(socket: Socket, registry: ExportRegistry, log: Logger): Promise<NegotiationResult> {
  return new Promise((resolve) => {
    const handshake = new Handshake(registry);
    const flagsDecoder = new FrameDecoder(CLIENT_FLAGS_SPEC);
    const optionDecoder = new FrameDecoder(OPTION_SPEC);
    let gotFlags = false;
    let settled = false;

    const finish = (result: NegotiationResult): void => {
      if (settled) return;
      settled = true;
      socket.off('data', onData);
      socket.off('drain', onDrain);
      socket.off('error', onError);
      socket.off('close', onClose);
      socket.off('end', onEnd);
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
        socket.end(() => socket.destroy());
        setTimeout(() => socket.destroy(), CLOSE_GRACE_MS).unref();
      }
    };

    /** Writes the step's replies; returns true when negotiation is over. */
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
      // The final option ended inside `chunk`, so every byte the decoder
      // still holds is the tail of `chunk`.
      const left = decoder.bufferedBytes;
      finish({
        kind: 'transmit', device: step.device, exportName: step.exportName, structured: step.structured, size: step.size,
        leftover: left > 0 ? chunk.subarray(chunk.length - left) : undefined,
      });
      return true;
    };

    const onData = (chunk: Buffer): void => {
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
        optionDecoder.push(rest);
        for (;;) {
          const frame = optionDecoder.next();
          if (frame === undefined) return;
          if (apply(handshake.option(frame.header, frame.payload), rest, optionDecoder)) return;
        }
      } catch (err) {
        // Garbage on the wire (bad magic, oversized option) or a registry
        // failure: this connection goes, the server stays.
        const reason = err instanceof ProtocolError ? err.message : `internal error: ${errorMessage(err)}`;
        log.warn({ reason }, 'NBD negotiation failed; closing the connection');
        finish({ kind: 'closed', reason });
        socket.destroy();
      }
    };
    const onDrain = (): void => { socket.resume(); };
    const onError = (err: Error): void => {
      log.debug({ err: errorMessage(err) }, 'socket error during NBD negotiation');
    };
    const onClose = (): void => {
      finish({ kind: 'closed', reason: 'client closed the connection during negotiation' });
    };
    const onEnd = (): void => {
      // The client will send nothing more: nothing left to negotiate.
      if (!settled) hangUp('client closed the connection during negotiation', true);
    };

    socket.on('data', onData);
    socket.on('drain', onDrain);
    socket.on('error', onError);
    socket.on('close', onClose);
    socket.on('end', onEnd);
    socket.write(encodeGreeting());
  });
}

function ignoreError(): void {}
