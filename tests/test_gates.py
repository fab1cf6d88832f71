"""Issue 12B: gates that can fail. Direct calls on real data (the bundled Adult rows), seconds each."""
import numpy as np
import pandas as pd
import pytest

from mlcycle.core import MlcycleError


@pytest.fixture(scope='module')
def adult_model():
    "A logistic regression on 3,000 bundled Adult rows, scored on 2,000 others: real data, a few seconds."
    from mlcycle.charter import binary_target, load_charter
    from mlcycle.data import adult, feature_frame, infer_contract
    from mlcycle.train import candidate_pipeline
    c = load_charter()
    df = adult('train').sample(5000, random_state=0)
    tr, te = df.iloc[:3000], df.iloc[3000:]
    contract = infer_contract(tr, c)
    m = candidate_pipeline('logistic_regression', contract, max_iter=300).fit(feature_frame(tr, contract), binary_target(c, tr[c.data.target]))
    return c, contract, m, feature_frame(te, contract), binary_target(c, te[c.data.target])


def test_robustness_gates_the_drop(adult_model):
    "Before 12B every probe with valid outputs passed, whatever the drop; now the charter's limit decides, with the interval."
    from mlcycle.charter import parse_charter
    from mlcycle.validate import evaluate_gate, overfit_check, robustness_gate, robustness_report, _robustness_rule
    c, contract, m, X, y = adult_model
    loose = robustness_gate(m, X, y, contract, 'roc_auc', max_drop=0.9, n_resamples=100)
    assert loose.passed.all() and (loose.verdict == 'within').all()
    worst = loose.loc[loose['drop'].idxmax()]
    assert worst['drop'] > 0.02, loose        # the linear model does lose skill under some probe
    tight = robustness_gate(m, X, y, contract, 'roc_auc', max_drop=worst.drop_ci_low / 2, n_resamples=100)
    assert not tight.set_index('probe').loc[worst.probe, 'passed']
    rule = _robustness_rule(tight)
    assert not rule['passed'] and f'{worst.probe}: roc_auc drop' in rule['detail'] and rule['threshold'] == pytest.approx(worst.drop_ci_low / 2)
    # the old report (valid outputs only) still passes the same model: this is the defect the gate fixes
    assert _robustness_rule(robustness_report(m, X, y, contract, 'roc_auc'))['passed']
    # the charter field, its default (not stated: measured and warned, not gated) and its errors
    assert c.validation.robustness_max_drop is None
    with pytest.raises(Exception, match='robustness_max_drop must be in'):
        parse_charter({**c.to_dict(), 'validation': {**c.validation.model_dump(), 'robustness_max_drop': 1.5}})
    with pytest.raises(MlcycleError, match='unknown probe'):
        robustness_gate(m, X.head(50), y[:50], contract, max_drop={'noise': 0.1})


def test_robustness_says_insufficient_evidence(adult_model):
    "A limit inside the drop's interval: the verdict names the rows it had and roughly how many more would tell."
    from mlcycle.validate import robustness_gate, _robustness_rule
    c, contract, m, X, y = adult_model
    full = robustness_gate(m, X, y, contract, 'roc_auc', max_drop=0.9, n_resamples=100)
    worst = full.loc[full['drop'].idxmax()]
    few = robustness_gate(m, X.head(200), y[:200], contract, 'roc_auc', max_drop={worst.probe: worst['drop']}, n_resamples=200)
    r = few.set_index('probe').loc[worst.probe]
    lo, hi = r.drop_ci_low, r.drop_ci_high
    assert lo <= worst['drop'] <= hi, (lo, hi, worst['drop'])
    assert r.verdict == 'insufficient evidence' and not r.passed and r.rows_needed > 200
    assert 'insufficient evidence: 200 test rows cannot tell' in _robustness_rule(few)['detail']



# ---- issue 27: only the charter gates; a criterion it does not state is measured and warned ----

@pytest.fixture(scope='module')
def adult_split():
    "8,000 bundled Adult rows split as stage 02 splits them (1,600 test rows), and their contract."
    from mlcycle.charter import load_charter
    from mlcycle.data import adult, infer_contract, split_data
    c = load_charter()
    s = split_data(adult().sample(8000, random_state=0), c)
    return c, infer_contract(s['train'], c), s


