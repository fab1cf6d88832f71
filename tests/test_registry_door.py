"""The registry is a door (issue 32, items 1-3): what reaches the server, the audit log and the disk is what the
lifecycle decided. A pickled model set as champion with plain MLflow never runs; an alias moved outside mlcycle is
refused, reported and shown by `mlcycle audit verify`; a keyed audit log cannot lose its tail. Real server, real
MLflow on SQLite, real `mlcycle` command; every wait is bounded."""
import json, os, time
from pathlib import Path

import mlflow
import pytest
import requests

from conftest import poll

from mlcycle.core import MlcycleError, atomic_write_json, setup_mlflow
from mlcycle.deploy import promote, rollback

pytestmark = pytest.mark.timeout(600)


class Payload:
    "What the probe planted: an object whose unpickling runs a shell command (here: creating a marker file)."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (os.system, (f'touch {self.marker}',))


def _plant_pickled_version(ws, marker) -> str:
    """Register v1's model with the payload attached, serialized with cloudpickle, tagged as passed, the way someone who
    can write the registry would: plain MLflow, no mlcycle. Returns the new version."""
    from mlcycle.charter import workspace_charter
    from mlcycle.registry import fetch_model
    name = workspace_charter(ws).name
    setup_mlflow(ws, name)
    model = fetch_model(f'models:/{name}/1').model
    model.payload = Payload(marker)
    with mlflow.start_run(run_name='not mlcycle'):
        info = mlflow.sklearn.log_model(model, name='model', serialization_format='cloudpickle', registered_model_name=name,
                                        pip_requirements=['scikit-learn'])
    v = str(info.registered_model_version)
    cl = mlflow.MlflowClient()
    cl.set_model_version_tag(name, v, 'validation_status', 'passed')
    assert not Path(marker).exists()              # registering it ran nothing
    return v


def _log_stage_records(ws):
    "The copy's stage records, entered in its own (fresh) audit log, so that `mlcycle audit verify` can pass on it."
    for st in ('01_problem_definition', '02_data'):
        ws.audit.append('stage_record_copied', stage=st, stage_run=json.loads(ws.manifest_path(st).read_text())['run_id'])



def test_a_pickled_champion_set_with_plain_mlflow_never_runs(registry_ws, start_server, mlcycle, tmp_path, adult_records):
    ws, marker = registry_ws, tmp_path/'the-payload-ran'
    _log_stage_records(ws)
    assert mlcycle('audit', 'verify', '--workspace', ws.root, timeout=300).returncode == 0
    promote(ws, '1', reason='test: the decided champion')
    s = start_server(ws, args=['--alias-poll-seconds', '0.5'])
    evil = _plant_pickled_version(ws, marker)
    mlflow.MlflowClient().set_registered_model_alias('adult-income', 'champion', evil)     # plain MLflow: no decision recorded
    assert poll(lambda: 'refused' in requests.get(s.url + '/ready', timeout=10).json())
    ready = requests.get(s.url + '/ready', timeout=10).json()
    assert ready['champion'] == '1' and ready['refused']['champion']['registry_version'] == evil, ready
    assert 'moved outside mlcycle' in ready['refused']['champion']['reason']
    r = requests.post(s.url + '/predict', json=adult_records[:3], timeout=30)
    assert r.status_code == 200 and {p['model_version'] for p in r.json()['predictions']} == {'1'}, r.text[:300]   # the decided v1 answers
    refusals = [e['details'] for e in ws.audit.entries() if e['event'] == 'alias_refused']
    assert [(r['alias'], r['registry_version'], r['served_version']) for r in refusals] == [('champion', evil, '1')]
    # `mlcycle audit verify` names the difference and fails
    r = mlcycle('audit', 'verify', '--workspace', ws.root, timeout=300)
    assert r.returncode == 1 and f"@champion of 'adult-income': the registry says v{evil}, audit #" in r.stdout, r.stdout + r.stderr
    # every loader refuses the pickle itself, whatever the record says: stage 03's, governance's, monitoring's, batch scoring's
    from mlcycle.charter import workspace_charter
    from mlcycle.governance import evaluation_split, score_version
    from mlcycle.model_checks import load_version
    from mlcycle.registry import fetch_model
    from mlcycle.train import load_model_version
    c = workspace_charter(ws)
    for load in (lambda: fetch_model(f'models:/adult-income/{evil}'), lambda: load_model_version(ws, c, evil),
                 lambda: load_version(ws, c, evil), lambda: score_version(ws, evil, evaluation_split(ws)[0].head(5))):
        with pytest.raises(MlcycleError, match="serialized as 'cloudpickle', not skops"): load()
    rows = tmp_path/'rows.csv'; evaluation_split(ws)[0].head(20).to_csv(rows, index=False)
    r = mlcycle('predict', '--workspace', ws.root, '--version', evil, '--input', rows, '--output', tmp_path/'out.csv', timeout=300)
    assert r.returncode == 1 and 'not skops' in r.stderr, r.stderr
    # even a decision recorded through mlcycle (someone who can run it, forcing the gate) does not make the pickle load
    promote(ws, evil, force=True, reason='test: a forced promotion of the planted version')
    time.sleep(3)                                  # several polls: the server tries, refuses to load, keeps serving v1
    assert requests.get(s.url + '/ready', timeout=10).json()['champion'] == '1'
    assert not marker.exists(), 'the pickled payload ran'
    assert 'not skops' in (ws.root/f'server-{s.port}.log').read_text()


