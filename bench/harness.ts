/**
 * The benchmark harness: every benchmark is a PAIR, A against B, measured in the same run
 * on the same machine, interleaved (A, B, B, A, A, B, ...), so that drift of the machine
 * (CPU frequency, other load, a warming cache) falls on both sides alike. What we report
 * is above all the RATIO A/B and how much it moved between rounds; absolute figures of a
 * shared 2-core box mean little on their own.
 *
 * A pair module is any `bench/<name>.bench.ts` that exports `pairs: BenchPair[]`
 * (use `definePair` so the context type is inferred). `bench/run.ts` finds it by itself.
 * See bench/README.md for the contract in prose.
 */

/** The unit of what `a()` and `b()` return. Free text is allowed; keep it short. */
export type BenchUnit = 'req/s' | 'ops/s' | 'MiB/s' | 'ms' | 's' | (string & {});

/**
 * What counts as "good enough" for a pair. Reported, never asserted: a missed target is a
 * finding for a human, not a failed build. Exactly one of `ratio`, `max`, `min`:
 *
 * - `ratio`: the ratio median A / median B. With `higherIsBetter` the pair meets it when the
 *   ratio is >= this; otherwise when it is <= this.
 * - `max` / `min`: an ABSOLUTE bound on side A's own figure, in the pair's `unit` (e.g. "p99
 *   under 10 ms" is `{ max: 10 }`). Met when the MEDIAN of A's rounds is <= max (>= min), as
 *   ratios are judged on the median; the report also says how many of A's rounds were on the
 *   wrong side of the bound and the worst round, so a median that passes while single rounds
 *   do not is visible ("median met; 2 of 4 rounds over (worst 14.6 ms)").
 */
export type BenchTarget = {
  /** Why this target, in one sentence, e.g. "the gateway keeps >= 80% of bare Fastify's rate". */
  description: string;
} & (
  | { ratio: number; max?: never; min?: never }
  | { max: number; ratio?: never; min?: never }
  | { min: number; ratio?: never; max?: never }
);

/** A target as recorded in the results: the target itself, whether it was met, and for absolute targets the rounds beyond it. */
export type TargetResult = BenchTarget & {
  met: boolean;
  /** Absolute targets only: how many measured rounds of A were beyond the bound (over `max`, under `min`). */
  rounds_missed?: number;
  /** Absolute targets only: A's worst measured round (the highest for `max`, the lowest for `min`). */
  worst_a?: number;
};

/** Throws unless the target has exactly one finite `ratio`, `max` or `min`. */
export function checkTarget(name: string, target: BenchTarget): void {
  const bounds = [target.ratio, target.max, target.min].filter((v) => v !== undefined);
  if (bounds.length !== 1 || !Number.isFinite(bounds[0])) {
    throw new Error(`${name}: a target needs exactly one finite ratio, max or min, got ${JSON.stringify(target)}`);
  }
}

/** Judges a target on the figures of a run (see BenchTarget). */
export function evaluateTarget(target: BenchTarget, higherIsBetter: boolean, a: readonly number[], ratio: number): TargetResult {
  if (target.ratio !== undefined) return { ...target, met: higherIsBetter ? ratio >= target.ratio : ratio <= target.ratio };
  const medianA = median(a);
  if (target.max !== undefined) {
    return { ...target, met: medianA <= target.max, rounds_missed: a.filter((v) => v > target.max).length, worst_a: Math.max(...a) };
  }
  return { ...target, met: medianA >= target.min, rounds_missed: a.filter((v) => v < target.min).length, worst_a: Math.min(...a) };
}

/**
 * One line for a pair's target: ">= 0.7 met" for a ratio; "A <= 10 ms: median met; 2 of 4
 * rounds over (worst 14.6 ms)" for an absolute bound; '' without a target. `missed` is how a
 * miss is written ("**missed**" in Markdown, "MISSED" on the console).
 */
