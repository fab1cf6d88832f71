"""Benchmark: stage 03 (model development) wall time as the training data grows.

Adult is resampled (with replacement, seeded) to 1×, 2×, 4× and 8× its 32,561 rows; for each size a fresh workspace
gets the charter (stage 01's record, without its feasibility analysis, which is not what is measured) and stage 02's
splits, then `run_model_development` runs with the bundled charter's settings and is timed. A power law
t = a · n^k is fitted to (training rows, seconds) by least squares on the logs.

Run on demand (it is not collected by pytest):

    .venv/bin/python tests/benchmarks/bench_train_scaling.py [--factors 1,2,4,8] [--out results.json]
"""
import argparse, json, os, platform, sys, tempfile, time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml


def prepare_workspace(root: Path, factor: int, seed: int = 0):
    "A workspace whose charter reads Adult resampled to `factor`× its rows; stages 01 (record only) and 02 done."
    from mlcycle.core import ASSETS, Workspace
    from mlcycle.charter import load_charter
    from mlcycle.data import adult, run_data_stage
    df = adult()
    big = df.sample(len(df) * factor, replace=True, random_state=seed) if factor > 1 else df
    big.to_csv(root/'adult_x.csv.gz', index=False)
    d = yaml.safe_load((ASSETS/'adult_charter.yaml').read_text())
    d['data']['sources'] = [{'kind': 'csv', 'path': 'adult_x.csv.gz'}]
    (root/'charter.yaml').write_text(yaml.safe_dump(d))
    ws = Workspace(root/'ws')
    c = load_charter(root/'charter.yaml')
    with ws.stage('01_problem_definition', charter_hash=c.hash, note='benchmark: feasibility analysis skipped') as st:
        st.write_json('charter.json', {'charter': c.to_dict(), 'base_dir': c.base_dir, 'hash': c.hash})
        st.manifest['outputs'].update(charter_hash=c.hash, rows=len(big), verdict='not analysed (benchmark)')
    run_data_stage(None, ws)
    return ws


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--factors', default='1,2,4,8')
    ap.add_argument('--out', default=None, help='write the results as JSON here')
    a = ap.parse_args(argv)
    from mlcycle.train import run_model_development
    rows = []
    for f in [int(x) for x in a.factors.split(',')]:
        with tempfile.TemporaryDirectory() as d:
            ws = prepare_workspace(Path(d), f)
            n_train = ws.manifest('02_data')['outputs']['splits']['train']['rows']
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            r = run_model_development(None, ws, log=lambda *x, **k: None)
            secs = time.perf_counter() - t0
            rows.append({'factor': f, 'train_rows': n_train, 'seconds': round(secs, 1), 'load_before': round(load, 2),
                         'selected': r['selection'].chosen.name if r['selection'].chosen else None,
                         'val_roc_auc': round(r['selection'].chosen.metrics['roc_auc'], 4) if r['selection'].chosen else None})
            print(json.dumps(rows[-1]), flush=True)
            import mlflow; mlflow.set_tracking_uri(None)
    t = pd.DataFrame(rows)
    k, loga = np.polyfit(np.log(t.train_rows), np.log(t.seconds), 1) if len(t) > 1 else (float('nan'), float('nan'))
    out = {'results': rows, 'exponent': round(float(k), 3), 'coefficient': float(np.exp(loga)),
           'machine': {'cpus': os.cpu_count(), 'python': platform.python_version(), 'platform': platform.platform()}}
    print(t.to_string(index=False))
    print(f'fitted: seconds ≈ {np.exp(loga):.3g} · train_rows^{k:.2f}')
    if a.out: Path(a.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == '__main__':
    sys.exit(0 if main() else 1)
