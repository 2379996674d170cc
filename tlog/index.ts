/** Public surface of tlog/: the log API, its types and errors. */
export { Tlog, initDataDir, readDataDirMeta, defaultKeyFile, SCHEMA_STREAM, DATA_DIR_FORMAT_VERSION } from './tlog.ts';
export type { TlogOpenOptions, ReadStreamOptions, StartFrom, SubscribeOptions, VerifyReport, VerifyProblem, InitResult, DataDirMeta } from './tlog.ts';
export { ZosError, isZosError, ERROR_CODES } from './errors.ts';
export type { ErrorCode } from './errors.ts';
export { asPosition, NO_STREAM_VERSION } from './types.ts';
export type { Position, StreamVersion, TimeNs, ExpectedVersion, EventInput, AppendOptions, AppendResult, RecordedEvent } from './types.ts';
export type { LogBackend, BackendStats, BackendAppendResult, ChainSigner, TailState } from './backend.ts';
export { FileBackend } from './file/file-backend.ts';
export type { KafkaBackend, KafkaBackendOptions } from './kafka/kafka-backend.ts';
export { parseKafkaUrl, isKafkaUrl } from './kafka/kafka-url.ts';
export type { KafkaLogAddress } from './kafka/kafka-url.ts';
export type { FileBackendOptions } from './file/file-backend.ts';
export { RECORD_FORMAT_VERSION } from './record.ts';
export { FRAME_VERSION } from './frame.ts';
export { nowNs } from './clock.ts';
