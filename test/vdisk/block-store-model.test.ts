/**
 * The block store's history index against a model: random histories of
 * writes, zeroings and rollbacks (including rollbacks of rollbacks), checked
 * against a naive replay for the current content, the content at every
 * position, and after a reopen from the files. Reproduce a failure with
 * FUZZ_SEED=<seed>.
 */
import t from 'tap';
import fc from 'fast-check';
import { randomBytes } from 'node:crypto';
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BlockStore, ZERO, checkpointFile } from '../../vdisk/block-store.ts';
import { tempDir } from '../helpers/tmp.ts';

const BS = 512;
const BLOCKS = 12;
const geometry = { size: BS * BLOCKS, blockSize: BS };
const key = randomBytes(32);

type Op = { kind: 'write'; blocks: number[]; fill: number } | { kind: 'zero'; first: number; count: number } | { kind: 'rollback'; back: number };

/** Naive model: the content of every block after each position, replayed from scratch. */
class Model {
  states: Array<Array<number | null>> = []; // states[p] = block → fill byte (null = zero) after position p
  current: Array<number | null> = new Array<number | null>(BLOCKS).fill(null);
  at(p: number): Array<number | null> {
    if (p < 0) return new Array<number | null>(BLOCKS).fill(null);
    return this.states[p]!;
  }
  push(): void {
    this.states.push([...this.current]);
  }
}

const blockOf = (fill: number, block: number): Buffer => {
  // Distinct per (fill, block) so a slot moved to the wrong block would show.
  const b = Buffer.alloc(BS, fill);
  b.writeUInt16LE(block, 0);
  return b;
};

async function contentAt(store: BlockStore, p: number | null): Promise<Buffer> {
  const slots = p === null ? Float64Array.from({ length: BLOCKS }, (_, b) => store.slotOf(b)) : store.slotsAt(p);
  const out = Buffer.alloc(BS * BLOCKS);
  await store.readSlots(Float64Array.from({ length: BLOCKS }, (_, b) => b), slots, out);
  return out;
}

function modelContent(state: Array<number | null>): Buffer {
  return Buffer.concat(state.map((f, b) => (f === null ? Buffer.alloc(BS) : blockOf(f, b))));
}

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('write' as const), blocks: fc.uniqueArray(fc.integer({ min: 0, max: BLOCKS - 1 }), { minLength: 1, maxLength: 5 }), fill: fc.integer({ min: 1, max: 255 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('zero' as const), first: fc.integer({ min: 0, max: BLOCKS - 1 }), count: fc.integer({ min: 1, max: 4 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('rollback' as const), back: fc.integer({ min: 0, max: 30 }) }) },
);

t.test('history index matches a naive replay at every position, and after reopening', async (t) => {
  const seed = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : Date.now() % 1_000_000;
  t.comment(`FUZZ_SEED=${seed}`);
  let runs = 0;
  await fc.assert(
    fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 40 }), async (ops) => {
      runs++;
      const dir = tempDir(t, 'zos-bs-model-');
      let { store } = await BlockStore.open(dir, geometry, key);
      const model = new Model();
      // Position 0: the creation.
      store.applyCreated(0n, 0n, 'created');
      model.push();
      let pos = 0;
      try {
        for (const op of ops) {
          pos++;
          const version = BigInt(pos);
          if (op.kind === 'write') {
            const data = Buffer.concat(op.blocks.map((b) => blockOf(op.fill, b)));
            await store.applyWrite(BigInt(pos), version, op.blocks, data, []);
            for (const b of op.blocks) model.current[b] = op.fill;
          } else if (op.kind === 'zero') {
            const count = Math.min(op.count, BLOCKS - op.first);
            await store.applyWrite(BigInt(pos), version, [], Buffer.alloc(0), [op.first, count]);
            for (let b = op.first; b < op.first + count; b++) model.current[b] = null;
          } else {
            const to = Math.max(0, pos - 1 - op.back);
            await store.applyRollback(BigInt(pos), version, BigInt(to));
            model.current = [...model.at(to)];
          }
          model.push();
          // Current content.
          const now = await contentAt(store, null);
          if (!now.equals(modelContent(model.current))) throw new Error(`current content differs after op ${pos} (${JSON.stringify(op)})`);
        }
        // Content at every position.
        for (let p = 0; p <= pos; p++) {
          const got = await contentAt(store, p);
          if (!got.equals(modelContent(model.at(p)))) throw new Error(`content at position ${p} differs`);
        }
        // Reopen from the files: same answers.
        await store.checkpoint();
        await store.close();
        store = (await BlockStore.open(dir, geometry, key)).store;
        if (store.appliedPosition !== BigInt(pos)) throw new Error(`reopened store applied ${store.appliedPosition}, expected ${pos}`);
        for (let p = 0; p <= pos; p++) {
          const got = await contentAt(store, p);
          if (!got.equals(modelContent(model.at(p)))) throw new Error(`after reopen, content at position ${p} differs`);
        }
      } finally {
        await store.close();
      }
    }),
    { numRuns: 60, seed },
  );
  t.equal(runs >= 60, true, 'ran the property at least 60 times');
});

