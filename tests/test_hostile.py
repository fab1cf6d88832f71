"""Hostile input (issue 13), against the real `mlcycle serve` and the real `mlcycle` command on 127.0.0.1: one client
cannot break another's requests, plant or flip labels, pass off a wiped audit log, exhaust memory with a charter, or
change a data source. Every loop and server is bounded in time."""
import json, os, socket, stat, sqlite3, subprocess, sys, threading, time
from pathlib import Path

import pandas as pd
import pytest
import requests

from mlcycle.core import Workspace
from mlcycle.deploy import promote
from mlcycle.predlog import read_log
from mlcycle.serve import feedback_token

pytestmark = pytest.mark.timeout(600)


def _surrogate_body(record, column='workclass') -> bytes:
    "A JSON body whose `column` holds a lone UTF-16 surrogate: valid JSON, not encodable text."
    return json.dumps([{**record, column: '\ud800'}]).encode()      # json.dumps writes it as the escape \ud800


def _bearer(tok): return {'Authorization': f'Bearer {tok}'}


# ---- 1. one bad request stays with its request ----------------------------------------------------------------

def test_a_bad_row_fails_only_its_own_request(champion_server, adult_records):
    "8 clients with good rows and 2 sending lone surrogates, for 8 s: every good request 200, every bad one 422 naming the column."
    s = champion_server
    good, bad, stop = {}, {}, time.monotonic() + 8
    def client(k, hostile):
        sess, out = requests.Session(), (bad if hostile else good)
        while time.monotonic() < stop:
            rec = adult_records[k % 500]
            if hostile: r = sess.post(s.url + '/predict', data=_surrogate_body(rec), headers={'Content-Type': 'application/json'}, timeout=30)
            else: r = sess.post(s.url + '/predict', json=[rec, adult_records[(k + 1) % 500]], timeout=30)
            out[r.status_code] = out.get(r.status_code, 0) + 1
            if hostile and r.status_code == 422: assert r.json()['detail']['column'] == 'workclass'
    threads = [threading.Thread(target=client, args=(k, k >= 8)) for k in range(10)]
    for t in threads: t.start()
    for t in threads: t.join(60)
    assert set(good) == {200} and good[200] > 50, good
    assert set(bad) == {422}, bad
    # the same for an id column value and for /feedback's request ids and labels
    r = requests.post(s.url + '/feedback', data=json.dumps({'feedback': [{'request_id': '\ud800', 'label': '>50K'}]}),
                      headers={'Content-Type': 'application/json', **_bearer(feedback_token(s.ws))}, timeout=30)
    assert r.status_code == 422 and r.json()['detail']['column'] == 'request_id'


# ---- 2. labels need a credential; ids cannot be guessed; JSON only; no silent first-writer-wins --------------------

def test_feedback_needs_its_token_and_json(champion_server, adult_records):
    s = champion_server
    tok = feedback_token(s.ws)
    preds = requests.post(s.url + '/predict', json=adult_records[:4], timeout=30).json()['predictions']
    body = {'feedback': [{'request_id': preds[0]['request_id'], 'label': '>50K'}]}
    assert requests.post(s.url + '/feedback', json=body, timeout=30).status_code == 401
    assert requests.post(s.url + '/feedback', json=body, headers=_bearer('guess'), timeout=30).status_code == 403
    assert requests.post(s.url + '/feedback', json=body, headers=_bearer('test-token-0123456789'), timeout=30).status_code == 403   # the admin token is not a labeller's
    # what a web page can send without a CORS preflight: text/plain, a form
    for ctype in ('text/plain', 'application/x-www-form-urlencoded'):
        r = requests.post(s.url + '/feedback', data=json.dumps(body), headers={'Content-Type': ctype, **_bearer(tok)}, timeout=30)
        assert r.status_code == 415, (ctype, r.text)
    assert pd.isna(read_log(s.ws, features=False).set_index('request_id').loc[preds[0]['request_id']].y_true)   # nothing got in
    r = requests.post(s.url + '/feedback', json=body, headers=_bearer(tok), timeout=30)
    assert r.status_code == 200 and r.json()['accepted'] == 1


