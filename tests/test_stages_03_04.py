"""Issue: stages 03 (model development) and 04 (validation gate). The full circle 01-04 on Adult passes the gate; an
impossible charter stops with a readable verdict and registers nothing; a worse model fails non-inferiority against
a champion; the bias numbers are fairlearn's; the bootstrap intervals cover the truth. Real parts only: the `mlcycle`
command and papermill, MLflow on SQLite in a temp workspace, skops files on disk."""
import json, os, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml


def _open(ws: Path):
    from mlcycle.core import Workspace
    from mlcycle.charter import workspace_charter
    w = Workspace(ws)
    return w, workspace_charter(w)


@pytest.fixture(scope='session')
def adult_0104(adult_circle):
    """The workspace as stages 01-04 of the session's full circle (`mlcycle run`, conftest's `adult_circle`) left it: copied
    right after stage 04 and before stage 05 started, with that run's reports next to it (shared, read-only below)."""
    assert adult_circle['after_04'], ('no copy of the workspace after stage 04: the circle failed before it, or `mlcycle.cli` no longer '
                                      'reports progress through `_echo` (see conftest.adult_circle):\n' + adult_circle['stdout'][-3000:] + adult_circle['stderr'][-3000:])
    return adult_circle['after_04']


# --- the full circle on Adult ---------------------------------------------------------------------------

def test_run_01_to_04_on_adult_passes_the_gate(adult_0104):
    ws, c = _open(adult_0104)
    m3, m4 = ws.manifest('03_model_development')['outputs'], ws.manifest('04_validation')['outputs']
    assert m3['stop'] is False and m3['model_version'] and m3['selected'].endswith('+threshold_optimizer'), m3['verdict']
    assert m4['validation_status'] == 'passed', m4['verdict']
    assert m4['model_version'] == m3['model_version'] and m4['verdict'].startswith('passed: all')

    # the version carries the verdict and the lineage tags stage 05 and later read
    from mlcycle.train import model_version_info
    tags = model_version_info(ws, c, m3['model_version'])['tags']
    splits = ws.manifest('02_data')['outputs']['splits']
    assert tags['validation_status'] == 'passed' and tags['lifecycle'] == 'candidate' and tags['charter_hash'] == c.hash
    assert tags['validation_summary'] == m4['verdict'][:4900]
    for k in ('train', 'validation', 'test'): assert tags[f'data_{k}_fingerprint'] == splits[k]['fingerprint']
    assert tags['model_family'] == 'hist_gradient_boosting' and tags['mitigation'] == 'threshold_optimizer'

    # the numbers the issue expects on Adult
    cands = pd.DataFrame(m3['candidates']).set_index('candidate')
    rep = m4['report']
    perf = pd.DataFrame(rep['performance']).set_index('metric')
    fair = pd.DataFrame(rep['fairness']).set_index(['sensitive_feature', 'metric'])
    auc, dp = perf.loc['roc_auc', 'value'], fair.loc[('sex', 'demographic_parity_difference'), 'value']
    print(f"\nAdult, test split: ROC AUC {auc:.4f} [{perf.loc['roc_auc', 'ci_low']:.4f}, {perf.loc['roc_auc', 'ci_high']:.4f}], "
          f"accuracy {perf.loc['accuracy', 'value']:.4f}, DP difference (sex) {dp:.4f}; validation DP of the unmitigated "
          f"HGB {cands.loc['hist_gradient_boosting', 'demographic_parity_difference[sex]']:.4f}")
    assert 0.91 <= auc <= 0.945                                   # best unconstrained score: the issue expects 0.92-0.93
    assert perf.loc['roc_auc', 'ci_low'] < auc < perf.loc['roc_auc', 'ci_high']
    assert dp < 0.05                                              # mitigated: below 0.05
    assert 0.12 <= cands.loc['hist_gradient_boosting', 'demographic_parity_difference[sex]'] <= 0.25   # unmitigated ~0.15-0.20
    assert cands.loc['hist_gradient_boosting', 'accuracy'] > cands.loc['hist_gradient_boosting+threshold_optimizer', 'accuracy']  # the cost

    # the audit log has the decisions, and is intact
    events = [e['event'] for e in ws.audit.entries()]
    assert {'model_selected', 'model_registered', 'validation_verdict'} <= set(events) and ws.audit.verify().ok
    # the executed notebooks are the reports
    reports = [p for p in (adult_0104.parent/'reports').rglob('04_validation.ipynb')]
    assert reports and 'validation_status' in reports[0].read_text()


