"""Stage 02 on pandas against stage 02 on Spark (local mode), at several sizes of Adult's training file stacked with
seeded noise on age and hours (the bundled charter, its source replaced). Each run is its own process, after stage 01
ran in its workspace: the time of `run_stage_02` and the peak memory of the Python process (where pandas holds the
table; on Spark the table lives in the JVM, which is reported apart as the peak of the process's children).

    python tests/benchmarks/bench_stage02_engines.py --rows 32561,260488 --repeat 3 --out stage02.jsonl
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np

ONE = r"""
import json, resource, sys, time
from mlcycle.data_spark import run_stage_02
ws, engine, master = sys.argv[1:4]
t = time.perf_counter()
r = run_stage_02(None, ws, engine=engine, spark_master=master)
dt = time.perf_counter() - t
print(json.dumps({'seconds': dt, 'rows': r['quality']['rows'], 'engine': r['engine'],
                  'python_peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  'children_peak_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def table(rows: int, d: Path) -> Path:
    "Adult's training file stacked to `rows` rows, ages and hours jittered by a seeded year or two / hour or two."
    import pandas as pd
    from mlcycle.presets import adult
    base = adult('train')
    reps = -(-rows // len(base))
    df = pd.concat([base] * reps, ignore_index=True).head(rows)
    rng = np.random.default_rng(0)
    df['age'] = (df['age'] + rng.integers(-2, 3, len(df))).clip(17, 90)
    df['hours_per_week'] = (df['hours_per_week'] + rng.integers(-2, 3, len(df))).clip(1, 99)
    p = d/f'adult_{rows}.csv'; df.to_csv(p, index=False); return p


def charter_for(src: Path, d: Path) -> Path:
    import yaml
    from mlcycle.charter import BUNDLED_CHARTER
    c = yaml.safe_load(BUNDLED_CHARTER.read_text())
    c['data']['sources'] = [{'kind': 'csv', 'path': str(src)}]
    c['production']['sources'] = [{**s, 'path': str(BUNDLED_CHARTER.parent/s['path'])} for s in c['production']['sources']]
    p = d/f'{src.stem}.yaml'; p.write_text(yaml.safe_dump(c)); return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--rows', default='32561,260488'); ap.add_argument('--repeat', type=int, default=3)
    ap.add_argument('--master', default='local[2]'); ap.add_argument('--out', default='stage02_engines.jsonl')
    a = ap.parse_args()
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    with tempfile.TemporaryDirectory() as d, open(a.out, 'a') as out:
        d = Path(d)
        for rows in map(int, a.rows.split(',')):
            charter = charter_for(table(rows, d), d)
            from mlcycle.feasibility import run_problem_definition
            base = d/f'ws{rows}'
            run_problem_definition(str(charter), str(base))       # stage 01 once; each run gets a copy
            for i in range(a.repeat):
                for engine in ('pandas', 'spark'):              # the peer measured in the same run, alternating
                    ws = d/f'ws{rows}-{engine}-{i}'
                    subprocess.run(['cp', '-a', str(base), str(ws)], check=True)
                    p = subprocess.run([sys.executable, '-c', ONE, str(ws), engine, a.master], capture_output=True, text=True, env=env)
                    if p.returncode: sys.exit(p.stderr[-3000:])
                    rec = {**json.loads(p.stdout.strip().splitlines()[-1]), 'size': rows, 'repeat': i, 'load': os.getloadavg()}
                    print(json.dumps(rec), flush=True); out.write(json.dumps(rec) + '\n')
                    subprocess.run(['rm', '-rf', str(ws)])


if __name__ == '__main__':
    main()
