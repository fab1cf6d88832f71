"""Stage 09 (retirement) on a real registry, a real prediction log (SQLite, written by the log's own writer), real
MLflow deletion and `mlflow gc`, a real server reloaded over HTTP, and `mlcycle retire` through papermill."""
import hashlib, json, sqlite3, time
from pathlib import Path

import pytest
import requests

from mlcycle.core import MlcycleError

pytestmark = pytest.mark.timeout(1500)
DAY = 86400


def _quiet(*a, **k): pass


def _db(ws):
    return sqlite3.connect(ws.root/'predictions.db')


def _state(ws):
    "Everything a retirement could change: workspace files, the prediction log's content, the registry, the audit log."
    import mlflow
    from mlcycle.core import setup_mlflow
    files = {p.relative_to(ws.root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(ws.root.rglob('*'))
             if p.is_file() and not p.name.startswith('predictions.db')}
    db = _db(ws)
    dump = hashlib.sha256('\n'.join(db.iterdump()).encode()).hexdigest()
    counts = dict(db.execute('SELECT model_version, count(*) FROM predictions GROUP BY 1').fetchall())
    counts['feedback'] = db.execute('SELECT count(*) FROM feedback').fetchone()[0]
    db.close()
    setup_mlflow(ws, 'adult-income')
    reg = sorted((v.version, sorted(v.aliases), sorted(v.tags.items())) for v in mlflow.MlflowClient().search_model_versions("name='adult-income'"))
    return files, dump, counts, reg


def test_dry_run_lists_exact_counts_and_changes_nothing(history_ws):
    from mlcycle.retire import plan_table, retire_version
    cutoff = time.time() - 30 * DAY
    db = _db(history_ws)
    q = lambda sql: db.execute(sql, (cutoff,)).fetchone()[0]
    expect = {'predictions': q("SELECT count(*) FROM predictions WHERE model_version = '1' AND ts < ?"),
              'feedback': q("SELECT count(*) FROM feedback f JOIN predictions p USING (request_id) WHERE p.model_version = '1' AND p.ts < ?"),
              'shadow_scores_cleared': q("SELECT count(*) FROM predictions WHERE shadow_version = '1' AND model_version <> '1' AND ts < ?")}
    db.close()
    assert (expect['predictions'], expect['shadow_scores_cleared']) == (1500, 200) and 1000 < expect['feedback'] < 1500
    before = _state(history_ws)
    res = retire_version(history_ws, '1', reason='superseded', replacement='2', retention_days=30, dry_run=True, log=_quiet)
    assert res['dry_run'] and not res['done']
    assert {k: res['plan']['deletes'][k] for k in expect} == expect
    assert res['plan']['log']['kept_newer'] == 600 and res['plan']['promote_replacement']
    assert res['plan']['mlflow']['soft_delete'] == {'run': True, 'logged_model': True}
    t = plan_table(res['plan'])
    assert 1500 in t.amount.tolist() and any('promote v2 to @champion' in w for w in t.what)
    assert _state(history_ws) == before                                           # nothing changed, not even the audit log


def test_retiring_the_serving_champion_without_replacement_is_refused(history_ws):
    import mlflow
    from mlcycle.retire import retire_version
    before = _state(history_ws)
    for dry in (False, True):
        with pytest.raises(MlcycleError, match=r'v1 is the serving @champion of adult-income: retiring it would leave nothing to serve'):
            retire_version(history_ws, '1', dry_run=dry, log=_quiet)
    with pytest.raises(MlcycleError, match='no version 7'): retire_version(history_ws, '7', log=_quiet)
    assert _state(history_ws) == before
    from mlcycle.core import setup_mlflow
    setup_mlflow(history_ws, 'adult-income')
    mlflow.MlflowClient().set_model_version_tag('adult-income', '2', 'validation_status', 'failed')   # as a failed stage-04 gate leaves it
    with pytest.raises(MlcycleError, match="replacement v2 has validation_status='failed'"):
        retire_version(history_ws, '1', replacement='2', log=_quiet)


def test_real_run_purges_exactly_the_retired_versions_old_rows(history_ws, mlcycle):
    import mlflow
    from mlcycle.deploy import aliases
    from mlcycle.retire import retire_version
    cutoff = time.time() - 30 * DAY
    db = _db(history_ws)
    rows = lambda sql, *p: set(db.execute(sql, p).fetchall())
    v1_new = rows("SELECT * FROM predictions WHERE model_version = '1' AND ts >= ?", cutoff)
    v2_all = rows("SELECT id, request_id, ts, model_version, arm, probability, label, shadow_version FROM predictions WHERE model_version = '2'")
    fb_kept = rows("SELECT f.* FROM feedback f JOIN predictions p USING (request_id) WHERE NOT (p.model_version = '1' AND p.ts < ?)", cutoff)
    shadowed = rows("SELECT id FROM predictions WHERE shadow_version = '1' AND ts < ?", cutoff)
    db.close()
    assert len(v1_new) == 600 and len(v2_all) == 500 and len(shadowed) == 200

    from mlcycle.deploy import require_approval                   # the Adult charter is risk: high: v2 needs an approval (or an audited override)
    require_approval(history_ws, '2', override='test: retirement mechanics, not oversight (tests/test_gates.py covers approvals)')
    res = retire_version(history_ws, '1', reason='superseded by v2 after the A/B test', replacement='2', retention_days=30,
                         delete_artifacts=False, log=_quiet)
    assert not res['noop'] and res['purged']['predictions'] == 1500 and res['purged']['shadow_scores_cleared'] == 200

    db = _db(history_ws)
    assert rows("SELECT * FROM predictions WHERE model_version = '1'") == v1_new          # exactly the old rows went
    assert rows("SELECT id, request_id, ts, model_version, arm, probability, label, "
                "CASE WHEN id IN (%s) THEN '1' ELSE shadow_version END FROM predictions WHERE model_version = '2'"
                % ','.join(str(i) for (i,) in shadowed)) == v2_all                       # v2's rows intact (but for v1's shadow scores)
    assert db.execute("SELECT count(*) FROM predictions WHERE shadow_version = '1'").fetchone()[0] == 0
    assert rows('SELECT * FROM feedback') == fb_kept                                       # only the purged rows' feedback went
    db.close()

    import mlflow
    mv = mlflow.MlflowClient().get_model_version('adult-income', '1')
    assert aliases(history_ws) == {'champion': '2'} and mv.aliases == []
    assert (mv.tags['lifecycle'], mv.tags['replaced_by'], mv.tags['retired_reason']) == ('retired', '2', 'superseded by v2 after the A/B test')
    assert 'decommissioned_at' in mv.tags and mlflow.MlflowClient().get_run(mv.run_id).info.lifecycle_stage == 'active'   # artifacts kept, as asked
    ev = [e['event'] for e in history_ws.audit.entries()]
    i0 = ev.index('retirement_started')
    assert ev[i0:] == ['retirement_started', 'governance_report', 'alias_moved', 'alias_moved', 'alias_removed', 'alias_removed',
                       'server_reload_skipped', 'lineage_archived', 'version_retired', 'prediction_log_purged', 'retirement_completed', 'stage_completed']
    kt = json.loads((res['output_dir']/'knowledge_transfer.json').read_text())
    assert (kt['lifetime']['predictions_logged'], kt['lifetime']['shadow_scores_logged']) == (2100, 200)
    assert kt['retirement']['replacement']['version'] == '2' and kt['retirement']['purged']['predictions'] == 1500
    assert sum(r['rows'] for r in kt['performance']['realized']) == 2300                  # served + shadow rows, per period
    lineage = json.loads((history_ws.root/'archive'/'adult-income'/'v1'/'lineage.json').read_text())
    assert lineage['registry']['run_id'] == mv.run_id and lineage['fingerprints']['train'] == mv.tags['train_fingerprint']
    assert (history_ws.root/'archive'/'adult-income'/'v1'/'governance_model_card.json').exists()
    assert history_ws.manifest('09_retirement')['outputs']['model_version'] == '1'
    assert mlcycle('audit', 'verify', '--workspace', history_ws.root).returncode == 0

    before = _state(history_ws)                                                           # a second run: nothing to do
    again = retire_version(history_ws, '1', reason='again', retention_days=30, delete_artifacts=False, log=_quiet)
    assert again['noop'] and _state(history_ws) == before

    log = history_ws.root/'audit.jsonl'                                                   # tampering is detected
    lines = log.read_text().splitlines()
    k = next(i for i, l in enumerate(lines) if '"event":"prediction_log_purged"' in l)
    log.write_text('\n'.join(lines[:k] + lines[k + 1:]) + '\n')
    r = mlcycle('audit', 'verify', '--workspace', history_ws.root)
    assert r.returncode == 1 and f'BROKEN at entry {k + 1}' in r.stdout


def test_retiring_the_challenger_drains_a_running_server(history_ws, start_server, adult_records, monkeypatch):
    from mlcycle.retire import retire_version
    s = start_server(history_ws, env={'MLCYCLE_ADMIN_TOKEN': 'drain-token-0123456789'})
    assert requests.get(s.url + '/ready', timeout=10).json()['challenger'] == '2'
    monkeypatch.setenv('MLCYCLE_ADMIN_TOKEN', 'drain-token-0123456789')
    res = retire_version(history_ws, '2', reason='lost the A/B test', retention_days=0, server_url=s.url, delete_artifacts=False, log=_quiet)
    ready = requests.get(s.url + '/ready', timeout=10).json()
    assert ready['champion'] == '1' and 'challenger' not in ready
    answers = requests.post(s.url + '/predict', json=adult_records[:40], timeout=30).json()['predictions']
    assert {a['model_version'] for a in answers} == {'1'}                                # no request reaches v2 any more
    db = _db(history_ws)
    assert db.execute("SELECT count(*) FROM predictions WHERE model_version = '2'").fetchone()[0] == 0   # retention 0: every row
    db.close()
    reload = next(e for e in history_ws.audit.entries() if e['event'] == 'server_reloaded')
    assert reload['details']['before']['challenger'] == '2' and 'challenger' not in reload['details']['after']
    assert res['purged']['predictions'] == 500 and history_ws.audit.verify().ok


def test_snapshots_and_artifacts_deleted_through_mlflow_and_gc(adult_workspace_0102, tmp_path):
    import mlflow
    from mlcycle.core import Workspace
    from mlcycle.data import run_data_stage
    from mlcycle.deploy import demo_model_version, promote, scratch_workspace
    from mlcycle.governance import version_record
    from mlcycle.retire import retire_version
    ws = scratch_workspace(Workspace(adult_workspace_0102/'ws'), tmp_path/'ws')           # its own artifacts
    v1 = demo_model_version(ws, max_iter=30)
    old_train = ws.manifest('02_data')['outputs']['splits']['train']['fingerprint']
    run_data_stage(workspace=ws, test_size=0.25)                                         # a data refresh: new splits
    new_train = ws.manifest('02_data')['outputs']['splits']['train']['fingerprint']
    assert new_train != old_train
    v2 = demo_model_version(ws, max_iter=30, seed=1)
    promote(ws, v2)
    rec = version_record(ws, v1)
    model_dir = Path(mlflow.MlflowClient().get_logged_model(rec['model_id']).artifact_location.removeprefix('file://'))
    assert (model_dir/'MLmodel').exists()
    res = retire_version(ws, v1, reason='trained on the old data', gc=True, log=_quiet)
    assert res['snapshots_deleted'] == [old_train] and not ws.snapshot_path(old_train).exists() and ws.snapshot_path(new_train).exists()
    assert not any(model_dir.rglob('*')) if model_dir.exists() else True                 # mlflow gc removed the model's files
    cl = mlflow.MlflowClient()
    with pytest.raises(Exception): cl.get_run(rec['run_id'])                              # purged for good
    mv = cl.get_model_version('adult-income', v1)                                         # the registry entry stays, explained
    assert mv.tags['lifecycle'] == 'retired' and mv.tags['retired_reason'] == 'trained on the old data'
    assert cl.get_run(mv.tags['governance_run_id']).info.lifecycle_stage == 'active'     # the model card outlives the model
    lineage = json.loads((ws.root/'archive'/'adult-income'/f'v{v1}'/'lineage.json').read_text())
    assert lineage['fingerprints']['train'] == old_train and lineage['registry']['run_id'] == rec['run_id']
    assert mlflow.sklearn.load_model(f'models:/adult-income/{v2}') is not None             # the other version still loads
    ev = [e['event'] for e in ws.audit.entries()]
    assert {'snapshots_deleted', 'mlflow_deleted', 'mlflow_gc'} <= set(ev) and ws.audit.verify().ok


def test_retire_command_dry_run_executes_the_notebook(history_ws, tmp_path, mlcycle):
    before = _state(history_ws)
    r = mlcycle('retire', '1', '--dry-run', '--replacement', '2', '--retention-days', '30', '--workspace', history_ws.root,
                '--reports', tmp_path/'reports', cwd=tmp_path, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'dry run: nothing changed' in r.stdout and "predictions rows of v1" in r.stdout and ': 1500' in r.stdout
    out = tmp_path/'reports'/'adult-income'/'1'
    assert (out/'09_retirement.ipynb').exists() and (out/'09_retirement.html').exists()
    assert json.loads((out/'retirement.json').read_text())['dry_run'] is True
    assert _state(history_ws) == before
