"""Stage-06 drift detector on real data (run on demand; tests/test_monitoring.py runs a smaller version):

    python tests/benchmarks/bench_drift.py [--resamples 200] [--sizes 500,2000,10000] [--out results.json]

- Speed: `DriftDetector.compare` on 1,000,000 rows (Adult test rows resampled) x Adult's 13 features; median of 5.
- False alarms: Adult (train + test files, 48,842 rows) split at random into a reference half and a production half;
  windows drawn from the production half (same distribution) -> share of windows where ANY feature is flagged.
- Detection: shifts of known size injected into the production half (population PSI >= 0.25 on one feature,
  calibrated on the whole half): numeric (age +k years, a share of people working 10 h more), categorical (marital_status and
  occupation mix reweighted), and a brand-new workclass category -> share of windows where that feature is flagged.
Rates come with 95 % Wilson intervals."""
import argparse, json, math, sys, time
from pathlib import Path

import numpy as np
import pandas as pd

from mlcycle.charter import load_charter
from mlcycle.data import adult, feature_frame, infer_contract
from mlcycle.monitor import DriftDetector, wilson_interval


def pools(seed: int = 0):
    "Reference half and production half of all Adult rows, as feature frames; the contract from the reference half."
    c = load_charter()
    df = pd.concat([adult('train'), adult('test')], ignore_index=True).sample(frac=1, random_state=seed).reset_index(drop=True)
    ref_raw, prod_raw = df.iloc[:len(df) // 2].reset_index(drop=True), df.iloc[len(df) // 2:].reset_index(drop=True)
    contract = infer_contract(ref_raw, c)
    return feature_frame(ref_raw, contract), feature_frame(prod_raw, contract), contract


def _reweight(prod, col, values, k, rng):
    w = np.where(prod[col].isin(values), k, 1.0)
    return prod.iloc[rng.choice(len(prod), len(prod), replace=True, p=w / w.sum())].reset_index(drop=True)


SHIFTS = {
    # name: (feature, kind, function(prod, strength, rng) -> shifted prod, strengths to try in increasing order)
    'age +k years (numeric)': ('age', 'numeric', lambda p, k, r: p.assign(age=np.minimum(p.age + k, 90)), np.arange(1, 15)),
    'hours_per_week: a share k works 10 h more (numeric)': ('hours_per_week', 'numeric',
                                     lambda p, k, r: p.assign(hours_per_week=np.minimum(p.hours_per_week + 10 * (r.random(len(p)) < k), 99)),
                                     np.round(np.arange(0.02, 0.8, 0.02), 2)),
    'marital_status mix (categorical)': ('marital_status', 'categorical',
                                         lambda p, k, r: _reweight(p, 'marital_status', ['Never-married'], k, r), np.arange(1.2, 6, 0.2)),
    'occupation mix (categorical)': ('occupation', 'categorical',
                                     lambda p, k, r: _reweight(p, 'occupation', ['Prof-specialty', 'Exec-managerial'], k, r), np.arange(1.2, 6, 0.2)),
    "new workclass 'Gig-economy' (brand-new category)": ('workclass', 'categorical',
                                                        lambda p, k, r: p.assign(workclass=np.where(r.random(len(p)) < k, 'Gig-economy', p.workclass)),
                                                        np.round(np.arange(0.005, 0.2, 0.005), 3)),
}


def calibrate(ref, prod, name, target=0.25, seed=0):
    "The smallest strength whose population PSI (whole production half vs reference) is >= target; returns (strength, PSI, shifted half)."
    col, _, fn, strengths = SHIFTS[name]
    one = DriftDetector(ref, features=[col])
    for k in strengths:
        shifted = fn(prod, k, np.random.default_rng(seed))
        v = float(one.compare(shifted[[col]]).psi.iloc[0])
        if v >= target: return k, v, shifted
    raise RuntimeError(f'{name}: no strength reaches PSI {target}')


def rate(k, n):
    lo, hi = wilson_interval(k, n)
    return {'rate': k / n, 'ci_low': lo, 'ci_high': hi, 'hits': k, 'n': n}


def false_alarms(ref, prod, contract, sizes=(500, 2000, 10000), resamples=200, seed=1, alpha=0.05):
    det = DriftDetector(ref, contract)
    rng = np.random.default_rng(seed)
    out = {}
    for n in sizes:
        hits, flagged = 0, {}
        for _ in range(resamples):
            w = prod.iloc[rng.choice(len(prod), n, replace=False)]
            t = det.compare(w, alpha=alpha)
            if t.drift.any():
                hits += 1
                for f in t.loc[t.drift, 'feature']: flagged[f] = flagged.get(f, 0) + 1
        out[n] = {**rate(hits, resamples), 'features_flagged': flagged}
    return out


def detections(ref, prod, contract, sizes=(500, 2000, 10000), resamples=200, seed=2, alpha=0.05, target=0.25):
    det = DriftDetector(ref, contract)
    rng = np.random.default_rng(seed)
    out = {}
    for name, (col, kind, fn, _) in SHIFTS.items():
        k, pop_psi, shifted = calibrate(ref, prod, name, target, seed)
        res = {'feature': col, 'kind': kind, 'strength': float(k), 'population_psi': pop_psi}
        for n in sizes:
            hits, other = 0, 0
            for _ in range(resamples):
                w = shifted.iloc[rng.choice(len(shifted), n, replace=False)]
                t = det.compare(w, alpha=alpha).set_index('feature')
                hits += bool(t.loc[col, 'drift'])
            res[n] = rate(hits, resamples)
        out[name] = res
    return out


def speed(repeats=5, rows=1_000_000):
    c = load_charter()
    tr = adult('train')
    contract = infer_contract(tr, c)
    t0 = time.perf_counter(); det = DriftDetector(feature_frame(tr, contract), contract); fit = time.perf_counter() - t0
    big = adult('test').sample(rows, replace=True, random_state=0).reset_index(drop=True)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); det.compare(big); times.append(time.perf_counter() - t0)
    return {'rows': rows, 'features': len(det.features), 'fit_seconds': fit, 'compare_seconds_median': float(np.median(times)),
            'compare_seconds_all': times}


