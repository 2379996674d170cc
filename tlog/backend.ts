/**
 * The storage contract every log backend implements (file, kafka). Backends
 * store sealed, opaque entries: they see keyed stream hashes, never names or
 * plaintext. They assign positions, stream versions and commit times, check
 * expected versions, and link entries into the keyed hash chain.
 */
import type { Frame } from './frame.ts';
import type { SealedEntry } from './sealer.ts';
import type { ExpectedVersion } from './types.ts';

export interface BackendAppendResult {
  position: bigint;
  firstVersion: bigint;
  commitTimeNs: bigint;
}

/** Computes the chain value of an entry: keyed, so only key holders can. */
export interface ChainSigner {
  readonly keyId: Buffer;
  chain(header: Uint8Array, tag: Uint8Array): Buffer;
}

export interface BackendStats {
  kind: string;
  entries: number;
  events: bigint;
  streams: number;
  bytes: number;
  segments: number;
  firstCommitTimeNs: bigint | null;
  lastCommitTimeNs: bigint | null;
  location: string;
}

export type TailState = { kind: 'clean' } | { kind: 'torn'; bytes: number; position: bigint };

export interface LogBackend {
  readonly kind: string;
  /** Append one entry atomically if the stream is at the expected version. Resolves once durable. */
  append(entry: SealedEntry, expected: ExpectedVersion): Promise<BackendAppendResult>;
  /** The stream's current version, -1n when it has no events. */
  streamVersion(streamKey: Buffer): Promise<bigint>;
  /** Frames of one stream holding versions >= fromVersion (forward) or <= fromVersion (backward). */
  readStreamFrames(streamKey: Buffer, fromVersion: bigint, direction: 'forward' | 'backward'): AsyncIterable<Frame>;
  /** Frames from the one holding `fromPosition` to the current end, in log order. */
  readFrames(fromPosition: bigint): AsyncIterable<Frame>;
  /** Every frame from the start, found without indexes; throws TLOG_CORRUPT naming the position. */
  scanAll(): AsyncIterable<Frame>;
  /** What follows the last valid frame. */
  tailState(): Promise<TailState>;
  /** The next position to be assigned (= number of events in the log). */
  headPosition(): Promise<bigint>;
  /** The first position whose commit time is >= timeNs (headPosition() when none). */
  positionForTime(timeNs: bigint): Promise<bigint>;
  /** Resolves when the log grows past `afterPosition` (true) or on abort/timeout (false). */
  waitForAppend(afterPosition: bigint, signal?: AbortSignal, timeoutMs?: number): Promise<boolean>;
  stats(): Promise<BackendStats>;
  close(): Promise<void>;
}
