"""Benchmark: the cost of stages 01-06 as the rows grow, on one machine (time and peak memory per stage, fitted exponent).

The data (`--noise`):
- `teacher`: one distribution with distinct rows and independent labels. The features as `mixed` makes them, and each
  row's income drawn (seeded) from a fixed teacher model's probability (`teacher`: gradient-boosted trees fitted once on
  Adult's training file). A near-copy of a row in another split carries its own draw, so memorising does not pay and
  the learning curve measures what the model can learn. The production rows (stage 02's production snapshot, the
  rows of stage 06's prediction log) are another draw of the same distribution: n / 10 rows, at least 4,000.
- `mixed` (the default) and `jitter`: Adult's training file resampled with replacement, seeded, with noise so that
  copies are not exact duplicates (`noisy_adult`); at 32,561 rows the bundled file itself. Production: the UCI test file.

The charter is the bundled one with only its data (and production) source pointing at the generated files. Each stage
runs in its own Python process (`mlcycle.*.run_*`) so that its peak resident memory (the process's and its worker
processes') is measured alone. Stage 05 deploys the version stage 04 passed with the approval the charter asks for
given in advance (as `mlcycle run -p 05 approver=...`); before stage 06 (not timed) the champion's answers on the
production rows and their labels are written to the workspace's prediction log, as a server and its feedback would
have. `--profile` also writes each stage's cProfile and prints mlcycle's functions by cumulative time.

A power law t = a * n^k is fitted to (rows, seconds) per stage and for the sum, over the sizes from 130k upward when
there are at least two of them, else over all.

Run on demand (it is not collected by pytest), one size at a time on a quiet machine:

    python tests/benchmarks/bench_scale.py --rows 32561,130244,520976,2083584 --noise teacher [--profile] [--out scale.jsonl]
    python tests/benchmarks/bench_scale.py --rows 32561 --stages 01,02,03,04     # the bundled data, stages 01-04
    python tests/benchmarks/bench_scale.py --fit scale.jsonl     # the table and exponents from results already written

Sizes run one after the other; `--out` appends, so sizes can be measured in separate runs.
"""
import argparse, functools, json, os, platform, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

STAGES = {
    '01': ('mlcycle.feasibility', 'run_problem_definition', 'charter'),
    '02': ('mlcycle.data', 'run_data_stage', None),
    '03': ('mlcycle.train', 'run_model_development', None),
    '04': ('mlcycle.validate', 'run_validation', None),
    '05': ('mlcycle.deploy', 'run_deployment', None),
    '06': ('mlcycle.monitor', 'run_monitoring', None),
}
PRODUCTION_SHARE = 10     # the production window: n // 10 generated rows (teacher) or the UCI test file's 16,281 rows


SWAP_COLUMNS = ('workclass', 'marital_status', 'occupation', 'relationship', 'native_country')


def noisy_adult(n: int, seed: int = 0, noise: str = 'mixed', always: bool = False) -> pd.DataFrame:
    """Adult's training file resampled to `n` rows (with replacement, seeded), with noise. 'jitter': `age` and
    `hours_per_week` moved by up to two, capital gains and losses scaled by 0.95-1.05 (copies stay near-duplicates
    in every other column). 'mixed' (the default): the same, and each of `SWAP_COLUMNS` takes, with probability 0.2,
    its value from another row of the same income class, so that a generated row is rarely a copy of an original one.
    The target, sex, race and education are never changed."""
    from mlcycle.data import adult
    df = adult()
    if n == len(df) and not always: return df
    rng = np.random.default_rng(seed)
    out = df.sample(n, replace=True, random_state=seed).reset_index(drop=True)
    for col, k in (('age', 2), ('hours_per_week', 2)):
        out[col] = np.clip(out[col].to_numpy() + rng.integers(-k, k + 1, n), df[col].min(), df[col].max()).astype(df[col].dtype)
    for col in ('capital_gain', 'capital_loss'):
        v = out[col].to_numpy().astype(float)
        out[col] = np.where(v > 0, np.round(v * rng.uniform(0.95, 1.05, n)), v).astype(df[col].dtype)
    if noise == 'mixed':
        for col in SWAP_COLUMNS:
            swap = rng.random(n) < 0.2
            for label, idx in out.groupby('income').indices.items():
                donors = out[col].to_numpy()[idx]
                pick = idx[swap[idx]]
                out.loc[pick, col] = donors[rng.integers(0, len(idx), len(pick))]
    return out


