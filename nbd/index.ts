/** Public surface of nbd/: an NBD server library that knows block devices, not events. */
export { NbdServer } from './server.ts';
export type { NbdServerOptions } from './server.ts';
export { MemoryBlockDevice } from './block-device.ts';
export type { BlockDevice, ExportProvider, ExportInfo } from './block-device.ts';
export * as protocol from './protocol.ts';
