/** Public surface of vdisk/: virtual disks whose every write is in the tlog. */
export { VdiskManager, CATALOG_STREAM } from './manager.ts';
export type { Target, VdiskInfo, HistoryEntry, ManagerOptions } from './manager.ts';
export { Vdisk } from './vdisk.ts';
export type { Progress } from './vdisk.ts';
export { BlockStore, BLOCK_STORE_FORMAT_VERSION } from './block-store.ts';
export { VDISK_SCHEMAS, VDISK_STREAM_PREFIX, validateVdiskName } from './events.ts';
export { VdiskHost, callVdiskHost, dispatchVdiskOp, vdiskHostName, CONTROL_PROTOCOL_VERSION } from './host.ts';
export type { VdiskOp, OpSink } from './host.ts';
