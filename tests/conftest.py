"""Shared pytest fixtures: real parts only (MLflow on SQLite in a temp workspace, real processes)."""
import os, shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# Tests that share an expensive module- or session-scoped fixture run in the same pytest-xdist worker (`--dist
# loadgroup` in tests/run_all.sh), so that each fixture is still built once: one group per test file, except that the
# stage 03-04 tests and the browser check of the reports read the full circle's workspace and so join the circle's file
# (in another group, a second worker would build its own circle: ~12 minutes of CPU). Each full circle on a dataset
# (a test marked `slow`) is its own group: they share nothing, so the two workers can take them side by side.
SHARED_GROUPS = {'test_stages_03_04': 'test_retraining', 'test_reports_browser': 'test_retraining'}
LONG_GROUPS = {'test_scaleout'}   # minutes without a full circle (a PostgreSQL server, MLflow's server, Spark): started with the circles


def _group(item) -> str:
    mod = item.module.__name__.rsplit('.', 1)[-1]
    return item.name if item.get_closest_marker('slow') else SHARED_GROUPS.get(mod, mod)


@pytest.hookimpl(tryfirst=True)   # before pytest-xdist reads the marks
def pytest_collection_modifyitems(config, items):
    """Group the tests (above), then order the groups longest first, so that no worker is left alone with a circle at the
    end of the run while the other waits: the group with the Adult circle (about a third of the suite's CPU), then the
    other full circles and the `LONG_GROUPS`, then the rest in file order. `tests/run_all.sh` passes `--no-loadscope-reorder`, which keeps
    this order (pytest-xdist would otherwise put the groups with most tests first, and the one-test circles last)."""
    groups = {item: _group(item) for item in items}
    rank = {}
    for item, g in groups.items():
        r = 0 if 'adult_circle' in item.fixturenames else 1 if item.get_closest_marker('slow') or g in LONG_GROUPS else 2
        rank[g] = min(rank.get(g, 2), r)
    items.sort(key=lambda item: rank[groups[item]])   # stable: file order within a rank
    for item in items: item.add_marker(pytest.mark.xdist_group(groups[item]))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With MLCYCLE_TESTS_NO_SKIP=1 (tests/run_all.sh sets it: it installs what every test needs), a skipped test fails:
    a skip there means a part of the project went untested without anyone noticing."""
    outcome = yield
    rep = outcome.get_result()
    if os.environ.get('MLCYCLE_TESTS_NO_SKIP') == '1' and rep.skipped and not hasattr(rep, 'wasxfail'):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome, rep.longrepr = 'failed', f'skipped under tests/run_all.sh, which installs what every test needs: {reason}'


def end_open_ab(ws, why: str):
    """End an A/B test a circle left open (its production rows ran out and the sequential test continues), so that every
    request is answered by the champion: for tests that compare the server's answers with the champion's own."""
    from mlcycle.core import Workspace
    from mlcycle.deploy import aliases, end_challenger
    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    if 'challenger' in aliases(ws): end_challenger(ws, reason=why)


def mlcycle_cmd(*args, cwd=None, env=None, timeout=900, check=False):
    "Run the real `mlcycle` command; returns the CompletedProcess."
    exe = shutil.which('mlcycle', path=str(BIN)) or 'mlcycle'
    e = {**os.environ, **(env or {})}
    e.pop('MLFLOW_TRACKING_URI', None) if 'MLFLOW_TRACKING_URI' not in (env or {}) else None
    r = subprocess.run([exe, *map(str, args)], cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f'mlcycle {" ".join(map(str, args))} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}')
    return r


def relaxed_charter(tmp_path) -> Path:
    "The bundled charter with the latency SLO relaxed to 1 s, so that a busy shared test machine does not decide the outcome."
    import yaml
    from mlcycle.charter import BUNDLED_CHARTER
    d = yaml.safe_load(BUNDLED_CHARTER.read_text())
    for s in d['data']['sources'] + d.get('production', {}).get('sources', []): s['path'] = str(BUNDLED_CHARTER.parent/s['path'])
    for o in d['objectives']:
        if o['metric'] == 'p95_latency_ms': o['max'] = 1000
    p = tmp_path/'charter.yaml'; p.write_text(yaml.safe_dump(d)); return p


@pytest.fixture
def mlcycle():
    return mlcycle_cmd


# ---- the full circle on Adult: run once per test session, shared ----
_CIRCLE = r"""
import shutil, sys
from pathlib import Path
import mlcycle.cli as cli
ws, reports, snap = map(Path, sys.argv[1:4])
_echo = cli._echo
def echo(msg, end='\n'):
    # the first message after stage 04 finished (its ' ok'), before stage 05 starts: keep a copy of the workspace as 01-04 left it
    if not snap.exists() and (ws/'stages'/'04_validation.json').exists():
        shutil.copytree(ws, snap/'ws'); shutil.copytree(reports, snap/'reports')
    _echo(msg, end)