def test_request_ids_cannot_be_guessed(champion_server, adult_records):
    "Ids share only the process's 40-bit prefix (replicas never collide); the 88 bits after it are random, not a counter."
    s = champion_server
    ids = [requests.post(s.url + '/predict', json=adult_records[k], timeout=30).json()['predictions'][0]['request_id'] for k in range(40)]
    heads = [i.rsplit('-', 1)[0] for i in ids]
    assert {len(h) for h in heads} == {32} and len({h[:10] for h in heads}) == 1
    tails = [int(h[10:], 16) for h in heads]
    assert len({t >> 56 for t in tails}) >= 35                  # the top bits differ: consecutive ids are not neighbours
    assert max(abs(b - a) for a, b in zip(tails, tails[1:])) > 2 ** 64


def test_conflicting_labels_dispute_the_row_instead_of_first_writer_wins(champion_server, adult_records):
    s = champion_server
    tok = feedback_token(s.ws)
    preds = requests.post(s.url + '/predict', json=adult_records[:3], timeout=30).json()['predictions']
    rid = preds[0]['request_id']
    first = requests.post(s.url + '/feedback', json={'feedback': [{'request_id': rid, 'label': '>50K'}]}, headers=_bearer(tok), timeout=30).json()
    later = requests.post(s.url + '/feedback', json={'feedback': [{'request_id': rid, 'label': '<=50K'}]}, headers=_bearer(tok), timeout=30).json()
    assert first['accepted'] == 1 and later['conflicts'] == [rid]
    row = read_log(s.ws, features=False).set_index('request_id').loc[rid]
    assert bool(row.disputed) and row.y_true != row.y_true          # NaN: neither label counts for training or monitoring
    assert 'mlcycle_feedback_total{outcome="conflict"}' in requests.get(s.url + '/metrics', timeout=30).text
    # a labeller cannot settle it; the operator can, with the admin token
    r = requests.post(s.url + '/feedback', json={'feedback': [{'request_id': rid, 'label': '<=50K'}], 'replace': True}, headers=_bearer(tok), timeout=30)
    assert r.status_code == 403
    r = requests.post(s.url + '/admin/feedback', json={'feedback': [{'request_id': rid, 'label': '<=50K'}]}, headers=_bearer('test-token-0123456789'), timeout=30)
    assert r.status_code == 200 and r.json()['replaced'] == 1
    row = read_log(s.ws, features=False).set_index('request_id').loc[rid]
    assert not bool(row.disputed) and row.y_true == 0 and row.label_true == '<=50K'


# ---- 3. labels outside the target's classes are refused --------------------------------------------------------

def test_unknown_labels_are_refused(champion_server, adult_records):
    s = champion_server
    tok = feedback_token(s.ws)
    preds = requests.post(s.url + '/predict', json=adult_records[:3], timeout=30).json()['predictions']
    for label in ('banana', 1, True, '>50k'):
        r = requests.post(s.url + '/feedback', json={'feedback': [{'request_id': preds[0]['request_id'], 'label': label}]}, headers=_bearer(tok), timeout=30)
        assert r.status_code == 422 and r.json()['detail']['column'] == 'label', (label, r.text)
        assert '>50K' in r.json()['detail']['expected'] and '<=50K' in r.json()['detail']['expected']
    assert preds[0]['request_id'] not in set(read_log(s.ws, features=False).dropna(subset=['label_true']).request_id)


# ---- 4. a wiped or mistyped audit log does not verify ------------------------------------------------------------