def _limits(c, **validation):
    "The bundled charter with ROC AUC ≥ 0.6 as its only objective, seed 0 (the probes' and draws'), and `validation` (no overfit_tolerance, no robustness_max_drop unless given)."
    from mlcycle.charter import parse_charter
    d = c.to_dict()
    return parse_charter({**d, 'objectives': [{'metric': 'roc_auc', 'min': 0.6, 'primary': True}], 'development': {**d['development'], 'seed': 0},
                          'validation': {**d['validation'], 'bootstrap_resamples': 200, 'overfit_tolerance': None, 'robustness_max_drop': None, **validation}})


def _gate(model_name, c, contract, s, **kw):
    from mlcycle.charter import binary_target
    from mlcycle.data import feature_frame
    from mlcycle.train import candidate_pipeline
    from mlcycle.validate import gate_model
    m = candidate_pipeline(model_name, contract, **kw).fit(feature_frame(s['train'], contract), binary_target(c, s['train'][c.data.target]))
    return lambda charter: gate_model(m, charter, contract, s['test'], train_df=s['train'], latency_rows=10)


def test_unstated_robustness_limit_warns_and_a_stated_one_fails(adult_split):
    """A logistic regression loses over 0.10 of ROC AUC when a tenth of its numeric inputs are past the training range. Before
    issue 27 the charter's default limit (0.10) failed it though the charter never stated one; now that drop is a warning with
    its interval and the version passes, and the same charter with the limit stated fails it."""
    from mlcycle.validate import ROBUSTNESS_REFERENCE, evidence_verdict
    c, contract, s = adult_split
    gate = _gate('logistic_regression', c, contract, s, C=0.01, max_iter=300)
    free = gate(_limits(c))
    oor = free['robustness'].set_index('probe').loc['out_of_range']
    assert oor['drop_ci_low'] > ROBUSTNESS_REFERENCE, oor                # clearly beyond the reference
    assert (oor.verdict, bool(oor.gates), bool(oor.warning), bool(oor.passed)) == ('not gated', False, True, True)
    rules = free['rules'][free['rules'].kind == 'robustness']
    warn = rules[~rules.gates].iloc[0]
    assert warn.passed and warn.warning and warn.ci_low <= warn.value <= warn.ci_high and warn.threshold == ROBUSTNESS_REFERENCE
    assert rules[rules.gates].passed.all()                                   # valid outputs: the part that gates without a limit
    assert free['status'] == 'passed', free['summary']
    assert 'warnings (no limit in the charter, not gated): robustness under out_of_range: roc_auc drop' in free['summary']
    assert f"[{oor.drop_ci_low:.4f}, {oor.drop_ci_high:.4f}] beyond the reference 0.1" in free['summary'], free['summary']
    assert evidence_verdict(_limits(c), free)['status'] == 'passed'          # a warning asks for no rows either
    stated = gate(_limits(c, robustness_max_drop=ROBUSTNESS_REFERENCE))
    r = stated['rules'][stated['rules'].kind == 'robustness']
    assert stated['status'] == 'failed' and len(r) == 1 and r.gates.all() and not r.passed.any(), stated['summary']
    assert stated['robustness'].set_index('probe').loc['out_of_range', 'verdict'] == 'beyond'
    assert 'robustness: roc_auc drop under each probe ≤ 0.1' in stated['summary'] and 'warnings' not in stated['summary']


