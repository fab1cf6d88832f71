"""Several `mlcycle serve` replicas as one service: one PostgreSQL prediction log, one registry.

Real parts only: a real PostgreSQL server (the `postgres_url` fixture), real `mlcycle serve` processes on 127.0.0.1
(separate replicas, and uvicorn workers sharing one port), concurrent HTTP load from `tests/loadgen.py`. Checked:
the log holds exactly one row per answered row (by request id, with the answered version, arm and probability), an
alias move nobody announces reaches every replica, the same entity key gets the same arm on every replica; and the
container context's `kubernetes.yaml` renders the right image, port, probes and environment, and its entrypoint's
registry mode really serves the registry's champion."""
import json, os, subprocess, sys, threading, time, urllib.request, uuid
from pathlib import Path

import pytest

from conftest import free_port, wait_ready
from loadgen import hammer

TOKEN = 'replica-token-0123456789'


@pytest.fixture
def log_db(postgres_url):
    "A fresh PostgreSQL database for one test's prediction log; yields its SQLAlchemy URL."
    import sqlalchemy as sa
    db = f'plog_{uuid.uuid4().hex[:10]}'
    eng = sa.create_engine(postgres_url, isolation_level='AUTOCOMMIT')
    with eng.connect() as c: c.execute(sa.text(f'CREATE DATABASE {db}'))
    eng.dispose()
    yield postgres_url.rsplit('/', 1)[0] + f'/{db}'


def keyed(ws, key='person_id'):
    """Give the workspace's recorded charter an entity key column, as a charter with `id_column` would: clients send
    `person_id` with every record and the A/B arm is drawn per person (the Adult charter has no id column)."""
    p = Path(ws.root)/'charter.json'
    rec = json.loads(p.read_text()); rec['charter']['data']['id_column'] = key
    p.write_text(json.dumps(rec))
    from mlcycle.charter import workspace_charter
    assert workspace_charter(ws).data.id_column == key
    return key


def bodies_of(records, n_requests, start=0, max_rows=3):
    "Request bodies of 1..max_rows Adult rows, each row with a distinct person_id."
    out, i = [], start
    for r in range(n_requests):
        k = 1 + r % max_rows
        rows = [{**records[(i + j) % len(records)], 'person_id': f'p{i + j}'} for j in range(k)]
        out.append(json.dumps(rows).encode()); i += k
    return out


def answers_of(results):
    "request_id -> (model_version, arm, probability) for every row of every 200 response."
    out = {}
    for status, payload, _ in results:
        if status == 200:
            for a in json.loads(payload)['predictions']: out[a['request_id']] = (a['model_version'], a['arm'], a['probability'])
    return out


def log_rows(url):
    import sqlalchemy as sa
    eng = sa.create_engine(url)
    try:
        with eng.connect() as c:
            return [tuple(r) for r in c.execute(sa.text('SELECT request_id, model_version, arm, probability FROM predictions'))]
    finally: eng.dispose()


def get(url, path='/ready'):
    with urllib.request.urlopen(url + path, timeout=10) as r: return json.loads(r.read()) if path != '/metrics' else r.read().decode()


def post(url, body):
    req = urllib.request.Request(url + '/predict', data=json.dumps(body).encode(), headers={'Content-Type': 'application/json'})
    with urllib.request.urlopen(req, timeout=60) as r: return json.loads(r.read())['predictions']


def wait_until(cond, timeout, what):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond(): return time.monotonic() - t0
        time.sleep(0.2)
    raise AssertionError(f'{what}: not within {timeout} s')


def check_log_matches(url, results):
    "Exactly one log row per answered row, none for anything else, each with the answered version, arm and probability."
    answered = answers_of(results)
    rows = log_rows(url)
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)), 'a request id is logged twice'
    assert set(ids) == set(answered), (f'{len(set(answered) - set(ids))} answered rows are not in the log, '
                                       f'{len(set(ids) - set(answered))} logged rows were not answered')
    for rid, v, arm, p in rows: assert answered[rid] == (v, arm, p), (rid, answered[rid], (v, arm, p))
    return answered, rows


