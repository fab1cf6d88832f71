"""Stage-06 drift detector on real data (run on demand; tests/test_monitoring.py runs a smaller version):

    python tests/benchmarks/bench_drift.py [--resamples 200] [--sizes 500,2000,10000] [--out results.json]

- Speed: `DriftDetector.compare` on 1,000,000 rows (Adult test rows resampled) x Adult's 13 features; median of 5.
- False alarms: Adult (train + test files, 48,842 rows) split at random into a reference half and a production half;
  windows drawn from the production half (same distribution) -> share of windows where ANY feature is flagged.
- Detection: shifts of known size injected into the production half (population PSI >= 0.25 on one feature,
  calibrated on the whole half): numeric (age +k years, a share of people working 10 h more), categorical (marital_status and
  occupation mix reweighted), and a brand-new workclass category -> share of windows where that feature is flagged.
Rates come with 95 % Wilson intervals.

Peer (`--peer evidently`): Evidently's default data-drift preset (`DataDriftPreset()`) on the same windows, in its own
virtual environment that the benchmark creates (`python -m venv` + `pip install evidently`), so the project's pins do not
move; the windows go over as Parquet to `peer_evidently.py`, run by that environment's python. Reported side by side:
both at their defaults, and Evidently with its drift threshold scaled so that its false-alarm rate on the null windows
equals mlcycle's on the same windows (detection at equal false-alarm rates).

    python tests/benchmarks/bench_drift.py --peer evidently --resamples 10 --sizes 500,2000 --target 0.1 --reference-rows 5000"""
import argparse, json, math, subprocess, sys, tempfile, time
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


# --- the peer: Evidently's DataDriftPreset on the same windows ---------------------------------------------------------
PEER_VENV = Path(tempfile.gettempdir())/'mlcycle-bench-evidently'
PEER_PACKAGES = ['evidently', 'pandas<3', 'pyarrow']   # evidently 0.7 imports a pandas helper that pandas 3 removed


def peer_python(venv=PEER_VENV) -> Path:
    "The python of Evidently's own virtual environment, created (python -m venv + pip install) when missing."
    py = Path(venv)/'bin'/'python'
    if not py.exists(): subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    if subprocess.run([str(py), '-c', 'import evidently, pyarrow'], capture_output=True).returncode:
        subprocess.run([str(py), '-m', 'pip', 'install', '-q', *PEER_PACKAGES], check=True)
    return py


def peer_windows(ref, prod, sizes, resamples, target=0.25, seed=3):
    "The windows both tools judge: `null` ones from the production half, and from each shifted half (calibrated to `target`)."
    halves = {'null': (None, prod, None, None)}
    for name in SHIFTS:
        k, v, shifted = calibrate(ref, prod, name, target, seed)
        halves[name] = (SHIFTS[name][0], shifted, float(k), v)
    rng, out = np.random.default_rng(seed), []
    for name, (col, half, k, v) in halves.items():
        for n in sizes:
            for i in range(resamples):
                out.append({'id': f'{len(out)}', 'shift': name, 'feature': col, 'strength': k, 'population_psi': v, 'n': n,
                            'frame': half.iloc[rng.choice(len(half), n, replace=False)].reset_index(drop=True)})
    return out


def _ratio(c: dict) -> float:
    "A column's drift value on one scale, drift at >= 1: distance / threshold, or log p / log threshold for tests."
    if 'p_value' in c['method'].lower().replace('-', '_').replace(' ', '_'):
        return math.log(max(c['value'], 1e-300)) / math.log(c['threshold'])
    return c['value'] / c['threshold']


def run_peer(ref, contract, wins, python) -> dict:
    "Evidently's verdicts on `wins` (window id -> its per-column results), run by `python` in a scratch folder."
    feats = contract['features']
    cols = {'numerical': [f for f in feats if contract['columns'][f]['kind'] == 'numeric'],
            'categorical': [f for f in feats if contract['columns'][f]['kind'] != 'numeric']}
    with tempfile.TemporaryDirectory(prefix='bench-drift-peer-') as d:
        d = Path(d)
        (d/'columns.json').write_text(json.dumps(cols))
        ref[feats].to_parquet(d/'reference.parquet', index=False)
        pd.concat([w['frame'][feats].assign(_window=w['id']) for w in wins], ignore_index=True).to_parquet(d/'windows.parquet', index=False)
        subprocess.run([str(python), str(Path(__file__).with_name('peer_evidently.py')), str(d)], check=True)
        return json.loads((d/'evidently.json').read_text())