def test_unstated_overfit_tolerance_warns_and_a_stated_one_fails(adult_split):
    """A random forest scores almost 1 on the rows it grew on: a train−test gap near 0.09. Before issue 27 the default
    tolerance (0.03) failed it though the charter never stated one; now the gap is a warning with its interval (the training
    score minus the test score's interval) and the version passes; stated, the tolerance fails it exactly as before."""
    from mlcycle.validate import OVERFIT_REFERENCE
    c, contract, s = adult_split
    gate = _gate('random_forest', c, contract, s, n_estimators=30)
    free = gate(_limits(c))
    of = free['overfit']
    assert of['gap_ci_low'] > OVERFIT_REFERENCE and of['gap_ci_low'] <= of['gap_train_test'] <= of['gap_ci_high'], of
    prim = free['objectives'].set_index('metric').loc['roc_auc']
    assert of['gap_ci_low'] == pytest.approx(of['train'] - prim.ci_high) and of['gap_ci_high'] == pytest.approx(of['train'] - prim.ci_low)
    assert (of['gates'], of['warning'], of['passed'], of['tolerance']) == (False, True, True, None)
    rule = free['rules'].set_index('kind').loc['overfitting']
    assert not rule.gates and rule.warning and rule.passed and rule.threshold == OVERFIT_REFERENCE
    assert free['status'] == 'passed', free['summary']
    assert 'warnings (no limit in the charter, not gated): overfitting: roc_auc train−test gap' in free['summary'], free['summary']
    stated = gate(_limits(c, overfit_tolerance=OVERFIT_REFERENCE))
    rule = stated['rules'].set_index('kind').loc['overfitting']
    assert stated['status'] == 'failed' and rule.gates and not rule.passed and not rule.warning, stated['summary']
    assert 'failed: 1 of 3 rules fail: overfitting: roc_auc train−test gap ≤ 0.03' in stated['summary'], stated['summary']


def test_an_undecided_objective_prints_the_interval_against_the_limit():
    """'360.7 ± 61.7, 69.3 from the limit' read as decided for the interval [308.7, 432.1] against rmse ≤ 430: the
    message now prints the interval that decides, against the limit."""
    from mlcycle.charter import load_charter, parse_charter
    from mlcycle.validate import gate_evidence
    c0 = load_charter()
    c = parse_charter({**c0.to_dict(), 'task': 'regression', 'data': {**c0.to_dict()['data'], 'target': 'hours_per_week', 'positive_label': None},
                       'objectives': [{'metric': 'rmse', 'max': 430, 'primary': True}], 'development': {**c0.to_dict()['development'], 'candidates': ['ridge']}})
    rules = pd.DataFrame([{'rule': c.primary.describe(), 'kind': 'objective', 'value': 360.7, 'ci_low': 308.7, 'ci_high': 432.1,
                           'threshold': 430.0, 'passed': True, 'gates': True, 'warning': False}])
    ev = gate_evidence(c, rules, 500)
    assert ev['status'] == 'insufficient_evidence'
    assert 'rmse ≤ 430: 360.7, interval [308.7, 432.1] contains the limit 430' in ev['text'], ev['text']
    assert '±' not in ev['text'] and 'from the limit' not in ev['text'], ev['text']

# ---- human oversight: promotion to @champion needs an approval of the version's evidence digest (risk: high) ----

def test_champion_needs_an_approval_of_its_evidence(gov_ws, mlcycle, tmp_path, monkeypatch):
    """The bundled charter is risk: high. Before 12B, stage 05 and `mlcycle promote` made any validated version champion;
    now each refuses in one line until a named person approves the version's evidence digest (or an audited override)."""
    from mlcycle.deploy import aliases, run_deployment
    from mlcycle.governance import build_governance, run_governance
    from mlcycle.charter import workspace_charter
    ws = gov_ws
    r = mlcycle('promote', '1', '--workspace', ws.root)
    assert r.returncode == 1 and "v1 of 'adult-income' cannot become @champion" in r.stderr and 'mlcycle govern --version 1' in r.stderr, r.stderr
    assert 'Traceback' not in r.stderr and '\n' not in r.stderr.strip()
    w = run_deployment(workspace=ws, version='1', package=False, log=lambda *a: None)['approval']     # the stage waits, naming the command
    assert w['status'] == 'awaiting_approval' and '\n' not in w['text'] and 'mlcycle approve 1 --by' in w['text'], w
    assert 'champion' not in aliases(ws)
    g = run_governance(workspace=ws, version='1', output_dir=tmp_path/'gov1', bootstrap=50, manifest=False, log=lambda *a: None)
    r = mlcycle('promote', '1', '--workspace', ws.root)
    assert r.returncode == 1 and f"nobody has approved its evidence digest {g['evidence_digest']}" in r.stderr, r.stderr
    assert mlcycle('approve', '1', '--by', 'Ada Reviewer', '--workspace', ws.root).returncode == 0
    run_deployment(workspace=ws, version='1', package=False)
    assert aliases(ws)['champion'] == '1'

    # compliance from evidence, on the real workspace: Art. 14 holds with the approval and the approved promotion; Art. 15 reads the
    # admin token from the deployment's recorded configuration, not from this process (package=False: nothing recorded, not measured)
    c = workspace_charter(ws)
    monkeypatch.setenv('MLCYCLE_ADMIN_TOKEN', 'a-token-of-32-characters-or-so!!')
    items = {i['id']: i for i in build_governance(ws, c, '1', n_boot=50)['compliance']['items']}
    admin = lambda it: it['EU-AIA-15']['evidence'][-1]
    assert items['EU-AIA-14']['status'] == 'pass' and admin(items)['value'] == 'admin routes: not measured', (items['EU-AIA-14'], items['EU-AIA-15'])
    assert items['EU-AIA-15']['status'] == 'gap' and any('configuration is not recorded' in g for g in items['EU-AIA-15']['gaps'])
    assert items['EU-AIA-11']['status'] == 'pass' and items['NIST-MANAGE']['evidence'][-1]['ok']

    # an explicit override is audited, lets the promotion through, and the compliance map names it
    r = mlcycle('promote', '2', '--override-approval', 'incident 7: the risk owner signs off by phone', '--workspace', ws.root)
    assert r.returncode == 0, r.stderr
    (o,) = [e for e in ws.audit.entries() if e['event'] == 'approval_override']
    assert (o['details']['version'], o['details']['reason']) == ('2', 'incident 7: the risk owner signs off by phone')
    items = {i['id']: i for i in build_governance(ws, c, '2', n_boot=50)['compliance']['items']}
    assert any('on an audited override' in g for g in items['EU-AIA-14']['gaps']), items['EU-AIA-14']