t.test('rollback cost follows the records after the target, not the history length', async (t) => {
  const dir = tempDir(t, 'zos-bs-cost-');
  const { store } = await BlockStore.open(dir, { size: 4096 * 1024, blockSize: 4096 }, key);
  t.teardown(() => store.close());
  store.applyCreated(0n, 0n, 'created');
  const data = Buffer.alloc(4096, 7);
  let pos = 0;
  for (let i = 0; i < 2000; i++) {
    pos++;
    await store.applyWrite(BigInt(pos), BigInt(pos), [i % 1024], data, []);
  }
  const before = store.records;
  // Three blocks change after the target: the rollback adds exactly three records.
  for (const b of [5, 6, 7]) {
    pos++;
    await store.applyWrite(BigInt(pos), BigInt(pos), [b], Buffer.alloc(4096, 9), []);
  }
  const target = BigInt(pos - 3);
  pos++;
  const changed = await store.applyRollback(BigInt(pos), BigInt(pos), target);
  t.equal(changed, 3, 'three blocks rolled back');
  t.equal(store.records, before + 3 + 3, 'three write records + three rollback records');
  t.same(store.changedSince(Number(target)).sort((a, b) => a - b), [5, 6, 7], 'changedSince sees only the blocks after the target');
  t.equal(store.slotOf(5) !== ZERO, true, 'block 5 still has data');
});

t.test('a damaged store: bad slots fail authentication, bad files are rebuilt', async (t) => {
  const dir = tempDir(t, 'zos-bs-damage-');
  let { store } = await BlockStore.open(dir, geometry, key);
  store.applyCreated(0n, 0n, 'created');
  await store.applyWrite(1n, 1n, [0, 1], Buffer.concat([blockOf(1, 0), blockOf(1, 1)]), []);
  await store.checkpoint();
  await store.close();

  // Flip a ciphertext byte of slot 1.
  const dat = join(dir, 'blocks.dat');
  const bytes = readFileSync(dat);
  const slotSize = BS + 40;
  bytes[slotSize + 30] = bytes[slotSize + 30]! ^ 0x01;
  writeFileSync(dat, bytes);
  store = (await BlockStore.open(dir, geometry, key)).store;
  await t.rejects(store.readBlocks(0, 2), { code: 'VDISK_VIEW_CORRUPT', message: /zos vdisk rebuild/ }, 'a tampered slot is refused');
  t.same(await store.readBlocks(0, 1), blockOf(1, 0), 'an intact slot still reads');
  await store.close();

  // Another key: wiped, reported.
  const other = await BlockStore.open(dir, geometry, randomBytes(32));
  t.match(other.rebuilt, /another key/, 'a store under another key is rebuilt');
  t.equal(other.store.records, 0, 'and starts empty');
  await other.store.close();

  // Records beyond the checkpoint (a crash before the next checkpoint) are cut.
  const dir2 = tempDir(t, 'zos-bs-tail-');
  store = (await BlockStore.open(dir2, geometry, key)).store;
  store.applyCreated(0n, 0n, 'created');
  await store.applyWrite(1n, 1n, [3], blockOf(3, 3), []);
  await store.checkpoint();
  await store.close();
  appendFileSync(join(dir2, 'history.idx'), Buffer.alloc(24 * 3, 0xff));
  appendFileSync(join(dir2, 'blocks.dat'), Buffer.alloc(slotSize * 2, 0xee));
  const reopened = await BlockStore.open(dir2, geometry, key);
  t.equal(reopened.rebuilt, null, 'not rebuilt');
  t.equal(reopened.store.records, 1, 'records after the checkpoint were cut');
  t.equal(reopened.store.appliedVersion, 1n, 'replay resumes after version 1');
  t.same(await reopened.store.readBlocks(3, 1), blockOf(3, 3), 'content intact');
  await reopened.store.close();

  // A checkpoint that claims more than the files hold: rebuilt.
  const ck = checkpointFile.read(dir2, key).ck!;
  ck.records = 50;
  checkpointFile.write(dir2, key, ck);
  const short = await BlockStore.open(dir2, geometry, key);
  t.match(short.rebuilt, /shorter than its checkpoint/, 'a short store is rebuilt');
  await short.store.close();

  // The checkpoint is sealed: nothing of it is plaintext, and an edit is caught.
  const dir3 = tempDir(t, 'zos-bs-seal-');
  store = (await BlockStore.open(dir3, geometry, key)).store;
  store.applyCreated(0n, 0n, 'created');
  store.applyMarker(1n, 1n, 'SNAPSHOT-NAME-MARKER');
  await store.checkpoint();
  await store.close();
  const text = readFileSync(join(dir3, 'checkpoint.json'), 'utf8');
  t.notMatch(text, /SNAPSHOT-NAME-MARKER|blockSize|records/, 'no plaintext fields in checkpoint.json');
  const outer = JSON.parse(text) as { sealed: string };
  const sealed = Buffer.from(outer.sealed, 'base64');
  sealed[3] = sealed[3]! ^ 0x20;
  writeFileSync(join(dir3, 'checkpoint.json'), JSON.stringify({ ...outer, sealed: sealed.toString('base64') }));
  const edited = await BlockStore.open(dir3, geometry, key);
  t.match(edited.rebuilt, /another key, or altered/, 'an edited checkpoint is rebuilt');
  await edited.store.close();
});
