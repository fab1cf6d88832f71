"""Notebook overhead of stages 01 and 02: `mlcycle run --stages 01,02` (papermill, one kernel per stage, in report
mode: the notebooks' imports, exported code, parameters and Run sections) against the same exported functions
called in one Python process.

    python tests/benchmarks/bench_stage_overhead.py --repeats 5

Each repetition runs both paths in fresh workspaces, alternating which goes first; prints medians and the ratio."""
import argparse, json, statistics, subprocess, sys, tempfile, time
from pathlib import Path

IN_PROCESS = r'''
import json, sys, time
t0 = time.perf_counter()
from mlcycle.feasibility import run_problem_definition
from mlcycle.data import run_data_stage
t1 = time.perf_counter(); run_problem_definition(None, sys.argv[1])
t2 = time.perf_counter(); run_data_stage(None, sys.argv[1])
t3 = time.perf_counter()
print(json.dumps({'import': t1 - t0, '01': t2 - t1, '02': t3 - t2}))
'''


def once_papermill(d: Path) -> dict:
    t0 = time.perf_counter()
    subprocess.run([Path(sys.executable).parent/'mlcycle', 'run', '--stages', '01,02', '-w', d/'ws', '-r', d/'reports'],
                   check=True, capture_output=True, cwd=d)
    total = time.perf_counter() - t0
    run = json.loads(next((d/'reports').glob('run-*/run.json')).read_text())
    return {'total': total, **{s['stage']: s['seconds'] for s in run['stages']}}


def once_in_process(d: Path) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, '-c', IN_PROCESS, str(d/'ws')], check=True, capture_output=True, text=True, cwd=d)
    total = time.perf_counter() - t0
    return {'total': total, **json.loads(out.stdout.strip().splitlines()[-1])}


def main():
    ap = argparse.ArgumentParser(); ap.add_argument('--repeats', type=int, default=5); a = ap.parse_args()
    pm, ip = [], []
    for i in range(a.repeats):
        order = [('papermill', once_papermill, pm), ('in-process', once_in_process, ip)]
        for name, fn, acc in (order if i % 2 == 0 else order[::-1]):
            with tempfile.TemporaryDirectory() as d:
                r = fn(Path(d)); acc.append(r); print(i, name, {k: round(v, 1) for k, v in r.items()}, flush=True)
    med = lambda rows, k: statistics.median(r[k] for r in rows)
    print('\n| path | stage 01 (s) | stage 02 (s) | whole command (s) |\n|---|---|---|---|')
    print(f"| papermill (`mlcycle run --stages 01,02`) | {med(pm, '01'):.1f} | {med(pm, '02'):.1f} | {med(pm, 'total'):.1f} |")
    print(f"| in-process functions (one Python process) | {med(ip, '01'):.1f} | {med(ip, '02'):.1f} | {med(ip, 'total'):.1f} |")
    print(f"\nratio papermill / in-process (whole command, medians of {a.repeats}): {med(pm, 'total') / med(ip, 'total'):.2f}")


if __name__ == '__main__':
    main()
