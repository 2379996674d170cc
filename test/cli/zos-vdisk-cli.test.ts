/**
 * The `zos vdisk` command line as a user meets it: help, usage errors (exit 2),
 * errors (exit 1) with messages that say what to do, JSON output, and the
 * hand-over to a running `zos vdisk serve` (commands are carried out by the
 * server, checked with real NBD clients: nbdinfo, qemu-io, nbdcopy).
 */
import t, { type Test } from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../helpers/tmp.ts';
import { toolsSkip } from '../helpers/tools.ts';
import { jsonLines, runAsync, sha256, sha256File, startServe, zos } from '../helpers/zos-vdisk.ts';
import { openExport } from '../nbd/nbd-raw-client.ts';

const MiB = 1024 * 1024;
const COMMANDS = ['create', 'serve', 'list', 'info', 'history', 'rollback', 'clone', 'snapshot', 'export', 'delete', 'rebuild'];

async function initDir(t: Test): Promise<string> {
  const dir = tempDir(t, 'zos-vdisk-cli-');
  const r = await zos(dir, ['init']);
  t.equal(r.code, 0, `zos init: ${r.err}`);
  return dir;
}

t.test('every vdisk command has --help (exit 0, its own usage)', async (t) => {
  const dir = await initDir(t);
  for (const args of [['vdisk'], ['vdisk', '--help'], ['vdisk', 'help'], ...COMMANDS.map((c) => ['vdisk', c, '--help']), ['vdisk', 'create', '-h']]) {
    const r = await zos(dir, args);
    t.equal(r.code, 0, `${args.join(' ')} exits 0 (${r.err})`);
    const sub = args[1] && !args[1].startsWith('-') && args[1] !== 'help' ? args[1] : null;
    t.match(r.out, sub ? new RegExp(`^Usage: zos vdisk ${sub}\\b`) : /^Usage: zos vdisk <command>/, `${args.join(' ')} prints its usage`);
    t.equal(r.err, '', `${args.join(' ')} writes nothing to stderr`);
  }
  const top = await zos(dir, ['vdisk', '--help']);
  for (const c of COMMANDS) t.match(top.out, new RegExp(`^  ${c}\\b`, 'm'), `zos vdisk --help lists ${c}`);
});

t.test('usage errors exit 2 with a message, leave nothing behind', async (t) => {
  const dir = await initDir(t);
  const cases: Array<[string[], RegExp]> = [
    [['create', 'd', '--size', '12Q'], /--size takes a size: bytes or a number with K, M, G or T.*\(got "12Q"\)/],
    [['create', 'd', '--size', '1000'], /size must be a positive multiple of the block size \(4096\).*\(got 1000\)/],
    [['create', 'd', '--size', '6K', '--block-size', '4096'], /multiple of the block size \(4096\).*\(got 6144\)/],
    [['create', 'd', '--size', '1M', '--block-size', '1000'], /block size must be a power of two from 512 to 65536 \(got 1000\)/],
    [['create', 'd'], /vdisk create needs --size/],
    [['create', '--size', '1M'], /expected NAME/],
    [['create', 'd', '--size', '1M', '--to', '@1'], /vdisk create does not take --to/],
    [['rollback', 'd', '--to', '@1', '--snapshot', 's'], /give --to or --snapshot, not both/],
    [['clone', 'd', 'e', '--at', '@1', '--snapshot', 's'], /give --at or --snapshot, not both/],
    [['rollback', 'd'], /vdisk rollback needs --to TIME\|@POSITION or --snapshot S/],
    [['rollback', 'd', '--to', '@x'], /--to @POSITION takes a whole number after @ \(got "@x"\)/],
    [['export', 'd', '/tmp/x.img', '--at', '@-1'], /--at @POSITION takes a whole number after @ \(got "@-1"\)/],
    [['rollback', 'd', '--to', 'yesterday'], /yesterday/],
    [['list', '--bogus'], /Unknown option '--bogus'/],
    [['history', 'd', '--limit', 'x'], /--limit takes a whole number \(got "x"\)/],
    [['snapshot', 'd'], /vdisk snapshot needs --name S/],
    [['export', 'd'], /expected NAME FILE/],
    [['info'], /expected NAME/],
    [['frobnicate'], /unknown command "vdisk frobnicate"; see zos vdisk --help/],
    [['serve', '--listen', 'nope'], /--listen takes HOST:PORT, e.g. 127.0.0.1:10809 \(got "nope"\)/],
    [['serve', '--listen', '127.0.0.1:70000'], /--listen takes HOST:PORT/],
  ];
  for (const [args, message] of cases) {
    const r = await zos(dir, ['vdisk', ...args]);
    const what = `zos vdisk ${args.join(' ')}`;
    t.equal(r.code, 2, `${what} exits 2 (${r.err.split('\n')[0]})`);
    t.match(r.err, /^zos: /, `${what}: the message starts with zos:`);
    t.match(r.err, message, `${what}: says what was wrong`);
    t.notMatch(r.err, /    at /, `${what}: no stack trace`);
    t.equal(r.out, '', `${what}: nothing on stdout`);
  }
  const list = await zos(dir, ['--json', 'vdisk', 'list']);
  t.equal(list.code, 0, list.err);
  t.equal(list.out, '', 'no vdisk was created by any of the failed commands');
});