export function targetText(result: Pick<PairResult, 'target' | 'higher_is_better' | 'unit' | 'rounds'>, missed = 'missed'): string {
  const target = result.target;
  if (!target) return '';
  const verdict = target.met ? 'met' : missed;
  if (target.ratio !== undefined) return `${result.higher_is_better ? '>=' : '<='} ${target.ratio} ${verdict}`;
  const [op, bound, beyond] = target.max !== undefined ? ['<=', target.max, 'over'] : ['>=', target.min, 'under'];
  const worst = target.rounds_missed ? ` (worst ${fmt(target.worst_a ?? Number.NaN)} ${result.unit})` : '';
  return `A ${op} ${fmt(bound)} ${result.unit}: median ${verdict}; ${target.rounds_missed ?? '?'} of ${result.rounds} rounds ${beyond}${worst}`;
}

export interface BenchPair<Ctx = unknown> {
  /** Unique, slash-separated, e.g. "gateway/healthz". `npm run bench -- <filter>` matches substrings of it. */
  name: string;
  /** What A and B are, one sentence each side. */
  description?: string;
  /** Short labels of the two sides, e.g. { a: 'bantu gateway', b: 'bare fastify' }. Default 'A' / 'B'. */
  labels?: { a: string; b: string };
  unit: BenchUnit;
  /** True for rates (req/s, MiB/s), false for durations (ms). */
  higherIsBetter: boolean;
  target?: BenchTarget;
  /** Measured rounds after warm-up (default 5, or BENCH_ROUNDS). Each round runs A once and B once. */
  rounds?: number;
  /** Unreported rounds first (default 1, or BENCH_WARMUP). */
  warmup?: number;
  /**
   * A pair that runs only when asked for by name: `optIn: 'distributed'` runs with
   * `npm run bench -- --distributed` (then only such pairs) and never in a plain run. For
   * pairs that need more than a plain run starts (processes of their own, servers of the machine).
   */
  optIn?: 'distributed';
  /**
   * Starts whatever both sides need (servers, data, clients). Runs once per pair, before the
   * first round. Anything it starts must be stopped by `teardown`, which runs even when a round fails.
   */
  setup(): Promise<Ctx>;
  /**
   * One measurement of side A: do a fixed amount of work and return the figure in `unit`.
   * Keep the work fixed (e.g. a fixed request count) rather than time-boxed, so each call
   * costs about the same; aim for 1 to 5 seconds per call.
   */
  a(ctx: Ctx): Promise<number>;
  /** One measurement of side B, the same work as A against the reference. */
  b(ctx: Ctx): Promise<number>;
  /**
   * Figures that explain the result rather than judge it (e.g. CPU per operation on each side),
   * gathered by `a` and `b` into the context. Called once after the last round, before
   * teardown; recorded as `notes` in the results and listed under the table. Never a target.
   */
  notes?(ctx: Ctx): Record<string, string | number>;
  teardown(ctx: Ctx): Promise<void>;
}

/** Identity function that lets TypeScript infer `Ctx` from `setup()`. */
export function definePair<Ctx>(pair: BenchPair<Ctx>): BenchPair<Ctx> {
  return pair;
}