cli._echo = echo
sys.exit(cli.main(sys.argv[4:]))
"""


@pytest.fixture(scope='session')
def adult_circle(tmp_path_factory):
    """`mlcycle run` on the bundled Adult data, the whole circle (stages 01-09, server, drifted traffic, A/B test), run once per
    test session in a child process: the `mlcycle` command's own `main` with one hook that copies the workspace and reports
    right after stage 04 (before stage 05 starts) to `after_04`, for the tests of stages 03-04. The charter's latency SLO
    is relaxed, so that a busy shared test machine does not decide the outcome, and stage 03 tries two configurations per
    family instead of six (the search is the same code; a third of its fits). Returns the paths and the command's output;
    the tests of the circle itself check its return code and output."""
    d = tmp_path_factory.mktemp('circle')
    wsd, rep, snap = d/'ws', d/'reports', d/'after_04'
    import yaml
    from mlcycle.notify import WebhookReceiver
    env = {**os.environ, 'MLCYCLE_ADMIN_TOKEN': 'circle-admin-token-0123456789', 'PYTHONUNBUFFERED': '1'}
    env.pop('MLFLOW_TRACKING_URI', None)
    charter = relaxed_charter(d)
    with WebhookReceiver() as hook:            # a real local receiver for stage 06's alerts
        c = yaml.safe_load(charter.read_text()); c['monitoring'] = {'webhooks': [{'url': hook.url, 'format': 'json'}]}
        c['development']['search_iterations'] = 2   # as the other test charters: two configurations per family, not six
        charter.write_text(yaml.safe_dump(c))
        r = subprocess.run([sys.executable, '-c', _CIRCLE, wsd, rep, snap, 'run', '-c', charter, '-w', wsd, '-r', rep, '--approver', 'Ada Reviewer'],
                           cwd=d, env=env, capture_output=True, text=True, timeout=3600)
    return {'ws': wsd, 'reports': rep, 'returncode': r.returncode, 'stdout': r.stdout, 'stderr': r.stderr, 'webhook': hook.received,
            'after_04': snap/'ws' if (snap/'ws'/'stages'/'04_validation.json').exists() else None}


def built_once(tmp_path_factory, worker_id: str, name: str, build) -> Path:
    """The folder of a read-only session template, built once per test run: under pytest-xdist the first worker that asks
    builds it (`build(folder)`) under a file lock in the run's shared temp folder, and the other worker waits and reuses it
    (before, each worker built its own). Without xdist, an ordinary temp folder."""
    if worker_id == 'master':
        d = tmp_path_factory.mktemp(name); build(d); return d
    import fcntl
    root = tmp_path_factory.getbasetemp().parent          # shared by the workers of this run only
    d, done = root/f'shared-{name}', root/f'shared-{name}.done'
    with open(root/f'shared-{name}.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)                   # released when the file closes, also if `build` raises
        if not done.exists():
            shutil.rmtree(d, ignore_errors=True); d.mkdir()
            build(d); done.touch()
    return d


@pytest.fixture(scope='session')
def adult_workspace_0102(tmp_path_factory, worker_id):
    """A workspace where stages 01 and 02 ran on the bundled Adult data (through the real CLI), shared read-only. The charter's
    latency SLO is relaxed: stage 01 times a quick model, and on a busy machine its p95 went over 50 ms (verdict 'at risk')."""
    def build(d):
        mlcycle_cmd('run', '--stages', '01,02', '--charter', relaxed_charter(d), '--workspace', d/'ws', '--reports', d/'reports', cwd=d, check=True)
    return built_once(tmp_path_factory, worker_id, 'adult0102', build)


# ---- stage 05 (deployment, serving): a registry with stand-in models, running servers, a real PostgreSQL ----
import json as _json, socket as _socket, tempfile as _tempfile, time as _time, signal as _signal


def free_port() -> int:
    with _socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.fixture(scope='session')
def registry_template(adult_workspace_0102, tmp_path_factory, worker_id):
    """A scratch copy of the Adult workspace with three registered stand-in models (deploy.demo_model_version):
    v1 and v2 passed validation, v3 failed. Tests copy it (`registry_ws`) rather than change it."""
    from mlcycle.core import Workspace
    from mlcycle.deploy import demo_model_version, scratch_workspace
    def build(d):
        ws = scratch_workspace(Workspace(adult_workspace_0102/'ws'), d/'ws')
        versions = [demo_model_version(ws, max_iter=40), demo_model_version(ws, max_iter=80, seed=1),
                    demo_model_version(ws, max_iter=20, validation_status='failed')]
        assert versions == ['1', '2', '3']
    return Workspace(built_once(tmp_path_factory, worker_id, 'registry', build)/'ws')


@pytest.fixture
def registry_ws(registry_template, tmp_path):
    "A private copy of `registry_template` (its own registry database, audit log and prediction log; artifacts shared read-only)."
    from mlcycle.core import Workspace
    dest = tmp_path/'ws'
    shutil.copytree(registry_template.root, dest, ignore=shutil.ignore_patterns('mlartifacts', 'predictions.db*', 'audit.*', 'containers'))
    return Workspace(dest)


class ServerProc:
    "A real `mlcycle serve` subprocess on 127.0.0.1 (started with the stage-05 command line)."
    def __init__(self, ws, port=None, args=(), env=None):
        self.ws, self.port, self.args = ws, port or free_port(), list(args)
        self.env = {**os.environ, **(env or {})}
        self.env.pop('MLFLOW_TRACKING_URI', None)
        self.url = f'http://127.0.0.1:{self.port}'
        self.proc = None

    def start(self, timeout=180):
        self.log = open(Path(self.ws.root)/f'server-{self.port}.log', 'ab')
        self.proc = subprocess.Popen([sys.executable, '-c', 'from mlcycle.serve import cli_main; cli_main()', 'serve',
                                      '--workspace', str(self.ws.root), '--port', str(self.port), *self.args],
                                     env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_ready(self.url, timeout, self.proc)
        return self

    def kill9(self):
        self.proc.send_signal(_signal.SIGKILL); self.proc.wait(30)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try: self.proc.wait(30)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait(10)
        if getattr(self, 'log', None): self.log.close()


def wait_ready(url, timeout=180, proc=None):
    import urllib.request
    t0 = _time.monotonic()
    while _time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None: raise AssertionError(f'server exited with {proc.returncode}')
        try:
            with urllib.request.urlopen(url + '/ready', timeout=2) as r:
                if r.status == 200: return
        except OSError: pass
        _time.sleep(0.1)
    raise AssertionError(f'{url} not ready after {timeout}s')


@pytest.fixture
def start_server():
    "Factory: start_server(ws, args=[...], env={...}) → a ready ServerProc; all are stopped at teardown."
    started = []
    def start(ws, args=(), env=None, port=None):
        s = ServerProc(ws, port, args, env); started.append(s); return s.start()
    yield start
    for s in started: s.stop()


@pytest.fixture(scope='session')
def champion_server(registry_template, tmp_path_factory):
    """One server for read-only checks: a copy of the registry with v1 champion, admin token 'test-token-0123456789', and its
    OpenAPI docs on (`--docs`: the schema tests and the fuzzer read them). Wrong admin tokens do not lock anybody out here
    (`--admin-failures` very high): the fuzzer sends thousands, and other tests share the server; the lockout has its own test."""
    from mlcycle.core import Workspace
    from mlcycle.deploy import promote
    dest = tmp_path_factory.mktemp('served')/'ws'
    shutil.copytree(registry_template.root, dest, ignore=shutil.ignore_patterns('mlartifacts', 'predictions.db*', 'audit.*'))
    ws = Workspace(dest)
    promote(ws, '1', reason='test server')
    s = ServerProc(ws, args=['--docs', '--admin-failures', '1000000000'], env={'MLCYCLE_ADMIN_TOKEN': 'test-token-0123456789'}).start()
    yield s
    s.stop()


def _pg_bin():
    for d in sorted(Path('/usr/lib/postgresql').glob('*/bin'), reverse=True):
        if (d/'pg_ctl').exists() and (d/'initdb').exists(): return d
    return None


@pytest.fixture(scope='session')
def postgres_url():
    """A real PostgreSQL server (Debian's `postgresql` package) in a temp folder on 127.0.0.1 and a free port, run as
    the `postgres` user; yields a SQLAlchemy URL. Skips only when the binaries are not installed."""
    import pwd
    bindir = _pg_bin()
    if bindir is None: pytest.skip('PostgreSQL binaries not installed (apt-get install postgresql); the PostgreSQL log path is untested here')
    user = 'postgres'
    try: pw = pwd.getpwnam(user)
    except KeyError: pytest.skip('no `postgres` system user to run the server as (install Debian\'s postgresql package)')
    d = Path(_tempfile.mkdtemp(prefix='mlcycle-pg-'))
    os.chown(d, pw.pw_uid, pw.pw_gid)
    as_pg = (['runuser', '-u', user, '--'] if os.geteuid() == 0 else [])
    port = free_port()
    subprocess.run(as_pg + [str(bindir/'initdb'), '-D', str(d/'data'), '-U', 'postgres', '--auth=trust', '-E', 'UTF8'],
                   check=True, capture_output=True, timeout=120)
    opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={d} -c fsync=on -c max_connections=50"
    subprocess.run(as_pg + [str(bindir/'pg_ctl'), '-D', str(d/'data'), '-o', opts, '-l', str(d/'log'), '-w', '-t', '60', 'start'],
                   check=True, capture_output=True, timeout=90)
    try:
        yield f'postgresql+psycopg://postgres@127.0.0.1:{port}/postgres'
    finally:
        subprocess.run(as_pg + [str(bindir/'pg_ctl'), '-D', str(d/'data'), '-m', 'fast', '-w', 'stop'], capture_output=True, timeout=60)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope='session')
def spark_cluster(tmp_path_factory):
    """A real Spark standalone cluster on 127.0.0.1: a master and two workers of one core and 1 GB each, started from
    pyspark's own `bin/spark-class` (tests/spark_cluster.py), their logs in a temp folder; yields it (`.url` is the
    `spark://` master URL, `.completed_apps()` what it ran); stopped at the end. Skips only without pyspark and Java."""
    from mlcycle.batch import spark_available
    why = spark_available()
    if why: pytest.skip(f'no Spark standalone cluster here: {why}')
    from spark_cluster import StandaloneCluster
    cluster = StandaloneCluster(tmp_path_factory.mktemp('spark-cluster'), workers=2, cores=1, memory='1g').start()
    print(f'Spark standalone cluster at {cluster.url}: master and 2 workers up in {cluster.start_seconds:.1f} s')
    try: yield cluster
    finally: cluster.stop()


@pytest.fixture(scope='session')
def adult_records():
    "Rows of the Adult test file as JSON records (what clients send)."
    from mlcycle.data import adult
    return _json.loads(adult('test').drop(columns=['income']).to_json(orient='records'))


# ---- stages 08-09 (governance, retirement): two stand-in versions, and a prediction-log history ----
def copy_workspace(src, dest, logs=False):
    """A private copy of workspace `src` at `dest`: its own registry database and audit log (stage records without the
    log that recorded them fail `mlcycle audit verify`), and with `logs` its prediction log. MLflow artifacts stay in
    `src` (the registry points there): never delete them from a copy."""
    from mlcycle.core import Workspace
    ignore = ['mlartifacts', 'reports', 'archive', 'containers', 'server-*.log'] + ([] if logs else ['predictions.db*'])
    shutil.copytree(src.root, dest, ignore=shutil.ignore_patterns(*ignore))
    return Workspace(dest)


@pytest.fixture(scope='session')
def lifecycle_template(adult_workspace_0102, tmp_path_factory, worker_id):
    "A scratch copy of the Adult workspace with two registered stand-in versions (deploy.demo_model_version), both passed."
    from mlcycle.core import Workspace
    from mlcycle.deploy import demo_model_version, scratch_workspace
    def build(d):
        ws = scratch_workspace(Workspace(adult_workspace_0102/'ws'), d/'ws')
        assert [demo_model_version(ws, max_iter=40), demo_model_version(ws, max_iter=80, seed=1)] == ['1', '2']
    return Workspace(built_once(tmp_path_factory, worker_id, 'lifecycle', build)/'ws')


@pytest.fixture
def gov_ws(lifecycle_template, tmp_path):
    "A private copy of `lifecycle_template` (fresh audit log, no prediction log)."
    return copy_workspace(lifecycle_template, tmp_path/'ws')


@pytest.fixture(scope='session')
def history_template(lifecycle_template, tmp_path_factory, worker_id):
    """v1 @champion and v2 @challenger (A/B, share 0.5) with a prediction-log history written by the log's own writer:
    v1 1500 rows 120–35 days ago and 600 rows 25–0 days ago; v2 300 rows 25–0 days ago, and 200 rows 90–40 days ago
    that v1 also scored as the shadow. No row lies between 25 and 35 days old, so a 30-day cutoff is unambiguous."""
    from mlcycle.core import Workspace
    from mlcycle.deploy import promote
    from mlcycle.retire import demo_prediction_history
    def build(d):
        ws = copy_workspace(lifecycle_template, d/'ws')
        promote(ws, '1', reason='test champion')
        demo_prediction_history(ws, '1', (120, 35), rows=1500, seed=1)
        demo_prediction_history(ws, '2', (90, 40), rows=200, seed=4, shadow_version='1')
        promote(ws, '2', as_='challenger', share=0.5, reason='test A/B')
        demo_prediction_history(ws, '2', (25, 0), rows=300, arm='challenger', seed=2)
        demo_prediction_history(ws, '1', (25, 0), rows=600, seed=3)
    return Workspace(built_once(tmp_path_factory, worker_id, 'history', build)/'ws')


@pytest.fixture
def history_ws(history_template, tmp_path):
    "A private copy of `history_template`, with its audit log and prediction log."
    return copy_workspace(history_template, tmp_path/'ws', logs=True)


@pytest.fixture(scope='module')
def chromium():
    """Debian's chromium, headless, driven by Playwright (Playwright's own browser downloads are not used); one per test
    module, so that Playwright's event loop is not left running under the other modules' asyncio code."""
    pw_api = pytest.importorskip('playwright.sync_api', reason='pip install playwright (a dev extra)')
    exe = shutil.which('chromium')
    if exe is None: pytest.skip('no chromium on PATH: apt-get install chromium (tests/run_all.sh installs it)')
    with pw_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, headless=True, args=['--no-sandbox'])
        yield b
        b.close()


def decision_from_evidence(an: dict, margin: float, alpha: float = 0.05) -> str:
    """The decision a recorded A/B analysis (stage 07's manifest `ab_analysis`) implies, recomputed from its numbers rather
    than read from its `result`: an open test continues; a post-promotion check rolls back when the champion is
    significantly worse than @previous; an A/B test keeps the champion when the challenger broke a fairness objective,
    promotes on a significant gain, keeps on a significant loss, and otherwise promotes when the interval's lower end
    clears the charter's non-inferiority `margin` (the stage's default, `promote_if_noninferior`)."""
    if an.get('status') != 'complete': return 'continue'
    t = an['test']
    if 'previous_version' in an: return 'rollback' if t['p_value'] < alpha and t['difference'] < 0 else 'keep'
    if any(f.get('passed') is False for f in an.get('fairness') or []): return 'keep'
    if t['p_value'] < an['level']: return 'promote' if t['difference'] > 0 else 'keep'
    return 'promote' if t['ci_low'] > -margin else 'keep'


def assert_decision_follows_evidence(ws_dir) -> str:
    """Stage 07's recorded decision is the one its recorded evidence implies (`decision_from_evidence`), the audit log's
    last `ab_decision` entry says the same, and the registry shows it acted: a promoted challenger is the champion (and,
    once stage 09 ran, the replaced version is retired); a kept champion stays and the challenger test is over."""
    from mlcycle.charter import workspace_charter
    from mlcycle.core import Workspace
    from mlcycle.deploy import aliases
    ws = ws_dir if isinstance(ws_dir, Workspace) else Workspace(ws_dir)
    o7, c = ws.manifest('07_retraining')['outputs'], workspace_charter(ws)
    if 'ab_analysis' not in o7:      # no analysis ran: the train phase's own record (no challenger passed the gate, or a test is open)
        assert o7['phase'] in ('train', 'regate') and o7['decision'] == ('continue' if o7.get('ab_design') else 'keep'), o7.get('recommendation')
        assert o7['decision'] == 'continue' or 'challenger' not in aliases(ws), aliases(ws)
        return o7['decision']
    an = o7['ab_analysis']
    expected = decision_from_evidence(an, c.validation.non_inferiority_margin)
    assert o7['decision'] == expected, (o7['decision'], expected, an.get('reason'))
    last = [e for e in ws.audit.entries() if e['event'] == 'ab_decision'][-1]['details']
    assert last['decision'] == expected and last['status'] == an['status'], last
    al = aliases(ws)
    if expected == 'continue': assert an['information_fraction'] < 1 or an.get('looks'), an
    elif o7['decision_applied'] and expected == 'promote': assert al['champion'] == an['challenger_version'], al
    elif o7['decision_applied'] and expected == 'keep' and 'previous_version' not in an:
        assert al['champion'] == an['champion_version'] and 'challenger' not in al, al
    return expected


def poll(pred, timeout=60, step=0.1) -> bool:
    "Whether `pred()` turns true within `timeout` seconds, asked every `step` seconds."
    t0 = _time.monotonic()
    while _time.monotonic() - t0 < timeout:
        if pred(): return True
        _time.sleep(step)
    return False


def predict_all(url, records: list, chunk: int = 100) -> list:
    "The `/predict` answers of server `url` for `records`, posted `chunk` rows a request; every request must answer 200."
    import requests
    preds = []
    for i in range(0, len(records), chunk):
        r = requests.post(url + '/predict', json=records[i:i + chunk], timeout=60)
        assert r.status_code == 200, r.text[:500]
        preds += r.json()['predictions']
    return preds
