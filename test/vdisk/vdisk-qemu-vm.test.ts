/**
 * A qemu VM boots from a vdisk and writes to it; its writes are events in the
 * log, and a rollback takes them back.
 *
 *   zos vdisk create vm1; zos vdisk serve (a child)
 *   nbdcopy a 16 MiB image onto the vdisk: a boot sector (test/fixtures/vm-boot.S,
 *   assembled here with GNU as) at LBA 0 and a message at LBA 1; snapshot "installed"
 *   qemu-system-x86_64 (TCG, SeaBIOS) with the vdisk as its IDE disk over NBD:
 *     the BIOS reads the boot sector from the vdisk, the boot code reads LBA 1
 *     with int 13h and prints it on the serial port, writes LBA 2 (a marker and
 *     what it read), then exits qemu through isa-debug-exit (status 33)
 *   → LBA 2 holds what the VM wrote; the history has the VM's writes after the
 *     snapshot, flushed (cache=writethrough: qemu flushes each write before the guest sees it complete)
 *   rollback --snapshot installed → LBA 2 is zeroes again
 *   new message at LBA 1, boot again → the VM prints the new message and writes it to LBA 2
 *   rollback --to @(the first boot's last write) → the first boot's LBA 2 is back
 *
 * Needs qemu-system-x86_64 (qemu-system-x86), as/ld (binutils), nbdcopy and
 * qemu-io. Skipped with the reason outside CI when any is missing; in CI a
 * missing one fails the test (.ci/run installs them).
 */
import t from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tempDir } from '../helpers/tmp.ts';
import { missingTools } from '../helpers/tools.ts';
import { inCI, jsonLines, runAsync, startServe, zos } from '../helpers/zos-vdisk.ts';
import { CMD, openExport, readSimpleReply, request } from '../nbd/nbd-raw-client.ts';

const SIZE = 16 * 1024 * 1024;
const TOOLS = ['qemu-system-x86_64', 'as', 'ld', 'nbdcopy', 'qemu-io'];
const BOOT_SOURCE = fileURLToPath(new URL('../fixtures/vm-boot.S', import.meta.url));
/** isa-debug-exit turns the guest's `outb 0x10, 0xf4` into qemu's exit status (0x10 << 1) | 1. */
const EXIT_OK = 33;
const MARKER = 'zos-vm-wrote-it:';

const skip = ((): string | false => {
  if (inCI()) return false;
  const missing = missingTools(TOOLS);
  return missing.length ? `missing ${missing.join(', ')} (apt-get install qemu-system-x86 binutils libnbd-bin qemu-utils); never skipped in CI` : false;
})();

