"""Label-free performance estimate (stage 06) against NannyML's CBPE on the same shifted Adult windows (run on demand):

    python tests/benchmarks/bench_cbpe.py [--windows 8] [--window-rows 2000] [--venv DIR] [--out results.json]

- Model: mlcycle's gradient-boosting pipeline fitted on half of Adult's training file. Reference (labelled, what both
  estimators calibrate on): the other half. Production pool: Adult's test file.
- Windows (each `--window-rows` rows, `--windows` per scenario, seeded): no shift; covariate shift by resampling the pool
  towards older people (weight exp(age / 10)) and towards more education (weight exp(education_num / 2)); concept shift:
  30 % of the labels of married people flipped (inputs unchanged, so no label-free estimate can see it).
- mlcycle: scores mapped by an isotonic calibrator fitted on the reference (`calibration.score_calibrator`), then
  `calibration.estimate_performance` (decisions at 0.5), its interval with the calibrator refitted on 50 bootstrap
  resamples of the reference (`calibration.calibrated_draws`), as stage 06 does. NannyML: `CBPE` (binary, chunk = one window) fitted on the
  same reference, in ITS OWN virtual environment (created by this script with `python -m venv` + `pip install nannyml`,
  so the project's pins do not move); data goes through CSV files and a small script run with that venv's python.
- Reported per scenario: mean absolute error of the estimated accuracy and ROC AUC against the realized value, for both;
  for mlcycle also how often the realized value fell in the estimate's 95 % interval and how often the
  estimated-vs-realized check warned (the concept-shift sign)."""
import argparse, json, subprocess, sys, tempfile, textwrap, time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from mlcycle.calibration import ESTIMATED_METRICS, calibrated_draws, estimate_performance, estimated_vs_realized, score_calibrator
from mlcycle.charter import binary_target, load_charter
from mlcycle.data import adult, feature_frame, infer_contract
from mlcycle.train import candidate_pipeline

NANNYML_SCRIPT = textwrap.dedent('''
    import sys, pandas as pd, nannyml as nml
    ref, ana, rows, out = pd.read_csv(sys.argv[1]), pd.read_csv(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    est = nml.CBPE(problem_type='classification_binary', y_pred_proba='y_pred_proba', y_pred='y_pred', y_true='y_true',
                   metrics=['roc_auc', 'accuracy'], chunk_size=rows)
    est.fit(ref)
    df = est.estimate(ana.drop(columns=['y_true'])).filter(period='analysis').to_df()
    res = pd.DataFrame({'accuracy': df[('accuracy', 'value')].to_numpy(), 'roc_auc': df[('roc_auc', 'value')].to_numpy()})
    res.to_csv(out, index=False)
    print(nml.__version__)
''')


def nannyml_python(venv: Path) -> Path:
    "The python of a virtual environment holding nannyml, created (python -m venv + pip install nannyml statsmodels) when missing."
    py = venv/'bin'/'python'
    if not py.exists(): subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    if subprocess.run([str(py), '-c', 'import nannyml'], capture_output=True).returncode:
        # statsmodels: imported by nannyml 0.13 but not declared as its dependency
        subprocess.run([str(py), '-m', 'pip', 'install', '-q', 'nannyml', 'statsmodels'], check=True)
    return py


