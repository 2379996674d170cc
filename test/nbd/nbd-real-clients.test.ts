/**
 * The NBD server against real clients: nbdinfo, qemu-io, nbdcopy, qemu-img
 * and fio's nbd engine (spawned as separate processes, so the server's event
 * loop stays free while they run).
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryBlockDevice, NbdServer, type BlockDevice } from '../../nbd/index.ts';
import { tempDir } from '../helpers/tmp.ts';
import { toolsSkip } from '../helpers/tools.ts';

/** Run a client without blocking this process's event loop (the server lives here). */
function runAsync(cmd: string, args: string[], timeoutMs = 120_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('error', reject);
    p.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

const MiB = 1024 * 1024;

t.test('real NBD clients', { skip: toolsSkip(['nbdinfo', 'nbdcopy', 'qemu-io', 'qemu-img', 'fio']) }, async (t) => {
  const devices = new Map<string, BlockDevice>([
    ['web1', new MemoryBlockDevice(64 * MiB)],
    ['data', new MemoryBlockDevice(16 * MiB)],
    ['ro', new MemoryBlockDevice(4 * MiB, true)],
  ]);
  const errors: unknown[] = [];
  const server = new NbdServer({
    exports: { list: () => [...devices.keys()].map((name) => ({ name })), open: (n) => devices.get(n) ?? null },
    onError: (e) => errors.push(e),
  });
  const { port } = await server.listen(0);
  t.teardown(() => server.close());
  const uri = (name: string): string => `nbd://127.0.0.1:${port}/${name}`;

  t.test('nbdinfo sees the exports, sizes and flags', async (t) => {
    const list = await runAsync('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${port}`]);
    t.equal(list.code, 0, list.stderr);
    const info = JSON.parse(list.stdout) as { exports: Array<Record<string, unknown>> };
    const byName = new Map(info.exports.map((e) => [e['export-name'], e]));
    t.same([...byName.keys()].sort(), ['data', 'ro', 'web1']);
    t.equal(byName.get('web1')!['export-size'], 64 * MiB);
    t.equal(byName.get('data')!['export-size'], 16 * MiB);
    t.equal(byName.get('ro')!['is_read_only'], true);
    t.equal(byName.get('web1')!['is_read_only'], false);
    for (const flag of ['can_flush', 'can_fua', 'can_trim', 'can_zero']) t.equal(byName.get('web1')![flag], true, `web1 ${flag}`);
    t.equal(byName.get('ro')!['can_trim'], false);
    const one = await runAsync('nbdinfo', ['--json', uri('data')]);
    t.equal(one.code, 0, one.stderr);
    t.match(one.stdout, /"protocol": "newstyle-fixed"/);
  });

  t.test('qemu-io writes patterns and reads them back', async (t) => {
    const r = await runAsync('qemu-io', ['-f', 'raw',
      '-c', 'write -P 0xab 0 1M', '-c', 'write -P 0xcd 1M 64k', '-c', 'write -P 0x11 5000 3000', '-c', 'flush',
      '-c', 'read -P 0xab 0 4096', '-c', 'read -P 0x11 5000 3000', '-c', 'read -P 0xcd 1M 64k',
      '-c', 'write -z 2M 1M', '-c', 'read -P 0 2M 1M',
      '-c', 'discard 3M 64k', '-c', 'read -P 0 3M 64k',
      '-c', 'write -f -P 0x22 4M 4k', '-c', 'read -P 0x22 4M 4k',
      uri('web1')]);
    t.equal(r.code, 0, r.stderr);
    t.notMatch(r.stdout + r.stderr, /Pattern verification failed|error/i, 'every pattern verified');
    const ro = await runAsync('qemu-io', ['-f', 'raw', '-c', 'write 0 4k', uri('ro')]);
    t.not(ro.code, 0, 'a read-only export refuses writes');
  });

  t.test('nbdcopy round trip is byte-identical; qemu-img compare agrees', async (t) => {
    const dir = tempDir(t);
    const src = join(dir, 'src.img');
    const back = join(dir, 'back.img');
    writeFileSync(src, randomBytes(16 * MiB));
    let r = await runAsync('nbdcopy', [src, uri('data')]);
    t.equal(r.code, 0, r.stderr);
    r = await runAsync('nbdcopy', [uri('data'), back]);
    t.equal(r.code, 0, r.stderr);
    t.ok(readFileSync(back).equals(readFileSync(src)), 'byte-identical');
    r = await runAsync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, uri('data')]);
    t.equal(r.code, 0, `qemu-img compare: ${r.stdout}${r.stderr}`);
    const other = join(dir, 'other.img');
    const bytes = readFileSync(src);
    bytes[12345]! ^= 1;
    writeFileSync(other, bytes);
    r = await runAsync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', other, uri('data')]);
    t.equal(r.code, 1, 'qemu-img compare notices one changed byte');
  });

  t.test('a fio verify job passes (4k random writes, QD16, crc32c)', async (t) => {
    const r = await runAsync('fio', ['--name=verify', '--ioengine=nbd', `--uri=${uri('web1')}`, '--rw=randwrite', '--bs=4k',
      '--iodepth=16', '--size=16m', '--verify=crc32c', '--do_verify=1', '--verify_fatal=1', '--verify_state_save=0', '--output-format=json']);
    t.equal(r.code, 0, r.stderr);
    const job = (JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: Array<{ error: number; write: { total_ios: number }; read: { total_ios: number } }> }).jobs[0]!;
    t.equal(job.error, 0);
    t.ok(job.write.total_ios >= 4096, `wrote ${job.write.total_ios} blocks`);
    t.ok(job.read.total_ios >= 4096, `verified ${job.read.total_ios} blocks`);
  });

  t.test('several clients at once', async (t) => {
    const jobs = await Promise.all([0, 1, 2, 3].map((i) => runAsync('qemu-io', ['-f', 'raw', '-c', `write -P ${0x40 + i} ${i * 4}M 1M`, '-c', `read -P ${0x40 + i} ${i * 4}M 1M`, uri('web1')])));
    for (const [i, r] of jobs.entries()) t.equal(r.code, 0, `client ${i}: ${r.stderr}`);
    t.equal(errors.length, 0, 'no server errors');
  });
});
