"""Stage-05 serving benchmark (run on demand, not by pytest):

    python tests/benchmarks/bench_serving.py [--workspace DIR] [--seconds 15] [--out results.json]

Same machine, same run, same registered Adult model (HistGradientBoosting pipeline, 100 iterations):
- in-process predict_proba (the limit),
- the peer: `mlflow models serve --env-manager local` on /invocations,
- `mlcycle serve` on /predict and /invocations (prediction log on: SQLite WAL in the workspace),
- load from `wrk` (Debian package): 1 connection (sequential) and 32 connections,
- prediction-log write rate on SQLite and on PostgreSQL (a server started here, Debian's `postgresql`).
Only 127.0.0.1 is used; every run is bounded in time."""
import argparse, json, os, re, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def wait(url, timeout=300):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
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
    one = med(lambda: model.predict_proba(X.iloc[[0]]), 200)
    big = X.sample(4096, replace=True, random_state=0)
    b = med(lambda: model.predict_proba(big), 10)
    return {'one_row_predict_proba_ms': one * 1000, 'batch_4096_rows_per_s': 4096 / b, 'batch_4096_us_per_row': b / 4096 * 1e6}


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


def demo_champion(workspace=None):
    "A scratch workspace whose @champion is the deployment notebook's stand-in Adult model; returns (workspace, version)."
    from mlcycle.core import Workspace
    from mlcycle.data import run_data_stage
    from mlcycle.deploy import demo_model_version, promote, scratch_workspace
    home = Workspace(workspace or tempfile.mkdtemp(prefix='bench-home-'))
    if not home.has_stage('02_data'): run_data_stage(workspace=home)
    ws = scratch_workspace(home)
    v = demo_model_version(ws, max_iter=100)
    promote(ws, v, reason='benchmark')
    return ws, v


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--workspace', default=None, help='a workspace where stage 02 ran (default: a new one)')
    ap.add_argument('--seconds', type=int, default=15)
    ap.add_argument('--out', default=None)
    a = ap.parse_args()
    import mlflow
    from mlcycle.core import Workspace, read_json, setup_mlflow
    from mlcycle.data import adult, feature_frame, run_data_stage
    ws, v = demo_champion(a.workspace)
    setup_mlflow(ws, 'adult-income')
    model = mlflow.sklearn.load_model(f'models:/adult-income/{v}')
    contract = read_json(ws.root/'data'/'contract.json')
    test = adult('test')
    X = feature_frame(test, contract)
    res = {'machine': {'cpus': os.cpu_count(), 'load_avg_at_start': os.getloadavg()}, 'in_process': in_process(model, X)}
    row = json.loads(test.head(1).drop(columns=['income']).to_json(orient='records'))
    split = json.dumps({'dataframe_split': json.loads(test.head(1).drop(columns=['income']).to_json(orient='split', index=False))}).encode()
    env = {**os.environ, 'MLFLOW_TRACKING_URI': ws.tracking_uri, 'PATH': f'{Path(sys.executable).parent}:{os.environ["PATH"]}'}
    # the peer, as users run it, and with OpenMP limited to one thread (as mlcycle serve's scorer runs) for fairness
    for key, extra in (('peer', {}), ('peer_omp1', {'OMP_NUM_THREADS': '1'})):
        port = free_port()
        p = start([sys.executable, '-m', 'mlflow', 'models', 'serve', '-m', f'models:/adult-income/{v}', '--env-manager', 'local',
                   '--host', '127.0.0.1', '-p', str(port)], {**env, **extra}, ws.root/f'{key}.log')
        try:
            wait(f'http://127.0.0.1:{port}/ping')
            u = f'http://127.0.0.1:{port}/invocations'
            wrk(u, split, 1, 3)   # warm up
            res[key] = {'sequential': wrk(u, split, 1, a.seconds), 'c32': wrk(u, split, 32, a.seconds)}
        finally: stop(p)
    # mlcycle serve
    env.pop('MLFLOW_TRACKING_URI')
    port = free_port()
    p = start([sys.executable, '-c', 'from mlcycle.serve import cli_main; cli_main()', 'serve', '--workspace', str(ws.root), '--port', str(port)],
              env, ws.root/'serve.log')
    try:
        wait(f'http://127.0.0.1:{port}/ready')
        u = f'http://127.0.0.1:{port}'
        wrk(u + '/predict', json.dumps(row).encode(), 8, 3)   # warm up
        res['mlcycle'] = {'sequential': wrk(u + '/predict', json.dumps(row).encode(), 1, a.seconds),
                          'c32': wrk(u + '/predict', json.dumps(row).encode(), 32, a.seconds),
                          'invocations_sequential': wrk(u + '/invocations', split, 1, a.seconds),
                          'invocations_c32': wrk(u + '/invocations', split, 32, a.seconds)}
        with urllib.request.urlopen(u + '/metrics') as r: m = r.read().decode()
        res['mlcycle']['rows_logged'] = int(re.search(r'mlcycle_predictions_total\{version="\d+",arm="champion"\} (\d+)', m).group(1))
        res['mlcycle']['mean_batch_rows'] = float(re.search(r'mlcycle_batch_rows_sum\{scope="model"\} ([\d.]+)', m).group(1)) / \
                                            float(re.search(r'mlcycle_batch_rows_count\{scope="model"\} (\d+)', m).group(1))
    finally: stop(p)
    from mlcycle.predlog import read_log
    res['mlcycle']['log_rows_in_db'] = len(read_log(ws, features=False))
    # the prediction log alone
    res['log_sqlite'] = log_rate(f'sqlite:///{tempfile.mkdtemp(prefix="bench-log-")}/p.db')
    url, down = postgres()
    if url:
        try: res['log_postgresql'] = log_rate(url)
        finally: down()
    pe, ml = res['peer'], res['mlcycle']
    p1 = res['peer_omp1']
    res['ratios'] = {'throughput_c32_vs_peer': ml['c32']['requests_per_s'] / pe['c32']['requests_per_s'],
                     'sequential_p50_vs_peer': ml['sequential']['p50_ms'] / pe['sequential']['p50_ms'],
                     'throughput_c32_vs_peer_omp1': ml['c32']['requests_per_s'] / p1['c32']['requests_per_s'],
                     'sequential_p50_vs_peer_omp1': ml['sequential']['p50_ms'] / p1['sequential']['p50_ms']}
    res['machine']['load_avg_at_end'] = os.getloadavg()
    print(json.dumps(res, indent=2))
    if a.out: Path(a.out).write_text(json.dumps(res, indent=2))


if __name__ == '__main__':
    main()