TEACHER_DROP = ('income', 'fnlwgt')


def _teacher_frame(df: pd.DataFrame, categories: dict) -> pd.DataFrame:
    X = df.drop(columns=list(TEACHER_DROP))
    return X.assign(**{c: pd.Categorical(X[c], categories=v) for c, v in categories.items()})


@functools.lru_cache(maxsize=1)
def teacher():
    """A fixed model of P(income > 50K | the features), fitted once on Adult's training file (seeded): gradient-boosted
    trees of depth 3, 150 rounds, categories native. `fnlwgt` (a census weight the charter drops) is not used.
    Returns (model, categories of each text column)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from mlcycle.data import adult
    df = adult()
    cats = {c: sorted(df[c].dropna().unique()) for c in df.drop(columns=list(TEACHER_DROP)) if not pd.api.types.is_numeric_dtype(df[c])}
    m = HistGradientBoostingClassifier(max_depth=3, max_iter=150, learning_rate=0.1, early_stopping=False, random_state=0,
                                       categorical_features='from_dtype')
    return m.fit(_teacher_frame(df, cats), (df.income == '>50K').astype(int)), cats


def teacher_proba(df: pd.DataFrame) -> np.ndarray:
    m, cats = teacher()
    return m.predict_proba(_teacher_frame(df, cats))[:, 1]


def teacher_adult(n: int, seed: int = 0) -> pd.DataFrame:
    """One distribution with independent labels: the features of `noisy_adult(n, seed, 'mixed')` (always generated, also
    at 32,561 rows) and each row's income drawn, seeded, from the teacher's probability for that row. A near-copy of a
    row in another split carries its own draw, so memorising the training rows does not pay on validation, and the
    learning curve flattens where the model has learnt the teacher."""
    out = noisy_adult(n, seed, 'mixed', always=True)
    p = teacher_proba(out)
    draw = np.random.default_rng([seed, 30]).random(n) < p
    out['income'] = pd.array(np.where(draw, '>50K', '<=50K'), dtype=out['income'].dtype)
    return out


def generate(n: int, seed: int = 0, noise: str = 'mixed') -> pd.DataFrame:
    return teacher_adult(n, seed) if noise == 'teacher' else noisy_adult(n, seed, noise)


def production_size(n: int, noise: str) -> int | None:
    return max(4000, n // PRODUCTION_SHARE) if noise == 'teacher' else None


def prepare(root: Path, n: int, seed: int = 0, noise: str = 'mixed') -> Path:
    """Write the generated data (Parquet) and the bundled charter reading it into `root`; return the charter's path.
    With `teacher`, the production rows (stage 02's production snapshot, the rows stage 06's log holds) are another
    draw of the same distribution, `production_size(n)` rows; otherwise the UCI test file, as the bundled charter has it."""
    from mlcycle.core import ASSETS
    generate(n, seed, noise).to_parquet(root/'adult_n.parquet', index=False)
    d = yaml.safe_load((ASSETS/'adult_charter.yaml').read_text())
    d['data']['sources'] = [{'kind': 'parquet', 'path': 'adult_n.parquet'}]
    prod = str(ASSETS/'adult_test.csv.gz')
    if noise == 'teacher':
        generate(production_size(n, noise), seed + 1, noise).to_parquet(root/'production.parquet', index=False)
        prod = 'production.parquet'
    d['production']['sources'][0].update(kind='parquet' if noise == 'teacher' else 'csv', path=prod)
    (root/'charter.yaml').write_text(yaml.safe_dump(d, sort_keys=False))
    return root/'charter.yaml'


def fill_log(ws: Path, rows: pd.DataFrame, seed: int = 0) -> int:
    """Stage 06's input, written as the server would have: the champion's answers on the production rows in the
    workspace's prediction log (features as JSON, one row per request, timestamps one second apart) and each row's
    label as feedback. Not timed: it is the traffic of the days the window covers."""
    import json
    from mlcycle.charter import binary_target, workspace_charter
    from mlcycle.core import Workspace, read_json
    from mlcycle.data import feature_frame
    from mlcycle.deploy import aliases
    from mlcycle.model_checks import load_version
    from mlcycle.predlog import PredictionLog
    w = Workspace(ws); c = workspace_charter(w, None); contract = read_json(w.root/'data'/'contract.json')
    v = aliases(w, c.name)['champion']
    X = feature_frame(rows, contract)
    m = load_version(w, c, v)       # the answer a server gives: P(positive) and the model's own decision (a threshold optimizer's, say)
    p, d = m.predict_with_proba(X) if hasattr(m, 'predict_with_proba') else (m.predict_proba(X)[:, 1], m.predict(X))
    y = binary_target(c, rows[c.data.target])
    feats = X.astype(object).where(X.notna(), None).to_dict('records')
    t0 = 1.8e9 - len(rows)
    out = [{'request_id': f'b{i}', 'ts': t0 + i, 'model_name': c.name, 'model_version': v, 'arm': 'champion',
            'features': json.dumps(f, separators=(',', ':'), default=str), 'probability': float(pi), 'label': int(di),
            'latency_ms': 1.0, 'flags': ''} for i, (f, pi, di) in enumerate(zip(feats, p, d))]
    fb = [(f'b{i}', str(t), int(yi)) for i, (t, yi) in enumerate(zip(rows[c.data.target], y))]
    log = PredictionLog(w.prediction_log_url)
    try:
        for k in range(0, len(out), 50_000): log.write(out[k:k + 50_000])
        log.submit_feedback(fb).result()
    finally: log.close()
    return len(out)


STAGE_SCRIPT = """
import sys, json, time
mod, fn, arg, charter, ws = sys.argv[1:6]
import importlib, mlcycle.core as core
f = getattr(importlib.import_module(mod), fn)
t0 = time.perf_counter()
kw = {'log': lambda *a, **k: None} if fn in ('run_model_development', 'run_validation', 'run_deployment') else {}
if fn == 'run_deployment': kw['approver'] = 'Scale Benchmark'   # the charter asks for an approval: given in advance, as `mlcycle run -p 05 approver=...`
r = f(charter if arg == 'charter' else None, core.Workspace(ws), **kw)
secs = time.perf_counter() - t0
out = {'seconds': secs}
if fn == 'run_model_development':
    s = r['selection']; out['selected'] = s.chosen.name if s.chosen else None
    m = core.Workspace(ws).manifest('03_model_development')['outputs']
    out['training_rows'], out['training_rows_reason'] = m.get('training_rows'), m.get('training_rows_reason')
    out['curve'] = m.get('learning_curve')
