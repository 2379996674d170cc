/** Public surface of projections/. */
export { AuditIndex } from './audit-index.ts';
export type { AuditQuery } from './audit-index.ts';
