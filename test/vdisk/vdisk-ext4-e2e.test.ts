/**
 * End to end through the CLI and the kernel: an ext4 filesystem on a vdisk,
 * rolled back to before its files were written and forward again.
 *
 *   zos init; zos vdisk create disk1 --size 256M; zos vdisk serve (a child)
 *   nbdfuse exposes nbd://…/disk1 as a file; mkfs.ext4; snapshot "after-mkfs"
 *   mount -o loop; write files; sync; umount
 *   rollback --snapshot after-mkfs  → e2fsck -fn clean, the files are gone
 *   rollback --to @LAST_WRITE_BEFORE_THE_ROLLBACK → e2fsck clean, same files, same sha256
 *
 * Order around a rollback: the server disconnects the vdisk's NBD clients
 * when it rolls back, and nbdfuse does not reconnect (its reads then fail
 * with "Transport endpoint is not connected"). So each rollback is done with
 * the filesystem unmounted and nbdfuse stopped: umount (the loop device goes
 * with it: autoclear) → fusermount3 -u (nbdfuse exits) → zos vdisk rollback →
 * start nbdfuse again → e2fsck / mount.
 *
 * Needs root (loop mounts), /dev/fuse, nbdfuse (libnbd-bin), fusermount3
 * (fuse3), mkfs.ext4 and e2fsck (e2fsprogs). Skipped with the reason outside
 * CI when any is missing; in CI a missing one fails the test.
 */
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir, waitFor } from '../helpers/tmp.ts';
import { missingTools } from '../helpers/tools.ts';
import { inCI, jsonLines, runAsync, sha256, startServe, zos, type Serve } from '../helpers/zos-vdisk.ts';

const SIZE = 256 * 1024 * 1024;
const TOOLS = ['nbdfuse', 'fusermount3', 'mkfs.ext4', 'e2fsck', 'mount', 'umount', 'losetup'];

/** Why this machine cannot run the test, or null. */
function unmet(): string | null {
  const why: string[] = [];
  if (process.getuid?.() !== 0) why.push('not root (loop mounts need root)');
  if (!existsSync('/dev/fuse')) why.push('no /dev/fuse');
  const missing = missingTools(TOOLS);
  if (missing.length) why.push(`missing ${missing.join(', ')} (apt-get install libnbd-bin fuse3 e2fsprogs)`);
  return why.length ? why.join('; ') : null;
}

const skip = ((): string | false => {
  if (inCI()) return false;
  const why = unmet();
  return why ? `${why}; never skipped in CI` : false;
})();