if fn == 'run_validation':
    m = core.Workspace(ws).manifest('04_validation')['outputs']; out['verdict'] = m.get('verdict') or m.get('passed')
if fn == 'run_deployment':
    out['deployed'] = r['version'] if r['promotion'] else None
if fn == 'run_monitoring':
    out['log_rows'] = len(r['log']); out['alerts'] = sorted({a['rule'] for a in r['alerts'] if a['severity'] != 'info'})
    out['retrain'] = r['recommendation']['retrain']
print('RESULT ' + json.dumps(out, default=str))
"""


def run_stage(stage: str, charter: Path, ws: Path, profile: Path | None = None) -> dict:
    """Run one stage in a fresh process: its wall time (measured inside), its outputs, and the peak resident memory of
    the largest process of its tree (the stage's process or one of its worker processes, from `wait4`)."""
    mod, fn, arg = STAGES[stage]
    args = [mod, fn, str(arg), str(charter), str(ws)]
    if profile: cmd = [sys.executable, '-c', f'import cProfile,sys; cProfile.run(compile({STAGE_SCRIPT!r},"stage","exec"), {str(profile)!r})'] + args
    else: cmd = [sys.executable, '-c', STAGE_SCRIPT] + args
    env = {k: v for k, v in os.environ.items() if k != 'MLFLOW_TRACKING_URI'}
    env.setdefault('OMP_NUM_THREADS', '1')
    with tempfile.TemporaryFile('w+') as out, tempfile.TemporaryFile('w+') as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env, cwd=ws.parent)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0); err.seek(0)
        if p.returncode != 0: raise RuntimeError(f'stage {stage} failed:\n{err.read()[-4000:]}')
        res = json.loads(next(l for l in out.read().splitlines() if l.startswith('RESULT '))[7:])
    return {**res, 'seconds': round(res['seconds'], 1), 'peak_mb': round(usage.ru_maxrss / 1024)}