def compare_with_peer(ref, prod, contract, sizes=(500, 2000), resamples=50, target=0.25, alpha=0.05, venv=PEER_VENV) -> dict:
    "mlcycle and Evidently on the same windows: false alarms on null windows, detection of each shift, seconds per window."
    wins = peer_windows(ref, prod, sizes, resamples, target)
    det, mine = DriftDetector(ref, contract), {}
    t0 = time.perf_counter()
    for w in wins:
        t = det.compare(w['frame'], alpha=alpha)
        mine[w['id']] = set(t.loc[t.drift, 'feature'])
    ml_seconds = (time.perf_counter() - t0) / len(wins)
    peer = run_peer(ref, contract, wins, peer_python(venv))
    ev = peer['windows']
    ratios = {i: {c: _ratio(r) for c, r in e['columns'].items()} for i, e in ev.items()}
    out = {'evidently': peer['evidently'], 'target_psi': target, 'alpha': alpha, 'resamples': resamples, 'sizes': {},
           'seconds_per_window': {'mlcycle': ml_seconds, 'evidently': float(np.mean([e['seconds'] for e in ev.values()]))},
           'methods': sorted({f"{c}: {r['method']} (threshold {r['threshold']:g})" for e in ev.values() for c, r in e['columns'].items()})}
    for n in sizes:
        null = [w['id'] for w in wins if w['shift'] == 'null' and w['n'] == n]
        ml_fa = sum(bool(mine[i]) for i in null)
        null_max = sorted((max(ratios[i].values()) for i in null), reverse=True)
        scale = null_max[ml_fa] if ml_fa < len(null) else 0.0   # Evidently alarms when a ratio > scale: at most ml_fa null windows do
        row = {'threshold_scale_at_mlcycle_false_alarms': scale,
               'false_alarms': {'mlcycle': rate(ml_fa, len(null)), 'evidently_any_column': rate(sum(m >= 1 for m in null_max), len(null)),
                                'evidently_dataset': rate(sum(ev[i]['drifted_share'] >= ev[i]['drift_share'] for i in null), len(null)),
                                'evidently_matched': rate(sum(m > scale for m in null_max), len(null))},
               'detections': {}}
        for name in SHIFTS:
            ids = [w for w in wins if w['shift'] == name and w['n'] == n]
            col = ids[0]['feature']
            row['detections'][name] = {
                'feature': col, 'strength': ids[0]['strength'], 'population_psi': ids[0]['population_psi'],
                'mlcycle': rate(sum(col in mine[w['id']] for w in ids), len(ids)),
                'evidently_any_column': rate(sum(ratios[w['id']][col] >= 1 for w in ids), len(ids)),
                'evidently_dataset': rate(sum(ev[w['id']]['drifted_share'] >= ev[w['id']]['drift_share'] for w in ids), len(ids)),
                'evidently_matched': rate(sum(ratios[w['id']][col] > scale for w in ids), len(ids))}
        out['sizes'][n] = row
    return out


def peer_markdown(p) -> str:
    f = lambda r: f"**{r['rate']:.0%}** ({r['hits']}/{r['n']})"
    tools = [('mlcycle (default)', 'mlcycle'), ('Evidently DataDriftPreset (default; the column flagged)', 'evidently_any_column'),
             ("Evidently's dataset verdict (default: >= half the columns drifted)", 'evidently_dataset'),
             ("Evidently, threshold scaled to mlcycle's false-alarm rate", 'evidently_matched')]
    L = []
    for n, row in p['sizes'].items():
        names = list(row['detections'])
        L += ['', f"Windows of {int(n):,} rows ({p['resamples']} per case; shifts at population PSI ≈ {p['target_psi']:g}; Evidently's threshold scale "
              f"for equal false alarms: ×{row['threshold_scale_at_mlcycle_false_alarms']:.2f}):", '',
              '| detector | false alarms (null windows, any feature) | ' + ' | '.join(f"{s.split(' (')[0]} (PSI {row['detections'][s]['population_psi']:.2f})" for s in names) + ' |',
              '| --- | --- | ' + ' | '.join('---' for _ in names) + ' |']
        for label, k in tools:
            L.append(f"| {label} | {f(row['false_alarms'][k])} | " + ' | '.join(f(row['detections'][s][k]) for s in names) + ' |')
    s = p['seconds_per_window']
    L += ['', f"Seconds per window: mlcycle {s['mlcycle']:.3f}, Evidently {p['evidently']} {s['evidently']:.3f}. "
          f"Evidently's methods here: {'; '.join(sorted({m.split(': ', 1)[1] for m in p['methods']}))}."]
    return '\n'.join(L)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument('--resamples', type=int, default=200)
    ap.add_argument('--sizes', default='500,2000,10000')
    ap.add_argument('--out', default=None)
    ap.add_argument('--target', type=float, default=0.25, help='population PSI of the injected shifts (0.25: major; try 0.1 for moderate)')
    ap.add_argument('--skip-speed', action='store_true')
    ap.add_argument('--peer', choices=['evidently'], default=None, help="run Evidently's DataDriftPreset on the same windows (its own venv)")
    ap.add_argument('--reference-rows', type=int, default=0, help='with --peer: fit both detectors on this many reference rows (seeded sample; 0: all)')
    ap.add_argument('--peer-venv', default=str(PEER_VENV), help='where the peer\'s virtual environment lives (created when missing)')
    a = ap.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(',')]
    ref, prod, contract = pools()
    if a.peer:
        if a.reference_rows: ref = ref.sample(a.reference_rows, random_state=0).reset_index(drop=True)
        res = json.loads(json.dumps(compare_with_peer(ref, prod, contract, sizes, a.resamples, a.target, venv=a.peer_venv), default=float))
        if a.out: Path(a.out).write_text(json.dumps(res, indent=2))
        print(peer_markdown(res)); return
    res = {'speed': None if a.skip_speed else speed(), 'false_alarms': false_alarms(ref, prod, contract, sizes, a.resamples),
           'detections': detections(ref, prod, contract, sizes, a.resamples, target=a.target)}
    res = json.loads(json.dumps(res, default=float))
    if a.out: Path(a.out).write_text(json.dumps(res, indent=2))
    print(markdown(res))


if __name__ == '__main__':
    main()
