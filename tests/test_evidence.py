"""Decisions on evidence (issue 12, part A): the same traffic reaches the same decisions whatever the order in which its
rows and labels reach the log; the retrain/deploy workflow monitors before it retrains."""
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import ServerProc


def _served_copy(registry_template, dest):
    "A private copy of the registry with v1 as champion, and a real server on it."
    from mlcycle.core import Workspace
    from mlcycle.deploy import promote
    shutil.copytree(registry_template.root, dest, ignore=shutil.ignore_patterns('mlartifacts', 'predictions.db*', 'audit.*', 'containers'))
    ws = Workspace(dest)
    promote(ws, '1', reason='evidence test')
    return ws, ServerProc(ws, env={'MLCYCLE_ADMIN_TOKEN': 'test-admin-token-0123'}).start()


def _decide(ws):
    """The parts of the circle that decide, on the workspace's logged traffic: stage 06's recommendation and retraining alerts,
    stage 07's training and gate parts, the refitted challenger's gate verdict under the evidence design."""
    import mlflow
    from mlcycle.charter import workspace_charter
    from mlcycle.core import fingerprint_df, read_json
    from mlcycle.monitor import RETRAIN_RULES, run_monitoring
    from mlcycle.retrain import challenger_candidates, load_new_data, retraining_parts
    from mlcycle.validate import gate_evidence
    from mlcycle.train import load_model_version, select_model
    from mlcycle.validate import gate_model
    c = workspace_charter(ws)
    contract = read_json(ws.root/'data'/'contract.json')
    mon = run_monitoring(workspace=ws, plots=False)
    alerts = sorted((a['rule'], a['subject'], a['severity']) for a in mon['alerts'] if a['rule'] in RETRAIN_RULES)
    new = load_new_data(ws, c, contract)
    data = retraining_parts(ws, c, contract, new, test_share=0.4)
    champ = load_model_version(ws, c, '1')
    sel = select_model(challenger_candidates(c, contract, data['parts'], champ, 'hist_gradient_boosting', n_jobs=1), c)
    gate = gate_model(sel.chosen.model, c, contract, data['parts']['test'], train_df=data['parts']['train'], validation_df=data['parts']['validation'])
    ev = gate_evidence(c, gate['rules'], gate['rows'])
    mlflow.set_tracking_uri(None)
    return {'recommendation': mon['recommendation']['retrain'], 'alerts': alerts, 'test_source': data['test_source'],
            'parts': {k: fingerprint_df(v) for k, v in data['parts'].items()}, 'selected': sel.chosen.name,
            'gate': ev['status'], 'undecided': ev['undecided'], 'failed': ev['failed_rules'],
            'objectives': [(o['rule'], round(o['value'], 10)) for o in ev['objectives']]}


def test_the_same_traffic_in_another_arrival_order_reaches_the_same_decisions(registry_template, tmp_path):
    """The same 1,500 drifted production rows sent to two servers with different thread timing (one connection, 50 rows per
    request vs eight connections, one row per request): the log holds them in different orders with other request ids and
    times, and every decision that follows is the same: monitoring's recommendation, the new rows held out for the gate and
    the rows trained on, the challenger chosen, and the gate's verdict. (Before, the holdout was a seeded split of the rows
    in arrival order, so it differed.)"""
    from mlcycle.predlog import read_log
    from mlcycle.serve import feedback_token
    from mlcycle.simulate import simulate
    decisions, orders = [], []
    for name, conc, batch in (('a', 1, 50), ('b', 8, 1)):
        ws, server = _served_copy(registry_template, tmp_path/name)
        try:
            r = simulate(server.url, rows=1500, scenario='gig_economy', batch=batch, concurrency=conc, seed=3, workspace=ws,
                         feedback_token=feedback_token(ws))
            assert r['rows_answered'] == 1500 and r['feedback']['accepted'] == 1500, r
        finally: server.stop()
        log = read_log(ws)
        orders.append(log.sort_values('id').x_age.astype(str).str.cat(sep=','))
        decisions.append(_decide(ws))
    assert orders[0] != orders[1]           # the arrival orders did differ
    assert decisions[0] == decisions[1], (decisions[0], decisions[1])
    assert 500 <= int(decisions[0]['test_source'].split()[0]) <= 700, decisions[0]['test_source']   # ~40 % of the 1,500 new rows held out


def test_the_retrain_deploy_template_monitors_first_and_retrains_only_on_its_recommendation():
    "The workflow template runs stage 06 before stage 07, and stage 07 (and what follows it) only on its recommendation or a person's request."
    wf = yaml.safe_load((Path(__file__).parents[1]/'.github'/'workflows'/'retrain-deploy.yml').read_text())
    steps = wf['jobs']['retrain']['steps']
    runs = [str(s.get('run', '')) for s in steps]
    monitor = next(i for i, r in enumerate(runs) if 'mlcycle monitor' in r)
    retrain = next(i for i, r in enumerate(runs) if 'mlcycle retrain' in r and 'phase train' in r)
    assert monitor < retrain
    assert "steps.monitor.outputs.trigger != ''" in steps[retrain]['if']
    assert 'recommendation' in runs[monitor] and 'trigger=drift' in runs[monitor] and 'trigger=manual' in runs[monitor]
    assert steps[retrain]['env']['TRIGGER'] == '${{ steps.monitor.outputs.trigger }}'
    for s in steps[retrain + 1:]:
        if 'mlcycle package' in str(s.get('run', '')) or 'docker build' in str(s.get('run', '')): assert 'steps.version.outputs.version' in s['if']