def test_every_compliance_item_fails_without_its_evidence():
    "Direct calls: all evidence in order passes; each piece removed in turn turns exactly its items into gaps."
    from mlcycle.governance_docs import compliance_checklist
    st = {k: {'available': True, 'about_this_version': True, 'note': ''} for k in ('01', '02', '04', '05', '06', '07')}
    st['04']['robustness_ok'] = True
    good = {'charter': {'risk_level': 'high', 'risk_stated': True, 'risk_notes': 'n', 'intended_use': 'ranking', 'out_of_scope': 'y', 'owners': ['o'], 'sensitive_features': ['g']},
            'audit': {'ok': True, 'summary': 'ok'}, 'primary': {'objective': 'roc_auc ≥ 0.8', 'metric': 'roc_auc', 'value': .9, 'ci_low': .89, 'ci_high': .91, 'passed': True},
            'stages': st, 'fairness_objectives': [{'passed': True}], 'files': {'model_card': 'model_card.md', 'bias_report': 'bias_report.md', 'lineage': 'lineage.md'},
            'card_complete': True, 'card_missing': [], 'contract_exists': True, 'leakage_suspects': 0, 'groups_judged': 3, 'groups_too_small': 0,
            'run_id': 'r', 'run_status': 'FINISHED', 'log_exists': True, 'log_rows': 10, 'caveats': 2, 'sign_off': {'approved': True, 'status': 'approved'},
            'alias_moves': 1, 'serialization': 'skops', 'validation_status': 'passed', 'metrics': [1], 'approval_required': True,
            'champion_promotions': [{'seq': 4, 'approved': True, 'override': False}], 'server_config': {'source': 'containers/m-v1/kubernetes.yaml', 'admin_token': {'configured': True, 'length': 32}},
            'retirement': {'ok': True, 'source': 'dry-run plan (stage 09)', 'summary': 'retention 90 days'}, 'lineage_missing': [], 'groups_judged_by_feature': {'g': 3}, 'fairness_unmeasured': []}
    gaps = lambda **o: sorted(i['id'] for i in compliance_checklist({**good, **o}) if i['status'] == 'gap')
    assert gaps() == []
    removed = {  # the evidence that used to be set to ok=True by hand, and the word search in intended_use
        'admin token': (dict(server_config={'source': 'containers/m-v1/kubernetes.yaml', 'admin_token': {'configured': False, 'length': 0}}), ['EU-AIA-15']),
        'server configuration recorded': (dict(server_config={'source': None}), ['EU-AIA-15']),
        'retirement plan': (dict(retirement={'ok': False, 'source': None, 'summary': 'refused'}), ['NIST-MANAGE']),
        'risk level stated': (dict(charter={**good['charter'], 'risk_stated': False}), ['EU-AIA-9']),
        'uses confirmed': (dict(charter={**good['charter'], 'intended_use': 'TO CONFIRM: who uses the predictions'}), ['EU-AIA-13', 'NIST-MAP']),
        'caveats measured': (dict(caveats=0), ['EU-AIA-13']),
        'lineage': (dict(lineage_missing=['data source']), ['EU-AIA-11']),
        'bias report': (dict(groups_judged_by_feature={}), ['EU-AIA-10', 'NIST-MEASURE']),
        'fairness measured': (dict(fairness_unmeasured=['demographic_parity_difference[g] ≤ 0.1']), ['EU-AIA-10', 'NIST-MEASURE']),
        'approval policy': (dict(approval_required=False), ['EU-AIA-14']),
        'approved promotion': (dict(champion_promotions=[{'seq': 4, 'approved': False, 'override': False}]), ['EU-AIA-14']),
        'approval': (dict(sign_off={'approved': False, 'status': 'not approved'}), ['EU-AIA-14', 'NIST-GOVERN']),
    }
    stage_off = lambda k, **more: dict(stages={**st, k: {**st[k], 'available': False, **more}})
    removed.update({  # every other piece of evidence an item reads: each removed alone, the items that read it turn to gaps
        'stage 01 ran': (stage_off('01'), ['EU-AIA-9', 'NIST-MAP']),
        'fairness objectives met': (dict(fairness_objectives=[{'passed': True}, {'passed': False}]), ['EU-AIA-9']),
        'stage 06 ran': (stage_off('06'), ['EU-AIA-9', 'NIST-MEASURE']),
        'stage 02 ran': (stage_off('02'), ['EU-AIA-10']),
        'data contract': (dict(contract_exists=False), ['EU-AIA-10']),
        'leakage screen clean': (dict(leakage_suspects=1), ['EU-AIA-10']),
        'two groups per feature': (dict(groups_judged_by_feature={'g': 1}), ['EU-AIA-10', 'NIST-MEASURE']),
        'model card complete': (dict(card_complete=False, card_missing=['Intended use']), ['EU-AIA-11']),
        'training run in MLflow': (dict(run_status='not found'), ['EU-AIA-11']),
        'audit chain verifies': (dict(audit={'ok': False, 'summary': 'BROKEN at entry 4'}), ['EU-AIA-12', 'EU-AIA-17', 'NIST-GOVERN']),
        'prediction log': (dict(log_exists=False, log_rows=0), ['EU-AIA-12']),
        'out-of-scope confirmed': (dict(charter={**good['charter'], 'out_of_scope': 'TO CONFIRM: what it must not be used for'}), ['EU-AIA-13', 'NIST-MAP']),
        'primary measured': (dict(primary={**good['primary'], 'value': float('nan')}), ['EU-AIA-13']),
        'primary objective met': (dict(primary={**good['primary'], 'passed': False}), ['EU-AIA-15']),
        'stage 04 about this version': (dict(stages={**st, '04': {**st['04'], 'about_this_version': False}}), ['EU-AIA-15', 'EU-AIA-17']),
        'robustness probes': (dict(stages={**st, '04': {**st['04'], 'robustness_ok': False}}), ['EU-AIA-15']),
        'skops serialization': (dict(serialization='pickle'), ['EU-AIA-15']),
        'admin token long enough': (dict(server_config={'source': 'containers/m-v1/kubernetes.yaml', 'admin_token': {'configured': True, 'length': 8}}), ['EU-AIA-15']),
        'validation passed': (dict(validation_status='failed'), ['EU-AIA-17', 'NIST-MANAGE']),
        'owners named': (dict(charter={**good['charter'], 'owners': []}), ['NIST-GOVERN']),
        'owners confirmed': (dict(charter={**good['charter'], 'owners': ['TO CONFIRM: who owns the model']}), ['NIST-GOVERN']),
        'metrics with intervals': (dict(metrics=[]), ['NIST-MEASURE']),
        'stage 05 ran': (stage_off('05'), ['NIST-MANAGE']),
        'stage 07 ran': (stage_off('07'), ['NIST-MANAGE']),
        'promotion approved, not overridden': (dict(champion_promotions=[{'seq': 4, 'approved': False, 'override': True}]), ['EU-AIA-14']),
    })
    for what, (over, expected) in removed.items(): assert gaps(**over) == expected, (what, gaps(**over))
    from mlcycle.governance_docs import COMPLIANCE_RULES
    every = {r(good)['id'] for r in COMPLIANCE_RULES}
    assert every == {i for _, ids in removed.values() for i in ids}, every - {i for _, ids in removed.values() for i in ids}   # no item without a failing test