t.test('create, list, info, history and errors without a server', async (t) => {
  const dir = await initDir(t);
  let r = await zos(dir, ['vdisk', 'list']);
  t.equal(r.code, 0, r.err);
  t.match(r.out, /no vdisks; create one with zos vdisk create NAME --size 1G/);

  r = await zos(dir, ['--json', 'vdisk', 'create', 'alpha', '--size', '4M']);
  t.equal(r.code, 0, r.err);
  const created = JSON.parse(r.out) as Record<string, unknown>;
  t.match(created, { name: 'alpha', size: 4 * MiB, blockSize: 4096, snapshots: [], storedBlockVersions: 0 });
  t.type(created.createdPosition, 'number');
  t.equal(created.position, created.createdPosition, 'a new vdisk: its last event is its creation');

  r = await zos(dir, ['vdisk', 'create', 'alpha', '--size', '4M']);
  t.equal(r.code, 1, 'create twice exits 1');
  t.match(r.err, /^zos: vdisk alpha already exists; pick another name or delete it first/);

  r = await zos(dir, ['vdisk', 'create', 'beta', '--size', '1M', '--block-size', '512']);
  t.equal(r.code, 0, r.err);
  t.match(r.out, /^created vdisk beta: 1\.0 MiB, 512-byte blocks \(log position \d+\)/);

  r = await zos(dir, ['--json', 'vdisk', 'snapshot', 'alpha', '--name', 'empty']);
  t.equal(r.code, 0, r.err);
  const snap = JSON.parse(r.out) as { name: string; snapshot: string; position: number };
  t.match(snap, { name: 'alpha', snapshot: 'empty' });
  t.ok(snap.position > (created.createdPosition as number), 'the snapshot is recorded after the creation');
  r = await zos(dir, ['vdisk', 'snapshot', 'alpha', '--name', 'empty']);
  t.equal(r.code, 1);
  t.match(r.err, /already has a snapshot named "empty"/);

  r = await zos(dir, ['--json', 'vdisk', 'list']);
  t.equal(r.code, 0, r.err);
  const list = jsonLines(r.out);
  t.same(list.map((v) => [v.name, v.size, v.blockSize]), [['alpha', 4 * MiB, 4096], ['beta', MiB, 512]], 'list --json: one line per vdisk, by name');
  t.same(list[0]!.snapshots, [{ name: 'empty', position: snap.position }]);
  for (const v of list) for (const k of ['createdPosition', 'version', 'position', 'storedBlockVersions', 'historyRecords']) t.type(v[k], 'number', `list: ${v.name}.${k}`);
  r = await zos(dir, ['vdisk', 'list']);
  t.match(r.out, /^NAME\s+SIZE\s+BLOCK\s+CREATED\s+LAST\s+SNAPSHOTS\nalpha\s+4\.0 MiB\s+4096\s+@\d+\s+@\d+\s+empty@\d+\nbeta\s+1\.0 MiB\s+512\s+@\d+\s+@\d+\s+-\n$/);

  r = await zos(dir, ['--json', 'vdisk', 'info', 'alpha']);
  t.equal(r.code, 0, r.err);
  t.same(JSON.parse(r.out), list[0], 'info --json is the same object as the list line');
  r = await zos(dir, ['vdisk', 'info', 'alpha']);
  t.match(r.out, /^alpha: 4\.0 MiB, 4096-byte blocks, created at @\d+, last event @\d+ \(stream version 1\)/);

  r = await zos(dir, ['--json', 'vdisk', 'history', 'alpha']);
  t.equal(r.code, 0, r.err);
  const hist = jsonLines(r.out);
  t.same(hist.map((h) => h.type), ['VdiskCreated', 'VdiskSnapshotted']);
  t.match(hist[0], { position: created.createdPosition, version: 0, size: 4 * MiB, blockSize: 4096, actor: null });
  t.match(hist[1], { position: snap.position, version: 1, snapshot: 'empty' });
  for (const h of hist) {
    t.match(h.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$/, 'time is ISO-8601');
    t.match(h.timeNs, /^\d+$/, 'timeNs is a string of digits');
    t.equal(new Date(h.time as string).getTime(), Math.floor(Number(BigInt(h.timeNs as string) / 1_000_000n)), 'time and timeNs agree');
  }
  r = await zos(dir, ['--json', 'vdisk', 'history', 'alpha', '--limit', '1']);
  t.same(jsonLines(r.out).map((h) => h.type), ['VdiskSnapshotted'], '--limit 1 keeps the newest');
  r = await zos(dir, ['vdisk', 'history', 'alpha']);
  t.match(r.out, /@\d+ +\S+Z  created  4\.0 MiB, 4096-byte blocks\n +@\d+ +\S+Z  snapshot "empty"\n$/);

  // Targets before the vdisk existed, or that do not exist.
  r = await zos(dir, ['vdisk', 'rollback', 'alpha', '--to', '2000-01-01T00:00:00Z']);
  t.equal(r.code, 2, 'rollback to a time before the creation is refused');
  t.match(r.err, new RegExp(`^zos: vdisk alpha did not exist at .*created at position ${created.createdPosition as number}.*pick a later point`));
  r = await zos(dir, ['vdisk', 'rollback', 'alpha', '--to', '@0']);
  t.equal(r.code, 2);
  t.match(r.err, /vdisk alpha did not exist at position 0/);
  r = await zos(dir, ['vdisk', 'rollback', 'alpha', '--to', '@99999']);
  t.equal(r.code, 2);
  t.match(r.err, /position 99999 is not in the log \(it holds positions 0 to \d+\)/);
  r = await zos(dir, ['vdisk', 'rollback', 'alpha', '--snapshot', 'nope']);
  t.equal(r.code, 1);
  t.match(r.err, /vdisk alpha has no snapshot named "nope"; see zos vdisk history alpha/);
  r = await zos(dir, ['vdisk', 'clone', 'alpha', 'gamma', '--at', '2000-01-01T00:00:00Z']);
  t.equal(r.code, 2);
  t.match(r.err, /vdisk alpha did not exist at/);
  for (const args of [['info', 'nope'], ['history', 'nope'], ['rollback', 'nope', '--to', '@1'], ['delete', 'nope'], ['export', 'nope', join(dir, 'x.img')]]) {
    r = await zos(dir, ['vdisk', ...args]);
    t.equal(r.code, 1, `vdisk ${args.join(' ')} exits 1`);
    t.match(r.err, /^zos: no vdisk named nope; see zos vdisk list/);
  }
  r = await zos(dir, ['--json', 'vdisk', 'list']);
  t.same(jsonLines(r.out).map((v) => v.name), ['alpha', 'beta'], 'nothing created by the failed commands');

  const bare = tempDir(t, 'zos-vdisk-cli-bare-');
  r = await zos(bare, ['vdisk', 'list']);
  t.equal(r.code, 1);
  t.match(r.err, /run zos init/, 'an uninitialised data dir says what to do');
});