def test_two_replicas_one_log_one_registry(registry_ws, start_server, log_db, adult_records):
    from mlcycle.deploy import promote
    from mlcycle.batching import route
    promote(registry_ws, '1', reason='replica test')
    keyed(registry_ws)
    args = ['--log-url', log_db, '--alias-poll-seconds', '1']
    a = start_server(registry_ws, args=args, env={'MLCYCLE_ADMIN_TOKEN': TOKEN})
    b = start_server(registry_ws, args=args, env={'MLCYCLE_ADMIN_TOKEN': TOKEN})
    assert get(a.url)['champion'] == get(b.url)['champion'] == '1'

    # concurrent load spread over both replicas; in the middle, v2 becomes champion and nobody tells the servers
    results = {a.url: [], b.url: []}
    loads = [threading.Thread(target=lambda u=u, s=s: results[u].extend(hammer(u, bodies_of(adult_records, 900, start=s), connections=12)))
             for u, s in ((a.url, 0), (b.url, 100_000))]
    for t in loads: t.start()
    time.sleep(2)
    promote(registry_ws, '2', reason='replica test: promoted under load, servers not notified')
    for t in loads: t.join(600)
    statuses = [r[0] for rs in results.values() for r in rs]
    assert statuses.count(200) == len(statuses) == 1800, {s: statuses.count(s) for s in set(statuses)}
    # the alias move reached every replica on its own
    for s in (a, b): wait_until(lambda s=s: get(s.url)['champion'] == '2', 60, f'{s.url} following @champion')
    for s in (a, b): assert 'mlcycle_model_reloads_total{trigger="poll"} 1' in get(s.url, '/metrics')
    # one log, one row per answered row, none lost, none twice, and every row says what was answered
    answered, rows = check_log_matches(log_db, results[a.url] + results[b.url])
    assert len(rows) == 2 * sum(1 + r % 3 for r in range(900))
    by_replica = [set(answers_of(results[u])) for u in (a.url, b.url)]
    assert by_replica[0] and by_replica[1] and not (by_replica[0] & by_replica[1])
    assert {r[0][:10] for r in rows if r[0] in by_replica[0]}.isdisjoint({r[0][:10] for r in rows if r[0] in by_replica[1]})
    after = post(a.url, [adult_records[0]]) + post(b.url, [adult_records[0]])
    assert [x['model_version'] for x in after] == ['2', '2']

    # A/B: v1 comes back as challenger for half of the people; both replicas pick it up and agree person by person
    promote(registry_ws, '1', as_='challenger', share=0.5, reason='replica test: A/B')
    for s in (a, b): wait_until(lambda s=s: get(s.url).get('challenger') == '1', 60, f'{s.url} following @challenger')
    people = [{**adult_records[i], 'person_id': f'person-{i}'} for i in range(300)]
    arms = {}
    for s in (a, b):
        for chunk in (people[:100], people[100:250], people[250:]):        # different batches on each replica
            for rec, ans in zip(chunk, post(s.url, chunk)): arms.setdefault(rec['person_id'], []).append(ans['arm'])
    assert all(len(set(v)) == 1 for v in arms.values()), {k: v for k, v in arms.items() if len(set(v)) > 1}
    expected = route([p['person_id'] for p in people], 0.5, salt='1')
    assert [arms[p['person_id']][0] == 'challenger' for p in people] == expected.tolist()
    assert 0.3 < expected.mean() < 0.7
    # the same person keeps the arm on a later request, on either replica
    again = post(b.url, people[:50]) + post(a.url, people[:50])
    assert [x['arm'] for x in again] == [arms[p['person_id']][0] for p in people[:50]] * 2

    # where replicas can be addressed one by one, notify_server reloads all of them at once (no waiting for a poll)
    from mlcycle.deploy import end_challenger, notify_server
    end_challenger(registry_ws, reason='replica test: A/B over')
    done = notify_server(f'{a.url},{b.url}', token=TOKEN)
    assert set(done) == {a.url, b.url} and all('challenger' not in d['after'] for d in done.values())
    assert all('challenger' not in get(s.url) for s in (a, b))


def test_workers_share_a_port_and_follow_the_registry(registry_ws, start_server, log_db, adult_records):
    "`mlcycle serve --workers 2`: two processes on one port (the kernel spreads connections), one log, both follow an alias move."
    from mlcycle.deploy import promote
    promote(registry_ws, '1', reason='workers test')
    s = start_server(registry_ws, args=['--log-url', log_db, '--alias-poll-seconds', '1', '--workers', '2'])
    res = hammer(s.url, bodies_of(adult_records, 800), connections=24)
    assert [r[0] for r in res].count(200) == 800
    prefixes, t0, start = {rid[:10] for rid in answers_of(res)}, time.monotonic(), 500_000
    while len(prefixes) < 2 and time.monotonic() - t0 < 90:    # which worker accepts a connection is the kernel's choice:
        more = hammer(s.url, bodies_of(adult_records, 100, start=start), connections=24); start += 500   # open new ones
        assert [r[0] for r in more].count(200) == 100
        res += more; prefixes |= {rid[:10] for rid in answers_of(more)}
    answered, rows = check_log_matches(log_db, res)
    assert {r[0][:10] for r in rows} == prefixes
    assert len(prefixes) == 2, f'expected both workers to answer, request-id prefixes seen: {prefixes}'
    promote(registry_ws, '2', reason='workers test: promoted, not announced')
    t0, later, start = time.monotonic(), [], 5000
    while True:                                  # keep loading until both workers answer with v2 (each polls on its own)
        res2 = hammer(s.url, bodies_of(adult_records, 200, start=start), connections=24); start += 1000
        assert [r[0] for r in res2].count(200) == 200
        later += res2
        seen = {(rid[:10], v) for rid, (v, _, _) in answers_of(res2).items()}
        if {p for p, v in seen if v == '2'} == prefixes and all(v == '2' for _, v in seen): break
        assert time.monotonic() - t0 < 90, f'workers did not both move to v2 in 90 s: {seen}'
        time.sleep(0.5)
    _, rows2 = check_log_matches(log_db, res + later)
    assert {r[0][:10] for r in rows2} == prefixes and len(rows2) == len(rows) + len(answers_of(later))


