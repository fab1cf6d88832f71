"""Explanations on request from the stage-05 server (`POST /predict?explain=true`), over real HTTP on the shared champion server."""
import numpy as np
import pandas as pd
import pytest
import requests

from mlcycle.core import read_json
from mlcycle.data import adult, feature_frame
from mlcycle.explain import reference_values
from mlcycle.predlog import read_log
from mlcycle.serve import EXPLAIN_MAX_ROWS

pytestmark = pytest.mark.timeout(900)   # the shared fixtures (stages 01-02, a registry, a server) are built on first use


def test_predict_explains_on_request_only(champion_server, adult_records):
    import mlflow
    from mlcycle.charter import workspace_charter
    from mlcycle.core import setup_mlflow
    s = champion_server
    c = workspace_charter(s.ws); setup_mlflow(s.ws, c.name)
    model = mlflow.sklearn.load_model(f'models:/{c.name}/1')
    contract = read_json(s.ws.root/'data'/'contract.json')
    X = feature_frame(adult('test').head(5), contract)
    plain = requests.post(s.url + '/predict', json=adult_records[:5], timeout=30).json()
    assert 'explanations' not in plain                                          # the fast path answers as before
    assert 'explanations' not in requests.post(s.url + '/predict?explain=false', json=adult_records[:1], timeout=30).json()
    r = requests.post(s.url + '/predict?explain=true', json=adult_records[:5], timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [p['label'] for p in body['predictions']] == [p['label'] for p in plain['predictions']]
    assert len(body['explanations']) == 5 and body['explanation_method'].startswith('occlusion')
    train = s.ws.load_snapshot(s.ws.manifest('02_data')['outputs']['splits']['train']['fingerprint'])
    ref = reference_values(feature_frame(train, contract))
    p = model.predict_proba(X)[:, 1]
    for i, e in enumerate(body['explanations']):
        assert e['model_version'] == '1' and set(e['attributions']) == set(contract['features'])
        assert abs(e['score'] - p[i]) < 1e-9
        sizes = [abs(v) for v in e['attributions'].values()]
        assert sizes == sorted(sizes, reverse=True)                              # largest first
        for f in list(e['attributions'])[:3]:                                   # each one is a re-scoring of the row with f typical
            Z = X.iloc[[i]].copy(); Z[f] = pd.Series([ref[f]], dtype=X[f].dtype, index=Z.index)
            assert abs(e['attributions'][f] - (p[i] - model.predict_proba(Z)[0, 1])) < 1e-5, (i, f)
    log = read_log(s.ws).set_index('request_id')                               # explained rows are logged like any other
    assert set(p['request_id'] for p in body['predictions']) <= set(log.index)
    big = requests.post(s.url + '/predict?explain=true', json=adult_records[:EXPLAIN_MAX_ROWS + 1], timeout=30)
    assert big.status_code == 413 and big.json()['detail']['error'] == 'too_many_rows_to_explain'