def test_an_alias_moved_outside_mlcycle_is_refused_at_start(registry_ws, start_server):
    "A server that starts after the move serves the version the record vouches for, and says why."
    ws = registry_ws
    promote(ws, '1', reason='test: decided')
    setup_mlflow(ws, 'adult-income')
    mlflow.MlflowClient().set_registered_model_alias('adult-income', 'champion', '2')    # v2 passed validation, but nobody decided
    s = start_server(ws, args=['--alias-poll-seconds', '0'])
    ready = requests.get(s.url + '/ready', timeout=10).json()
    assert ready['champion'] == '1' and ready['refused']['champion']['registry_version'] == '2', ready
    # deciding it through mlcycle is what moves the server
    promote(ws, '2', reason='test: now decided')
    s2 = start_server(ws, args=['--alias-poll-seconds', '0'])
    ready = requests.get(s2.url + '/ready', timeout=10).json()
    assert ready['champion'] == '2' and 'refused' not in ready, ready


def test_a_keyed_audit_log_cannot_lose_its_tail(registry_ws, mlcycle):
    "The probe: with the key set, delete the last entry (a rollback) and rewrite audit.head. Verify with the key must fail."
    ws, key = registry_ws, {'MLCYCLE_AUDIT_KEY': 'a-key-kept-elsewhere-0123456789'}
    os.environ.update(key)
    try:
        ws.audit.path.unlink(missing_ok=True); ws.audit.head_path.unlink(missing_ok=True)
        _log_stage_records(ws)                                # under the key
        promote(ws, '1', reason='test'); promote(ws, '2', reason='test'); rollback(ws, reason='test: the entry to hide')
    finally:
        os.environ.pop('MLCYCLE_AUDIT_KEY')
    assert mlcycle('audit', 'verify', '--workspace', ws.root, env=key, timeout=300).returncode == 0
    lines = ws.audit.path.read_text().splitlines(keepends=True)
    while json.loads(lines[-1])['event'] != 'alias_moved': lines.pop()        # cut back to before the rollback
    lines.pop()
    last = json.loads(lines[-1])
    ws.audit.path.write_text(''.join(lines))
    atomic_write_json(ws.audit.head_path, {'seq': last['seq'], 'hash': last['hash']})
    r = mlcycle('audit', 'verify', '--workspace', ws.root, env=key, timeout=300)
    assert r.returncode == 1 and 'audit.head has no valid MAC' in r.stdout, r.stdout + r.stderr
