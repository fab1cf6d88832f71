"""Stage-05 serving benchmark (run on demand, not by pytest):

    python tests/benchmarks/bench_serving.py [--workspace DIR] [--seconds 15] [--out results.json]

Same machine, same run, the models users serve:
- the champion that `mlcycle run --stages 01-05 --no-circle` selects and registers on the bundled charter (on Adult:
  HistGradientBoosting + ThresholdOptimizer, a `FairThresholdClassifier`), from DIR when it already ran there, else
  from a new workspace where this script runs that command first;
- beside it, that champion's own base pipeline without the post-processor (registered in a scratch copy of DIR);
- with `--models`, also (issue 31) `lightgbm`: a LightGBM pipeline (stage 03's `candidate_pipeline`, its family's defaults)
  fitted on DIR's train split, and `derived`: the champion's family over a `derived_preprocessor` whose features are chosen
  from the contract alone (log1p of the non-negative numbers, ratio and difference of the first two, bins at fixed
  quartile edges and in quantile bins), each registered and promoted in its own scratch copy of DIR;
for each of them, in the same run:
- in-process predict_proba + predict (the limit),
- the peer: `mlflow models serve --env-manager local` on /invocations, serving the same registered version,
- `mlcycle serve` on /invocations and /predict (prediction log on: a fresh SQLite WAL file per server),
- load from `wrk` (Debian package), one Adult test row per request: 1 connection (sequential) and 32 connections,
and the prediction-log write rate on SQLite and on PostgreSQL (a server started here, Debian's `postgresql`).
`--peer-omp1` adds the peer with OpenMP limited to one thread. Only 127.0.0.1 is used; every run is bounded in time."""
import argparse, json, os, re, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def wait(url, timeout=300, proc=None):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None: raise RuntimeError(f'{url}: the server exited with {proc.returncode}')
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200: return
        except OSError: time.sleep(0.2)
    raise RuntimeError(f'{url} not up after {timeout}s')