def markdown(res) -> str:
    L = [] if not res['speed'] else [f"- Speed: {res['speed']['rows']:,} rows × {res['speed']['features']} features: **{res['speed']['compare_seconds_median']:.2f} s** "
         f"(median of {len(res['speed']['compare_seconds_all'])}; fitting the reference: {res['speed']['fit_seconds']:.2f} s).", '']
    L += ['| window rows | false-alarm rate (any feature flagged, same distribution) | 95 % CI |', '| --- | --- | --- |']
    for n, r in res['false_alarms'].items():
        L.append(f"| {int(n):,} | **{r['rate']:.1%}** ({r['hits']}/{r['n']}) | {r['ci_low']:.1%}–{r['ci_high']:.1%} |")
    sizes = [k for k in next(iter(res['detections'].values())) if str(k).isdigit()]
    L += ['', '| injected shift | population PSI | ' + ' | '.join(f'detected, {int(n):,} rows' for n in sizes) + ' |',
          '| --- | --- | ' + ' | '.join('---' for _ in sizes) + ' |']
    for name, r in res['detections'].items():
        L.append(f"| {name}: strength {r['strength']:g} | {r['population_psi']:.3f} | " +
                 ' | '.join(f"**{r[n]['rate']:.1%}** ({r[n]['hits']}/{r[n]['n']})" for n in sizes) + ' |')
    return '\n'.join(L)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument('--resamples', type=int, default=200)
    ap.add_argument('--sizes', default='500,2000,10000')
    ap.add_argument('--out', default=None)
    ap.add_argument('--target', type=float, default=0.25, help='population PSI of the injected shifts (0.25: major; try 0.1 for moderate)')
    ap.add_argument('--skip-speed', action='store_true')
    a = ap.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(',')]
    ref, prod, contract = pools()
    res = {'speed': None if a.skip_speed else speed(), 'false_alarms': false_alarms(ref, prod, contract, sizes, a.resamples),
           'detections': detections(ref, prod, contract, sizes, a.resamples, target=a.target)}
    res = json.loads(json.dumps(res, default=float))
    if a.out: Path(a.out).write_text(json.dumps(res, indent=2))
    print(markdown(res))


if __name__ == '__main__':
    main()
