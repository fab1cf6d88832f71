"""Promotion, rollback and packaging against a real MLflow registry (SQLite) in a temp workspace."""
import json, os, subprocess, sys
from pathlib import Path

import pytest
import requests

from mlcycle.core import MlcycleError, read_json
from mlcycle.deploy import (aliases, build_container_context, end_challenger, promote, registry_table, rollback, run_deployment)

pytestmark = pytest.mark.timeout(600)


def _events(ws, prefix='alias'):
    return [e for e in ws.audit.entries() if e['event'].startswith(prefix)]


def test_gate_refuses_unvalidated_unless_forced_with_reason(registry_ws):
    with pytest.raises(MlcycleError, match="validation_status='failed'"): promote(registry_ws, '3')
    with pytest.raises(MlcycleError, match='--reason'): promote(registry_ws, '3', force=True)
    assert aliases(registry_ws) == {} and _events(registry_ws) == []
    r = promote(registry_ws, '3', force=True, reason='hotfix approved by the risk owner')
    assert r['forced'] and aliases(registry_ws) == {'champion': '3'}
    forced = _events(registry_ws, 'promotion_forced')
    assert len(forced) == 1 and forced[0]['details']['reason'] == 'hotfix approved by the risk owner'
    assert forced[0]['details']['validation_status'] == 'failed'
    with pytest.raises(MlcycleError, match='no version 42'): promote(registry_ws, '42')


def test_champion_previous_rollback_and_lifecycle(registry_ws):
    promote(registry_ws, '1')
    promote(registry_ws, '2')
    assert aliases(registry_ws) == {'champion': '2', 'previous': '1'}
    life = registry_table(registry_ws).set_index('version').lifecycle.to_dict()
    assert life == {'1': 'retired', '2': 'champion', '3': 'candidate'}
    r = rollback(registry_ws, reason='conversion dropped')
    assert (r['from_version'], r['to_version']) == ('2', '1')
    assert aliases(registry_ws) == {'champion': '1'}
    assert registry_table(registry_ws).set_index('version').lifecycle.to_dict()['1'] == 'champion'
    with pytest.raises(MlcycleError, match='no @previous'): rollback(registry_ws)
    moves = [(e['event'], e['details']['alias'], e['details'].get('from_version'), e['details'].get('to_version')) for e in _events(registry_ws)]
    assert moves == [('alias_moved', 'champion', None, '1'), ('alias_moved', 'champion', '1', '2'), ('alias_moved', 'previous', None, '1'),
                     ('alias_moved', 'champion', '2', '1'), ('alias_removed', 'previous', '1', None)]
    assert registry_ws.audit.verify().ok
    assert promote(registry_ws, '1').get('unchanged')            # idempotent


def test_challenger_share_shadow_and_promotion(registry_ws):
    with pytest.raises(MlcycleError, match='no @champion'): promote(registry_ws, '2', as_='challenger')
    promote(registry_ws, '1')
    with pytest.raises(MlcycleError, match='between 0 and 1'): promote(registry_ws, '2', as_='challenger', share=1.5)
    promote(registry_ws, '2', as_='challenger', share=0.25, shadow=True)
    t = registry_table(registry_ws).set_index('version')
    assert (t.loc['2', 'lifecycle'], t.loc['2', 'traffic_share'], t.loc['2', 'shadow']) == ('challenger', '0.25', 'true')
    assert aliases(registry_ws) == {'champion': '1', 'challenger': '2'}
    promote(registry_ws, '2')                          # the challenger wins: the test ends
    assert aliases(registry_ws) == {'champion': '2', 'previous': '1'}
    promote(registry_ws, '1', as_='challenger')
    assert end_challenger(registry_ws)['ended'] == '1' and 'challenger' not in aliases(registry_ws)