t.test('while zos vdisk serve runs, commands are carried out by the server', { skip: toolsSkip(['nbdinfo', 'qemu-io', 'nbdcopy']) }, async (t) => {
  const dir = await initDir(t);
  let r = await zos(dir, ['vdisk', 'create', 'disk-a', '--size', '8M']);
  t.equal(r.code, 0, r.err);
  const serve = await startServe(t, dir);
  t.match(JSON.parse(serve.stdout().split('\n')[0]!), { event: 'listening', address: '127.0.0.1', port: serve.port, url: `nbd://127.0.0.1:${serve.port}`, vdisks: ['disk-a'] });

  t.test('a second serve on the same data dir is refused', async (t) => {
    const second = await zos(dir, ['vdisk', 'serve', '--listen', '127.0.0.1:0']);
    t.equal(second.code, 1);
    t.match(second.err, /^zos: the vdisks of .* are held by another zos process \(zos vdisk serve, or a vdisk command still running\)/);
    t.equal(second.out, '', 'it never said it was serving');
    t.ok(serve.running(), 'the first server still runs');
  });

  t.test('create through the server: nbdinfo lists the new export at once', async (t) => {
    const c = await zos(dir, ['--json', 'vdisk', 'create', 'disk-b', '--size', '4M']);
    t.equal(c.code, 0, c.err);
    t.match(JSON.parse(c.out), { name: 'disk-b', size: 4 * MiB });
    const list = await runAsync('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${serve.port}`]);
    t.equal(list.code, 0, list.stderr);
    const exports = (JSON.parse(list.stdout) as { exports: Array<Record<string, unknown>> }).exports;
    t.same(exports.map((e) => [e['export-name'], e['export-size']]).sort(), [['disk-a', 8 * MiB], ['disk-b', 4 * MiB]]);
  });

  t.test('rollback through the server: clients are disconnected, then see the old content', async (t) => {
    let q = await runAsync('qemu-io', ['-f', 'raw', '-c', 'write -P 0xaa 0 64k', '-c', 'flush', serve.uri('disk-b')]);
    t.equal(q.code, 0, q.stderr);
    const h = await zos(dir, ['--json', 'vdisk', 'history', 'disk-b']);
    t.equal(h.code, 0, h.err);
    const hist = jsonLines(h.out);
    const last = hist[hist.length - 1]!;
    t.match(last, { type: 'VdiskBlocksWritten', blocks: 16, flushed: true }, 'the 64k write is one flushed batch of 16 blocks');
    const good = last.position as number;

    q = await runAsync('qemu-io', ['-f', 'raw', '-c', 'write -P 0xbb 0 64k', '-c', 'write -P 0xcc 1M 4k', '-c', 'flush', serve.uri('disk-b')]);
    t.equal(q.code, 0, q.stderr);
    q = await runAsync('qemu-io', ['-f', 'raw', '-c', 'read -P 0xbb 0 64k', serve.uri('disk-b')]);
    t.equal(q.code, 0, q.stderr);
    t.notMatch(q.stdout, /Pattern verification failed/, 'the new pattern is there before the rollback');

    const { c } = await openExport(serve.port, 'disk-b');
    t.teardown(() => c.destroy());
    const rb = await zos(dir, ['--json', 'vdisk', 'rollback', 'disk-b', '--to', `@${good}`]);
    t.equal(rb.code, 0, rb.err);
    const res = JSON.parse(rb.out) as { name: string; position: number; toPosition: number; blocksChanged: number };
    t.match(res, { name: 'disk-b', toPosition: good, blocksChanged: 17 }, '16 blocks back to 0xaa, one back to zeroes');
    t.ok(res.position > good, 'the rollback is an event after its target');
    await c.closed(10_000);
    t.pass('an NBD client of the vdisk was disconnected by the rollback');

    q = await runAsync('qemu-io', ['-f', 'raw', '-c', 'read -P 0xaa 0 64k', '-c', 'read -P 0 1M 4k', serve.uri('disk-b')]);
    t.equal(q.code, 0, q.stderr);
    t.notMatch(q.stdout + q.stderr, /Pattern verification failed/, 'a reconnecting client reads the rolled-back content');
    const after = jsonLines((await zos(dir, ['--json', 'vdisk', 'history', 'disk-b'])).out);
    t.match(after[after.length - 1], { type: 'VdiskRolledBack', position: res.position, toPosition: good, snapshot: null });
    q = await runAsync('qemu-io', ['-f', 'raw', '-c', 'read -P 0 0 64k', serve.uri('disk-a')]);
    t.equal(q.code, 0, q.stderr);
    t.notMatch(q.stdout, /Pattern verification failed/, 'the other vdisk is untouched');
  });

  t.test('a control request with a wrong token is refused', async (t) => {
    const tokenFile = join(dir, 'run', 'vdisk-control.token');
    const real = readFileSync(tokenFile, 'utf8');
    t.match(real, /^[0-9a-f]{64}\n$/, 'the token file holds 32 random bytes in hex');
    writeFileSync(tokenFile, 'ab'.repeat(32) + '\n', { mode: 0o600 });
    try {
      const bad = await zos(dir, ['vdisk', 'list']);
      t.equal(bad.code, 1);
      t.match(bad.err, /^zos: the control request was refused: its token does not match DATA_DIR\/run\/vdisk-control\.token/);
      t.equal(bad.out, '', 'nothing listed');
      writeFileSync(tokenFile, '\n', { mode: 0o600 });
      const empty = await zos(dir, ['vdisk', 'list']);
      t.equal(empty.code, 1, 'an empty token is refused too');
      t.match(empty.err, /token does not match/);
    } finally {
      writeFileSync(tokenFile, real, { mode: 0o600 });
    }
    const ok = await zos(dir, ['--json', 'vdisk', 'list']);
    t.equal(ok.code, 0, ok.err);
    t.same(jsonLines(ok.out).map((v) => v.name), ['disk-a', 'disk-b'], 'with the right token the server answers');
  });

  t.test('export writes the same bytes nbdcopy reads from the export', async (t) => {
    const tmp = tempDir(t, 'zos-vdisk-cli-export-');
    const q = await runAsync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 3M 12k', '-c', 'write -P 0x11 4095 2', serve.uri('disk-b')]);
    t.equal(q.code, 0, q.stderr);
    const file = join(tmp, 'disk-b.img');
    const e = await zos(dir, ['--json', 'vdisk', 'export', 'disk-b', file]);
    t.equal(e.code, 0, e.err);
    t.match(JSON.parse(e.out), { name: 'disk-b', file, bytes: 4 * MiB, dataBlocks: 16 + 3 });
    const copy = join(tmp, 'nbdcopy.img');
    const n = await runAsync('nbdcopy', [serve.uri('disk-b'), copy]);
    t.equal(n.code, 0, n.stderr);
    const img = readFileSync(file);
    t.equal(img.length, 4 * MiB);
    t.equal(sha256(img), sha256File(copy), 'sha256 of the export file = sha256 of the export read over NBD');
    t.ok(img.subarray(0, 4095).equals(Buffer.alloc(4095, 0xaa)) && img[4095] === 0x11 && img[4096] === 0x11, 'export content: the rolled-back pattern and the unflushed write (export drains writes)');
    t.ok(img.subarray(3 * MiB, 3 * MiB + 12 * 1024).equals(Buffer.alloc(12 * 1024, 0x5a)));
    t.ok(img.subarray(MiB, MiB + 4096).equals(Buffer.alloc(4096)), 'the rolled-back block reads as zeroes');
  });

  t.test('delete, then the name is gone and can be created again', async (t) => {
    const d = await zos(dir, ['vdisk', 'delete', 'disk-b']);
    t.equal(d.code, 0, d.err);
    t.match(d.out, /^deleted vdisk disk-b \(its history stays in the log\)/);
    let l = await zos(dir, ['--json', 'vdisk', 'list']);
    t.same(jsonLines(l.out).map((v) => v.name), ['disk-a'], 'list no longer shows it');
    const info = await runAsync('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${serve.port}`]);
    t.same((JSON.parse(info.stdout) as { exports: Array<Record<string, unknown>> }).exports.map((e) => e['export-name']), ['disk-a'], 'nor does the server');
    const gone = await runAsync('qemu-io', ['-f', 'raw', '-c', 'read 0 4k', serve.uri('disk-b')]);
    t.not(gone.code, 0, 'connecting to the deleted export fails');

    const c = await zos(dir, ['vdisk', 'create', 'disk-b', '--size', '2M']);
    t.equal(c.code, 0, c.err);
    l = await zos(dir, ['--json', 'vdisk', 'list']);
    t.same(jsonLines(l.out).map((v) => [v.name, v.size]), [['disk-a', 8 * MiB], ['disk-b', 2 * MiB]]);
    const q = await runAsync('qemu-io', ['-f', 'raw', '-c', 'read -P 0 0 2M', serve.uri('disk-b')]);
    t.equal(q.code, 0, q.stderr);
    t.notMatch(q.stdout, /Pattern verification failed/, 'the new incarnation starts empty');
    const h = jsonLines((await zos(dir, ['--json', 'vdisk', 'history', 'disk-b'])).out);
    t.same(h.slice(-2).map((x) => x.type), ['VdiskDeleted', 'VdiskCreated'], 'history keeps the old incarnation');
  });

  t.test('serve stops on SIGTERM: exit 0, "stopped"', async (t) => {
    const { code, signal } = await serve.stop();
    t.equal(code, 0);
    t.equal(signal, null);
    const lines = jsonLines(serve.stdout());
    t.same(lines[lines.length - 1], { event: 'stopped' });
    t.equal(serve.stderr(), '', 'no warnings during the run');
    const l = await zos(dir, ['--json', 'vdisk', 'list']);
    t.equal(l.code, 0, `the lock is released: commands run locally again (${l.err})`);
    t.same(jsonLines(l.out).map((v) => v.name), ['disk-a', 'disk-b']);
  });
});

t.test('serve without --json: human lines, SIGTERM prints "stopped"', async (t) => {
  const dir = await initDir(t);
  t.equal((await zos(dir, ['vdisk', 'create', 'one', '--size', '1M'])).code, 0);
  const serve = await startServe(t, dir, { json: false });
  t.match(serve.stdout(), new RegExp(`^serving 1 vdisk on nbd://127\\.0\\.0\\.1:${serve.port}/NAME \\(one\\)\n`));
  const { code } = await serve.stop();
  t.equal(code, 0);
  t.match(serve.stdout(), /\nstopped; every write is durable in the log\n$/);
});

t.test('serve runs with its V8 and malloc settings, in the process that was started (execve keeps the pid)', async (t) => {
  const dir = tempDir(t, 'zos-vdisk-cli-');
  t.equal((await zos(dir, ['init'])).code, 0);
  const serve = await startServe(t, dir);
  t.equal(serve.pid, serve.proc.pid, 'the pid in the listening line is the pid that was spawned');
  const cmdline = readFileSync(`/proc/${serve.pid}/cmdline`, 'utf8').split('\0');
  t.ok(cmdline.includes('--max-semi-space-size=8'), `V8 flag on its command line: ${cmdline.join(' ')}`);
  const environ = readFileSync(`/proc/${serve.pid}/environ`, 'utf8').split('\0');
  t.ok(environ.includes('MALLOC_MMAP_THRESHOLD_=1048576') && environ.includes('MALLOC_ARENA_MAX=2'), 'malloc settings in its environment');
  const { code } = await serve.stop();
  t.equal(code, 0, 'SIGTERM stops it cleanly');
});