const mounted = (path: string): boolean => readFileSync('/proc/self/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === path);

t.test('ext4 on a vdisk: files written, rolled back (gone, fsck clean), rolled forward (back, same checksums)', { skip }, async (t) => {
  const why = unmet();
  if (why) throw new Error(`CI: the ext4 end-to-end test cannot run here (${why}); .ci/run installs these packages, and in CI a missing tool is a failure, never a skip`);

  const root = tempDir(t, 'zos-vdisk-ext4-');
  const dataDir = join(root, 'data');
  const fuseDir = join(root, 'fuse');
  const image = join(fuseDir, 'disk');
  const mnt = join(root, 'mnt');
  mkdirSync(fuseDir);
  mkdirSync(mnt);

  let r = await zos(dataDir, ['init']);
  t.equal(r.code, 0, r.err);
  r = await zos(dataDir, ['vdisk', 'create', 'disk1', '--size', '256M']);
  t.equal(r.code, 0, r.err);
  const serve: Serve = await startServe(t, dataDir);

  // Cleanup even on failure, before the server is killed and the temp dir removed (teardowns run last-registered first).
  const fuses: ChildProcess[] = [];
  t.teardown(async () => {
    if (mounted(mnt)) await runAsync('umount', [mnt], { timeoutMs: 20_000 }).then((x) => (x.code === 0 ? x : runAsync('umount', ['-l', mnt])));
    const loops = await runAsync('losetup', ['-j', image], { timeoutMs: 10_000 }).catch(() => null);
    for (const m of loops?.stdout.matchAll(/^(\/dev\/loop\d+):/gm) ?? []) await runAsync('losetup', ['-d', m[1]!], { timeoutMs: 10_000 });
    if (mounted(fuseDir)) await runAsync('fusermount3', ['-u', fuseDir], { timeoutMs: 10_000 }).then((x) => (x.code === 0 ? x : runAsync('umount', ['-l', fuseDir])));
    for (const p of fuses) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    if (serve.running()) await serve.kill();
  });

  /** nbdfuse in the background; ready once it wrote its pid file and the file has the vdisk's size. */
  const startFuse = async (): Promise<ChildProcess> => {
    const pidFile = join(root, 'nbdfuse.pid');
    rmSync(pidFile, { force: true });
    const p = spawn('nbdfuse', ['-P', pidFile, image, serve.uri('disk1')], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    fuses.push(p);
    await waitFor(() => {
      if (p.exitCode !== null) throw new Error(`nbdfuse exited with ${p.exitCode}: ${err}`);
      return existsSync(pidFile) && mounted(fuseDir) && statSync(image).size === SIZE;
    }, 20_000, 'nbdfuse to expose the export as a file');
    return p;
  };
  const stopFuse = async (p: ChildProcess): Promise<void> => {
    const exited = p.exitCode !== null ? Promise.resolve() : new Promise<void>((res) => p.once('exit', () => res()));
    const u = await runAsync('fusermount3', ['-u', fuseDir], { timeoutMs: 20_000 });
    t.equal(u.code, 0, `fusermount3 -u: ${u.stderr}`);
    await exited;
    t.notOk(mounted(fuseDir), 'nbdfuse is gone');
  };
  const mount = async (): Promise<void> => {
    const m = await runAsync('mount', ['-o', 'loop', image, mnt], { timeoutMs: 60_000 });
    t.equal(m.code, 0, `mount -o loop: ${m.stderr}`);
  };
  const umount = async (): Promise<void> => {
    const u = await runAsync('umount', [mnt], { timeoutMs: 60_000 });
    t.equal(u.code, 0, `umount: ${u.stderr}`);
    const loops = await runAsync('losetup', ['-j', image]);
    t.equal(loops.stdout.trim(), '', 'the loop device went with the umount');
  };
  /** e2fsck -fn must be clean; returns its summary ("LABEL: 11/65536 files (…), 26727/262144 blocks"). */
  const fsck = async (what: string): Promise<string> => {
    const f = await runAsync('e2fsck', ['-fn', image], { timeoutMs: 120_000 });
    t.equal(f.code, 0, `e2fsck -fn ${what} is clean`, { output: f.stdout + f.stderr });
    t.match(f.stdout, /Pass 5: Checking group summary information/, `e2fsck ran all passes ${what}`);
    return /^zos-e2e: .*$/m.exec(f.stdout)?.[0] ?? `no summary in: ${f.stdout}`;
  };
  const history = async (): Promise<Array<Record<string, unknown>>> => {
    const h = await zos(dataDir, ['--json', 'vdisk', 'history', 'disk1']);
    t.equal(h.code, 0, h.err);
    return jsonLines(h.out);
  };

  // mkfs (discards the whole device first: NBD TRIM, logged as zeroed ranges), then a snapshot of the empty filesystem.
  let fuse = await startFuse();
  const mk = await runAsync('mkfs.ext4', ['-F', '-q', '-L', 'zos-e2e', image], { timeoutMs: 120_000 });
  t.equal(mk.code, 0, `mkfs.ext4: ${mk.stderr}`);
  const emptyFs = await fsck('after mkfs');
  t.match(emptyFs, /^zos-e2e: 11\/\d+ files/, 'a fresh ext4 has its 11 reserved inodes');
  const snap = await zos(dataDir, ['--json', 'vdisk', 'snapshot', 'disk1', '--name', 'after-mkfs']);
  t.equal(snap.code, 0, snap.err);
  const snapPos = (JSON.parse(snap.out) as { position: number }).position;
  const afterMkfs = await history();
  t.ok(afterMkfs.some((h) => h.type === 'VdiskBlocksWritten' && (h.zeroed as number) > 0), 'mkfs discarded (zeroed ranges in the log)');
  t.ok(afterMkfs.some((h) => h.type === 'VdiskBlocksWritten' && (h.blocks as number) > 0), 'mkfs wrote data blocks');
  t.ok(afterMkfs.some((h) => h.flushed === true), 'mkfs flushed');

  // Files with known content.
  await mount();
  const files = new Map<string, Buffer>([
    ['big.bin', randomBytes(3 * 1024 * 1024 + 123)],
    ['hello.txt', Buffer.from('hello from a vdisk whose every write is in the log\n')],
    ['sub/dir/c.bin', randomBytes(300 * 1024)],
    ['sub/empty', Buffer.alloc(0)],
  ]);
  for (let i = 0; i < 50; i++) files.set(`many/f${i}.txt`, Buffer.from(`file ${i} ${randomBytes(8).toString('hex')}\n`.repeat(i + 1)));
  for (const [name, data] of files) {
    mkdirSync(join(mnt, name, '..'), { recursive: true });
    writeFileSync(join(mnt, name), data);
  }
  const sums = new Map([...files].map(([n, d]) => [n, sha256(d)]));
  t.equal((await runAsync('sync', [])).code, 0);
  await umount();
  const fullFs = await fsck('with the files');
  t.match(fullFs, new RegExp(`^zos-e2e: ${11 + files.size + 3}/\\d+ files`), 'inodes: 11 reserved + the files + 3 directories (sub, sub/dir, many)');
  await stopFuse(fuse);

  const beforeRollback = await history();
  const lastWrite = beforeRollback[beforeRollback.length - 1]!;
  t.equal(lastWrite.type, 'VdiskBlocksWritten', 'the newest event is a write');
  t.ok((lastWrite.position as number) > snapPos, 'the files were written after the snapshot');

  // Roll back to the empty filesystem.
  const rb = await zos(dataDir, ['--json', 'vdisk', 'rollback', 'disk1', '--snapshot', 'after-mkfs']);
  t.equal(rb.code, 0, rb.err);
  const back = JSON.parse(rb.out) as { toPosition: number; blocksChanged: number; position: number };
  t.equal(back.toPosition, snapPos, 'rolled back to the snapshot');
  t.ok(back.blocksChanged >= 3 * 256, `the file blocks changed back (${back.blocksChanged})`);

  fuse = await startFuse();
  t.equal(await fsck('after the rollback'), emptyFs, 'e2fsck sees exactly the empty filesystem again (files, blocks)');
  await mount();
  t.same(readdirSync(mnt).sort(), ['lost+found'], 'the files are gone');
  await umount();
  await stopFuse(fuse);

  // Roll forward: to the last write before the rollback (found in the history), which undoes the rollback and the mount since.
  const hist = await history();
  const firstRollback = hist.findIndex((h) => h.type === 'VdiskRolledBack');
  t.match(hist[firstRollback], { position: back.position, toPosition: snapPos, snapshot: 'after-mkfs' });
  const target = hist[firstRollback - 1]!;
  t.same(target, lastWrite, 'the event right before the rollback is the last write with the files');
  t.ok(hist.slice(firstRollback + 1).some((h) => h.type === 'VdiskBlocksWritten'), 'mounting the rolled-back filesystem wrote to it');
  const fwd = await zos(dataDir, ['--json', 'vdisk', 'rollback', 'disk1', '--to', `@${target.position as number}`]);
  t.equal(fwd.code, 0, fwd.err);
  t.equal((JSON.parse(fwd.out) as { toPosition: number }).toPosition, target.position);

  fuse = await startFuse();
  t.equal(await fsck('after rolling forward'), fullFs, 'e2fsck sees exactly the filesystem with the files again');
  await mount();
  t.same(readdirSync(mnt).sort(), ['big.bin', 'hello.txt', 'lost+found', 'many', 'sub'], 'the files are back');
  for (const [name, sum] of sums) t.equal(sha256(readFileSync(join(mnt, name))), sum, `${name}: same sha256`);
  await umount();
  await stopFuse(fuse);

  const v = await zos(dataDir, ['log', 'verify']);
  t.equal(v.code, 0, `zos log verify (served process holds the log): ${v.out}${v.err}`);
  const { code } = await serve.stop();
  t.equal(code, 0, 'serve stops cleanly');
  t.notMatch(serve.stderr(), /nbd: |rebuilding/, `no server warnings: ${serve.stderr()}`);
});
