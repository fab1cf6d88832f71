"""The lane (issue 32, item 4): bulk and explain=true requests answered by a worker process at a lower CPU priority,
against the real `mlcycle serve` on 127.0.0.1. The lane answers and logs exactly what the server answers in-process;
a killed worker gives its request a 503 with Retry-After, is replaced, and no worker outlives the server; a pickled
version in the registry is not run by a worker either; the server and its worker take turns on the SQLite log's writer
lock. Every wait is bounded."""
import fcntl, json, os, re, signal, threading, time
from pathlib import Path

import mlflow
import pytest
import requests

from conftest import poll

from mlcycle.core import atomic_write_json
from mlcycle.deploy import promote
from mlcycle.lane import autogroup_nice
from mlcycle.predlog import read_log

pytestmark = pytest.mark.timeout(600)
JSON = {'Content-Type': 'application/json'}


def _worker_pids(server_pid: int) -> list[int]:
    "The server's child processes (its lane workers), from /proc."
    out = []
    for t in Path(f'/proc/{server_pid}/task').glob('*'):
        try: out += [int(x) for x in (t/'children').read_text().split()]
        except OSError: pass
    return sorted(set(out))


def _alive(pid: int) -> bool:
    "Whether `pid` exists and is not a zombie."
    try: return 'State:\tZ' not in Path(f'/proc/{pid}/status').read_text()
    except OSError: return False



def _below_the_server(pid: int):
    "The worker runs at nice 10 (`--lane-nice`), and so does its session's scheduling group where the kernel has autogroups."
    assert os.getpriority(os.PRIO_PROCESS, pid) == 10
    group = autogroup_nice(pid)
    if group is not None: assert group == '10', group               # else its nice would not count against the server


def _hash_sensitive(ws):
    "This test is about the sensitive-feature rule: the workspace's charter logs them hashed (the bundled one stores them)."
    p = ws.root/'charter.json'; rec = json.loads(p.read_text())
    rec['charter']['retention']['log_sensitive_features'] = 'hash'
    atomic_write_json(p, rec)


def test_the_lane_answers_and_logs_like_the_server_row_for_row(registry_ws, start_server, adult_records):
    ws = registry_ws
    _hash_sensitive(ws)
    promote(ws, '1', reason='test: champion'); promote(ws, '2', as_='challenger', share=0.5, reason='test: an A/B, rows routed by hash')
    inproc = start_server(ws, args=['--alias-poll-seconds', '0', '--lane-workers', '0'])
    lane = start_server(ws, args=['--alias-poll-seconds', '0'])
    rows = adult_records[:2000]
    bad = [dict(r) for r in rows]; bad[7]['hours_per_week'] = 'forty'
    nan = [dict(r) for r in rows]; nan[3]['age'] = float('nan')                  # json.dumps writes the literal NaN
    split = {'dataframe_split': {'columns': list(rows[0]), 'data': [list(r.values()) for r in rows]}}
    bodies = [('/predict', json.dumps(rows)), ('/predict?explain=true', json.dumps(rows[:40])), ('/predict', json.dumps(bad)),
              ('/predict', json.dumps(nan)), ('/invocations', json.dumps(split)),
              ('/predict?explain=true', json.dumps(rows[:101]))]
    assert '"age": NaN' in bodies[3][1] and len(bodies[0][1]) > 64 << 10          # over --bulk-bytes: the lane takes it
    got = {}
    for name, s in (('in', inproc), ('lane', lane)):
        got[name] = [requests.post(s.url + path, data=body, headers=JSON, timeout=120) for path, body in bodies]
    assert [r.status_code for r in got['lane']] == [200, 200, 422, 422, 200, 413], [r.text[:200] for r in got['lane']]
    strip = lambda ans: [{k: v for k, v in a.items() if k != 'request_id'} for a in ans]
    a, b = got['lane'][0].json(), got['in'][0].json()
    assert strip(a['predictions']) == strip(b['predictions']) and a['positive_label'] == b['positive_label']
    assert {p['arm'] for p in a['predictions']} == {'champion', 'challenger'}            # both arms, routed alike
    ea, eb = got['lane'][1].json(), got['in'][1].json()
    assert ea['explanations'] == eb['explanations'] and strip(ea['predictions']) == strip(eb['predictions'])
    for k in (2, 3, 4, 5): assert got['lane'][k].json() == got['in'][k].json(), (k, got['lane'][k].text[:300], got['in'][k].text[:300])
    assert got['lane'][2].json()['detail']['column'] == 'hours_per_week'
    # the log: every row of the lane's answers, as the in-process server logged it; sensitive features hashed
    log = read_log(ws, features=False).set_index('request_id')
    cols = ['model_version', 'arm', 'probability', 'label', 'flags', 'features']
    for x, y in zip(a['predictions'] + ea['predictions'], b['predictions'] + eb['predictions']):
        assert log.loc[x['request_id'], cols].tolist() == log.loc[y['request_id'], cols].tolist(), x['request_id']
    logged = json.loads(log.loc[a['predictions'][0]['request_id'], 'features'])
    assert len(logged['sex']) == 16 and logged['sex'] not in ('Male', 'Female'), logged
    assert len(log) == 2 * (2000 + 40 + 2000)                  # the refused requests logged nothing, on either path
    m = requests.get(lane.url + '/metrics', timeout=30).text
    assert 'mlcycle_lane_jobs_total{kind="bulk",outcome="done"} 4' in m and 'mlcycle_lane_jobs_total{kind="explain",outcome="done"} 2' in m, m
    assert 'mlcycle_predictions_total{version="1",arm="champion"}' in m
    assert 'mlcycle_lane_jobs_total' not in requests.get(inproc.url + '/metrics', timeout=30).text.replace('# HELP', '')


