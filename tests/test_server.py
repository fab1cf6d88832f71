"""The stage-05 server, over real HTTP on 127.0.0.1: answers, MLflow protocol, contract errors, feedback, metrics,
admin auth, A/B and shadow routing, sensitive features in the log, and the PostgreSQL log."""
import json

import numpy as np
import pandas as pd
import pytest
import requests

from mlcycle.core import read_json
from mlcycle.data import adult, feature_frame
from mlcycle.deploy import promote
from mlcycle.predlog import integrity_check, read_log
from mlcycle.serve import feedback_token

pytestmark = pytest.mark.timeout(600)


def _model_and_X(ws, version, n=50):
    "The registered model and `n` Adult test rows as its features (all rows with n=None)."
    import mlflow
    from mlcycle.core import setup_mlflow
    from mlcycle.charter import workspace_charter
    c = workspace_charter(ws); setup_mlflow(ws, c.name)
    m = mlflow.sklearn.load_model(f'models:/{c.name}/{version}')
    rows = adult('test')
    X = feature_frame(rows if n is None else rows.head(n), read_json(ws.root/'data'/'contract.json'))
    return m, X


def test_predict_matches_the_model_and_is_logged(champion_server, adult_records):
    s = champion_server
    model, X = _model_and_X(s.ws, '1')
    r = requests.post(s.url + '/predict', json=adult_records[:50], timeout=30)
    assert r.status_code == 200
    preds = r.json()['predictions']
    assert [p['label'] for p in preds] == model.predict(X).tolist()
    np.testing.assert_allclose([p['probability'] for p in preds], model.predict_proba(X)[:, 1], rtol=1e-9)
    assert {p['model_version'] for p in preds} == {'1'} and {p['arm'] for p in preds} == {'champion'}
    assert len({p['request_id'] for p in preds}) == 50
    one = requests.post(s.url + '/predict', json=adult_records[0], timeout=30).json()['predictions']
    assert len(one) == 1 and one[0]['label'] == preds[0]['label']
    log = read_log(s.ws).set_index('request_id')
    got = log.loc[[p['request_id'] for p in preds]]
    assert got.label.tolist() == [p['label'] for p in preds]
    assert (got.model_version == '1').all() and (got.latency_ms > 0).all()
    assert got.x_age.tolist() == X.age.tolist() and got.x_sex.tolist() == X.sex.tolist()    # charter says: store


