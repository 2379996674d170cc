/**
 * One error type for the whole platform. Every failure carries a stable string
 * `code` (listed in ERROR_CODES), a `retriable` flag, optional `cause`, and
 * context fields. Messages say what went wrong and what to do next; they never
 * contain key material or plaintext payloads.
 */

export const ERROR_CODES = {
  TLOG_VERSION_CONFLICT: 'the stream is not at the expected version',
  TLOG_NO_KEY: 'no master key found',
  TLOG_WRONG_KEY: 'the master key does not match the log',
  TLOG_KEY_FILE_INVALID: 'the key file is malformed',
  TLOG_KEY_EXISTS: 'a master key already exists',
  TLOG_NOT_INITIALIZED: 'the data directory was not initialised',
  TLOG_CORRUPT: 'the log contains a corrupt entry',
  TLOG_TORN_TAIL: 'the log ends in an incomplete entry',
  TLOG_DECRYPT_FAILED: 'an entry failed authentication',
  TLOG_CHAIN_BROKEN: 'the hash chain does not link',
  TLOG_BAD_RECORD: 'a record could not be decoded',
  TLOG_BAD_FRAME: 'a frame could not be decoded',
  TLOG_ENTRY_TOO_LARGE: 'an append exceeds the maximum entry size',
  TLOG_INVALID_ARGUMENT: 'an argument is invalid',
  TLOG_UNKNOWN_SCHEMA: 'an event payload schema is not registered',
  TLOG_SCHEMA_INCOMPATIBLE: 'a payload schema cannot read an older version',
  TLOG_CLOSED: 'the log was closed',
  TLOG_LOCK_TIMEOUT: 'could not take the writer lock in time',
  TLOG_IO: 'an I/O operation failed',
  TLOG_BACKEND_UNAVAILABLE: 'the log backend (Kafka) cannot be reached',
  TLOG_FENCED: 'another writer took over the log',
  TLOG_UNSUPPORTED_FORMAT: 'a file has an unsupported format version',
  VDISK_NOT_FOUND: 'no vdisk has that name',
  VDISK_EXISTS: 'a vdisk with that name already exists',
  VDISK_INVALID: 'a vdisk argument is invalid',
  VDISK_BUSY: 'the vdisks are served by another process',
  VDISK_VIEW_CORRUPT: 'a vdisk block store (a cache) is damaged',
  VDISK_FAILED: 'a vdisk stopped accepting writes after a log failure',
  CLI_USAGE: 'the command line is invalid',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export interface ZosErrorOptions {
  retriable?: boolean;
  cause?: unknown;
  context?: Record<string, unknown>;
}

export class ZosError extends Error {
  readonly code: ErrorCode;
  readonly retriable: boolean;
  readonly context: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, options: ZosErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ZosError';
    this.code = code;
    this.retriable = options.retriable ?? false;
    this.context = options.context ?? {};
  }
}

export function isZosError(err: unknown, code?: ErrorCode): err is ZosError {
  return err instanceof ZosError && (code === undefined || err.code === code);
}

/** Wrap a Node I/O error without leaking anything but the path and errno. */
export function ioError(what: string, err: unknown): ZosError {
  const e = err as NodeJS.ErrnoException;
  const retriable = e?.code === 'EAGAIN' || e?.code === 'EBUSY' || e?.code === 'EINTR';
  return new ZosError('TLOG_IO', `${what}: ${e?.code ?? ''} ${e?.message ?? String(err)}`.trim(), {
    retriable,
    cause: err,
  });
}
