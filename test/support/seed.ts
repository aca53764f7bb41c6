// Seeds for the property tests: each runs once on a fixed seed (a regression case that always
// runs the same) and once on a seed that changes per run, so the suite keeps exploring. The seed
// is part of the test's name, so a failure names it; CLUSTERF_TEST_SEED=N replays it.

export function seeds(fixed: number): { seed: number; label: string }[] {
  const replay = process.env.CLUSTERF_TEST_SEED;
  const varying = replay !== undefined && replay !== "" ? Number(replay) : (Math.random() * 2 ** 31) | 0;
  return [
    { seed: fixed, label: `fixed seed ${fixed}` },
    { seed: varying, label: `seed ${varying} (varies per run; CLUSTERF_TEST_SEED=${varying} replays it)` },
  ];
}