def test_invocations_speaks_mlflow_protocol(champion_server):
    import mlflow.pyfunc
    s = champion_server
    model, X = _model_and_X(s.ws, '1', 20)
    expected = mlflow.pyfunc.load_model('models:/adult-income/1').predict(X).tolist()
    raw = adult('test').head(20).drop(columns=['income'])
    for body in ({'dataframe_split': json.loads(raw.to_json(orient='split', index=False))},
                 {'dataframe_records': json.loads(raw.to_json(orient='records'))},
                 {'inputs': json.loads(raw.to_json(orient='records'))},
                 {'inputs': {c: list(v.values()) for c, v in json.loads(raw.to_json(orient='columns')).items()}}):
        r = requests.post(s.url + '/invocations', json=body, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()['predictions'] == expected
    assert requests.post(s.url + '/invocations', data='a,b\n1,2', headers={'Content-Type': 'text/csv'}).status_code == 415
    assert requests.post(s.url + '/invocations', json={'dataframe_split': {'columns': ['age']}}).status_code == 422


def test_bad_input_is_4xx_naming_the_column(champion_server, adult_records):
    s = champion_server
    rec = dict(adult_records[0]); del rec['hours_per_week']
    r = requests.post(s.url + '/predict', json=[adult_records[1], rec])
    assert r.status_code == 422
    d = r.json()['detail']; assert d['column'] == 'hours_per_week' and d['error'] == 'missing_column' and 'numbers' in d['expected']
    r = requests.post(s.url + '/predict', json=[{**adult_records[0], 'education': ['a', 'list']}])
    assert r.status_code == 422 and r.json()['detail']['column'] == 'education' and 'text' in r.json()['detail']['expected']
    r = requests.post(s.url + '/predict', json=[{**adult_records[0], 'age': 'old'}])
    assert r.status_code == 422 and r.json()['detail']['column'] == 'age'
    assert requests.post(s.url + '/predict', data=b'{"age": ', headers={'Content-Type': 'application/json'}).status_code == 400
    assert requests.post(s.url + '/predict', json=[]).status_code == 422
    assert requests.post(s.url + '/predict', json='just text').status_code == 422
    big = b'[' + b','.join([json.dumps(adult_records[0]).encode()] * 40000) + b']'     # ~10 MB, over the 8 MiB limit
    assert requests.post(s.url + '/predict', data=big, headers={'Content-Type': 'application/json'}).status_code == 413
    # unseen categories and out-of-range values are scored, and flagged in the log
    r = requests.post(s.url + '/predict', json=[{**adult_records[0], 'occupation': 'Astronaut', 'age': 130}])
    assert r.status_code == 200
    rid = r.json()['predictions'][0]['request_id']
    row = read_log(s.ws).set_index('request_id').loc[rid]
    assert set(row['flags'].split(',')) == {'occupation:unseen_category', 'age:out_of_range'} and row.x_occupation == 'Astronaut'


def test_feedback_late_batched_idempotent(champion_server, adult_records):
    s = champion_server
    auth = {'Authorization': f'Bearer {feedback_token(s.ws)}'}
    preds = requests.post(s.url + '/predict', json=adult_records[:10]).json()['predictions']
    labels = adult('test').income.head(10).tolist()
    fb = [{'request_id': p['request_id'], 'label': l} for p, l in zip(preds, labels)]
    r = requests.post(s.url + '/feedback', json={'feedback': fb[:6] + [{'request_id': 'no-such-id', 'label': '>50K'}]}, headers=auth).json()
    assert r['accepted'] == 6 and r['unknown'] == ['no-such-id'] and r['duplicates'] == 0
    flipped = {'request_id': fb[0]['request_id'], 'label': '<=50K' if labels[0] == '>50K' else '>50K'}
    r = requests.post(s.url + '/feedback', json={'feedback': fb + [flipped]}, headers=auth).json()
    assert (r['accepted'], r['duplicates'], r['conflicts'], r['unknown']) == (4, 6, [fb[0]['request_id']], [])
    log = read_log(s.ws).set_index('request_id').loc[[p['request_id'] for p in preds]]
    assert log.label_true.tolist()[1:] == labels[1:]              # the conflicting row is disputed: no label counts
    assert log.disputed.tolist() == [True] + [False] * 9 and log.y_true.isna().tolist() == [True] + [False] * 9
    assert log.y_true.tolist()[1:] == [int(l == '>50K') for l in labels[1:]]
    assert requests.post(s.url + '/feedback', json={'feedback': [{'label': 1}]}, headers=auth).status_code == 422


def test_health_ready_metrics_docs(champion_server, adult_records):
    s = champion_server
    assert requests.get(s.url + '/health').json() == {'status': 'ok'}
    assert requests.get(s.url + '/ready').json()['champion'] == '1'
    requests.post(s.url + '/predict', json=adult_records[:3]); requests.post(s.url + '/predict', json=[{}])
    m = requests.get(s.url + '/metrics').text
    assert 'mlcycle_requests_total{route="/predict",status="200"}' in m and 'mlcycle_errors_total{route="/predict",kind="client"}' in m
    assert 'mlcycle_prediction_latency_seconds_bucket{version="1",arm="champion",le="+Inf"}' in m
    n = [l for l in m.splitlines() if l.startswith('mlcycle_predictions_total{version="1",arm="champion"}')][0]
    assert int(n.split()[-1]) >= 3
    assert requests.get(s.url + '/docs').status_code == 200
    spec = requests.get(s.url + '/openapi.json').json()
    assert {'/predict', '/invocations', '/feedback', '/admin/reload'} <= set(spec['paths'])


def test_admin_routes_need_the_token(champion_server, registry_ws, start_server):
    s = champion_server
    assert requests.post(s.url + '/admin/reload').status_code == 401
    assert requests.post(s.url + '/admin/reload', headers={'Authorization': 'Bearer nope'}).status_code == 403
    assert requests.post(s.url + '/admin/reload', headers={'Authorization': 'Basic dGVzdA=='}).status_code == 401
    ok = requests.post(s.url + '/admin/reload', headers={'Authorization': 'Bearer test-token-0123456789'})
    assert ok.status_code == 200 and ok.json()['after']['champion'] == '1'
    # with no token configured, admin routes are off
    promote(registry_ws, '1')
    off = start_server(registry_ws, env={'MLCYCLE_ADMIN_TOKEN': ''})
    r = requests.post(off.url + '/admin/reload', headers={'Authorization': 'Bearer anything'})
    assert r.status_code == 403 and r.json()['detail']['error'] == 'admin_disabled'


def test_ab_split_and_shadow(registry_ws, start_server, adult_records):
    promote(registry_ws, '1'); promote(registry_ws, '2', as_='challenger', share=0.3)
    s = start_server(registry_ws, env={'MLCYCLE_ADMIN_TOKEN': 'server-admin-token-0123'})
    assert requests.get(s.url + '/ready').json() == {'ready': True, 'model': 'adult-income', 'champion': '1', 'challenger': '2', 'share': 0.3, 'shadow': False}
    preds = requests.post(s.url + '/predict', json=adult_records[:2000]).json()['predictions']
    arms = pd.Series([p['arm'] for p in preds])
    assert abs((arms == 'challenger').mean() - 0.3) < 0.04
    assert all((p['arm'] == 'challenger') == (p['model_version'] == '2') for p in preds)
    m2, X = _model_and_X(registry_ws, '2', 2000)
    ch = [i for i, p in enumerate(preds) if p['arm'] == 'challenger']
    np.testing.assert_allclose([preds[i]['probability'] for i in ch], m2.predict_proba(X.iloc[ch])[:, 1], rtol=1e-9)
    # shadow: the champion answers everything, the challenger's answers are logged beside
    promote(registry_ws, '2', as_='challenger', shadow=True)
    assert requests.post(s.url + '/admin/reload', headers={'Authorization': 'Bearer server-admin-token-0123'}).json()['after']['shadow'] is True
    preds = requests.post(s.url + '/predict', json=adult_records[:300]).json()['predictions']
    assert {p['arm'] for p in preds} == {'champion'} and {p['model_version'] for p in preds} == {'1'}
    log = read_log(registry_ws).set_index('request_id').loc[[p['request_id'] for p in preds]]
    assert (log.shadow_version == '2').all()
    np.testing.assert_allclose(log.shadow_probability, m2.predict_proba(X.head(300))[:, 1], rtol=1e-9)


@pytest.mark.parametrize('mode', ['hash', 'drop'])
def test_sensitive_features_hashed_or_dropped(registry_ws, start_server, adult_records, mode):
    p = registry_ws.root/'charter.json'
    rec = read_json(p); rec['charter']['retention']['log_sensitive_features'] = mode
    p.write_text(json.dumps(rec))
    promote(registry_ws, '1')
    s = start_server(registry_ws)
    preds = requests.post(s.url + '/predict', json=adult_records[:40]).json()['predictions']
    log = read_log(registry_ws)
    assert len(log) == 40
    if mode == 'drop': assert 'x_sex' not in log and 'x_race' not in log and 'x_age' in log
    else:
        sent = pd.Series([r['sex'] for r in adult_records[:40]])
        assert not log.x_sex.isin(['Male', 'Female']).any()
        assert log.x_sex.nunique() == sent.nunique() and (log.x_sex.str.len() == 16).all()
        assert (log.groupby('x_sex').size().sort_values().tolist() == sent.value_counts().sort_values().tolist())


def test_postgresql_prediction_log(registry_ws, start_server, adult_records, postgres_url):
    import sqlalchemy as sa
    promote(registry_ws, '1')
    s = start_server(registry_ws, args=['--log-url', postgres_url])
    preds = []
    for k in range(0, 300, 30): preds += requests.post(s.url + '/predict', json=adult_records[k:k + 30]).json()['predictions']
    fb = requests.post(s.url + '/feedback', json={'feedback': [{'request_id': p['request_id'], 'label': '>50K'} for p in preds[:100]]},
                       headers={'Authorization': f'Bearer {feedback_token(registry_ws)}'}).json()
    assert fb['accepted'] == 100
    eng = sa.create_engine(postgres_url)
    with eng.connect() as c:
        ids = {r[0] for r in c.execute(sa.text('SELECT request_id FROM predictions'))}
        assert {p['request_id'] for p in preds} <= ids
        assert c.execute(sa.text('SELECT count(*) FROM feedback f JOIN predictions p USING (request_id)')).scalar_one() >= 100
    eng.dispose()
    assert integrity_check(postgres_url) == 'ok'
    log = read_log(postgres_url)
    assert log.set_index('request_id').loc[preds[0]['request_id']].y_true == 1
    assert not (registry_ws.root/'predictions.db').exists()


def test_fair_model_served_on_the_fast_path_decides_as_in_process(registry_ws, start_server, adult_records):
    """A fairness post-processed model (`FairThresholdClassifier`, what stage 03 selects on the bundled charter) is served
    through the compiled path, and its randomized decisions equal the in-process model's on every Adult test row."""
    from mlcycle.charter import binary_target, workspace_charter
    from mlcycle.train import fit_threshold_optimizer, register_model
    from mlcycle.core import setup_mlflow
    ws = registry_ws
    c, m2 = workspace_charter(ws), ws.manifest('02_data')['outputs']
    contract = read_json(ws.root/'data'/'contract.json')
    base, X = _model_and_X(ws, '1', n=None)
    train = ws.load_snapshot(m2['splits']['train']['fingerprint'])
    Xtr = feature_frame(train, contract)
    fair, _ = fit_threshold_optimizer(base, Xtr, binary_target(c, train[c.data.target]), c.data.sensitive_features[0],
                                      scores=base.predict_proba(Xtr)[:, 1])
    setup_mlflow(ws, c.name)
    v = register_model(ws, c, fair, Xtr.head(20), {k: s['fingerprint'] for k, s in m2['splits'].items()}, 'fair_threshold')
    promote(ws, v, force=True, reason='test setup: the stage-04 gate is not what this test checks')
    s = start_server(ws)
    got = []
    for i in range(0, len(adult_records), 4000):
        r = requests.post(s.url + '/predict', json=adult_records[i:i + 4000], timeout=120)
        assert r.status_code == 200, r.text[:300]
        got += r.json()['predictions']
    assert len(got) == len(X) == 16281 and {p['model_version'] for p in got} == {v}
    want = fair.predict(X)
    assert [p['label'] for p in got] == want.tolist()
    assert 0 < want.mean() < 1                                                     # decisions of both kinds were compared
    np.testing.assert_allclose([p['probability'] for p in got], fair.predict_proba(X)[:, 1], rtol=1e-9)
    assert f'v{v} preprocessor: compiled' in (ws.root/f'server-{s.port}.log').read_text()
