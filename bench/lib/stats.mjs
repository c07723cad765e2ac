// Order statistics: every figure is reported as median, p95 and max of its samples.

/** Nearest-rank percentile (p in 0…100) of numbers; null when there are none. */
export function percentile(xs, p) {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return null;
  const rank = Math.max(1, Math.ceil((p / 100) * s.length));
  return s[Math.min(s.length, rank) - 1];
}

/** {n, p50, p95, max, min, mean} of numbers. */
export function summary(xs) {
  const s = xs.filter((x) => Number.isFinite(x));
  if (!s.length) return { n: 0, p50: null, p95: null, max: null, min: null, mean: null };
  return {
    n: s.length,
    p50: percentile(s, 50),
    p95: percentile(s, 95),
    max: Math.max(...s),
    min: Math.min(...s),
    mean: Math.round((s.reduce((a, b) => a + b, 0) / s.length) * 10) / 10,
  };
}
