"""LightGBM and XGBoost beside HistGradientBoosting as stage 03 candidates, on a copy of the bundled charter that names
them (run on demand; needs `pip install mlcycle[boosting]`):

    python tests/benchmarks/bench_boosting.py [--rows 0] [--iterations 0] [--out results.json]

Stage 02's train/validation/test split of the bundled data, then stage 03's own search (`train_candidates`: seeded
randomized search with the charter's iterations and folds, LightGBM/XGBoost early-stopped on the validation split)
without the fairness mitigations, so that each row is one family. Reports, per family, the CV ROC AUC, the validation
ROC AUC, the ROC AUC on the untouched test split, the search and final-fit seconds, the boosting rounds and the p95
one-row latency, with the machine's load average."""
import argparse, json, os, time

import pandas as pd

from mlcycle.charter import load_charter, task_target
from mlcycle.data import adult, feature_frame, infer_contract, split_data
from mlcycle.latency import machine_load
from mlcycle.train import train_candidates

FAMILIES = ['hist_gradient_boosting', 'lightgbm', 'xgboost']


def main(rows: int = 0, iterations: int = 0, out: str | None = None) -> pd.DataFrame:
    from sklearn.metrics import roc_auc_score
    c = load_charter()
    c.development.candidates = list(FAMILIES)                   # the copy of the bundled charter that names them
    df = adult() if not rows else adult().sample(rows, random_state=c.development.seed)
    s = split_data(df, c)
    contract = infer_contract(s['train'], c)
    t0 = time.perf_counter()
    cands = train_candidates(c, contract, s['train'], s['validation'], search_iterations=iterations or None, mitigations=False,
                             eg_estimator=None, log=print)
    Xt, yt = feature_frame(s['test'], contract), task_target(c, s['test'][c.data.target])
    table = pd.DataFrame([{'family': x.name, 'cv_roc_auc': round(x.cv_mean, 4), 'validation_roc_auc': round(x.metrics['roc_auc'], 4),
                           'test_roc_auc': round(roc_auc_score(yt, x.model.predict_proba(Xt)[:, 1]), 4),
                           'search_seconds': round(x.search_seconds, 1), 'final_fit_seconds': round(x.fit_seconds, 2),
                           'rounds': x.params.get('n_estimators', x.model[-1].n_iter_ if hasattr(x.model[-1], 'n_iter_') else None),
                           'p95_latency_ms': round(x.metrics['p95_latency_ms'], 2)} for x in cands if x.mitigation is None and '+' not in x.name])
    meta = {'train_rows': len(s['train']), 'validation_rows': len(s['validation']), 'test_rows': len(s['test']),
            'iterations': iterations or c.development.search_iterations, 'cv_folds': c.development.cv_folds,
            'seconds': round(time.perf_counter() - t0, 1), 'load_average_after': machine_load()['load_average'], 'cpus': os.cpu_count()}
    print(table.to_markdown(index=False)); print(meta)
    if out: json.dump({'table': table.to_dict('records'), **meta}, open(out, 'w'), indent=1)
    return table


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--rows', type=int, default=0, help='a seeded sample of this many rows (0: all)')
    ap.add_argument('--iterations', type=int, default=0, help="configurations per family (0: the charter's)")
    ap.add_argument('--out', default=None)
    a = ap.parse_args()
    main(a.rows, a.iterations, a.out)