def test_container_context_runs_replicas_from_the_registry(registry_ws, tmp_path, adult_records):
    """`mlcycle package` writes kubernetes.yaml (Deployment + Service) with the image, port, probes and environment;
    the entrypoint's registry mode (what the manifest sets) serves the registry's @champion and follows it."""
    import yaml
    from mlcycle.deploy import build_container_context, promote
    promote(registry_ws, '1', reason='package test')
    ctx = build_container_context(registry_ws, '1', out=tmp_path/'ctx', port=8181, replicas=3, tracking_uri='http://mlflow.example:5000')
    info = json.loads((ctx/'context.json').read_text())
    dep, svc = yaml.safe_load_all((ctx/'kubernetes.yaml').read_text())
    assert (dep['kind'], svc['kind'], dep['spec']['replicas'], info['replicas']) == ('Deployment', 'Service', 3, 3)
    pod = dep['spec']['template']['spec']
    box, = pod['containers']
    assert box['image'] == info['image'] == 'adult-income:1'
    port, = box['ports']
    assert port['containerPort'] == 8181 and svc['spec']['ports'][0]['targetPort'] == port['name']
    assert svc['spec']['selector'].items() <= dep['spec']['template']['metadata']['labels'].items()
    assert box['readinessProbe']['httpGet'] == {'path': '/ready', 'port': port['name']}
    assert box['livenessProbe']['httpGet'] == {'path': '/health', 'port': port['name']}
    env = {e['name']: e for e in box['env']}
    assert env['PORT']['value'] == '8181' and env['MLCYCLE_MODEL_SOURCE']['value'] == 'registry'
    assert env['MLFLOW_TRACKING_URI']['value'] == 'http://mlflow.example:5000'
    secret = env['MLCYCLE_ADMIN_TOKEN']['valueFrom']['secretKeyRef']
    assert env['MLCYCLE_PREDICTION_LOG_URL']['valueFrom']['secretKeyRef']['name'] == secret['name'] == 'adult-income-serving'
    assert f'kubectl create secret generic {secret["name"]}' in (ctx/'kubernetes.yaml').read_text()
    assert pod['securityContext']['runAsUser'] == 10001 and 'useradd --system --uid 10001' in (ctx/'Dockerfile').read_text()
    assert f"EXPOSE {8181}" in (ctx/'Dockerfile').read_text()

    # run the entrypoint as a pod would, in registry mode, against this workspace's registry (SQLite stands in for the server)
    port_ = free_port()
    env_ = {**os.environ, 'MLCYCLE_HOST': '127.0.0.1', 'PORT': str(port_), 'MLCYCLE_MODEL_SOURCE': 'registry',
            'MLFLOW_TRACKING_URI': registry_ws.tracking_uri, 'MLCYCLE_ALIAS_POLL_SECONDS': '1', 'MLCYCLE_ADMIN_TOKEN': TOKEN,
            'MLCYCLE_PREDICTION_LOG_URL': f"sqlite:///{tmp_path/'pod-log.db'}", 'PATH': f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    log = open(tmp_path/'pod.log', 'wb')
    proc = subprocess.Popen(['sh', str(ctx/'entrypoint.sh')], env=env_, stdout=log, stderr=subprocess.STDOUT)
    url = f'http://127.0.0.1:{port_}'
    try:
        wait_ready(url, 180, proc)
        assert get(url)['champion'] == '1'
        promote(registry_ws, '2', reason='package test: the pod follows the registry')
        wait_until(lambda: get(url)['champion'] == '2', 60, 'the pod following @champion')
        assert post(url, [adult_records[0]])[0]['model_version'] == '2'
    finally:
        proc.terminate(); proc.wait(30); log.close()
    assert (tmp_path/'pod-log.db').exists()
