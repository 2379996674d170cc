/** Output helpers: human text by default, one JSON object per line with --json. */
import type { RecordedEvent } from '../tlog/index.ts';
import { formatTime } from './time.ts';

export interface Out {
  json: boolean;
  line(text: string): void;
  obj(o: Record<string, unknown>): void;
  warn(text: string): void;
  progress(text: string): void;
  endProgress(): void;
}

/** JSON with bigint as number when safe, else string. */
export function toJsonLine(o: unknown): string {
  return JSON.stringify(o, (_k, v: unknown) => {
    if (typeof v === 'bigint') return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString();
    if (v instanceof Uint8Array) return Buffer.from(v).toString('base64');
    return v;
  });
}

export function makeOut(json: boolean, stdout: NodeJS.WriteStream = process.stdout, stderr: NodeJS.WriteStream = process.stderr): Out {
  let progressShown = false;
  const tty = Boolean(stderr.isTTY) && !json;
  return {
    json,
    line: (text) => void stdout.write(text + '\n'),
    obj: (o) => void stdout.write(toJsonLine(o) + '\n'),
    warn: (text) => void stderr.write(`zos: warning: ${text}\n`),
    progress: (text) => {
      if (!tty) return;
      stderr.write(`\r\x1b[K${text}`);
      progressShown = true;
    },
    endProgress: () => {
      if (progressShown) stderr.write('\r\x1b[K');
      progressShown = false;
    },
  };
}

export function eventJson(e: RecordedEvent): Record<string, unknown> {
  return {
    position: e.position,
    stream: e.stream,
    version: e.version,
    type: e.type,
    id: e.id,
    time: formatTime(e.commitTimeNs),
    commitTimeNs: e.commitTimeNs.toString(),
    timestampNs: e.timestampNs.toString(),
    actor: e.actor,
    correlationId: e.correlationId,
    causationId: e.causationId,
    encoding: e.encoding,
    schemaVersion: e.schemaVersion,
    data: e.data,
  };
}

function dataText(d: unknown): string {
  const s = toJsonLine(d);
  return s.length > 200 ? s.slice(0, 197) + '...' : s;
}

/** One human line per event. */
export function eventLine(e: RecordedEvent, withStream: boolean): string {
  const parts = [
    `@${e.position}`.padStart(8),
    formatTime(e.commitTimeNs).slice(0, 23) + 'Z',
    withStream ? `${e.stream}#${e.version}` : `v${e.version}`,
    e.type,
    e.actor ? `by ${e.actor}` : '',
    dataText(e.data),
  ];
  return parts.filter((p) => p !== '').join('  ');
}

export function humanBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(u === 0 ? 0 : 1)} ${units[u]}`;
}