def test_a_killed_lane_worker_gives_503_then_is_replaced_and_none_outlives_the_server(registry_ws, start_server, adult_records):
    promote(registry_ws, '1')
    s = start_server(registry_ws, args=['--alias-poll-seconds', '0'])
    big = json.dumps([adult_records[k % len(adult_records)] for k in range(10_000)])
    assert requests.post(s.url + '/predict', data=big, headers=JSON, timeout=120).status_code == 200     # the worker is up
    first = _worker_pids(s.proc.pid)
    assert len(first) == 1, first
    _below_the_server(first[0])
    refused = None
    for attempt in range(3):                         # kill the worker while it scores a 10,000-row request
        pid = _worker_pids(s.proc.pid)[0]
        out = {}
        t = threading.Thread(target=lambda: out.update(r=requests.post(s.url + '/predict', data=big, headers=JSON, timeout=120)))
        t.start(); time.sleep(0.25); os.kill(pid, signal.SIGKILL); t.join(130)
        if out['r'].status_code == 503: refused = out['r']; break
    assert refused is not None, 'the request outran the kill three times'
    d = refused.json()['detail']
    assert d['error'] == 'lane_unavailable' and refused.headers['Retry-After'] == '1' and 'lane worker' in d['reason'], refused.text
    assert not _alive(pid)                                           # reaped, not a zombie
    r = requests.post(s.url + '/predict', data=big, headers=JSON, timeout=120)          # the replacement answers
    assert r.status_code == 200 and len(r.json()['predictions']) == 10_000
    assert requests.post(s.url + '/predict', json=adult_records[:1], timeout=30).status_code == 200
    m = requests.get(s.url + '/metrics', timeout=30).text
    assert 'mlcycle_lane_worker_restarts_total 1' in m and 'mlcycle_lane_failures_total{reason="stopped"} 1' in m and 'mlcycle_lane_workers 1' in m, m
    workers = _worker_pids(s.proc.pid)
    assert len(workers) == 1 and workers[0] != pid
    _below_the_server(workers[0])                                    # the replacement too
    s.stop()                                                         # SIGTERM: the server ends its workers and reaps them
    assert poll(lambda: not any(_alive(p) for p in workers), 15), [Path(f'/proc/{p}/status').read_text()[:200] for p in workers if _alive(p)]
    assert 'starting another' in (registry_ws.root/f'server-{s.port}.log').read_text()


