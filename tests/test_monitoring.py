"""Stage 06 (monitoring): the drift detector on real Adult data, and the stage on a real server's prediction log."""
import importlib.util, json, shutil, time, urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ServerProc
from mlcycle.serve import feedback_token

HERE = Path(__file__).resolve().parent


def _bench():
    spec = importlib.util.spec_from_file_location('bench_drift', HERE/'benchmarks'/'bench_drift.py')
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m


@pytest.fixture(scope='module')
def adult_pools():
    return _bench().pools(seed=0)


def test_false_alarm_rate_on_same_distribution_resamples(adult_pools):
    "Windows drawn from the same population as the reference: any-feature false alarms in at most 5 % of 100 resamples."
    ref, prod, contract = adult_pools
    res = _bench().false_alarms(ref, prod, contract, sizes=(2000,), resamples=100, seed=11)[2000]
    assert res['n'] == 100
    assert res['rate'] <= 0.05, res


def test_injected_shifts_are_detected(adult_pools):
    "Shifts with population PSI >= 0.25 on one feature (numeric, categorical, brand-new category) are flagged in >= 95 % of windows."
    ref, prod, contract = adult_pools
    res = _bench().detections(ref, prod, contract, sizes=(2000,), resamples=100, seed=12)
    assert {r['kind'] for r in res.values()} == {'numeric', 'categorical'}
    assert any('brand-new' in name for name in res)
    for name, r in res.items():
        assert r['population_psi'] >= 0.25, (name, r)
        assert r[2000]['n'] == 100 and r[2000]['rate'] >= 0.95, (name, r)


def test_drift_on_a_million_rows_is_fast():
    from mlcycle.charter import load_charter
    from mlcycle.data import adult, feature_frame, infer_contract
    from mlcycle.monitor import DriftDetector
    c = load_charter(); tr = adult('train'); contract = infer_contract(tr, c)
    det = DriftDetector(feature_frame(tr, contract), contract)
    big = adult('test').sample(1_000_000, replace=True, random_state=0).reset_index(drop=True)
    det.compare(big.head(1000))
    t0 = time.perf_counter(); t = det.compare(big); secs = time.perf_counter() - t0
    assert len(t) == 13 and not t.drift.any()
    assert secs <= 5.0, f'{secs:.2f} s for 1,000,000 rows'


def test_traps_new_and_vanished_categories_missing_rate_constant_column():
    from mlcycle.monitor import DriftDetector, drift_summary
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({'const': np.zeros(4000), 'x': rng.normal(size=4000), 'c': rng.choice(['a', 'b', 'c'], 4000, p=[.6, .3, .1])})
    det = DriftDetector(ref)
    cur = ref.sample(1000, random_state=1).reset_index(drop=True)
    assert not det.compare(cur).drift.any()
    new = cur.copy(); new.loc[:29, 'c'] = 'brand-new'                     # 3 % of rows in a category the reference never had
    t = det.compare(new).set_index('feature')
    assert t.loc['c', 'drift'] and 'new_category' in t.loc['c', 'signals'] and 'brand-new' in t.loc['c', 'new_values']
    gone = cur.assign(c=cur.c.replace('c', 'b'))
    t = det.compare(gone).set_index('feature')
    assert "'c'" in t.loc['c', 'vanished'] and t.loc['c', 'drift']
    miss = cur.copy(); miss.loc[:149, 'x'] = np.nan                        # 15 % missing, the reference had none
    t = det.compare(miss)
    row = t.set_index('feature').loc['x']
    assert 'missing_rate' in row.signals and row.drift
    s = drift_summary(t)
    assert s['drifted_features'] == ['x'] and np.isfinite(s['max_psi'])
    empty = cur.assign(x=np.nan)                                             # KS cannot run: NaN p-value, the summary still works
    t = det.compare(empty)
    assert np.isnan(t.set_index('feature').loc['x', 'p_value']) and drift_summary(t)['tests_not_computable'] == 1
    assert t.set_index('feature').loc['const', 'status'] == 'ok'


# ---- the stage on a real server's log -------------------------------------------------------------------------

@pytest.fixture(scope='module')
def served(registry_template, tmp_path_factory):
    "A copy of the registry (v1 champion), a real `mlcycle serve` on 127.0.0.1, and a monitoring workspace handle."
    from mlcycle.core import Workspace
    from mlcycle.deploy import promote
    dest = tmp_path_factory.mktemp('monitored')/'ws'
    shutil.copytree(registry_template.root, dest, ignore=shutil.ignore_patterns('mlartifacts', 'predictions.db*', 'audit.*', 'containers'))
    ws = Workspace(dest)
    promote(ws, '1', reason='monitoring test')
    s = ServerProc(ws, env={'MLCYCLE_ADMIN_TOKEN': 'test-admin-token-0123'}).start()
    yield ws, s
    s.stop()


