"""Does the gate's claimed 95 % hold? Coverage of its bounds on simulated data with a known true value (issue 27):

    python tests/benchmarks/bench_coverage.py [--sims 500] [--rows 400] [--features 10] [--out r.json]

Each simulation draws `--rows` labelled rows from a known logistic model (10 features, half of them noise), splits them as
stage 02 does (60 % train, 20 % validation, 20 % test), fits a logistic regression on the training split (the registered
model), and computes the true value of its ROC AUC on 200,000 fresh rows of the same population. Then the two estimates
stage 04 uses, each as a one-sided 95 % lower bound (the gate's claim `roc_auc ≥ x`) and a two-sided 95 % interval:
- `test split`: the percentile bootstrap of the 20 % test split (`stats.percentile_ci`, 500 draws);
- `optimism-corrected`: Harrell's bootstrap on every labelled row (`stats.optimism_corrected`, 20 refits, the model's own
  training rows counted as such), what stage 04 uses below 5,000 labelled rows.
The figures: the share of simulations whose bound (interval) holds the true value (the claim: 95 %, the requirement:
at least 93 %), and the mean distance from the point estimate to the one-sided bound (what a claim must leave as room).
"""
import argparse, json, time

import numpy as np
from scipy.stats import t as tdist
from sklearn.linear_model import LogisticRegression

from mlcycle.stats import bootstrap_indices, claim_level, optimism_corrected, percentile_ci, roc_auc_rows


def population(features: int, seed: int = 0):
    "A known logistic model: the first half of the features carry signal, the rest are noise; `draw(n, rng)` samples (X, y)."
    beta = np.r_[np.linspace(0.6, 0.12, features // 2), np.zeros(features - features // 2)]
    def draw(n, rng):
        X = rng.normal(size=(n, features))
        return X, (rng.random(n) < 1 / (1 + np.exp(-(X @ beta - 0.5)))).astype(int)
    return draw


def auc(y, s) -> float: return float(roc_auc_rows(np.asarray(y)[None, :], np.asarray(s)[None, :])[0])


def one_simulation(draw, X_true, y_true, rows: int, rng) -> dict:
    X, y = draw(rows, rng)
    n_tr, n_te = int(rows * 0.6), int(rows * 0.2)
    fit = lambda X, y: LogisticRegression(max_iter=200).fit(X, y)
    out = lambda m, X: m.predict_proba(X)[:, 1]
    model = fit(X[:n_tr], y[:n_tr])
    truth = auc(y_true, out(model, X_true))
    yt, st = y[-n_te:], out(model, X[-n_te:])
    idx = bootstrap_indices(n_te, 500, int(rng.integers(2**31)))
    draws = roc_auc_rows(yt[idx], st[idx])
    oc = optimism_corrected(fit, out, auc, X, y, model=model, fit_rows=n_tr, seed=int(rng.integers(2**31)), level=claim_level())
    q95 = tdist.ppf(0.975, oc['refits'] - 1)
    return {'truth': truth,
            'test': {'value': auc(yt, st), 'bound': percentile_ci(draws, claim_level())[0], 'interval': percentile_ci(draws, 0.95)},
            'oc': {'value': oc['estimate'], 'bound': oc['ci_low'], 'interval': (oc['estimate'] - q95 * oc['se'], oc['estimate'] + q95 * oc['se'])}}


def summarise(runs: list[dict], method: str) -> dict:
    t = np.array([r['truth'] for r in runs])
    v, b = np.array([r[method]['value'] for r in runs]), np.array([r[method]['bound'] for r in runs])
    lo, hi = np.array([r[method]['interval'] for r in runs]).T
    return {'one_sided_coverage': float(np.mean(t >= b)), 'two_sided_coverage': float(np.mean((lo <= t) & (t <= hi))),
            'mean_room_to_bound': float(np.mean(v - b)), 'mean_error': float(np.mean(v - t))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sims', type=int, default=500); ap.add_argument('--rows', type=int, default=400)
    ap.add_argument('--features', type=int, default=10); ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--out', default=None)
    a = ap.parse_args(argv)
    draw = population(a.features)
    X_true, y_true = draw(200_000, np.random.default_rng(10_000 + a.seed))
    rng, t0, load0 = np.random.default_rng(a.seed), time.time(), __import__('os').getloadavg()[0]
    runs = [one_simulation(draw, X_true, y_true, a.rows, rng) for _ in range(a.sims)]
    res = {'sims': a.sims, 'rows': a.rows, 'features': a.features, 'seconds': round(time.time() - t0, 1),
           'load_average': [round(load0, 2), round(__import__('os').getloadavg()[0], 2)],
           'test split': summarise(runs, 'test'), 'optimism-corrected': summarise(runs, 'oc')}
    print(json.dumps(res, indent=2))
    if a.out: open(a.out, 'w').write(json.dumps(res, indent=2))
    return res


if __name__ == '__main__':
    main()
