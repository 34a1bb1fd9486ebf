import { InvalidArgumentError } from './errors.js';

const UNITS: Record<string, number> = {
  '': 1, b: 1,
  k: 1024, kb: 1024, kib: 1024,
  m: 1024 ** 2, mb: 1024 ** 2, mib: 1024 ** 2,
  g: 1024 ** 3, gb: 1024 ** 3, gib: 1024 ** 3,
  t: 1024 ** 4, tb: 1024 ** 4, tib: 1024 ** 4,
};

/** Parses "64M", "2GiB", "1t", "4096" into bytes (binary units). */
export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m ? UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) {
    throw new InvalidArgumentError(`invalid size "${text}": use a number with an optional unit, e.g. 512M, 2G, 1T`, { text });
  }
  const bytes = Math.round(Number(m[1]) * unit);
  if (!Number.isSafeInteger(bytes) || bytes <= 0) {
    throw new InvalidArgumentError(`invalid size "${text}": must be a positive number of bytes`, { text });
  }
  return bytes;
}

/** Formats bytes for humans: 2147483648 -> "2.0 GiB". */
export function formatSize(bytes: number): string {
  const names = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < names.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${names[i]}`;
}

/**
 * Formats bytes in the largest binary unit that holds them exactly, as a
 * person would type them back: 2147483648 -> "2 GiB", 1610612736 ->
 * "1536 MiB", 1000 -> "1000 B". parseSize reads every result.
 */
export function formatSizeExact(bytes: number): string {
  const names = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && v % 1024 === 0 && i < names.length - 1) { v /= 1024; i++; }
  return `${v} ${names[i]}`;
}

/** Parses "HOST:PORT" (IPv4 or name) into parts. */
export function parseHostPort(text: string, what = 'address'): { host: string; port: number } {
  const m = /^([^:\s]+):(\d{1,5})$/.exec(text.trim());
  const port = m ? Number(m[2]) : NaN;
  if (!m || port < 0 || port > 65535) {
    throw new InvalidArgumentError(`invalid ${what} "${text}": expected HOST:PORT, e.g. 127.0.0.1:7700`, { text });
  }
  return { host: m[1]!, port };
}
