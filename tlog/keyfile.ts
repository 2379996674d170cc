/**
 * Master key files. Format v1, one line:  zos-master-key v1 <base64 of 32 bytes>
 * Created with mode 0600 in a 0700 directory. Keys are never printed or logged.
 */
import { readFileSync, statSync, writeFileSync, mkdirSync, existsSync } from 'node:fs';
import { dirname } from 'node:path';
import { KEY_BYTES, randomBytes } from './crypto.ts';
import { ZosError } from './errors.ts';

const PREFIX = 'zos-master-key v1 ';

export function createKeyFile(path: string): Buffer {
  if (existsSync(path)) {
    throw new ZosError('TLOG_KEY_EXISTS', `a key file already exists at ${path}; zos will not overwrite a key (the log it encrypts would become unreadable)`);
  }
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const key = randomBytes(KEY_BYTES);
  writeFileSync(path, `${PREFIX}${key.toString('base64')}\n`, { mode: 0o600, flag: 'wx' });
  return key;
}

export interface LoadedKey {
  key: Buffer;
  /** Set when the file is readable by group or others. */
  warning: string | null;
}

export function loadKeyFile(path: string): LoadedKey {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new ZosError('TLOG_NO_KEY', `no master key at ${path}: run zos init to create a data directory and key, or point --key-file / ZOS_KEY_FILE at your key`);
    }
    throw new ZosError('TLOG_NO_KEY', `cannot read the key file ${path}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`, { cause: err });
  }
  const line = text.trim();
  if (!line.startsWith(PREFIX)) {
    throw new ZosError('TLOG_KEY_FILE_INVALID', `${path} is not a zos key file (expected a line starting "${PREFIX.trim()}")`);
  }
  const key = Buffer.from(line.slice(PREFIX.length), 'base64');
  if (key.length !== KEY_BYTES) {
    throw new ZosError('TLOG_KEY_FILE_INVALID', `${path} holds a key of ${key.length} bytes; a zos master key has ${KEY_BYTES}`);
  }
  const mode = statSync(path).mode & 0o777;
  const warning = mode & 0o077 ? `key file ${path} is readable by other users (mode ${mode.toString(8)}); run chmod 600 ${path}` : null;
  return { key, warning };
}