t.test('a qemu VM boots from a vdisk, its writes are logged, a rollback takes them back', { skip }, async (t) => {
  const missing = missingTools(TOOLS);
  if (missing.length) throw new Error(`CI: missing ${missing.join(', ')}; .ci/run installs them, and in CI a missing tool is a failure, never a skip`);
  const root = tempDir(t, 'zos-vdisk-vm-');
  const dataDir = join(root, 'data');

  // The boot sector, assembled from its source.
  const obj = join(root, 'boot.o');
  const boot = join(root, 'boot.bin');
  let r = await runAsync('as', ['--32', '-o', obj, BOOT_SOURCE]);
  t.equal(r.code, 0, `as: ${r.stderr}`);
  r = await runAsync('ld', ['-m', 'elf_i386', '-Ttext', '0x7c00', '--oformat', 'binary', '-e', '_start', '-o', boot, obj]);
  t.equal(r.code, 0, `ld: ${r.stderr}`);
  const sector0 = readFileSync(boot);
  t.equal(sector0.length, 512, 'the boot sector is one sector');
  t.equal(sector0.readUInt16LE(510), 0xaa55, 'with the boot signature');

  let z = await zos(dataDir, ['init']);
  t.equal(z.code, 0, z.err);
  z = await zos(dataDir, ['vdisk', 'create', 'vm1', '--size', '16M', '--block-size', '4096']);
  t.equal(z.code, 0, z.err);
  const serve = await startServe(t, dataDir);
  const uri = serve.uri('vm1');

  /** Bytes of the vdisk over NBD (a fresh connection each time). */
  const readDisk = async (offset: number, length: number): Promise<Buffer> => {
    const { c } = await openExport(serve.port, 'vm1');
    try {
      c.write(request({ type: CMD.READ, cookie: 1n, offset: BigInt(offset), length }));
      const rep = await readSimpleReply(c, length);
      t.equal(rep.error, 0, `READ ${length} at ${offset}`);
      return rep.data;
    } finally {
      c.destroy();
    }
  };
  const history = async (): Promise<Array<Record<string, unknown>>> => {
    const h = await zos(dataDir, ['--json', 'vdisk', 'history', 'vm1']);
    t.equal(h.code, 0, h.err);
    return jsonLines(h.out);
  };
  const message = (text: string): Buffer => {
    const s = Buffer.alloc(512);
    s.write(`${text}\0`, 'latin1');
    return s;
  };
  /** Boot the VM on the vdisk; returns what it printed on its serial port. */
  const bootVm = async (what: string): Promise<string> => {
    const q = await runAsync('qemu-system-x86_64', [
      '-machine', 'pc,accel=tcg', '-m', '32', '-nodefaults', '-display', 'none', '-no-reboot',
      '-serial', 'stdio', '-device', 'isa-debug-exit,iobase=0xf4,iosize=0x04',
      '-drive', `file=${uri},format=raw,if=ide,cache=writethrough`,
    ], { timeoutMs: 120_000 });
    t.equal(q.code, EXIT_OK, `${what}: qemu exited through the boot code's isa-debug-exit (status ${q.code}, signal ${q.signal}; stderr: ${q.stderr})`);
    t.match(q.stdout, /zos-vm: booted from the vdisk/, `${what}: SeaBIOS booted the boot sector from the vdisk`);
    t.match(q.stdout, /zos-vm: wrote LBA2/, `${what}: the VM wrote to its disk`);
    t.notMatch(q.stdout, /disk error/, `${what}: no disk error in the VM`);
    return q.stdout;
  };

  // Install: boot sector at LBA 0 and a message at LBA 1, through nbdcopy like any image.
  const image = join(root, 'install.img');
  const img = Buffer.alloc(SIZE);
  sector0.copy(img, 0);
  message('hello-from-install').copy(img, 512);
  writeFileSync(image, img);
  r = await runAsync('nbdcopy', [image, uri]);
  t.equal(r.code, 0, `nbdcopy: ${r.stderr}`);
  const snap = await zos(dataDir, ['--json', 'vdisk', 'snapshot', 'vm1', '--name', 'installed']);
  t.equal(snap.code, 0, snap.err);
  const snapPos = (JSON.parse(snap.out) as { position: number }).position;
  t.ok((await readDisk(1024, 512)).equals(Buffer.alloc(512)), 'LBA 2 is empty before the VM ran');

  // First boot.
  const out1 = await bootVm('first boot');
  t.match(out1, /LBA1=hello-from-install/, 'the VM read LBA 1 from the vdisk');
  const lba2 = await readDisk(1024, 512);
  const wrote1 = Buffer.concat([Buffer.from(MARKER), Buffer.from('hello-from-install').subarray(0, 16)]);
  t.ok(lba2.subarray(0, 32).equals(wrote1), `LBA 2 holds what the VM wrote: ${JSON.stringify(lba2.subarray(0, 32).toString('latin1'))}`);
  t.ok(lba2.subarray(32).equals(Buffer.alloc(480)), 'and nothing else');
  const h1 = await history();
  const vmWrites = h1.filter((h) => (h.position as number) > snapPos && h.type === 'VdiskBlocksWritten');
  t.ok(vmWrites.length >= 1, `the VM's writes are events after the snapshot (${vmWrites.length})`);
  t.ok(vmWrites.some((h) => h.flushed === true), 'writethrough: the VM write was flushed (FLUSH or FUA) before the guest went on');
  const firstBootEnd = h1[h1.length - 1]!.position as number;

  // Roll back to the installed image: the VM's write is gone.
  const rb = await zos(dataDir, ['--json', 'vdisk', 'rollback', 'vm1', '--snapshot', 'installed']);
  t.equal(rb.code, 0, rb.err);
  t.ok((JSON.parse(rb.out) as { blocksChanged: number }).blocksChanged >= 1, 'the rollback changed the VM-written block');
  t.ok((await readDisk(1024, 512)).equals(Buffer.alloc(512)), 'after the rollback LBA 2 is empty again');
  t.ok((await readDisk(0, 512)).equals(sector0), 'and the boot sector is still there');

  // A new message, a second boot: the VM sees the rolled-back disk plus the new message.
  const { c } = await openExport(serve.port, 'vm1');
  c.write(request({ type: CMD.WRITE, cookie: 7n, offset: 512n, length: 512 }, message('second-boot-msg!')));
  t.equal((await readSimpleReply(c)).error, 0, 'new message written at LBA 1');
  c.write(request({ type: CMD.FLUSH, cookie: 8n, offset: 0n, length: 0 }));
  t.equal((await readSimpleReply(c)).error, 0, 'and flushed');
  c.destroy();
  const out2 = await bootVm('second boot');
  t.match(out2, /LBA1=second-boot-msg!/, 'the VM read the new message');
  t.ok((await readDisk(1024, 32)).equals(Buffer.concat([Buffer.from(MARKER), Buffer.from('second-boot-msg!')])), 'LBA 2 holds the second boot\'s write');

  // Roll forward to the end of the first boot: its LBA 1 and LBA 2 are back.
  const fwd = await zos(dataDir, ['--json', 'vdisk', 'rollback', 'vm1', '--to', `@${firstBootEnd}`]);
  t.equal(fwd.code, 0, fwd.err);
  t.ok((await readDisk(1024, 32)).equals(wrote1), 'rolled forward: the first boot\'s write is back');
  t.match((await readDisk(512, 32)).toString('latin1'), /^hello-from-install\0/, 'and the first message');

  const v = await zos(dataDir, ['--json', 'log', 'verify']);
  t.equal(v.code, 0, `zos log verify: ${v.out}${v.err}`);
  const { code } = await serve.stop();
  t.equal(code, 0, 'serve stops cleanly');
  t.notMatch(serve.stderr(), /nbd: |rebuilding/, `no server warnings: ${serve.stderr()}`);
});
