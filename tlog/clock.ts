/** Wall-clock nanoseconds, monotonic within a process. */
const baseWallNs = BigInt(Date.now()) * 1_000_000n;
const baseHr = process.hrtime.bigint();
let last = 0n;

export function nowNs(): bigint {
  let t = baseWallNs + (process.hrtime.bigint() - baseHr);
  if (t <= last) t = last + 1n;
  last = t;
  return t;
}
