"""Stage 07's A/B fairness guard and decision, checked so that they can fail: the guard on a real workspace whose
prediction log stores, hashes or drops the sensitive features (what the analysis, the report's reason and the audit
log say in each case), and the circle tests' `decision_from_evidence` against the stage's own decision rule."""
import json, shutil, hmac

import numpy as np
import pandas as pd
import pytest


# ---- the guard on a real workspace, for each way the log keeps the sensitive features --------------------------------

def _ab_workspace(registry_template, tmp_path, policy: str):
    """A private copy of the registry (v1, v2 passed validation) whose recorded charter keeps the sensitive features in
    the log as `policy` says: v1 @champion, v2 @challenger at half the traffic, a fixed design of 600 labelled rows per arm."""
    from mlcycle.core import Workspace
    from mlcycle.charter import workspace_charter
    from mlcycle.deploy import promote
    from mlcycle.retrain import ab_design
    dest = tmp_path/'ws'
    shutil.copytree(registry_template.root, dest, ignore=shutil.ignore_patterns('predictions.db*', 'containers'))
    rec = json.loads((dest/'charter.json').read_text())
    rec['charter']['retention']['log_sensitive_features'] = policy
    (dest/'charter.json').write_text(json.dumps(rec))
    ws = Workspace(dest)
    c = workspace_charter(ws)
    promote(ws, '1', reason='A/B guard test'); promote(ws, '2', as_='challenger', share=0.5, reason='A/B guard test')
    design = {**ab_design(c, 0.8, share=0.5, method='fixed', min_samples=600), 'start_ts': 0.0,
              'champion_version': '1', 'challenger_version': '2', 'looks': []}     # as stage 07's train phase writes it
    (dest/'ab').mkdir(exist_ok=True)
    (dest/'ab'/f'{c.name}-v2.json').write_text(json.dumps(design))
    return ws, c


def _serve_and_label(ws, c, policy: str, rows: int = 1300):
    """Real Adult test rows scored by the registered v1 and v2 (alternating), written to the workspace's log with the
    sensitive features kept as `policy` says (the server's `SensitivePolicy`), and every row's true label as feedback."""
    from mlcycle.data import adult, feature_frame
    from mlcycle.charter import binary_target
    from mlcycle.core import read_json
    from mlcycle.model_checks import load_version
    from mlcycle.predlog import PredictionLog, SensitivePolicy, workspace_log_key
    contract = read_json(ws.root/'data'/'contract.json')
    df = adult('test').sample(rows, random_state=5).reset_index(drop=True)
    X, y = feature_frame(df, contract), binary_target(c, df[c.data.target])
    sens = SensitivePolicy(policy, c.data.sensitive_features, workspace_log_key(ws))
    out, fb = [], []
    for v in ('1', '2'):
        part = np.arange(len(df)) % 2 == (0 if v == '1' else 1)
        p = load_version(ws, c, v).predict_proba(X[part])[:, 1]
        for i, (k, prob) in enumerate(zip(np.flatnonzero(part), p)):
            feats = sens.apply(json.loads(df.drop(columns=c.data.target).iloc[[k]].to_json(orient='records'))[0])
            rid = f'r{k}'
            out.append({'request_id': rid, 'ts': float(k), 'model_name': c.name, 'model_version': v, 'arm': 'champion' if v == '1' else 'challenger',
                        'features': json.dumps(feats), 'probability': float(prob), 'label': int(prob >= 0.5), 'latency_ms': 1.0, 'flags': ''})
            fb.append((rid, str(df[c.data.target].iloc[k]), int(y[k])))
    log = PredictionLog(ws.prediction_log_url)
    try:
        log.write(out); log.submit_feedback(fb).result()
    finally: log.close()
    return df, pd.DataFrame(out)


