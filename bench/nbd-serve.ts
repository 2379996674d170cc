/**
 * Our NBD server on its own, for bench/nbd.ts: one export of a
 * MemoryBlockDevice (or, with --file, a raw file) in a process of its own,
 * so that the benchmark driver and fio's load do not share its event loop.
 *
 *   node bench/nbd-serve.ts --size BYTES [--name NAME] [--file PATH] [--port 0]
 *
 * Once listening it prints one JSON line, {"port":N,"pid":P}. Then, for each
 * line "stats" on stdin, it prints one JSON line of memory figures and
 * counters. It exits when stdin closes (the parent went away) or on
 * SIGTERM / SIGINT. Server errors (onError) are counted and printed on stderr.
 */
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { MemoryBlockDevice, NbdServer, type BlockDevice } from '../nbd/index.ts';
import { FileBlockDevice } from './file-block-device.ts';

const { values } = parseArgs({
  options: {
    size: { type: 'string' },
    name: { type: 'string', default: 'bench' },
    file: { type: 'string' },
    port: { type: 'string', default: '0' },
    host: { type: 'string', default: '127.0.0.1' },
  },
  strict: true,
});
const size = Number(values.size);
if (!Number.isSafeInteger(size) || size <= 0) {
  process.stderr.write('nbd-serve: --size BYTES is required (a positive integer)\n');
  process.exit(2);
}
const name = values.name;
const dev: BlockDevice = values.file ? await FileBlockDevice.open(values.file, { size }) : new MemoryBlockDevice(size);

let errors = 0;
let opened = 0;
const server = new NbdServer({
  exports: {
    list: () => [{ name }],
    open: (n) => {
      if (n !== name) return null;
      opened++;
      return dev;
    },
  },
  onError: (err) => {
    errors++;
    if (errors <= 20) process.stderr.write(`nbd-serve: server error: ${(err as Error)?.stack ?? String(err)}\n`);
  },
});
const addr = await server.listen(Number(values.port), values.host);
process.stdout.write(`${JSON.stringify({ port: addr.port, pid: process.pid, backend: values.file ? 'file' : 'memory' })}\n`);

let closing = false;
const shutdown = async (code: number): Promise<void> => {
  if (closing) return;
  closing = true;
  const force = setTimeout(() => process.exit(code), 2000);
  force.unref();
  await server.close().catch(() => {});
  if (dev instanceof FileBlockDevice) await dev.close().catch(() => {});
  process.exit(code);
};
process.once('SIGTERM', () => void shutdown(0));
process.once('SIGINT', () => void shutdown(0));

const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  if (line.trim() !== 'stats') return;
  const m = process.memoryUsage();
  process.stdout.write(
    `${JSON.stringify({ rss: m.rss, heapTotal: m.heapTotal, heapUsed: m.heapUsed, external: m.external, arrayBuffers: m.arrayBuffers, connections: server.connections, opened, errors })}\n`,
  );
});
lines.on('close', () => void shutdown(0));
