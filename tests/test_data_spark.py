"""Stage 02 on Spark against stage 02 on pandas, on the bundled Adult data: the same splits (row for row), contract,
quality figures and production rows; and the engine choice, which can say no. One local Spark session for the module."""
import json, subprocess, sys

import pandas as pd
import pytest

from conftest import copy_workspace, mlcycle_cmd


@pytest.fixture(scope='module')
def spark_ws(adult_workspace_0102, tmp_path_factory):
    """A copy of the shared workspace where stages 01-02 ran on pandas (`mlcycle run --stages 01,02`), in which
    `mlcycle stage 02 --engine spark` ran again: (pandas workspace, Spark workspace)."""
    from mlcycle.batch import spark_available
    from mlcycle.core import Workspace
    if (why := spark_available()): pytest.skip(f'stage 02 on Spark untested here: {why}')
    import shutil
    d = tmp_path_factory.mktemp('spark02')
    ref = Workspace(adult_workspace_0102/'ws')
    # a whole copy, its MLflow artifacts included, so that its store is pointed at its own `mlartifacts/` (`relocate_store`):
    # `copy_workspace` leaves the artifacts in the shared workspace, where this stage's run would then write its reports
    shutil.copytree(ref.root, d/'ws', ignore=shutil.ignore_patterns('reports', 'predictions.db*'))
    ws = Workspace(d/'ws')
    mlcycle_cmd('stage', '02', '--engine', 'spark', '--spark-master', 'local[2]', '--workspace', ws.root, '--reports', d/'reports',
                cwd=d, check=True, env={'OMP_NUM_THREADS': '1'})
    return ref, Workspace(ws.root)


def test_spark_stage_02_equals_pandas(spark_ws):
    from mlcycle.core import fingerprint_df
    ref, ws = spark_ws
    a, b = ref.manifest('02_data')['outputs'], ws.manifest('02_data')['outputs']
    assert b['engine'] == 'spark' and 'asked for engine spark' in b['engine_choice']['why'] and b['engine_choice']['spark_master'] == 'local[2]'
    assert a['engine'] == 'pandas'
    for role in ('train', 'validation', 'test'):       # the same rows in the same order, with the same types
        sa, sb = a['splits'][role], b['splits'][role]
        assert {k: v for k, v in sa.items() if k != 'fingerprint'} == {k: v for k, v in sb.items() if k != 'fingerprint'}
        assert ws.snapshot_path(sb['fingerprint']).is_dir()             # written by Spark, a folder of parts
        assert fingerprint_df(ws.load_snapshot(sb['fingerprint'])) == sa['fingerprint']
    assert fingerprint_df(ws.load_snapshot(b['production']['fingerprint'])) == a['production']['fingerprint']
    assert {k: v for k, v in b['production'].items() if k != 'fingerprint'} == {k: v for k, v in a['production'].items() if k != 'fingerprint'}
    ca, cb = (json.loads((w.root/'data'/'contract.json').read_text()) for w in (ref, ws))
    assert {k: v for k, v in cb.items() if k != 'reference_fingerprint'} == {k: v for k, v in ca.items() if k != 'reference_fingerprint'}
    qa, qb = a['quality'], b['quality']
    assert qb.pop('leakage_rows') == qa['rows']                          # a table under LEAKAGE_ROWS: the screen read every row
    assert qb == qa                                                      # missing, duplicates, outliers, leakage, suggestions
    import mlflow
    mlflow.set_tracking_uri(ws.tracking_uri)
    assert mlflow.get_run(b['mlflow_run_id']).data.tags['mlcycle.engine'] == 'spark'
    assert ws.audit.verify().ok


def test_spark_snapshot_refuses_a_changed_part(spark_ws, tmp_path):
    "A snapshot folder is checked part by part: a changed byte is refused, naming the part."
    import shutil
    from mlcycle.core import MlcycleError, Workspace
    _, ws = spark_ws
    fp = ws.manifest('02_data')['outputs']['splits']['test']['fingerprint']
    copy = tmp_path/'ws'; shutil.copytree(ws.root/'data', copy/'data')
    w = Workspace(copy)
    part = sorted(w.snapshot_path(fp).glob('*.parquet'))[0]
    assert len(w.load_snapshot(fp)) > 0
    b = bytearray(part.read_bytes()); b[len(b) // 2] ^= 0xFF; part.write_bytes(bytes(b))
    with pytest.raises(MlcycleError, match=f'does not match its checksums \\({part.name}'):
        w.load_snapshot(fp)


def test_engine_choice_says_no(adult_workspace_0102, tmp_path):
    """auto: pandas within the limit, Spark above it; an engine outside the three is refused by `mlcycle stage`; engine spark
    without pyspark stops before anything is written, naming the package to install."""
    from mlcycle.charter import load_charter
    from mlcycle.core import Workspace
    from mlcycle.data_spark import choose_engine
    c = load_charter()
    assert choose_engine(c)['engine'] == 'pandas'                        # Adult's 0.4 MB file, under the default limit
    above = choose_engine(c, 'auto', spark_above_mb=0.1)
    assert above['engine'] == 'spark' and 'above the 0.1 MB limit' in above['why']
    r = mlcycle_cmd('stage', '02', '--engine', 'dask', '--workspace', tmp_path/'none')
    assert r.returncode == 2 and "invalid choice: 'dask'" in r.stderr
    ws = copy_workspace(Workspace(adult_workspace_0102/'ws'), tmp_path/'ws')
    before = ws.manifest_path('02_data').read_bytes()
    code = ("import sys; sys.modules['pyspark'] = None\n"          # pyspark absent, as on an install without mlcycle[spark]
            "from mlcycle.data_spark import run_stage_02\n"
            f"run_stage_02(None, {str(ws.root)!r}, engine='spark')")
    p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and 'pip install "mlcycle[spark]"' in p.stderr and 'or pass --engine pandas' in p.stderr, p.stderr[-2000:]
    assert ws.manifest_path('02_data').read_bytes() == before


def test_retirement_sizes_and_deletes_a_spark_snapshot(spark_ws, tmp_path):
    "Stage 09 measures a snapshot folder by its parts and deletes it whole (a folder cannot be unlinked)."
    import shutil
    from mlcycle.charter import load_charter
    from mlcycle.core import Workspace
    from mlcycle.retire import Retirement, delete_snapshots, snapshot_plan
    _, ws = spark_ws
    fp = ws.manifest('02_data')['outputs']['splits']['test']['fingerprint']
    shutil.copytree(ws.root/'data', tmp_path/'ws'/'data')
    w = Workspace(tmp_path/'ws')
    plan = snapshot_plan(w, {'tags': {'data_test_fingerprint': fp}}, [])
    row = next(r for r in plan if r['fingerprint'] == fp)
    assert row['action'] == 'delete' and row['bytes'] == sum(f.stat().st_size for f in w.snapshot_path(fp).iterdir())
    r = Retirement(ws=w, c=load_charter(), plan={'snapshots': [row], 'model': 'adult-income', 'version': '1'}, reason='test')
    list(delete_snapshots(r))
    assert r.removed == [fp] and not w.snapshot_path(fp).exists()
