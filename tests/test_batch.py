"""`mlcycle predict`: batch scoring in chunks through the real CLI, against a real registry (MLflow on SQLite)."""
import os, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import free_port


@pytest.fixture
def champion_ws(registry_ws):
    from mlcycle.deploy import promote
    promote(registry_ws, '1', reason='batch tests')
    return registry_ws


@pytest.fixture(scope='module')
def adult_files(tmp_path_factory):
    from mlcycle.data import adult
    d = tmp_path_factory.mktemp('batchin')
    df = adult('test')
    df.to_parquet(d/'test.parquet', index=False); df.to_csv(d/'test.csv', index=False)
    return d, df


def reference_scores(ws, version, df):
    "What the registered pipeline's own predict_proba / predict give on the whole table in memory."
    from mlcycle.charter import workspace_charter
    from mlcycle.core import read_json
    from mlcycle.data import feature_frame
    from mlcycle.train import load_model_version
    model = load_model_version(ws, workspace_charter(ws), version)
    X = feature_frame(df, read_json(ws.root/'data'/'contract.json'))
    return model.predict_proba(X)[:, 1], model.predict(X)


def predict_rss(ws, *args):
    "Run `mlcycle predict` in a child process; return (CompletedProcess, peak RSS in MiB of that process)."
    code = ('import sys, resource; from mlcycle.cli import main; rc = main(sys.argv[1:]); '
            'print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)')
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}; env.pop('MLFLOW_TRACKING_URI', None)
    r = subprocess.run([sys.executable, '-c', code, 'predict', '--workspace', str(ws.root), '--no-progress', *map(str, args)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    kb = int([l for l in r.stderr.splitlines() if l.startswith('MAXRSS_KB')][-1].split()[1])
    return r, kb / 1024


def test_predict_parquet_equals_in_memory_pipeline(champion_ws, adult_files, tmp_path, mlcycle):
    d, df = adult_files
    out = tmp_path/'pred.parquet'
    mlcycle('predict', '--input', d/'test.parquet', '--output', out, '--chunk-rows', 4000, '--no-progress',
            '--workspace', champion_ws.root, check=True)
    pred = pd.read_parquet(out)
    proba, label = reference_scores(champion_ws, '1', df)
    assert len(pred) == len(df) and pred['row'].tolist() == list(range(len(df)))
    assert np.allclose(pred['score'].to_numpy(), proba, rtol=0, atol=1e-12)
    assert (pred['prediction'].to_numpy() == label).all()
    assert set(pred['model_version']) == {'1'}
    e = champion_ws.audit.entries()[-1]
    assert e['event'] == 'batch_scored' and e['details']['rows'] == len(df) and e['details']['version'] == '1'


def test_predict_version_csv_and_sql(champion_ws, adult_files, tmp_path, mlcycle):
    import sqlalchemy as sa
    d, df = adult_files
    mlcycle('predict', '--input', d/'test.csv', '--output', tmp_path/'v2.csv', '--version', 2, '--chunk-rows', 5000,
            '--workspace', champion_ws.root, check=True)
    proba2, _ = reference_scores(champion_ws, '2', df)
    got = pd.read_csv(tmp_path/'v2.csv')
    assert np.allclose(got['score'].to_numpy(), proba2, atol=1e-12) and set(got['model_version']) == {2}
    db = f'sqlite:///{tmp_path}/apps.db'
    with sa.create_engine(db).begin() as conn: df.to_sql('apps', conn, index=False)
    mlcycle('predict', '--input', 'SELECT * FROM apps WHERE age >= 40', '--db', db, '--output', tmp_path/'old.parquet',
            '--alias', 'champion', '--chunk-rows', 3000, '--workspace', champion_ws.root, check=True)
    proba1, _ = reference_scores(champion_ws, '1', df)
    sel = (df['age'] >= 40).to_numpy()
    got = pd.read_parquet(tmp_path/'old.parquet')
    assert len(got) == sel.sum() and np.allclose(got['score'].to_numpy(), proba1[sel], atol=1e-12)


def test_contract_break_stops_before_any_output(champion_ws, adult_files, tmp_path, mlcycle):
    d, df = adult_files
    df.drop(columns=['age']).to_csv(tmp_path/'noage.csv', index=False)
    r = mlcycle('predict', '--input', tmp_path/'noage.csv', '--output', tmp_path/'out.parquet', '--workspace', champion_ws.root)
    assert r.returncode == 1 and "'age' missing_column" in r.stderr and 'Traceback' not in r.stderr
    late = df.astype({'hours_per_week': 'str'}); late.loc[late.index[-1], 'hours_per_week'] = 'forty'
    late.to_csv(tmp_path/'late.csv', index=False)   # only the last of 4 chunks breaks the contract
    r = mlcycle('predict', '--input', tmp_path/'late.csv', '--output', tmp_path/'out.csv', '--chunk-rows', 5000, '--workspace', champion_ws.root)
    assert r.returncode == 1 and "'hours_per_week' wrong_type" in r.stderr and "'forty'" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != 'ws') == ['late.csv', 'noage.csv']   # no output, no temp file


def test_unreachable_tracking_is_one_line(champion_ws, adult_files, tmp_path, mlcycle):
    d, _ = adult_files
    (champion_ws.root/'workspace.json').unlink()     # follow the environment (the scratch copies are pinned to their own stores)
    uri = f'http://127.0.0.1:{free_port()}'
    r = mlcycle('predict', '--input', d/'test.parquet', '--output', tmp_path/'o.parquet', '--workspace', champion_ws.root,
                env={'MLFLOW_TRACKING_URI': uri}, timeout=120)
    lines = [l for l in r.stderr.splitlines() if l.strip() and 'WARNING' not in l]
    assert r.returncode == 1 and len(lines) == 1 and uri in lines[0] and 'Traceback' not in r.stderr, r.stderr
    pg = f'postgresql+psycopg://mlflow@127.0.0.1:{free_port()}/mlflow'
    r = mlcycle('predict', '--input', d/'test.parquet', '--output', tmp_path/'o.parquet', '--workspace', champion_ws.root,
                '--tracking-uri', pg, timeout=120)
    lines = [l for l in r.stderr.splitlines() if l.strip() and 'WARNING' not in l]
    assert r.returncode == 1 and len(lines) == 1 and '127.0.0.1' in lines[0] and 'tracking database' in lines[0], r.stderr
    assert not (tmp_path/'o.parquet').exists()


def test_bounded_memory_on_a_large_file(champion_ws, adult_files, tmp_path):
    """Peak RSS of `mlcycle predict` (chunks of 10,000 rows) on 1x and 32x the Adult test file: the 31x extra rows
    must cost far less memory than holding the extra rows' features in memory would."""
    import pyarrow as pa, pyarrow.parquet as pq
    d, df = adult_files
    t = pa.Table.from_pandas(df, preserve_index=False)
    with pq.ParquetWriter(tmp_path/'big.parquet', t.schema) as w:
        for _ in range(32): w.write_table(t, row_group_size=10_000)
    _, rss1 = predict_rss(champion_ws, '--input', d/'test.parquet', '--output', tmp_path/'p1.parquet', '--chunk-rows', 10_000)
    _, rss32 = predict_rss(champion_ws, '--input', tmp_path/'big.parquet', '--output', tmp_path/'p32.parquet', '--chunk-rows', 10_000)
    assert pq.ParquetFile(tmp_path/'p32.parquet').metadata.num_rows == 32 * len(df)
    whole = pd.read_parquet(tmp_path/'big.parquet').memory_usage(deep=True).sum() / 2**20   # the table held at once
    assert rss32 - rss1 < 0.25 * whole, (rss1, rss32, whole)