def wrk(url, body: bytes, connections: int, seconds: int):
    "Run wrk with a POST body; returns requests/s, latency percentiles (ms) and error counts."
    with tempfile.NamedTemporaryFile('w', suffix='.lua', delete=False) as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = ' + json.dumps(body.decode()) + '\n')
        script = f.name
    threads = min(2, connections)
    out = subprocess.run(['wrk', '-t', str(threads), '-c', str(connections), '-d', f'{seconds}s', '--timeout', '10s', '--latency', '-s', script, url],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    os.unlink(script)
    def ms(tok):
        v, unit = re.match(r'([\d.]+)(us|ms|s)', tok).groups()
        return float(v) * {'us': 1e-3, 'ms': 1, 's': 1000}[unit]
    pct = {p: ms(v) for p, v in re.findall(r'^\s+(50|75|90|99)%\s+(\S+)', out, re.M)}
    rps = float(re.search(r'Requests/sec:\s+([\d.]+)', out).group(1))
    total = int(re.search(r'(\d+) requests in', out).group(1))
    non2xx = int(m.group(1)) if (m := re.search(r'Non-2xx or 3xx responses: (\d+)', out)) else 0
    sock = re.search(r'Socket errors: (.*)', out)
    return {'requests_per_s': rps, 'p50_ms': pct.get('50'), 'p90_ms': pct.get('90'), 'p99_ms': pct.get('99'), 'requests': total,
            'non_2xx': non2xx, 'socket_errors': sock.group(1) if sock else '', 'connections': connections, 'seconds': seconds}


def start(cmd, env, log):
    return subprocess.Popen(cmd, env=env, stdout=open(log, 'wb'), stderr=subprocess.STDOUT, start_new_session=True)


def stop(p):
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try: p.wait(30)
        except subprocess.TimeoutExpired: os.killpg(p.pid, signal.SIGKILL); p.wait(10)


def in_process(model, X):
    def med(f, n):
        ts = []
        for _ in range(n): t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
        return float(np.median(ts))
    one = med(lambda: (model.predict_proba(X.iloc[[0]]), model.predict(X.iloc[[0]])), 30)
    big = X.sample(4096, replace=True, random_state=0)
    b = med(lambda: (model.predict_proba(big), model.predict(big)), 3)
    return {'one_row_predict_proba_and_predict_ms': one * 1000, 'batch_4096_rows_per_s': 4096 / b, 'batch_4096_us_per_row': b / 4096 * 1e6}


def log_rate(url, rows=200_000, per_submit=64, threads=16):
    "Rows/s through PredictionLog (group commit), `per_submit` rows per request from `threads` submitters."
    from mlcycle.predlog import PredictionLog
    log = PredictionLog(url)
    feats = json.dumps({'age': 39.0, 'workclass': 'State-gov', 'education': 'Bachelors', 'sex': 'Male', 'hours_per_week': 40.0})
    def rows_for(k):
        return [{'request_id': f'b{k}-{i}', 'ts': time.time(), 'model_name': 'adult-income', 'model_version': '1', 'arm': 'champion',
                 'features': feats, 'probability': 0.42, 'label': 0, 'latency_ms': 3.2, 'flags': ''} for i in range(per_submit)]
    batches = [rows_for(k) for k in range(rows // per_submit)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex: list(ex.map(lambda b: log.submit(b).result(), batches))
    dt = time.perf_counter() - t0
    n, commits = log.rows_written, log.commits
    log.close()
    return {'rows': n, 'seconds': dt, 'rows_per_s': n / dt, 'commits': commits, 'rows_per_submit': per_submit, 'submitters': threads}


def postgres():
    import pwd
    bindir = next((d for d in sorted(Path('/usr/lib/postgresql').glob('*/bin'), reverse=True) if (d/'pg_ctl').exists()), None)
    if bindir is None: return None, None
    d = Path(tempfile.mkdtemp(prefix='bench-pg-')); pw = pwd.getpwnam('postgres'); os.chown(d, pw.pw_uid, pw.pw_gid)
    as_pg = ['runuser', '-u', 'postgres', '--'] if os.geteuid() == 0 else []
    port = free_port()
    subprocess.run(as_pg + [str(bindir/'initdb'), '-D', str(d/'data'), '-U', 'postgres', '--auth=trust'], check=True, capture_output=True)
    subprocess.run(as_pg + [str(bindir/'pg_ctl'), '-D', str(d/'data'), '-o', f'-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={d}',
                            '-l', str(d/'log'), '-w', 'start'], check=True, capture_output=True)
    def down():
        subprocess.run(as_pg + [str(bindir/'pg_ctl'), '-D', str(d/'data'), '-m', 'fast', '-w', 'stop'], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)
    return f'postgresql+psycopg://postgres@127.0.0.1:{port}/postgres', down


def champion_workspace(workspace=None):
    "A workspace with the champion `mlcycle run --stages 01-05 --no-circle` registered (the command runs here when it has not)."
    from mlcycle.core import Workspace
    root = Path(workspace or tempfile.mkdtemp(prefix='bench-run-'))
    if not (Workspace(root).has_stage('05_deployment') if root.exists() else False):
        exe = shutil.which('mlcycle', path=f'{Path(sys.executable).parent}:{os.environ["PATH"]}')
        subprocess.run([exe, 'run', '--stages', '01-05', '--no-circle', '-w', str(root), '-r', str(root/'reports'), '--approver', 'Benchmark Reviewer'],
                       check=True, timeout=3600)     # the bundled charter is risk: high: its champion needs a named approval
    return Workspace(root)


def plain_workspace(home, champion, family: str):
    "A scratch copy of `home` whose @champion is the champion's base pipeline (no post-processor); returns (workspace, version)."
    from mlcycle.charter import workspace_charter
    from mlcycle.core import read_json
    from mlcycle.data import feature_frame
    from mlcycle.deploy import promote, scratch_workspace
    from mlcycle.train import register_model
    base = getattr(champion, 'estimator', champion)
    ws, c = scratch_workspace(home), workspace_charter(home)
    splits = home.manifest('02_data')['outputs']['splits']
    X = feature_frame(home.load_snapshot(splits['train']['fingerprint']).head(50), read_json(home.root/'data'/'contract.json'))
    v = register_model(ws, c, base, X, {k: splits[k]['fingerprint'] for k in ('train', 'validation', 'test')}, family)
    promote(ws, v, force=True, reason="benchmark: the champion's base pipeline beside it")
    return ws, v


def _fit_variant(home, contract: dict, family: str):
    "A pipeline of `family` over `contract`'s preprocessor, fitted on `home`'s train split."
    from mlcycle.charter import workspace_charter
    from mlcycle.data import feature_frame
    from mlcycle.tasks import task_target
    from mlcycle.train import candidate_pipeline
    c = workspace_charter(home)
    train = home.load_snapshot(home.manifest('02_data')['outputs']['splits']['train']['fingerprint'])
    return candidate_pipeline(family, contract, seed=c.development.seed).fit(feature_frame(train, contract), task_target(c, train[c.data.target]))


def derived_from_contract(contract: dict, train) -> list:
    "Derived features chosen from the contract alone: log1p of non-negative numbers, ratio and difference of the first two, two kinds of bins."
    import pandas as pd
    num = [f for f in contract['features'] if contract['columns'][f]['kind'] == 'numeric']
    a, b = num[0], num[1]
    edges = sorted(set(float(q) for q in pd.to_numeric(train[a], errors='coerce').quantile([0.25, 0.5, 0.75]).dropna()))
    return ([{'name': f'log_{f}', 'kind': 'log1p', 'inputs': [f]} for f in num if contract['columns'][f]['min'] >= 0][:3] +
            [{'name': f'{a}_per_{b}', 'kind': 'ratio', 'inputs': [a, b]}, {'name': f'{a}_minus_{b}', 'kind': 'difference', 'inputs': [a, b]},
             {'name': f'{a}_band', 'kind': 'bins', 'inputs': [a], 'edges': edges}, {'name': f'{b}_quartile', 'kind': 'bins', 'inputs': [b], 'bins': 4}])


def variant_workspace(home, kind: str, champion_family: str):
    "A scratch copy of `home` whose @champion is the `lightgbm` or `derived` variant; returns (workspace, version, model)."
    from mlcycle.charter import workspace_charter
    from mlcycle.core import read_json
    from mlcycle.data import feature_frame
    from mlcycle.deploy import promote, scratch_workspace
    from mlcycle.train import register_model
    contract = read_json(home.root/'data'/'contract.json')
    splits = home.manifest('02_data')['outputs']['splits']
    train = home.load_snapshot(splits['train']['fingerprint'])
    if kind == 'lightgbm': model, family = _fit_variant(home, contract, 'lightgbm'), 'lightgbm'
    else:
        contract = {**contract, 'derived': derived_from_contract(contract, train)}
        model, family = _fit_variant(home, contract, champion_family), champion_family
    ws, c = scratch_workspace(home), workspace_charter(home)
    v = register_model(ws, c, model, feature_frame(train.head(50), contract), {k: splits[k]['fingerprint'] for k in ('train', 'validation', 'test')}, family)
    promote(ws, v, force=True, reason=f'benchmark: the {kind} variant')
    return ws, v, model


def peer(ws, name, version, split, seconds, extra_env=None, tag='peer'):
    "`mlflow models serve --env-manager local` on the registered version: sequential and 32-connection /invocations."
    env = {**os.environ, 'MLFLOW_TRACKING_URI': ws.tracking_uri, 'PATH': f'{Path(sys.executable).parent}:{os.environ["PATH"]}', **(extra_env or {})}
    port = free_port()
    p = start([sys.executable, '-m', 'mlflow', 'models', 'serve', '-m', f'models:/{name}/{version}', '--env-manager', 'local',
               '--host', '127.0.0.1', '-p', str(port)], env, ws.root/f'{tag}.log')
    try:
        wait(f'http://127.0.0.1:{port}/ping')
        u = f'http://127.0.0.1:{port}/invocations'
        wrk(u, split, 1, 3)   # warm up
        return {'sequential': wrk(u, split, 1, seconds), 'c32': wrk(u, split, 32, seconds)}
    finally: stop(p)


_V2_TYPES = {'long': ('INT64', int), 'integer': ('INT32', int), 'double': ('FP64', float), 'float': ('FP32', float),
             'boolean': ('BOOL', bool), 'string': ('BYTES', str)}

def v2_body(head, model_uri: str) -> bytes:
    "One row in the V2 inference protocol (MLServer's /v2/models/<name>/infer), decoded as a pandas DataFrame, typed as the version's signature."
    import mlflow
    schema = {c.name: c.type.name for c in mlflow.models.get_model_info(model_uri).signature.inputs.inputs}
    inputs = []
    for col, v in head.iloc[0].items():
        if col not in schema: continue
        dt, cast = _V2_TYPES.get(schema[col], ('BYTES', str))
        inputs.append({'name': col, 'shape': [1, 1], 'datatype': dt, 'data': [cast(v)]})
    return json.dumps({'inputs': inputs, 'parameters': {'content_type': 'pd'}}).encode()


def mlserver_peer(ws, name, version, split, v2, seconds, python):
    """MLServer 1.7 with its MLflow runtime (in its own virtual environment, `python`) serving the same registered version,
    adaptive batching on (up to 32 rows, 10 ms): /invocations (MLflow's body) and the V2 /infer route, sequential and 32 connections.
    Models that hold mlcycle types (derived features, post-processors) need mlcycle importable there too (PYTHONPATH or installed)."""
    d = Path(tempfile.mkdtemp(prefix='bench-mlserver-'))
    port, grpc, metrics = free_port(), free_port(), free_port()
    # parallel_workers 0: the model runs in the server's process (mlserver 1.7's worker pool stops at start with uvloop 0.21+,
    # "There is no current event loop"); on 2 cores its default pool is one worker process anyway
    (d/'settings.json').write_text(json.dumps({'http_port': port, 'grpc_port': grpc, 'metrics_port': metrics, 'host': '127.0.0.1',
                                               'parallel_workers': 0}))
    (d/'model-settings.json').write_text(json.dumps({'name': 'model', 'implementation': 'mlserver_mlflow.MLflowRuntime',
                                                     'max_batch_size': 32, 'max_batch_time': 0.01,
                                                     'parameters': {'uri': f'models:/{name}/{version}'}}))
    env = {**os.environ, 'MLFLOW_TRACKING_URI': ws.tracking_uri, 'PATH': f'{Path(python).parent}:{os.environ["PATH"]}'}
    p = start([str(Path(python).parent/'mlserver'), 'start', str(d)], env, ws.root/'mlserver.log')
    try:
        wait(f'http://127.0.0.1:{port}/v2/models/model/ready', timeout=300, proc=p)
        inv, infer = f'http://127.0.0.1:{port}/invocations', f'http://127.0.0.1:{port}/v2/models/model/infer'
        wrk(infer, v2, 8, 3)   # warm up
        return {'sequential': wrk(inv, split, 1, seconds), 'c32': wrk(inv, split, 32, seconds),
                'v2_sequential': wrk(infer, v2, 1, seconds), 'v2_c32': wrk(infer, v2, 32, seconds)}
    finally: stop(p); shutil.rmtree(d, ignore_errors=True)


def ours(ws, row, split, seconds):
    "`mlcycle serve` on the workspace's @champion, a fresh SQLite prediction log: /invocations and /predict, sequential and 32 connections."
    from mlcycle.predlog import read_log
    env = {k: v for k, v in os.environ.items() if k != 'MLFLOW_TRACKING_URI'}
    env['PATH'] = f'{Path(sys.executable).parent}:{os.environ["PATH"]}'
    log_url = f'sqlite:///{tempfile.mkdtemp(prefix="bench-plog-")}/predictions.db'
    port, log = free_port(), ws.root/'serve.log'
    p = start([sys.executable, '-c', 'from mlcycle.serve import cli_main; cli_main()', 'serve', '--workspace', str(ws.root), '--port', str(port),
               '--log-url', log_url], env, log)
    try:
        wait(f'http://127.0.0.1:{port}/ready')
        u, one = f'http://127.0.0.1:{port}', json.dumps(row).encode()
        wrk(u + '/invocations', split, 8, 3)   # warm up
        res = {'invocations_sequential': wrk(u + '/invocations', split, 1, seconds), 'invocations_c32': wrk(u + '/invocations', split, 32, seconds),
               'predict_sequential': wrk(u + '/predict', one, 1, seconds), 'predict_c32': wrk(u + '/predict', one, 32, seconds)}
        with urllib.request.urlopen(u + '/metrics') as r: m = r.read().decode()
        res['rows_logged'] = int(re.search(r'mlcycle_predictions_total\{version="\d+",arm="champion"\} (\d+)', m).group(1))
        res['mean_batch_rows'] = float(re.search(r'mlcycle_batch_rows_sum\{scope="model"\} ([\d.]+)', m).group(1)) / \
                                 float(re.search(r'mlcycle_batch_rows_count\{scope="model"\} (\d+)', m).group(1))
    finally: stop(p)
    res['log_rows_in_db'] = len(read_log(log_url, features=False))
    res['scorer'] = next((l.strip() for l in log.read_text(errors='replace').splitlines() if 'preprocessor:' in l), '')
    return res


def ratios(pe, ml):
    return {'throughput_c32_vs_peer': ml['invocations_c32']['requests_per_s'] / pe['c32']['requests_per_s'],
            'p99_c32_ms': ml['invocations_c32']['p99_ms'],
            'sequential_p50_vs_peer': ml['invocations_sequential']['p50_ms'] / pe['sequential']['p50_ms'],
            'predict_throughput_c32_vs_peer': ml['predict_c32']['requests_per_s'] / pe['c32']['requests_per_s'],
            'predict_sequential_p50_vs_peer': ml['predict_sequential']['p50_ms'] / pe['sequential']['p50_ms']}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--workspace', default=None, help='a workspace where `mlcycle run --stages 01-05 --no-circle` ran (default: run it in a new one)')
    ap.add_argument('--seconds', type=int, default=15)
    ap.add_argument('--peer-omp1', action='store_true', help='also measure the peer with OMP_NUM_THREADS=1')
    ap.add_argument('--out', default=None)
    ap.add_argument('--mlserver-python', default=None, help="the python of a virtual environment with mlserver 1.7 and mlserver-mlflow: adds that peer")
    ap.add_argument('--no-log-rate', action='store_true', help='skip the prediction-log write rates (SQLite, PostgreSQL)')
    ap.add_argument('--models', default='champion,plain', help='which of champion, plain, lightgbm, derived to measure (comma-separated)')
    a = ap.parse_args()
    import mlflow
    from mlcycle.charter import workspace_charter
    from mlcycle.core import read_json, setup_mlflow
    from mlcycle.data import adult, feature_frame
    home = champion_workspace(a.workspace)
    c = workspace_charter(home)
    setup_mlflow(home, c.name)
    v_champ = mlflow.MlflowClient().get_model_version_by_alias(c.name, 'champion').version
    champion = mlflow.sklearn.load_model(f'models:/{c.name}/{v_champ}')
    family = mlflow.MlflowClient().get_model_version(c.name, v_champ).tags.get('model_family', '').split('+')[0]
    models = a.models.split(',')
    chosen = [('champion', home, v_champ, champion)] if 'champion' in models else []
    if 'plain' in models:
        ws_plain, v_plain = plain_workspace(home, champion, family)
        setup_mlflow(ws_plain, c.name)
        chosen.append(('plain', ws_plain, v_plain, mlflow.sklearn.load_model(f'models:/{c.name}/{v_plain}')))
    for kind in ('lightgbm', 'derived'):
        if kind in models: chosen.append((kind, *variant_workspace(home, kind, family or 'hist_gradient_boosting')))
    test = adult('test')
    X = feature_frame(test, read_json(home.root/'data'/'contract.json'))
    head = test.head(1).drop(columns=[c.data.target])
    row = json.loads(head.to_json(orient='records'))
    split = json.dumps({'dataframe_split': json.loads(head.to_json(orient='split', index=False))}).encode()
    res = {'machine': {'cpus': os.cpu_count(), 'load_avg_at_start': os.getloadavg()}, 'workspace': str(home.root),
           'command': 'python tests/benchmarks/bench_serving.py ' + ' '.join(sys.argv[1:])}
    for key, ws, v, model in chosen:
        r = res[key] = {'model': type(model).__name__ + (f' over {type(model.estimator).__name__}' if hasattr(model, 'estimator') else ''),
                        'version': str(v), 'in_process': in_process(model, X)}
        r['peer'] = peer(ws, c.name, v, split, a.seconds)
        if a.peer_omp1: r['peer_omp1'] = peer(ws, c.name, v, split, a.seconds, {'OMP_NUM_THREADS': '1'}, 'peer_omp1')
        r['mlcycle'] = ours(ws, row, split, a.seconds)
        r['ratios'] = ratios(r['peer'], r['mlcycle'])
        if a.mlserver_python:
            setup_mlflow(ws, c.name)
            try: r['mlserver'] = mlserver_peer(ws, c.name, v, split, v2_body(head, f'models:/{c.name}/{v}'), a.seconds, a.mlserver_python)
            except Exception as e: r['mlserver'] = {'error': f'{type(e).__name__}: {e}'}; continue   # its log: mlserver.log in the workspace
            best = max((r['mlserver'][k] for k in ('c32', 'v2_c32') if not r['mlserver'][k]['non_2xx']), key=lambda x: x['requests_per_s'])   # answered lines only
            r['ratios_mlserver'] = {'throughput_c32_vs_mlserver_best': r['mlcycle']['invocations_c32']['requests_per_s'] / best['requests_per_s'],
                                    'p99_c32_ms': r['mlcycle']['invocations_c32']['p99_ms'], 'mlserver_best_p99_c32_ms': best['p99_ms']}
    if a.no_log_rate: return _write(res, a.out)
    # the prediction log alone
    res['log_sqlite'] = log_rate(f'sqlite:///{tempfile.mkdtemp(prefix="bench-log-")}/p.db')
    url, down = postgres()
    if url:
        try: res['log_postgresql'] = log_rate(url)
        finally: down()
    _write(res, a.out)


def _write(res, out):
    res['machine']['load_avg_at_end'] = os.getloadavg()
    print(json.dumps(res, indent=2))
    if out: Path(out).write_text(json.dumps(res, indent=2))


if __name__ == '__main__':
    main()
