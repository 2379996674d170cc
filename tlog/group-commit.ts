/**
 * Pieces every backend shares: the group-commit queue, expected-version
 * checks, planning a group of sealed entries into chained frames, and the
 * checks applied to every frame read back (position, chain link, versions).
 */
import { ZosError } from './errors.ts';
import { encodeFrameParts, encodeHeader, type Frame } from './frame.ts';
import type { BackendAppendResult, ChainSigner } from './backend.ts';
import type { SealedEntry } from './sealer.ts';
import type { ExpectedVersion } from './types.ts';
import type { EntryTable } from './entry-table.ts';

export interface PendingAppend {
  entry: SealedEntry;
  expected: ExpectedVersion;
  resolve: (r: BackendAppendResult) => void;
  reject: (e: unknown) => void;
}

/**
 * Queues appends and hands them to `commit` in groups: everything queued while
 * the previous group was being made durable goes into the next one.
 */
export class GroupCommitQueue {
  readonly #commit: (group: PendingAppend[]) => Promise<void>;
  readonly #maxBytes: number;
  #pending: PendingAppend[] = [];
  #flushing = false;
  #idle: Array<() => void> = [];

  constructor(commit: (group: PendingAppend[]) => Promise<void>, maxBytes: number) {
    this.#commit = commit;
    this.#maxBytes = maxBytes;
  }

  submit(entry: SealedEntry, expected: ExpectedVersion): Promise<BackendAppendResult> {
    return new Promise((resolve, reject) => {
      this.#pending.push({ entry, expected, resolve, reject });
      if (!this.#flushing) {
        this.#flushing = true;
        setImmediate(() => void this.#loop());
      }
    });
  }

  get busy(): boolean {
    return this.#flushing || this.#pending.length > 0;
  }

  /** Resolves once everything submitted so far has been committed or failed. */
  whenIdle(): Promise<void> {
    if (!this.busy) return Promise.resolve();
    return new Promise((r) => this.#idle.push(r));
  }

  async #loop(): Promise<void> {
    try {
      while (this.#pending.length > 0) {
        let bytes = 0;
        let n = 0;
        while (n < this.#pending.length && (n === 0 || bytes < this.#maxBytes)) {
          bytes += this.#pending[n]!.entry.ciphertext.length + 256;
          n++;
        }
        const group = this.#pending.splice(0, n);
        try {
          await this.#commit(group);
        } catch (err) {
          for (const p of group) p.reject(err);
        }
      }
    } finally {
      this.#flushing = false;
      const waiters = this.#idle;
      this.#idle = [];
      for (const w of waiters) w();
    }
  }
}

export function checkExpected(expected: ExpectedVersion, current: bigint): ZosError | null {
  const ok =
    expected === 'any' ||
    (expected === 'no-stream' && current === -1n) ||
    (expected === 'exists' && current >= 0n) ||
    (typeof expected === 'bigint' && expected === current);
  if (ok) return null;
  const want = typeof expected === 'bigint' ? expected.toString() : expected;
  const actual = current === -1n ? 'no-stream' : current.toString();
  return new ZosError('TLOG_VERSION_CONFLICT', `expected version ${want}, actual ${actual}`, {
    context: { expected: want, actual },
  });
}

export interface PlannedEntry {
  pending: PendingAppend;
  /** The frame as parts (prefix+header, ciphertext, chain) and its size. */
  parts: Buffer[];
  size: number;
  chain: Buffer;
  position: bigint;
  firstVersion: bigint;
  eventCount: number;
  streamKey: Buffer;
}

export interface GroupPlan {
  entries: PlannedEntry[];
  /** Appends refused for their expected version (not yet rejected). */
  conflicts: Array<{ pending: PendingAppend; error: ZosError }>;
  commitTimeNs: bigint;
}

/**
 * Assign positions, stream versions, one commit time and chain values to a
 * group, in order, checking each expected version against the table plus the
 * group's earlier entries.
 */
export function planGroup(
  group: PendingAppend[],
  table: EntryTable,
  lastChain: Buffer,
  lastTimeNs: bigint,
  nowNs: bigint,
  signer: ChainSigner,
): GroupPlan {
  const versions = new Map<string, bigint>();
  const entries: PlannedEntry[] = [];
  const conflicts: GroupPlan['conflicts'] = [];
  let head = table.head;
  let chain = lastChain;
  const time = nowNs > lastTimeNs ? nowNs : lastTimeNs + 1n;
  for (const p of group) {
    const k = p.entry.streamKey.toString('latin1');
    const current = versions.get(k) ?? table.stream(p.entry.streamKey)?.version ?? -1n;
    const conflict = checkExpected(p.expected, current);
    if (conflict) {
      conflicts.push({ pending: p, error: conflict });
      continue;
    }
    const headerBytes = encodeHeader({
      flags: p.entry.flags,
      eventCount: p.entry.eventCount,
      position: head,
      firstVersion: current + 1n,
      commitTimeNs: time,
      streamKey: p.entry.streamKey,
      prevChain: chain,
      nonce: p.entry.nonce,
    });
    chain = signer.chain(headerBytes, p.entry.tag);
    const { parts, size } = encodeFrameParts(headerBytes, p.entry.ciphertext, chain);
    entries.push({
      pending: p,
      parts,
      size,
      chain,
      position: head,
      firstVersion: current + 1n,
      eventCount: p.entry.eventCount,
      streamKey: p.entry.streamKey,
    });
    versions.set(k, current + BigInt(p.entry.eventCount));
    head += BigInt(p.entry.eventCount);
  }
  return { entries, conflicts, commitTimeNs: time };
}

/** The checks every frame read back must pass before it joins the table. */
export function checkFrameLinks(f: Frame, table: EntryTable, lastChain: Buffer, where: string): void {
  if (f.position !== table.head) {
    throw new ZosError('TLOG_CORRUPT', `entry at ${where} claims position ${f.position}, expected ${table.head}; run zos log verify`, {
      context: { position: table.head },
    });
  }
  if (!f.prevChain.equals(lastChain)) {
    throw new ZosError('TLOG_CHAIN_BROKEN', `hash chain broken at position ${f.position}: the entry does not link to the one before it; run zos log verify`, {
      context: { position: f.position },
    });
  }
  const current = table.stream(f.streamKey)?.version ?? -1n;
  if (f.firstVersion !== current + 1n) {
    throw new ZosError('TLOG_CORRUPT', `entry at position ${f.position} continues its stream at version ${f.firstVersion}, but the stream is at ${current}; run zos log verify`, {
      context: { position: f.position },
    });
  }
}