def top_functions(profile: Path, n: int = 15) -> list[str]:
    "The `n` mlcycle functions with the largest cumulative time in a cProfile file (imports and library internals left out), as text lines."
    import pstats
    st = pstats.Stats(str(profile)).stats
    rows = sorted(((v[3], v[1], f"{Path(k[0]).name}:{k[2]}") for k, v in st.items() if f'mlcycle{os.sep}' in k[0] and k[2] != '<module>'), reverse=True)
    return [f'{secs:9.1f} s {calls:7d} calls  {name}' for secs, calls, name in rows[:n]]


def fit_exponent(rows, seconds) -> float:
    "k of t = a n^k, least squares on the logs."
    return float(np.polyfit(np.log(np.asarray(rows, float)), np.log(np.asarray(seconds, float)), 1)[0])


def exponents(results: list[dict]) -> dict:
    t = pd.DataFrame([{'rows': r['rows'], 'stage': s, 'seconds': v['seconds']} for r in results for s, v in r['stages'].items()])
    big = sorted(set(t.rows[t.rows >= 130_000]))
    use = t[t.rows >= 130_000] if len(big) >= 2 else t
    out = {s: round(fit_exponent(g.rows, g.seconds), 2) for s, g in use.groupby('stage') if g.rows.nunique() >= 2}
    tot = use.groupby('rows')['seconds'].sum()
    if len(tot) >= 2: out['01-06'] = round(fit_exponent(tot.index, tot.values), 2)
    return out


def measure(n: int, profile_dir: Path | None, seed: int = 0, noise: str = 'mixed', stages=tuple(STAGES)) -> dict:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        charter = prepare(root, n, seed, noise)
        ws = root/'ws'
        res = {'rows': n, 'noise': noise, 'load_before': round(os.getloadavg()[0], 2), 'stages': {}}
        for st in stages:
            if st == '06':
                prod = pd.read_parquet(root/'production.parquet') if noise == 'teacher' else None
                if prod is None:
                    from mlcycle.presets import adult
                    prod = adult('test')
                res['log_rows'] = fill_log(ws, prod)
            prof = profile_dir/f'stage{st}_{n}.prof' if profile_dir else None
            r = run_stage(st, charter, ws, prof)
            res['stages'][st] = r
            print(json.dumps({'rows': n, 'stage': st, **r}), flush=True)
            if prof:
                print('\n'.join(top_functions(prof)), flush=True)
        return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--rows', default='32561,130244')
    ap.add_argument('--noise', default='mixed', choices=['mixed', 'jitter', 'teacher'], help='how generated rows differ from the originals (see noisy_adult)')
    ap.add_argument('--stages', default=','.join(STAGES), help='which stages, in order (each needs the ones before it): e.g. 01,02,03,04')
    ap.add_argument('--profile', action='store_true', help='cProfile each stage and print its top functions')
    ap.add_argument('--out', default=None, help='append the results (JSON lines) here')
    ap.add_argument('--fit', default=None, help='only fit the exponents of the results in this file')
    a = ap.parse_args(argv)
    if a.fit:
        results = [json.loads(l) for l in Path(a.fit).read_text().splitlines() if l.strip()]
    else:
        results = []
        prof = Path(tempfile.mkdtemp(prefix='scale-prof-')) if a.profile else None
        for n in [int(x) for x in a.rows.split(',')]:
            results.append(measure(n, prof, noise=a.noise, stages=a.stages.split(',')))
            if a.out:
                with open(a.out, 'a') as f: f.write(json.dumps(results[-1], default=str) + '\n')
    table = pd.DataFrame([{'rows': r['rows'], **{f'{s} s': v['seconds'] for s, v in r['stages'].items()},
                           **{f'{s} MB': v['peak_mb'] for s, v in r['stages'].items()},
                           'training rows': r['stages'].get('03', {}).get('training_rows'), 'selected': r['stages'].get('03', {}).get('selected'),
                           'verdict': r['stages'].get('04', {}).get('verdict'), 'log rows': r.get('log_rows')} for r in results])
    print(table.to_string(index=False))
    print('exponents:', exponents(results))
    print(f'machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}')


if __name__ == '__main__':
    main()