def test_registered_model_is_skops_with_signature_and_deterministic_decisions(adult_0104):
    ws, c = _open(adult_0104)
    from mlcycle.core import read_json
    from mlcycle.data import feature_frame
    from mlcycle.train import load_model_version, model_version_info
    v = ws.manifest('03_model_development')['outputs']['model_version']
    art = [p for p in ws.root.rglob('MLmodel') if (p.parent/'model.skops').exists()]
    assert art, 'no skops model on disk'
    files = [p.name for p in ws.root.rglob('*') if p.is_file()]
    assert not any(f.endswith(('.pkl', '.pickle')) for f in files)
    mlmodel = yaml.safe_load(art[0].read_text())
    sk = mlmodel['flavors']['sklearn']
    assert sk['serialization_format'] == 'skops' and 'mlcycle.train.FairThresholdClassifier' in sk['skops_trusted_types']
    assert 'signature' in mlmodel and 'saved_input_example_info' in mlmodel
    reqs = (art[0].parent/'requirements.txt').read_text().split()
    assert any(r.startswith('scikit-learn==') for r in reqs) and any(r.startswith('skops==') for r in reqs)

    model = load_model_version(ws, c, v)
    test = ws.load_snapshot(ws.manifest('02_data')['outputs']['splits']['test']['fingerprint'])
    X = feature_frame(test, read_json(ws.root/'data'/'contract.json'))
    p, d = model.predict_proba(X), model.predict(X)
    assert p.shape == (len(X), 2) and set(np.unique(d)) == {0, 1}
    # same row, same decision: alone, in another order, in another batch, in another process
    rows = [0, 5, 17, 123, 999]
    assert [int(model.predict(X.iloc[[i]])[0]) for i in rows] == d[rows].tolist()
    assert (model.predict(X.iloc[::-1])[::-1] == d).all()
    code = (f"from mlcycle.core import Workspace; from mlcycle.charter import workspace_charter; from mlcycle.train import load_model_version\n"
            f"import pandas as pd; from mlcycle.data import feature_frame; from mlcycle.core import read_json\n"
            f"ws = Workspace({str(ws.root)!r}); c = workspace_charter(ws); m = load_model_version(ws, c, {v!r})\n"
            f"t = ws.load_snapshot({ws.manifest('02_data')['outputs']['splits']['test']['fingerprint']!r})\n"
            f"print(''.join(map(str, m.predict(feature_frame(t, read_json(ws.root/'data'/'contract.json')).head(300)))))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == ''.join(map(str, d[:300]))
    # a plain MLflow user loads it with pyfunc and predicts on the CSV as pandas reads it: no casts, same decisions
    import mlflow
    from mlcycle.core import ASSETS
    raw = pd.read_csv(ASSETS/'adult_test.csv.gz').head(2000)
    assert any(str(t) == 'int64' for t in raw.dtypes)
    got = mlflow.pyfunc.load_model(f'models:/{c.name}/{v}').predict(raw.drop(columns=[c.data.target]))
    assert np.asarray(got).tolist() == model.predict(feature_frame(raw, read_json(ws.root/'data'/'contract.json'))).tolist()
    # the champion alias does not exist yet: loading it is a clear error, not a crash
    from mlcycle.core import MlcycleError
    with pytest.raises(MlcycleError, match='cannot find model'): load_model_version(ws, c, 'champion')


def test_bias_numbers_are_fairlearns_own(adult_0104):
    import fairlearn.metrics as flm
    from sklearn.metrics import accuracy_score
    from mlcycle.core import read_json
    from mlcycle.charter import binary_target
    from mlcycle.data import feature_frame
    from mlcycle.train import load_model_version
    ws, c = _open(adult_0104)
    m4 = ws.manifest('04_validation')['outputs']
    test = ws.load_snapshot(m4['test_fingerprint'])
    X, y = feature_frame(test, read_json(ws.root/'data'/'contract.json')), binary_target(c, test[c.data.target])
    pred = load_model_version(ws, c, m4['model_version']).predict(X)
    fair = pd.DataFrame(m4['report']['fairness']).set_index(['sensitive_feature', 'metric']).value
    for f in c.data.sensitive_features:
        sf = test[f].astype(str)
        for m in ('demographic_parity_difference', 'demographic_parity_ratio', 'equalized_odds_difference'):
            assert fair[(f, m)] == pytest.approx(getattr(flm, m)(y, pred, sensitive_features=sf), abs=1e-12), (f, m)
        mf = flm.MetricFrame(metrics={'selection_rate': flm.selection_rate, 'true_positive_rate': flm.true_positive_rate,
                                      'false_positive_rate': flm.false_positive_rate, 'accuracy': accuracy_score},
                             y_true=y, y_pred=pred, sensitive_features=sf)
        got = pd.DataFrame(m4['report']['fairness_by_group'][f]).set_index(f)
        for col in mf.by_group.columns:
            np.testing.assert_allclose(got.loc[mf.by_group.index, col].to_numpy(float), mf.by_group[col].to_numpy(float), atol=1e-12)
    # the gate's fairness objective is the same number
    obj = pd.DataFrame(m4['report']['objectives']).set_index('metric')
    assert obj.loc['demographic_parity_difference', 'value'] == pytest.approx(fair[('sex', 'demographic_parity_difference')], abs=1e-12)


# --- an objective nothing can meet ----------------------------------------------------------------------

def test_impossible_objective_stops_the_circle_with_a_readable_verdict(tmp_path):
    from mlcycle.core import ASSETS, Workspace
    from mlcycle.feasibility import run_problem_definition
    from mlcycle.data import adult, run_data_stage
    from mlcycle.train import run_model_development
    from mlcycle.validate import run_validation
    import mlflow
    d = yaml.safe_load((ASSETS/'adult_charter.yaml').read_text())
    # 6,000 seeded rows and one candidate family: the verdict, not the search, is what is tested
    adult('train').sample(6000, random_state=0).to_csv(tmp_path/'train.csv', index=False)
    d['data']['sources'][0]['path'] = str(tmp_path/'train.csv'); d['production']['sources'][0]['path'] = str(ASSETS/'adult_test.csv.gz')
    d['objectives'][0]['min'] = 0.99
    d['development'].update(search_iterations=2, candidates=['hist_gradient_boosting'])
    (tmp_path/'impossible.yaml').write_text(yaml.safe_dump(d))
    ws = Workspace(tmp_path/'ws')
    run_problem_definition(tmp_path/'impossible.yaml', ws)
    run_data_stage(None, ws)
    r3 = run_model_development(None, ws, log=lambda *a, **k: None)
    r4 = run_validation(None, ws, log=lambda *a, **k: None)
    m3, m4 = ws.manifest('03_model_development')['outputs'], ws.manifest('04_validation')['outputs']
    print('\n' + m3['verdict'] + '\n' + m4['verdict'])
    assert r3['selection'].chosen is None and m3['model_version'] is None and m3['stop'] is True
    assert m3['verdict'].startswith('NO candidate meets every objective on the validation split: nothing is registered')
    assert 'roc_auc ≥ 0.99 (got 0.' in m3['verdict'] and m3['closest']
    assert m4['validation_status'] == 'failed' and m4['stop'] is True and 'stage 03 registered no model' in m4['verdict']
    assert r4['status'] == 'failed'
    # nothing registered: no version, so no challenger and no champion
    client = mlflow.MlflowClient()
    assert client.search_model_versions(f"name='{r3['charter'].name}'") == []
    for alias in ('challenger', 'champion'):
        with pytest.raises(Exception): client.get_model_version_by_alias(r3['charter'].name, alias)
    events = [(e['event'], e['details']) for e in ws.audit.entries()]
    assert any(e == 'no_model_selected' for e, _ in events)
    assert any(e == 'validation_verdict' and det['status'] == 'failed' for e, det in events) and ws.audit.verify().ok
    mlflow.set_tracking_uri(None)


# --- non-inferiority against a champion -----------------------------------------------------------------

def test_worse_model_fails_non_inferiority_against_the_champion(tmp_path):
    import mlflow
    from mlcycle.core import Workspace, fingerprint_df
    from mlcycle.charter import binary_target, load_charter, parse_charter
    from mlcycle.data import adult, feature_frame, infer_contract, split_data
    from mlcycle.train import candidate_pipeline, model_version_info, register_model
    from mlcycle.validate import validate_version
    c0 = load_charter()
    # a charter both models meet on every objective, so that non-inferiority is the only thing that can fail
    c = parse_charter({**c0.to_dict(), 'objectives': [{'metric': 'roc_auc', 'min': 0.75, 'primary': True}],
                       'validation': {**c0.to_dict()['validation'], 'bootstrap_resamples': 200}})   # no robustness limit stated: the weak model's drop warns
    splits = split_data(adult().sample(12000, random_state=0), c)   # 2,400 test rows tell the two models apart
    contract = infer_contract(splits['train'], c)
    X, y = feature_frame(splits['train'], contract), binary_target(c, splits['train'].income)
    good = candidate_pipeline('hist_gradient_boosting', contract, learning_rate=0.1).fit(X, y)
    worse = candidate_pipeline('logistic_regression', contract, C=0.01).fit(X.head(400), y[:400])   # deliberately weak
    ws = Workspace(tmp_path/'ws')
    fps = {k: fingerprint_df(v) for k, v in splits.items()}
    Xv = feature_frame(splits['validation'], contract)
    v_good = register_model(ws, c, good, Xv, fps, 'hist_gradient_boosting')
    v_worse = register_model(ws, c, worse, Xv, fps, 'logistic_regression')
    kw = dict(test_df=splits['test'], train_df=splits['train'], validation_df=splits['validation'], contract=contract, log=lambda *a: None)
    r_good = validate_version(ws, c, v_good, **kw)
    assert r_good['status'] == 'passed', r_good['summary']
    # stage 05 promotes a passed version to champion by moving the alias; done here directly, as test setup
    mlflow.MlflowClient().set_registered_model_alias(c.name, 'champion', v_good)
    r = validate_version(ws, c, v_worse, **kw)
    print('\n' + r['summary'])
    rules = r['rules'][r['rules'].gates].set_index('kind')        # the rules that gate; a drop without a charter limit only warns
    assert r['status'] == 'failed' and r['champion_version'] == v_good
    assert rules.loc['objective', 'passed'] and rules.loc['overfitting', 'passed'] and rules.loc['robustness', 'passed']
    assert not rules.loc['non_inferiority', 'passed']
    ni = r['non_inferiority']
    assert ni['difference'] < -c.validation.non_inferiority_margin and ni['ci_high'] < 0 and ni['ci_low'] < -ni['margin']
    assert f"non-inferiority vs @champion: roc_auc difference > −{c.validation.non_inferiority_margin:g}" in r['summary']
    assert f'(v{v_good})' in r['summary']
    tags = model_version_info(ws, c, v_worse)['tags']
    assert tags['validation_status'] == 'failed' and 'non-inferiority' in tags['validation_summary']
    assert [e['details']['status'] for e in ws.audit.entries() if e['event'] == 'validation_verdict'] == ['passed', 'failed']
    # the champion itself re-validated: no comparison with itself
    assert validate_version(ws, c, v_good, **kw)['non_inferiority'] is None
    mlflow.set_tracking_uri(None)


# --- statistics -----------------------------------------------------------------------------------------

def test_bootstrap_interval_covers_the_true_value():
    "Simulations with known answers: accuracy p = 0.8, and ROC AUC of binormal scores = Φ(d/√2)."
    from scipy.stats import norm
    from mlcycle.validate import bootstrap_indices, percentile_ci, resampled_metric
    rng, hits_acc, hits_auc = np.random.default_rng(7), 0, 0
    for s in range(200):
        y = rng.integers(0, 2, 500); pred = np.where(rng.random(500) < 0.8, y, 1 - y)
        lo, hi = percentile_ci(resampled_metric('accuracy', y, pred=pred, idx=bootstrap_indices(500, 400, s)))
        hits_acc += lo <= 0.8 <= hi
    truth = norm.cdf(0.8 / np.sqrt(2))
    for s in range(120):
        y = np.r_[np.ones(250, int), np.zeros(250, int)]; sc = np.r_[rng.normal(0.8, 1, 250), rng.normal(0, 1, 250)]
        lo, hi = percentile_ci(resampled_metric('roc_auc', y, proba=sc, idx=bootstrap_indices(500, 300, s)))
        hits_auc += lo <= truth <= hi
    print(f'\ncoverage of the 95% interval: accuracy {hits_acc / 200:.3f}, ROC AUC {hits_auc / 120:.3f}')
    assert 0.91 <= hits_acc / 200 <= 0.99
    assert 0.88 <= hits_auc / 120 <= 0.99
    # an interval that ignored the resampling would be far too narrow: check that width tracks the standard error
    y = rng.integers(0, 2, 2000); pred = np.where(rng.random(2000) < 0.8, y, 1 - y)
    lo, hi = percentile_ci(resampled_metric('accuracy', y, pred=pred, idx=bootstrap_indices(2000, 1000, 1)))
    assert (hi - lo) == pytest.approx(2 * 1.96 * np.sqrt(0.8 * 0.2 / 2000), rel=0.15)


def test_fair_threshold_wrapper_reproduces_fairlearn_on_adult():
    "The servable post-processor decides like fairlearn's ThresholdOptimizer (same rules, same parity) on real data."
    import fairlearn.metrics as flm
    from mlcycle.charter import binary_target, load_charter
    from mlcycle.data import adult, feature_frame, infer_contract, split_data
    from mlcycle.train import candidate_pipeline, fit_threshold_optimizer, group_key
    c = load_charter()
    sp = split_data(adult().sample(10000, random_state=3), c)
    contract = infer_contract(sp['train'], c)
    X, y = feature_frame(sp['train'], contract), binary_target(c, sp['train'].income)
    Xv, yv = feature_frame(sp['validation'], contract), binary_target(c, sp['validation'].income)
    base = candidate_pipeline('logistic_regression', contract, C=1.0).fit(X, y)
    fair, to = fit_threshold_optimizer(base, X, y, 'sex')
    s = base.predict_proba(Xv)[:, 1]
    q = to._pmf_predict(pd.DataFrame({'score': s}), sensitive_features=group_key(Xv.sex))[:, 1]
    np.testing.assert_allclose(fair.decision_probability(Xv), q, atol=1e-12)
    dp = lambda d: flm.demographic_parity_difference(yv, d, sensitive_features=Xv.sex)
    theirs = [dp(to.predict(pd.DataFrame({'score': s}), sensitive_features=group_key(Xv.sex), random_state=r)) for r in range(30)]
    ours = dp(fair.predict(Xv))
    assert abs(ours - np.mean(theirs)) < max(3 * np.std(theirs), 0.01)
    assert dp(base.predict(Xv)) > 0.1 > ours