def test_audit_verify_refuses_missing_workspace_and_wiped_log(registry_ws, mlcycle, tmp_path):
    typo = tmp_path/'typo_ws'
    r = mlcycle('audit', 'verify', '--workspace', typo, timeout=120)
    assert r.returncode != 0 and 'does not exist' in r.stderr and not typo.exists()
    assert list((registry_ws.root/'stages').glob('*.json'))          # stage records, and no audit log (the copy left it out)
    r = mlcycle('audit', 'verify', '--workspace', registry_ws.root, timeout=120)
    assert r.returncode == 1 and 'empty or missing' in r.stdout, r.stdout + r.stderr
    (registry_ws.root/'audit.jsonl').write_text('')
    assert mlcycle('audit', 'verify', '--workspace', registry_ws.root, timeout=120).returncode == 1


def test_audit_key_detects_a_full_rewrite(tmp_path, mlcycle):
    from mlcycle.core import AuditLog, GENESIS, _entry_hash, atomic_write_json, to_json
    os.environ['MLCYCLE_AUDIT_KEY'] = 'kept-elsewhere'
    try:
        ws = Workspace(tmp_path/'ws')
        for k in range(3): ws.audit.append('alias_moved', k=k)
    finally: del os.environ['MLCYCLE_AUDIT_KEY']
    forged, prev = [], GENESIS
    for e in ws.audit.entries():
        e = {k: v for k, v in e.items() if k not in ('hash', 'mac')}; e['details'] = {'k': 7}; e['prev'] = prev
        e['hash'] = prev = _entry_hash(e); forged.append(e)
    ws.audit.path.write_text(''.join(to_json(e) + '\n' for e in forged))
    atomic_write_json(ws.audit.head_path, {'seq': len(forged), 'hash': prev})
    assert mlcycle('audit', 'verify', '--workspace', ws.root, timeout=120).returncode == 0       # unkeyed, a rewrite verifies
    r = mlcycle('audit', 'verify', '--workspace', ws.root, env={'MLCYCLE_AUDIT_KEY': 'kept-elsewhere'}, timeout=120)
    assert r.returncode == 1 and 'MAC' in r.stdout


# ---- 5. a YAML bomb of a charter is refused at once -------------------------------------------------------------

def test_billion_laughs_charter_refused_fast(tmp_path, mlcycle):
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'] + [
        f'{chr(98 + i)}: &{chr(98 + i)} [' + ','.join([f'*{chr(97 + i)}'] * 9) + ']' for i in range(8)]
    bomb = tmp_path/'bomb.yaml'; bomb.write_text('\n'.join(levels) + '\nname: *i\n')
    assert bomb.stat().st_size < 2048
    t = time.monotonic()
    r = mlcycle('stage', '01', '--charter', bomb, '--workspace', tmp_path/'ws', '--reports', tmp_path/'reports', timeout=120)
    assert r.returncode != 0 and 'billion laughs' in r.stderr, r.stderr[-2000:]
    assert time.monotonic() - t < 60          # process start included; the check itself is timed below
    from mlcycle.charter import load_charter
    from mlcycle.core import MlcycleError
    t = time.perf_counter()
    with pytest.raises(MlcycleError, match='aliases'): load_charter(bomb)
    assert time.perf_counter() - t < 1
    big = tmp_path/'big.yaml'; big.write_text('name: x\nnote: ' + 'x' * (2 << 20) + '\n')
    with pytest.raises(MlcycleError, match='over'): load_charter(big)


# ---- 6. SQL sources are read-only ---------------------------------------------------------------------------------

def _people_db(path):
    con = sqlite3.connect(path); con.execute('CREATE TABLE people (age INTEGER, job TEXT)')
    con.executemany('INSERT INTO people VALUES (?, ?)', [(30, 'a'), (40, 'b')]); con.commit(); con.close()


