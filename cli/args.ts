/** Command-line parsing shared by the zos commands. */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { Tlog, ZosError } from '../tlog/index.ts';
import type { Out } from './output.ts';

export class UsageError extends ZosError {
  constructor(message: string) {
    super('CLI_USAGE', message);
  }
}

export interface Globals {
  dataDir: string;
  log: string | undefined;
  keyFile: string | undefined;
  json: boolean;
}

export type Opts = NonNullable<ParseArgsConfig['options']>;

/** Parse a command's arguments (plus --help and --json); a usage error shows `helpText`. */
export function parseCommand(args: string[], options: Opts, helpText: string): { values: Record<string, string | boolean | undefined>; positionals: string[] } {
  try {
    const r = parseArgs({
      args,
      options: { ...options, help: { type: 'boolean', short: 'h' }, json: { type: 'boolean' } },
      allowPositionals: true,
      strict: true,
    });
    return { values: r.values as Record<string, string | boolean | undefined>, positionals: r.positionals };
  } catch (err) {
    throw new UsageError(`${(err as Error).message.split('\n')[0]}\n\n${helpText}`);
  }
}

export function str(v: string | boolean | undefined): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

export function parseCount(v: string | undefined, flag: string): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v)) throw new UsageError(`${flag} takes a whole number (got "${v}")`);
  return Number(v);
}

export function parseBig(v: string | undefined, flag: string): bigint | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v)) throw new UsageError(`${flag} takes a whole number (got "${v}")`);
  return BigInt(v);
}

export async function openLog(g: Globals, out: Out, readOnly: boolean): Promise<Tlog> {
  return Tlog.open({
    dataDir: g.dataDir,
    readOnly,
    ...(g.keyFile === undefined ? {} : { keyFile: g.keyFile }),
    ...(g.log === undefined ? {} : { log: g.log }),
    onWarning: (m) => out.warn(m),
  });
}
