/** Shared types of the tlog API. Positions and versions are bigint. */

declare const positionBrand: unique symbol;
/** A global log position: totally ordered, one per event. */
export type Position = bigint & { readonly [positionBrand]: 'Position' };
export const asPosition = (n: bigint): Position => n as Position;

/** Stream version of an event: 0 for the first event of a stream. */
export type StreamVersion = bigint;
/** Version of a stream that has no events. */
export const NO_STREAM_VERSION = -1n;

/** Timestamps are Unix nanoseconds. */
export type TimeNs = bigint;

export type ExpectedVersion = 'any' | 'no-stream' | 'exists' | bigint;

export type EventPayload = unknown;

export interface EventInput {
  type: string;
  data: EventPayload;
  /** 16-byte id; a random UUIDv4 is generated when absent. */
  id?: string;
  /** Overrides the append's actor for this event. */
  actor?: string;
}

export interface AppendOptions {
  expectedVersion?: ExpectedVersion;
  actor?: string;
  correlationId?: string;
  causationId?: string;
}

export interface AppendResult {
  /** Position of the first appended event. */
  position: Position;
  /** Position of the last appended event. */
  lastPosition: Position;
  /** Stream version of the first appended event. */
  firstVersion: StreamVersion;
  /** Stream version of the last appended event (what to pass as expected version next). */
  nextExpectedVersion: StreamVersion;
  commitTimeNs: TimeNs;
}

export interface RecordedEvent {
  id: string;
  stream: string;
  type: string;
  version: StreamVersion;
  position: Position;
  /** When the event was created by the appender (ns). */
  timestampNs: TimeNs;
  /** When its entry was committed to the log (ns, non-decreasing with position). */
  commitTimeNs: TimeNs;
  actor: string | null;
  correlationId: string | null;
  causationId: string | null;
  schemaVersion: number;
  encoding: 'msgpack' | 'avro';
  data: EventPayload;
}