@pytest.mark.parametrize('policy', ['store', 'hash', 'drop'])
def test_the_ab_guard_says_what_it_judged(registry_template, tmp_path, policy):
    """Stored: the guard judges named groups. Hashed: the same objective on opaque groups, each with its size (the
    workspace key's `sensitive_decoder` names them). Dropped: no guard, and the analysis, its reason (the report prints
    it) and the audit log's `ab_decision` entry say so in a sentence."""
    from mlcycle.predlog import sensitive_decoder, workspace_log_key
    from mlcycle.retrain import run_ab_analysis
    ws, c = _ab_workspace(registry_template, tmp_path, policy)
    df, logged = _serve_and_label(ws, c, policy)
    r = run_ab_analysis(workspace=ws, auto_promote=False, log=lambda *_: None)
    an = r['analysis']
    assert an['status'] == 'complete', an.get('reason')
    entry = [e for e in ws.audit.entries() if e['event'] == 'ab_decision'][-1]['details']
    assert entry['evidence'] == an['reason'] == ws.manifest('07_retraining')['outputs']['evidence']
    served = df.iloc[1::2]                                  # the challenger's rows (v2 scored the odd ones)
    if policy == 'drop':
        assert an['fairness'] == [] and an['fairness_groups'] == []
        assert an['fairness_note'].startswith('No fairness guard') and 'sex' in an['fairness_note']
        assert an['fairness_note'] in an['reason'] and 'No fairness guard' in entry['evidence']
        return
    assert [f['objective'] for f in an['fairness']] == ['demographic_parity_difference[sex] ≤ 0.1'] and an['fairness'][0]['measured']
    groups = {g['group']: g['rows'] for g in an['fairness_groups'] if g['feature'] == 'sex'}
    if policy == 'hash':
        names = sensitive_decoder(workspace_log_key(ws), ['Male', 'Female'])
        assert set(groups) <= set(names) and not set(groups) & {'Male', 'Female'}, groups      # opaque, and the key names them
        groups = {names[g]: n for g, n in groups.items()}
        assert 'opaque groups' in an['fairness_note'] and an['fairness_note'] in entry['evidence']
    else: assert an['fairness_note'] == '' and 'No fairness guard' not in entry['evidence'] and 'opaque' not in entry['evidence']
    assert groups == served.sex.value_counts().to_dict()   # every group the challenger served, with its size
    # the guard's value is the objective's own on those rows (the selection-rate gap by sex), whichever way the groups are named
    sel = logged[logged.model_version == '2'].label.to_numpy()
    rates = pd.Series(sel, index=served.sex.to_numpy()).groupby(level=0).mean()
    assert an['fairness'][0]['value'] == pytest.approx(rates.max() - rates.min(), abs=1e-12)
    assert (an['result'] == 'fairness_violated') == (rates.max() - rates.min() > 0.1)


# ---- the circle tests' reading of the evidence against the stage's rule ----------------------------------------------

def _log(n, p_champ, p_chal, seed, x_sex=None):
    rng = np.random.default_rng(seed)
    arm = rng.random(n) < 0.5
    y = (rng.random(n) < 0.3).astype(int)
    right = rng.random(n) < np.where(arm, p_chal, p_champ)
    lab = np.where(right, y, 1 - y)
    score = np.clip(lab * 0.6 + 0.2 + rng.normal(0, 0.15, n), 0.01, 0.99)
    log = pd.DataFrame({'ts': np.arange(n, dtype=float), 'model_version': np.where(arm, '2', '1'), 'probability': score, 'label': lab,
                        'y_true': y.astype(float), 'shadow_version': None, 'shadow_label': None, 'shadow_probability': None})
    return log if x_sex is None else log.assign(x_sex=x_sex(rng, n, lab, arm))


def test_decision_from_evidence_follows_the_stage_and_catches_a_wrong_record():
    """On analyses `analyze_ab` really makes (better, worse, tied, unfair, unfinished), the circle tests' recomputation
    gives the stage's decision; with a recorded number changed it gives another, so a wrong record fails the circle test."""
    from conftest import decision_from_evidence
    from mlcycle.charter import load_charter
    from mlcycle.retrain import ab_design, analyze_ab, decision_for
    c = load_charter()
    d = ab_design(c, 0.8, share=0.5, method='fixed', min_samples=3000)
    unfair = lambda rng, n, lab, arm: np.where(arm & (lab == 1), 'Male', np.where(arm, 'Female', np.where(rng.random(n) < 0.5, 'Male', 'Female')))
    cases = {'better': _log(8000, 0.80, 0.88, 1), 'worse': _log(8000, 0.88, 0.80, 2), 'tied': _log(8000, 0.85, 0.85, 3),
             'unfair': _log(8000, 0.80, 0.88, 4, unfair), 'unfinished': _log(2000, 0.80, 0.88, 5)}
    seen = {}
    for name, log in cases.items():
        an = analyze_ab(log, c, d, '1', '2')
        record = {k: v for k, v in an.items() if k != 'design'}          # what the manifest keeps
        seen[name] = decision_for(an)
        assert decision_from_evidence(record, c.validation.non_inferiority_margin) == seen[name], (name, an.get('reason'))
    assert seen == {'better': 'promote', 'worse': 'keep', 'tied': seen['tied'], 'unfair': 'keep', 'unfinished': 'continue'}, seen
    assert analyze_ab(cases['unfair'], c, d, '1', '2')['result'] == 'fairness_violated'
    better = {k: v for k, v in analyze_ab(cases['better'], c, d, '1', '2').items() if k != 'design'}
    flipped = {**better, 'test': {**better['test'], 'difference': -better['test']['difference'], 'ci_low': -better['test']['ci_high']}}
    assert decision_from_evidence(flipped, c.validation.non_inferiority_margin) == 'keep'
    broken = {**better, 'fairness': [{'passed': False}]}
    assert decision_from_evidence(broken, c.validation.non_inferiority_margin) == 'keep'