# ---- retention for every version: `mlcycle purge` ----

def test_purge_applies_retention_to_the_live_log(history_ws, mlcycle):
    """Before 12B only retirement purged, one version at a time: the champion's rows older than prediction_log_days stayed.
    The dry run says exactly what the real run then deletes, the real run is audited."""
    import sqlite3, time
    from mlcycle.predlog import read_log
    db = lambda: sqlite3.connect(history_ws.root/'predictions.db')
    cut = time.time() - 86400 * 90          # the charter's 90 days
    with db() as con:
        old = con.execute('SELECT model_version, count(*) FROM predictions WHERE ts < ? GROUP BY model_version', (cut,)).fetchall()
        total = con.execute('SELECT count(*) FROM predictions').fetchone()[0]
    assert old and sum(n for _, n in old) < total           # v1 (the champion) has rows 120–90 days old; the rest are newer
    r = mlcycle('purge', '--workspace', history_ws.root)
    assert r.returncode == 0 and r.stdout.startswith('dry run: '), r.stderr
    cutoff = float(r.stdout.split('cutoff_ts ')[1].split()[0])
    assert len(read_log(history_ws)) == total                 # a dry run changes nothing
    with db() as con:
        expect = con.execute('SELECT count(*) FROM predictions WHERE ts < ?', (cutoff,)).fetchone()[0]
    assert f'dry run: {expect} predictions older than' in r.stdout
    r = mlcycle('purge', '--yes', '--cutoff', repr(cutoff), '--workspace', history_ws.root)
    assert r.returncode == 0 and r.stdout.startswith(f'purged {expect} predictions'), (r.stdout, r.stderr)
    with db() as con:
        assert con.execute('SELECT count(*) FROM predictions WHERE ts < ?', (cutoff,)).fetchone()[0] == 0
        assert con.execute('SELECT count(*) FROM predictions').fetchone()[0] == total - expect
        assert con.execute('SELECT count(*) FROM feedback WHERE request_id NOT IN (SELECT request_id FROM predictions)').fetchone()[0] == 0
    e = history_ws.audit.entries()[-1]
    assert e['event'] == 'retention_purge' and e['details']['predictions'] == expect and history_ws.audit.verify().ok


