#!/usr/bin/env node
// zos entry point. zos needs Node 24 (it runs its TypeScript by type stripping);
// when started by an older node, re-run with the Node 24 the project installs.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const major = Number(process.versions.node.split('.')[0]);
if (major < 24) {
  const node = join(here, '..', 'node_modules', 'node', 'bin', 'node');
  if (!existsSync(node)) {
    process.stderr.write(`zos: needs Node.js 24 (this is ${process.version}); run npm install in ${join(here, '..')} first\n`);
    process.exit(1);
  }
  const child = spawn(node, [fileURLToPath(import.meta.url), ...process.argv.slice(2)], { stdio: 'inherit' });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => child.kill(sig));
  child.on('exit', (code, signal) => process.exit(code ?? (signal ? 128 + (signal === 'SIGINT' ? 2 : 15) : 1)));
} else {
  // `vdisk serve` re-executes itself (same pid) with its runtime settings: cli/serve-process.ts.
  const { execTunedServe } = await import('../cli/serve-process.ts');
  execTunedServe(fileURLToPath(import.meta.url), process.argv.slice(2));
  const { run } = await import('../cli/main.ts');
  await run(process.argv.slice(2));
}