def test_sql_sources_cannot_change_the_database(tmp_path):
    from mlcycle.charter import Source
    from mlcycle.core import MlcycleError
    from mlcycle.data import load_source
    db = tmp_path/'people.db'; _people_db(db)
    src = lambda q: Source(kind='sql', url=f'sqlite:///{db}', query=q)
    for q in ('DROP TABLE people', 'DELETE FROM people', f"VACUUM INTO '{tmp_path}/copy.db'", f"ATTACH '{tmp_path}/new.db' AS x",
              'SELECT * FROM people; DROP TABLE people'):
        with pytest.raises(MlcycleError, match='one SELECT'): load_source(src(q))
    assert len(load_source(src('people'))) == 2 and len(load_source(src('WITH p AS (SELECT * FROM people) SELECT * FROM p'))) == 2
    assert not (tmp_path/'copy.db').exists() and not (tmp_path/'new.db').exists()
    with pytest.raises(MlcycleError, match='cannot read'): load_source(Source(kind='sql', url=f'sqlite:///{tmp_path}/none.db', query='people'))
    assert not (tmp_path/'none.db').exists()                  # opened read-only: nothing created


def test_postgresql_source_runs_read_only(postgres_url):
    import sqlalchemy as sa
    from mlcycle.charter import Source
    from mlcycle.core import MlcycleError
    from mlcycle.data import load_source
    eng = sa.create_engine(postgres_url)
    with eng.begin() as c:
        c.exec_driver_sql('CREATE TABLE people (age integer, job text)'); c.exec_driver_sql("INSERT INTO people VALUES (30, 'a'), (40, 'b')")
    q = 'WITH gone AS (DELETE FROM people RETURNING *) SELECT * FROM gone'           # a SELECT that writes
    with pytest.raises(MlcycleError, match='read-only transaction'): load_source(Source(kind='sql', url=postgres_url, query=q))
    with eng.connect() as c: assert c.exec_driver_sql('SELECT count(*) FROM people').scalar_one() == 2
    eng.dispose()


def test_predict_sql_input_cannot_change_the_database(registry_ws, adult_records, mlcycle, tmp_path):
    "`mlcycle predict --input` with a SQL query that writes (issue 32): refused or failed read-only, the rows all still there."
    db = tmp_path/'score.db'
    con = sqlite3.connect(db); pd.DataFrame(adult_records[:5]).to_sql('t', con, index=False); con.close()
    for q in ('WITH x AS (SELECT 1) DELETE FROM t', 'SELECT 1; DELETE FROM t', "WITH x AS (SELECT 1) INSERT INTO t (age) SELECT 1"):
        r = mlcycle('predict', '--workspace', registry_ws.root, '--input', q, '--db', f'sqlite:///{db}', '--output', tmp_path/'out.csv',
                    '--version', '1', '--no-progress', timeout=300)
        assert r.returncode != 0 and ('readonly' in r.stderr or 'one SELECT' in r.stderr), (q, r.stderr[-2000:])
        assert sqlite3.connect(db).execute('SELECT count(*) FROM t').fetchone()[0] == 5, q
        assert not (tmp_path/'out.csv').exists()
    r = mlcycle('predict', '--workspace', registry_ws.root, '--input', 'SELECT * FROM t', '--db', f'sqlite:///{db}',
                '--output', tmp_path/'out.csv', '--version', '1', '--no-progress', timeout=300)
    assert r.returncode == 0 and len(pd.read_csv(tmp_path/'out.csv')) == 5, r.stderr[-2000:]


