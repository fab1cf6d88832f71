"""Stage-07 A/B test error rates by simulation on real data (run on demand; tests/test_retraining.py runs a smaller version):

    python tests/benchmarks/bench_ab.py [--reps 1000] [--out results.json]

A real model (logistic regression on the Adult training file) and its per-row correctness on the 16,281 rows of the
Adult test file. A/A: that model on both arms. Power: the challenger is that model, the champion is the same model
with a fixed set of its correct decisions flipped so that it is exactly `min_detectable_effect` (0.02) less accurate
on the pool. Each replication draws the designed number of rows (with replacement), routes them like the server
(hash of distinct request ids below the share) and runs the two-proportion z-test; fixed horizon, and five looks with
O'Brien-Fleming alpha spending or with naive (uncorrected) peeking. Rates come with 95 % Wilson intervals."""
import argparse, json, time
from pathlib import Path

import numpy as np

from mlcycle.charter import binary_target, load_charter
from mlcycle.data import adult, build_preprocessor, feature_frame, infer_contract
from mlcycle.monitor import wilson_interval
from mlcycle.retrain import ab_sample_size, simulate_ab


def correctness(seed: int = 0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    c = load_charter(); tr, te = adult('train'), adult('test')
    contract = infer_contract(tr, c)
    m = make_pipeline(build_preprocessor(contract), LogisticRegression(max_iter=500)).fit(feature_frame(tr, contract), binary_target(c, tr.income))
    good = m.predict(feature_frame(te, contract)) == binary_target(c, te.income)
    worse = good.copy()
    worse[np.random.default_rng(seed).choice(np.flatnonzero(good), int(round(c.validation.min_detectable_effect * len(good))), replace=False)] = False
    return c, good, worse


def run(reps: int = 1000):
    c, good, worse = correctness()
    mde = c.validation.min_detectable_effect
    rows = []
    for share in (0.5, 0.2, 0.1):
        d = ab_sample_size(worse.mean(), mde, share=share)
        for name, a, b, looks, spend in (('A/A, fixed horizon', good, good, 1, 'obrien_fleming'),
                                          ('power at the MDE, fixed horizon', worse, good, 1, 'obrien_fleming'),
                                          ('A/A, 5 looks, O\'Brien-Fleming spending', good, good, 5, 'obrien_fleming'),
                                          ('power, 5 looks, O\'Brien-Fleming spending', worse, good, 5, 'obrien_fleming'),
                                          ('A/A, 5 looks, naive peeking', good, good, 5, 'naive')):
            if share != 0.5 and 'looks' in name: continue
            t0 = time.perf_counter()
            r = simulate_ab(a, b, d['total'], share, reps=reps, looks=looks, spending=spend, seed=hash((share, name)) % 2**31)
            lo, hi = wilson_interval(r['rejections'], reps)
            rows.append({'share': share, 'case': name, 'designed_rows': d['total'], 'rate': r['rate'], 'ci_low': lo, 'ci_high': hi,
                         'reps': reps, 'mean_stop_look': r['mean_stop_look'], 'seconds': time.perf_counter() - t0})
    return {'pool_rows': len(good), 'accuracy_challenger': float(good.mean()), 'accuracy_champion': float(worse.mean()), 'mde': mde, 'rows': rows}


def markdown(res) -> str:
    L = [f"Pool: {res['pool_rows']:,} Adult test rows; challenger accuracy {res['accuracy_challenger']:.4f}, champion "
         f"{res['accuracy_champion']:.4f} (MDE {res['mde']}); α = 0.05 two-sided, designed power 0.8.", '',
         '| challenger share | case | designed labelled rows | rejection rate | 95 % CI |', '| --- | --- | --- | --- | --- |']
    for r in res['rows']:
        L.append(f"| {r['share']:.0%} | {r['case']} | {r['designed_rows']:,} | **{r['rate']:.1%}** | {r['ci_low']:.1%}–{r['ci_high']:.1%} |")
    return '\n'.join(L)


def main(argv=None):
    ap = argparse.ArgumentParser(); ap.add_argument('--reps', type=int, default=1000); ap.add_argument('--out', default=None)
    a = ap.parse_args(argv)
    res = run(a.reps)
    if a.out: Path(a.out).write_text(json.dumps(res, indent=2, default=float))
    print(markdown(res))


if __name__ == '__main__':
    main()