/** What the runner records for one pair (also the shape inside bench/results/latest.json). */
export interface PairResult {
  name: string;
  file: string;
  description?: string;
  labels: { a: string; b: string };
  unit: string;
  higher_is_better: boolean;
  rounds: number;
  warmup: number;
  /** Per measured round, in `unit`. */
  a: number[];
  b: number[];
  median_a: number;
  median_b: number;
  /** median_a / median_b. */
  ratio: number;
  /** Per-round ratios a[i] / b[i]: their median, min and max show how steady the ratio was. */
  round_ratios: number[];
  ratio_median: number;
  ratio_min: number;
  ratio_max: number;
  target?: TargetResult;
  /** What the pair's `notes` gave, if it has one. */
  notes?: Record<string, string | number>;
  measured_at: string;
  duration_s: number;
  error?: string;
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((x, y) => x - y);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

function envInt(name: string): number | undefined {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return undefined;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) throw new Error(`${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
  return value;
}

/**
 * Runs one pair: setup, warm-up rounds, measured rounds alternating which side goes first
 * (round 0: A then B; round 1: B then A; ...), teardown. `log` receives progress lines.
 */
export async function runPair(pair: BenchPair, file: string, log: (line: string) => void = () => undefined): Promise<PairResult> {
  const rounds = Math.max(1, envInt('BENCH_ROUNDS') ?? pair.rounds ?? 5);
  const warmup = envInt('BENCH_WARMUP') ?? pair.warmup ?? 1;
  const labels = pair.labels ?? { a: 'A', b: 'B' };
  if (pair.target) checkTarget(pair.name, pair.target);
  const started = performance.now();
  const a: number[] = [];
  const b: number[] = [];
  let error: string | undefined;
  let notes: Record<string, string | number> | undefined;
  const ctx = await pair.setup();
  try {
    for (let round = 0; round < warmup + rounds; round++) {
      const measured = round >= warmup;
      const order: Array<'a' | 'b'> = round % 2 === 0 ? ['a', 'b'] : ['b', 'a'];
      const got: Partial<Record<'a' | 'b', number>> = {};
      for (const side of order) {
        const value = await (side === 'a' ? pair.a(ctx) : pair.b(ctx));
        if (!Number.isFinite(value)) throw new Error(`${pair.name}: side ${side} returned ${value}`);
        got[side] = value;
      }
      if (measured) {
        a.push(got.a as number);
        b.push(got.b as number);
      }
      log(
        `  ${measured ? `round ${round - warmup + 1}/${rounds}` : `warm-up ${round + 1}/${warmup}`}: ` +
          `${labels.a} ${fmt(got.a as number)} ${pair.unit}, ${labels.b} ${fmt(got.b as number)} ${pair.unit}, ratio ${fmt((got.a as number) / (got.b as number), 3)}`,
      );
    }
    notes = pair.notes?.(ctx);
  } catch (caught) {
    error = caught instanceof Error ? (caught.stack ?? caught.message) : String(caught);
  } finally {
    await pair.teardown(ctx);
  }
  const roundRatios = a.map((value, i) => value / (b[i] as number));
  const medianA = median(a);
  const medianB = median(b);
  const ratio = medianA / medianB;
  const result: PairResult = {
    name: pair.name,
    file,
    description: pair.description,
    labels,
    unit: pair.unit,
    higher_is_better: pair.higherIsBetter,
    rounds: a.length,
    warmup,
    a,
    b,
    median_a: medianA,
    median_b: medianB,
    ratio,
    round_ratios: roundRatios,
    ratio_median: median(roundRatios),
    ratio_min: Math.min(...roundRatios),
    ratio_max: Math.max(...roundRatios),
    measured_at: new Date().toISOString(),
    duration_s: Math.round((performance.now() - started) / 100) / 10,
  };
  if (pair.target) result.target = evaluateTarget(pair.target, pair.higherIsBetter, a, ratio);
  if (notes) result.notes = notes;
  if (error) result.error = error;
  return result;
}

/** Rounds for display: 3 significant digits by default, integers stay whole. */
export function fmt(value: number, digits = 3): string {
  if (!Number.isFinite(value)) return String(value);
  if (Math.abs(value) >= 10 ** digits) return String(Math.round(value));
  return String(Number(value.toPrecision(digits)));
}

/**
 * Runs `task` `total` times with at most `concurrency` in flight and returns the elapsed
 * milliseconds. The building block of throughput pairs: `rate = total / (ms / 1000)`.
 * The first failure stops the run and is thrown (a benchmark of errors measures nothing).
 */
export async function runConcurrent(total: number, concurrency: number, task: (i: number) => Promise<void>): Promise<number> {
  let next = 0;
  let failure: unknown;
  const started = performance.now();
  const worker = async () => {
    while (failure === undefined) {
      const i = next++;
      if (i >= total) return;
      try {
        await task(i);
      } catch (error) {
        failure ??= error;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, total) }, worker));
  if (failure !== undefined) throw failure;
  return performance.now() - started;
}

/** Convenience: requests (or operations) per second from a count and elapsed milliseconds. */
export function perSecond(count: number, elapsedMs: number): number {
  return count / (elapsedMs / 1000);
}

/** Convenience: MiB per second from a byte count and elapsed milliseconds. */
export function mibPerSecond(bytes: number, elapsedMs: number): number {
  return bytes / 1024 / 1024 / (elapsedMs / 1000);
}