def test_predict_sql_input_on_postgresql_runs_read_only(postgres_url):
    "The batch reader takes the sources' read-only path: on PostgreSQL a SELECT that writes fails in a read-only transaction."
    import sqlalchemy as sa
    from mlcycle.batch import iter_chunks
    from mlcycle.core import MlcycleError
    eng = sa.create_engine(postgres_url)
    with eng.begin() as c:
        c.exec_driver_sql('CREATE TABLE to_score (age integer)'); c.exec_driver_sql('INSERT INTO to_score VALUES (30), (40), (50)')
        c.exec_driver_sql('CREATE SEQUENCE to_score_seq')
    with pytest.raises(MlcycleError, match='read-only transaction'):      # a SELECT that writes: it advances a sequence
        list(iter_chunks("SELECT nextval('to_score_seq') AS age FROM to_score", 2, postgres_url))
    with pytest.raises(MlcycleError, match='data-modifying|read-only'):
        list(iter_chunks('WITH gone AS (DELETE FROM to_score RETURNING *) SELECT * FROM gone', 2, postgres_url))
    with eng.connect() as c:
        assert c.exec_driver_sql('SELECT count(*) FROM to_score').scalar_one() == 3
        assert c.exec_driver_sql('SELECT is_called FROM to_score_seq').scalar_one() is False     # nextval never ran
    test = [len(x) for x in iter_chunks('SELECT * FROM to_score', 2, postgres_url)]
    assert test == [2, 1]
    eng.dispose()


def test_database_url_secrets_stay_out_of_messages():
    "A password given as a URL query parameter (libpq takes ?password=) is masked too, as the URL's own password is."
    from mlcycle.batch import iter_chunks
    from mlcycle.core import MlcycleError
    with pytest.raises(MlcycleError, match='cannot connect') as e:
        list(iter_chunks('SELECT 1', 10, 'postgresql+psycopg://bob:pw1secret@127.0.0.1:1/db?password=s3cret&sslpassword=k3y&connect_timeout=2'))
    assert 'bob' in str(e.value) and not any(s in str(e.value) for s in ('pw1secret', 's3cret', 'k3y')), str(e.value)


# ---- 8. a custom transformer is trusted before it is imported --------------------------------------------------------

def _custom_charter(tmp_path, trusted) -> Path:
    import yaml
    from conftest import relaxed_charter
    p = relaxed_charter(tmp_path)
    d = yaml.safe_load(p.read_text())
    d['features'] = [{'name': 'age_scaled', 'kind': 'custom', 'inputs': ['age'], 'transformer': 'probe_features:Scale', 'trusted_types': trusted}]
    p.write_text(yaml.safe_dump(d)); return p


def test_custom_transformer_is_not_imported_before_it_is_trusted(tmp_path, mlcycle):
    "The probe of issue 32: a module named by `features: custom` ran at import with trusted_types empty."
    mods = tmp_path/'mods'; mods.mkdir()
    (mods/'probe_features.py').write_text(f"open({str(tmp_path/'imported')!r}, 'w').close()\n"
                                          "from sklearn.preprocessing import StandardScaler as Scale\n")
    env = {'PYTHONPATH': os.pathsep.join([str(mods), os.environ.get('PYTHONPATH', '')])}
    r = mlcycle('stage', '01', '--charter', _custom_charter(tmp_path, []), '--workspace', tmp_path/'ws', '--reports', tmp_path/'rep',
                env=env, timeout=300)
    assert r.returncode != 0 and 'trusted_types does not list probe_features.Scale' in r.stderr, r.stderr[-2000:]
    assert 'trusted_types: [probe_features.Scale]' in r.stderr
    assert not (tmp_path/'imported').exists()                     # its code never ran
    r = mlcycle('stage', '01', '--charter', _custom_charter(tmp_path, ['probe_features.Scale', 'builtins.eval', 'posix.system']),
                '--workspace', tmp_path/'ws', '--reports', tmp_path/'rep', env=env, timeout=300)
    assert r.returncode != 0 and 'builtins.eval (' in r.stderr and 'posix.system (' in r.stderr and 'run code' in r.stderr, r.stderr[-2000:]
    assert not (tmp_path/'imported').exists()
    from mlcycle.charter import load_charter
    sys.path.insert(0, str(mods))
    try: assert load_charter(_custom_charter(tmp_path, ['probe_features:Scale'])).features[0].trusted_types == ['probe_features.Scale']
    finally: sys.path.remove(str(mods))
    assert (tmp_path/'imported').exists()                         # trusted: imported


