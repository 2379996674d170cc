/**
 * Log addresses:  kafka://host:port[,host:port…]/PREFIX
 * The log lives in topic "PREFIX.tlog" (one partition). PREFIX defaults to "zos".
 */
import { ZosError } from '../errors.ts';

export interface KafkaLogAddress {
  brokers: string[];
  prefix: string;
  topic: string;
}

const PREFIX = /^[A-Za-z0-9._-]{1,200}$/;

export function parseKafkaUrl(url: string): KafkaLogAddress {
  const m = /^kafka:\/\/([^/]+)(?:\/(.*))?$/.exec(url.trim());
  if (!m) throw new ZosError('TLOG_INVALID_ARGUMENT', `"${url}" is not a Kafka log address: use kafka://host:port[,host:port]/PREFIX`);
  const brokers = m[1]!.split(',').map((b) => b.trim()).filter((b) => b.length > 0);
  for (const b of brokers) {
    if (!/^[^:\s]+:\d{1,5}$/.test(b)) throw new ZosError('TLOG_INVALID_ARGUMENT', `broker "${b}" in ${url} must be host:port`);
  }
  if (brokers.length === 0) throw new ZosError('TLOG_INVALID_ARGUMENT', `${url} names no broker`);
  const prefix = m[2] && m[2].length > 0 ? m[2] : 'zos';
  if (!PREFIX.test(prefix)) throw new ZosError('TLOG_INVALID_ARGUMENT', `prefix "${prefix}" may only hold letters, digits, ".", "_" and "-"`);
  return { brokers, prefix, topic: `${prefix}.tlog` };
}

export function isKafkaUrl(s: string | undefined): s is string {
  return typeof s === 'string' && s.startsWith('kafka://');
}