def setup(seed: int = 0):
    "The fitted model, reference scores and labels, and the production pool with its scores and labels."
    c = load_charter()
    tr = adult('train').sample(frac=1, random_state=seed).reset_index(drop=True)
    fit_df, ref_df = tr.iloc[:len(tr) // 2], tr.iloc[len(tr) // 2:]
    contract = infer_contract(fit_df, c)
    model = candidate_pipeline('hist_gradient_boosting', contract, seed).fit(feature_frame(fit_df, contract), binary_target(c, fit_df[c.data.target]))
    score = lambda d: model.predict_proba(feature_frame(d, contract))[:, 1]
    pool = adult('test').reset_index(drop=True)
    return dict(s_ref=score(ref_df), y_ref=binary_target(c, ref_df[c.data.target]), pool=pool, s_pool=score(pool),
                y_pool=binary_target(c, pool[c.data.target]))


def windows(S: dict, scenario: str, n_windows: int, rows: int, seed: int = 0):
    "Row indices into the pool and the labels of each window of `scenario`."
    pool, y = S['pool'], S['y_pool'].copy()
    rng = np.random.default_rng(seed)
    w = np.ones(len(pool))
    if scenario == 'covariate: older people':
        w = np.exp(pool.age.to_numpy(float) / 10)
    elif scenario == 'covariate: more education':
        w = np.exp(pool.education_num.to_numpy(float) / 2)
    elif scenario == 'concept: 30% of married labels flipped':
        flip = pool.marital_status.astype(str).str.startswith('Married').to_numpy() & (rng.uniform(size=len(pool)) < 0.3)
        y = np.where(flip, 1 - y, y)
    out = []
    for _ in range(n_windows):
        idx = rng.choice(len(pool), rows, replace=True, p=w / w.sum())
        out.append((idx, y[idx]))
    return out


def markdown(t: pd.DataFrame) -> str:
    "A markdown table (numbers to 4 decimals)."
    f = lambda v: f'{v:.4f}' if isinstance(v, float) else str(v)
    return '\n'.join(['| ' + ' | '.join(t.columns) + ' |', '|' + '---|' * len(t.columns)]
                     + ['| ' + ' | '.join(f(v) for v in r) + ' |' for r in t.itertuples(index=False)])


SCENARIOS = ['no shift', 'covariate: older people', 'covariate: more education', 'concept: 30% of married labels flipped']


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--windows', type=int, default=8)
    ap.add_argument('--window-rows', type=int, default=2000)
    ap.add_argument('--venv', default=str(Path(tempfile.gettempdir())/'mlcycle-bench-nannyml'))
    ap.add_argument('--out', default='')
    a = ap.parse_args()
    t0 = time.perf_counter()
    py = nannyml_python(Path(a.venv))
    S = setup()
    cal = score_calibrator(S['y_ref'], S['s_ref'])
    tmp = Path(tempfile.mkdtemp(prefix='bench-cbpe-'))
    ref = pd.DataFrame({'y_pred_proba': S['s_ref'], 'y_pred': (S['s_ref'] >= 0.5).astype(int), 'y_true': S['y_ref']})
    ref.to_csv(tmp/'ref.csv', index=False)
    (tmp/'nml.py').write_text(NANNYML_SCRIPT)
    rows, version = [], ''
    for sc in SCENARIOS:
        ws = windows(S, sc, a.windows, a.window_rows)
        ana = pd.concat([pd.DataFrame({'y_pred_proba': S['s_pool'][i], 'y_pred': (S['s_pool'][i] >= 0.5).astype(int), 'y_true': yw})
                         for i, yw in ws], ignore_index=True)
        ana.to_csv(tmp/'ana.csv', index=False)
        r = subprocess.run([str(py), str(tmp/'nml.py'), str(tmp/'ref.csv'), str(tmp/'ana.csv'), str(a.window_rows), str(tmp/'nml_out.csv')],
                           capture_output=True, text=True, timeout=600)
        if r.returncode: raise SystemExit(f'nannyml failed: {r.stderr[-2000:]}')
        version = r.stdout.strip().splitlines()[-1]
        nml = pd.read_csv(tmp/'nml_out.csv')
        for k, (i, yw) in enumerate(ws):
            s = S['s_pool'][i]
            est = estimate_performance(cal.predict(s), scores=s, pred=(s >= 0.5).astype(int), seed=k, level=1 - 0.05 / len(ESTIMATED_METRICS),
                                       proba_draws=calibrated_draws(S['y_ref'], S['s_ref'], s, seed=k))   # stage 06's check: Bonferroni over the 3 metrics
            t = estimated_vs_realized(est, yw, s).set_index('metric')
            rows.append({'scenario': sc, 'window': k, 'realized_accuracy': t.realized['accuracy'], 'realized_roc_auc': t.realized['roc_auc'],
                         'mlcycle_accuracy': t.estimate['accuracy'], 'mlcycle_roc_auc': t.estimate['roc_auc'],
                         'nannyml_accuracy': float(nml.accuracy[k]), 'nannyml_roc_auc': float(nml.roc_auc[k]),
                         'in_interval_accuracy': bool(t.agrees['accuracy']), 'in_interval_roc_auc': bool(t.agrees['roc_auc']),
                         'warned': bool((t.warning != '').any())})
    d = pd.DataFrame(rows)
    summary = []
    for sc, g in d.groupby('scenario', sort=False):
        e = lambda who, m: float((g[f'{who}_{m}'] - g[f'realized_{m}']).abs().mean())
        summary.append({'scenario': sc, 'windows': len(g), 'realized_accuracy': g.realized_accuracy.mean(), 'realized_roc_auc': g.realized_roc_auc.mean(),
                        'mae_accuracy_mlcycle': e('mlcycle', 'accuracy'), 'mae_accuracy_nannyml': e('nannyml', 'accuracy'),
                        'mae_roc_auc_mlcycle': e('mlcycle', 'roc_auc'), 'mae_roc_auc_nannyml': e('nannyml', 'roc_auc'),
                        'mlcycle_in_interval': float((g.in_interval_accuracy & g.in_interval_roc_auc).mean()), 'mlcycle_warned': float(g.warned.mean())})
    summary = pd.DataFrame(summary)
    print(f'nannyml {version}; {a.windows} windows x {a.window_rows} rows per scenario; {time.perf_counter() - t0:.0f} s')
    print(markdown(summary))
    if a.out: Path(a.out).write_text(json.dumps({'nannyml': version, 'summary': summary.to_dict('records'), 'windows': rows}, indent=1, default=float))


if __name__ == '__main__':
    main()