def test_a_workspace_is_owner_only(adult_workspace_0102, mlcycle, tmp_path):
    """Issue 32: the data snapshots (every row, sensitive features in clear), mlflow.db, the audit log and charter.json were
    0644 in a 0755 folder. After stages 01 and 02 (the real command), nothing in the workspace is open to group or others."""
    ws = adult_workspace_0102/'ws'
    entries = [ws, *ws.rglob('*')]
    names = {p.name for p in entries}
    assert {'mlflow.db', 'audit.jsonl', 'charter.json', 'contract.json'} <= names and any(p.suffix == '.parquet' for p in entries)
    assert any(p.is_dir() for p in ws.glob('mlartifacts/*'))
    opened = {str(p.relative_to(ws)): oct(stat.S_IMODE(p.lstat().st_mode)) for p in entries
              if not p.is_symlink() and stat.S_IMODE(p.lstat().st_mode) & 0o077}
    assert not opened, opened
    # an existing workspace (made before: 0755, a 0644 snapshot) keeps working and is set owner-only by its next stage
    import shutil
    old = tmp_path/'old'; shutil.copytree(ws, old)
    for p in [old, *old.rglob('*')]: os.chmod(p, 0o755 if p.is_dir() else 0o644)
    r = mlcycle('stage', '02', '--workspace', old, '--reports', tmp_path/'rep', timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not [p for p in [old, *old.rglob('*')] if not p.is_symlink() and stat.S_IMODE(p.lstat().st_mode) & 0o077]
    assert mlcycle('audit', 'verify', '--workspace', old, timeout=120).returncode == 0


def test_a_source_that_is_not_the_data_is_not_echoed(tmp_path, mlcycle):
    "Issue 32: a CSV source pointing at a password file put its first line, as 'columns are: …', in stage 01's report and run.json."
    import yaml
    from conftest import relaxed_charter
    secret = tmp_path/'passwd'
    secret.write_text('root:x:0:0:s3cretline:/root:/bin/bash\ndaemon:x:1:1:daemon2nd:/usr/sbin:/usr/sbin/nologin\n')
    p = relaxed_charter(tmp_path); d = yaml.safe_load(p.read_text())
    d['data']['sources'] = [{'kind': 'csv', 'path': str(secret)}]; d.pop('production', None); p.write_text(yaml.safe_dump(d))
    r = mlcycle('run', '--stages', '01', '--charter', p, '--workspace', tmp_path/'ws', '--reports', tmp_path/'rep', timeout=300)
    assert r.returncode != 0 and str(secret) in r.stderr and '1 column(s)' in r.stderr, r.stderr[-2000:]
    written = [f for f in [*(tmp_path/'rep').rglob('*'), *(tmp_path/'ws').rglob('*')] if f.is_file()]
    assert any(f.name == 'run.json' for f in written), written
    for text in [r.stdout, r.stderr, *(f.read_bytes().decode('utf-8', 'replace') for f in written)]:
        assert 's3cretline' not in text and 'daemon2nd' not in text


# ---- 7. the smaller ones --------------------------------------------------------------------------------------------

def test_stalled_body_gets_408_and_the_connection_closes(registry_ws, start_server):
    promote(registry_ws, '1')
    s = start_server(registry_ws, args=['--body-timeout', '1'])
    with socket.create_connection(('127.0.0.1', s.port), timeout=20) as sock:
        sock.sendall(b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[{"age": 3')
        t, data = time.monotonic(), b''
        while time.monotonic() - t < 15:
            chunk = sock.recv(65536)
            if not chunk: break                     # the server closed the connection
            data += chunk
    assert data.startswith(b'HTTP/1.1 408') and b'body_timeout' in data, data[:300]
    assert time.monotonic() - t < 10
    assert requests.get(s.url + '/ready', timeout=10).status_code == 200


def test_prediction_log_is_owner_only(champion_server, adult_records):
    s = champion_server
    assert requests.post(s.url + '/predict', json=adult_records[:2], timeout=30).status_code == 200
    for f in s.ws.root.glob('predictions.db*'):
        assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, (f.name, oct(f.stat().st_mode))
    assert stat.S_IMODE((s.ws.root/'.feedback_token').stat().st_mode) == 0o600


def test_503_says_what_failed_not_the_internals(registry_ws, adult_records):
    "A model that raises inside scoring (a real failure, in-process): the client gets what failed, not the exception."
    from fastapi.testclient import TestClient
    from mlcycle.batching import ModelSet, Served
    from mlcycle.serve import create_app
    promote(registry_ws, '1')
    app = create_app(registry_ws, alias_poll_seconds=0)
    def broken(X): raise RuntimeError('secret-internal-path /srv/model.py line 12')
    with TestClient(app.state.asgi) as client:
        srv = app.state.server
        srv.models = ModelSet(Served(srv.models.champion.name, 'x', None, broken))
        r = client.post('/predict', json=adult_records[:2])
        assert r.status_code == 503 and 'secret-internal' not in r.text and 'RuntimeError' not in r.text
        assert r.json()['detail']['error'] == 'unavailable'


def test_invocations_schema_says_exactly_one_of_its_keys(champion_server):
    spec = requests.get(champion_server.url + '/openapi.json', timeout=30).json()
    schema = spec['paths']['/invocations']['post']['requestBody']['content']['application/json']['schema']
    assert set(schema['properties']) == {'dataframe_split', 'dataframe_records', 'inputs', 'instances'}
    assert sorted(o['required'][0] for o in schema['oneOf']) == sorted(schema['properties'])
    assert requests.post(champion_server.url + '/invocations', json={'inputs': [], 'instances': []}, timeout=30).status_code == 422


# ---- 7. a workspace can be moved or copied whole ------------------------------------------------------------------

def _artifact_locations(ws) -> list[str]:
    con = sqlite3.connect(ws.root/'mlflow.db')
    try:
        return [r[0] for t, c in (('experiments', 'artifact_location'), ('runs', 'artifact_uri'),
                                  ('logged_models', 'artifact_location'), ('model_versions', 'storage_location'))
                for r in con.execute(f'select {c} from {t}') if r[0] and r[0].startswith('file://')]
    finally: con.close()


def test_a_moved_workspace_uses_its_own_artifacts(registry_template, adult_records, mlcycle, tmp_path):
    "Copied whole, scored (the registry follows the copy), then moved: the old folder is gone and scoring still works."
    import shutil
    a, b = tmp_path/'a', tmp_path/'b'
    shutil.copytree(registry_template.root, a)
    src = pd.DataFrame(adult_records[:50]); src.to_csv(tmp_path/'in.csv', index=False)
    assert all(not loc.startswith((a/'x').as_uri()[:-1]) for loc in _artifact_locations(Workspace(a)))   # points at the original
    r = mlcycle('predict', '--workspace', a, '--input', tmp_path/'in.csv', '--output', tmp_path/'out_a.csv', '--version', '1',
                '--no-progress', timeout=300)
    assert r.returncode == 0, r.stderr
    shutil.move(a, b)
    assert not a.exists()
    r = mlcycle('predict', '--workspace', b, '--input', tmp_path/'in.csv', '--output', tmp_path/'out_b.csv', '--version', '1',
                '--no-progress', timeout=300)
    assert r.returncode == 0, r.stderr
    locs = _artifact_locations(Workspace(b))
    assert len(locs) >= 4 and all(loc.startswith(Workspace(b).artifacts_dir.as_uri()) for loc in locs), locs
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path/'out_a.csv'), pd.read_csv(tmp_path/'out_b.csv'))
    moves = [e for e in Workspace(b).audit.entries() if e['event'] == 'workspace_relocated']
    assert len(moves) == 2 and moves[-1]['details']['previous'] == [Workspace(a).artifacts_dir.as_uri()]
    assert mlcycle('audit', 'verify', '--workspace', b, timeout=120).returncode == 0