def test_retirement_does_not_promote_an_unapproved_replacement(history_ws):
    "Stage 09 promotes the replacement of a retired champion through the same check: v2 has no approval, so nothing moves."
    from mlcycle.deploy import aliases
    from mlcycle.retire import retire_version
    before = aliases(history_ws)
    with pytest.raises(MlcycleError, match="v2 of 'adult-income' cannot become @champion"):
        retire_version(history_ws, '1', reason='superseded', replacement='2', retention_days=30, delete_artifacts=False, log=lambda *a: None)
    assert aliases(history_ws) == before == {'champion': '1', 'challenger': '2'}


def test_sensitive_features_are_hashed_in_the_log_by_default():
    "The default is the safest that still lets stage 06 measure fairness per group: a keyed hash (drop would blind it)."
    import yaml
    from mlcycle.charter import BUNDLED_CHARTER, parse_charter
    from mlcycle.predlog import SensitivePolicy
    d = yaml.safe_load(BUNDLED_CHARTER.read_text())
    d.pop('retention')
    c = parse_charter(d)
    assert c.retention.log_sensitive_features == 'hash' and c.retention.prediction_log_days == 90
    pol = SensitivePolicy(c.retention.log_sensitive_features, c.data.sensitive_features, b'k' * 32)
    a, b, other = (pol.apply({'sex': s, 'age': 40}) for s in ('Female', 'Female', 'Male'))
    assert a['sex'] == b['sex'] != other['sex'] and 'Female' not in str(a) and a['age'] == 40   # groups comparable, values not in clear