def test_stable_traffic_then_recession(served):
    from mlcycle.simulate import simulate
    from mlcycle.monitor import run_monitoring
    ws, s = served
    r = simulate(s.url, rows=1500, scenario='none', batch=20, concurrency=4, seed=1, workspace=ws, feedback_token=feedback_token(ws))
    assert r['statuses'] == {'200': 75} and r['feedback']['accepted'] == 1500
    stable = run_monitoring(workspace=ws, window='1500', plots=False)
    assert len(stable['log']) == 1500
    drift_rules = {'feature_drift', 'missing_rate_change', 'prediction_drift'}
    assert not [a for a in stable['alerts'] if a['rule'] in drift_rules], stable['alerts']
    assert not stable['serving_skew']['1']['skew'] and stable['serving_skew']['1']['checked'] == 1500   # server == training path
    perf = stable['performance'].iloc[0]
    assert perf.labelled == 1500 and perf.coverage == 1.0 and perf.roc_auc_lo < perf.roc_auc < perf.roc_auc_hi

    r = simulate(s.url, rows=2000, scenario='recession', batch=20, concurrency=4, seed=2, workspace=ws, feedback_token=feedback_token(ws))
    assert r['statuses'] == {'200': 100}
    res = run_monitoring(workspace=ws, window='2000', server_url=s.url, plots=False)
    crit = {a['subject'] for a in res['alerts'] if a['rule'] == 'feature_drift' and a['severity'] == 'critical'}
    assert 'hours_per_week' in crit, res['alerts']
    assert res['recommendation']['retrain'] and 'hours_per_week' in res['recommendation']['text']
    m = ws.manifest('06_monitoring')['outputs']
    assert m['recommendation'] == 'retrain' and m['alerts_count'] == sum(a['severity'] != 'info' for a in res['alerts'])
    assert m['window']['rows'] == 2000 and m['errors']['requests'] >= 175
    entries = ws.audit.entries()
    assert sum(e['event'] == 'monitoring_alert' for e in entries) >= len(crit)
    assert any(e['event'] == 'monitoring_recommendation' and e['details']['retrain'] for e in entries)
    assert ws.audit.verify().ok
    import mlflow
    run = mlflow.get_run(m['mlflow_run_id'])
    assert run.data.metrics['psi.hours_per_week'] >= 0.25 and run.data.metrics['alerts_critical'] >= 1


def test_new_category_and_refused_requests(served):
    "A brand-new workclass through the server: drift names it, the contract-violation rate alerts; refused requests count as errors."
    from mlcycle.simulate import simulate
    from mlcycle.monitor import run_monitoring
    ws, s = served
    simulate(s.url, rows=1000, scenario='new_category', batch=20, concurrency=4, seed=3, workspace=ws, feedback_token=feedback_token(ws))
    bad = json.dumps([{'age': 'old'}]).encode()
    for _ in range(30):
        req = urllib.request.Request(s.url + '/predict', data=bad, headers={'Content-Type': 'application/json'})
        try: urllib.request.urlopen(req, timeout=10)
        except urllib.error.HTTPError as e: assert e.code == 422
    res = run_monitoring(workspace=ws, window='1000', server_url=s.url, plots=False)
    wc = res['drift'].set_index('feature').loc['workclass']
    assert wc.drift and 'Gig-economy' in wc.new_values and 'new_category' in wc.signals
    rules = {a['rule'] for a in res['alerts']}
    assert {'contract_violations', 'error_rate'} <= rules, res['alerts']
    ops = res['operations'].iloc[0]
    assert 0.2 < ops.violation_rate < 0.4 and 'unseen_category' in ops.violations


def test_monitoring_by_version_and_time_window(served):
    from mlcycle.monitor import read_window, run_monitoring
    from mlcycle.core import MlcycleError
    ws, s = served
    assert len(read_window(ws, '1h')) == len(read_window(ws, ''))
    assert len(read_window(ws, '', model_version='2')) == 0
    with pytest.raises(MlcycleError, match='no rows'):
        run_monitoring(workspace=ws, model_version='2', plots=False)


def test_mlcycle_monitor_cli_writes_the_report(served, mlcycle, tmp_path):
    ws, s = served
    r = mlcycle('monitor', '--workspace', ws.root, '--window', '2000', '--server-url', s.url, '--reports', tmp_path, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'alert(s)' in r.stdout
    reports = list(tmp_path.glob('monitor-*/06_monitoring.ipynb'))
    assert reports and reports[0].with_suffix('.html').exists()
    nb = json.loads(reports[0].read_text())
    assert any('image/png' in o.get('data', {}) for c in nb['cells'] for o in c.get('outputs', []))
