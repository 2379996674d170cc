/** TIME arguments: ISO-8601 (with up to nanosecond fractions) or Unix nanoseconds. */
import { ZosError } from '../tlog/index.ts';

const ISO = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?\d{2})$/;
const DATE_ONLY = /^\d{4}-\d{2}-\d{2}$/;

export function parseTime(text: string, flag = 'TIME'): bigint {
  const s = text.trim();
  if (/^\d+$/.test(s)) return BigInt(s);
  if (DATE_ONLY.test(s)) {
    const ms = Date.parse(`${s}T00:00:00Z`);
    if (!Number.isNaN(ms)) return BigInt(ms) * 1_000_000n;
  }
  const m = ISO.exec(s);
  if (m) {
    const ms = Date.parse(`${m[1]}${m[3]}`);
    if (!Number.isNaN(ms)) {
      const frac = (m[2] ?? '').padEnd(9, '0');
      return BigInt(ms) * 1_000_000n + BigInt(frac);
    }
  }
  throw new ZosError('CLI_USAGE', `${flag} "${text}" is not a time: use ISO-8601 (2026-11-21T10:42:00Z, 2026-11-21T10:42:00.123+01:00) or Unix nanoseconds`);
}

export function formatTime(ns: bigint): string {
  const ms = ns / 1_000_000n;
  const iso = new Date(Number(ms)).toISOString(); // ...sss Z
  const frac = (ns % 1_000_000_000n).toString().padStart(9, '0');
  return `${iso.slice(0, 19)}.${frac}Z`;
}