def test_cli_promote_and_rollback(registry_ws):
    def cli(*args):
        return subprocess.run([sys.executable, '-c', 'from mlcycle.serve import cli_main; cli_main()', *args, '--workspace', str(registry_ws.root)],
                              capture_output=True, text=True, timeout=300, env={**os.environ, 'MLCYCLE_ACTOR': 'tester'})
    r = cli('promote', '3')
    assert r.returncode != 0 and 'validation_status' in r.stderr and 'Traceback' not in r.stderr
    os.environ['MLCYCLE_ACTOR'] = 'tester'
    try: promote(registry_ws, '1')
    finally: del os.environ['MLCYCLE_ACTOR']
    r = cli('promote', '2', '--as', 'challenger', '--share', '0.2')
    assert r.returncode == 0 and json.loads(r.stdout)['share'] == 0.2
    promote(registry_ws, '2')
    r = cli('rollback', '--reason', 'bad release')
    assert r.returncode == 0 and json.loads(r.stdout)['to_version'] == '1'
    assert aliases(registry_ws) == {'champion': '1'}
    assert {e['actor'] for e in _events(registry_ws) if e['details'].get('reason') in ('bad release', 'promote v2 as challenger')} == {'tester'}


def test_run_deployment_picks_latest_passed_and_packages(registry_ws):
    from mlcycle.deploy import require_approval                   # the Adult charter is risk: high: v2 needs an approval (or an audited override)
    require_approval(registry_ws, '2', override='test: stage 05 mechanics, not oversight (tests/test_gates.py covers approvals)')
    res = run_deployment(workspace=registry_ws)
    assert res['version'] == '2'                               # v3 is newer but failed the gate
    m = registry_ws.manifest('05_deployment')
    assert m['outputs']['aliases'] == {'champion': '2'} and m['outputs']['version'] == '2'
    ctx = Path(m['outputs']['container_context'])
    assert ctx == registry_ws.root/'containers'/'adult-income-v2'
    assert [e['event'] for e in registry_ws.audit.entries()][-2:] == ['deployed', 'stage_completed']
    res = run_deployment(workspace=registry_ws, version='1', deploy_as='challenger', share=0.5, package=False)
    assert aliases(registry_ws) == {'champion': '2', 'challenger': '1'}


def test_container_context_and_its_entrypoint(registry_ws, adult_records, tmp_path):
    from conftest import free_port, wait_ready
    promote(registry_ws, '2')
    ctx = build_container_context(registry_ws)
    names = {p.name for p in ctx.iterdir()}
    assert {'Dockerfile', 'requirements.txt', 'model', 'workspace', 'app', 'bin', 'entrypoint.sh', 'context.json', '.dockerignore'} <= names
    reqs = (ctx/'requirements.txt').read_text().split()
    assert all('==' in r for r in reqs) and {r.split('==')[0] for r in reqs} >= {'mlflow', 'scikit-learn', 'pandas', 'skops', 'fastapi', 'uvicorn', 'sqlalchemy'}
    import sklearn
    assert f'scikit-learn=={sklearn.__version__}' in reqs
    df = (ctx/'Dockerfile').read_text()
    assert 'pip install -r requirements.txt' in df and 'ENTRYPOINT ["./entrypoint.sh"]' in df and 'USER mlcycle' in df and 'HEALTHCHECK' in df
    assert (ctx/'model'/'MLmodel').exists() and (ctx/'model'/'model.skops').exists()
    assert read_json(ctx/'context.json')['version'] == '2'
    # run the image's entrypoint here, bound to loopback: it serves the packaged model, not the registry
    port = free_port()
    env = {**os.environ, 'MLCYCLE_HOST': '127.0.0.1', 'PORT': str(port), 'PATH': f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for k in ('MLCYCLE_PREDICTION_LOG_URL', 'MLFLOW_TRACKING_URI', 'MLCYCLE_WORKSPACE'): env.pop(k, None)
    proc = subprocess.Popen(['sh', str(ctx/'entrypoint.sh')], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_ready(f'http://127.0.0.1:{port}', 180, proc)
        assert requests.get(f'http://127.0.0.1:{port}/ready').json()['champion'] == '2'
        r = requests.post(f'http://127.0.0.1:{port}/predict', json=adult_records[:5])
        assert r.status_code == 200 and {p['model_version'] for p in r.json()['predictions']} == {'2'}
    finally:
        proc.terminate(); proc.wait(30)
    assert (ctx/'workspace'/'predictions.db').exists()
