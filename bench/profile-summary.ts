/**
 * Summarise a V8 .cpuprofile (from `npx node --cpu-prof …`): self time per
 * function and inclusive time per function, top N each.
 *
 *   npx node --cpu-prof --cpu-prof-dir=/tmp/prof bench/replay.ts --events 200000
 *   npx node bench/profile-summary.ts /tmp/prof/CPU.*.cpuprofile [--top 25] [--match tlog/]
 */
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { parseArgs } from 'node:util';
import { REPO_DIR, printTable } from './lib.ts';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  hitCount?: number;
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { top: { type: 'string' }, match: { type: 'string' } },
});
const top = Number(values.top ?? 25);
const file = positionals[0];
if (!file) {
  process.stderr.write('usage: npx node bench/profile-summary.ts FILE.cpuprofile [--top N] [--match SUBSTRING]\n');
  process.exit(2);
}
const prof = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;

const byId = new Map<number, ProfileNode>();
const parent = new Map<number, number>();
for (const n of prof.nodes) byId.set(n.id, n);
for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);

// Time per sample: timeDeltas[i] is the gap before sample i; attribute it to that sample.
const selfUs = new Map<number, number>();
prof.samples.forEach((id, i) => selfUs.set(id, (selfUs.get(id) ?? 0) + (prof.timeDeltas[i] ?? 0)));
const totalUs = prof.endTime - prof.startTime;

const label = (f: CallFrame): string => {
  const where = f.url.startsWith('file://') ? relative(REPO_DIR, new URL(f.url).pathname) : f.url || '';
  return `${f.functionName || '(anonymous)'} ${where ? `${where}:${f.lineNumber + 1}` : ''}`.trim();
};

const self = new Map<string, number>();
const incl = new Map<string, number>();
for (const [id, us] of selfUs) {
  const node = byId.get(id);
  if (!node) continue;
  self.set(label(node.callFrame), (self.get(label(node.callFrame)) ?? 0) + us);
  // Inclusive: every distinct function on the stack gets the sample once.
  const seen = new Set<string>();
  for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
    const n = byId.get(cur);
    if (!n) break;
    const l = label(n.callFrame);
    if (seen.has(l)) continue;
    seen.add(l);
    incl.set(l, (incl.get(l) ?? 0) + us);
  }
}

const rows = (m: Map<string, number>): Array<[string, number, string]> =>
  [...m]
    .filter(([l]) => !values.match || l.includes(values.match))
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(([l, us]) => [l, us / 1000, `${((us / totalUs) * 100).toFixed(1)}%`]);

process.stdout.write(`${file}: ${(totalUs / 1000).toFixed(0)} ms profiled\n`);
printTable(`self time, top ${top}`, ['function', 'ms', '%'], rows(self));
printTable(`inclusive time, top ${top}`, ['function', 'ms', '%'], rows(incl));