def test_a_lane_worker_never_runs_a_pickled_model(registry_ws, start_server, tmp_path, adult_records):
    "The server refuses the planted version; and a worker handed it directly (with its true digest) refuses it too."
    import asyncio
    from test_registry_door import _plant_pickled_version
    from mlcycle.lane import lane_pool
    from mlcycle.registry import version_digest
    from mlcycle.serve import Limits, ModelServer
    ws, marker = registry_ws, tmp_path/'the-payload-ran'
    promote(ws, '1', reason='test: the decided champion')
    s = start_server(ws, args=['--alias-poll-seconds', '0.5'])
    evil = _plant_pickled_version(ws, marker)
    mlflow.MlflowClient().set_registered_model_alias('adult-income', 'champion', evil)     # plain MLflow
    promote(ws, evil, force=True, reason='test: a forced promotion of the planted version')
    time.sleep(2)
    big = json.dumps([adult_records[k % len(adult_records)] for k in range(3000)])
    r = requests.post(s.url + '/predict', data=big, headers=JSON, timeout=120)
    assert r.status_code == 200 and {p['model_version'] for p in r.json()['predictions']} == {'1'}, r.text[:300]
    r = requests.post(s.url + '/predict?explain=true', json=adult_records[:5], timeout=120)
    assert r.status_code == 200 and {e['model_version'] for e in r.json()['explanations']} == {'1'}
    # a worker told to serve the planted version, with the digest of its real artifacts: the one loader refuses it
    srv = ModelServer(ws, alias_poll_seconds=0)
    desc = {'name': 'adult-income', 'version': evil, 'uri': f'models:/adult-income/{evil}', 'digest': version_digest('adult-income', evil)}
    job = {'route': '/predict', 'query': '', 'models': {'champion': desc, 'challenger': None, 'share': 0.0, 'shadow': False, 'loaded_at': 0.0}}
    async def run():
        pool = lane_pool(srv, Limits(), 8 << 20, 30.0, {})
        await pool.start()
        try: return await pool.call(job, big.encode(), 'bulk')
        finally: await pool.stop()
    head, body = asyncio.run(run())
    assert head['status'] == 503 and json.loads(body)['detail']['reason'] == 'the lane worker could not load the version the server serves', body
    assert not marker.exists(), 'the pickled payload ran'


def test_the_server_and_its_lane_worker_take_turns_on_the_log_files_writer_lock(registry_ws, start_server, adult_records):
    """Both processes' log writers take the lock beside the SQLite log while they write: while another writer holds it, a
    one-row answer (the server's log) and a bulk answer (the worker's) wait; once it is released, both are answered and logged."""
    promote(registry_ws, '1')
    s = start_server(registry_ws, args=['--alias-poll-seconds', '0'])
    big = json.dumps([adult_records[k % len(adult_records)] for k in range(1000)])
    assert len(big) > 64 << 10                                        # over --bulk-bytes: the lane worker logs it
    assert requests.post(s.url + '/predict', data=big, headers=JSON, timeout=120).status_code == 200     # both logs are open
    lock = registry_ws.root/'predictions.db-lock'
    assert lock.stat().st_mode & 0o777 == 0o600
    fd = os.open(lock, os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX)    # another writer's transaction under way
    out, threads = {}, []
    try:
        for k, body in (('one', json.dumps(adult_records[:1])), ('bulk', big)):
            threads.append(threading.Thread(target=lambda k=k, body=body: out.update({k: requests.post(s.url + '/predict', data=body, headers=JSON, timeout=60)})))
            threads[-1].start()
        time.sleep(2)
        assert out == {}, f'answered while another writer held the log: {out}'
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN); os.close(fd)
    for t in threads: t.join(60)
    assert out['one'].status_code == 200 and out['bulk'].status_code == 200, {k: r.text[:200] for k, r in out.items()}
    ids = set(read_log(registry_ws, features=False).request_id)
    assert out['one'].json()['predictions'][0]['request_id'] in ids and out['bulk'].json()['predictions'][-1]['request_id'] in ids
    m = requests.get(s.url + '/metrics', timeout=30).text
    assert float(re.search(r'^mlcycle_prediction_log_lock_waits_total (\S+)$', m, re.M).group(1)) >= 1, m
