"""Serving throughput with 1 vs 2 server processes on one PostgreSQL prediction log (run on demand, not by pytest):

    python tests/benchmarks/bench_replicas.py [--seconds 15] [--rounds 3] [--connections 32] [--out replicas.json]

Same machine, same run, same registered Adult model (the stand-in HistGradientBoosting pipeline, 100 iterations),
same load generator (`wrk`, Debian's package: one Adult test row per POST /predict, 2 threads), same PostgreSQL
server (Debian's, started here on 127.0.0.1, fsync on). Configurations, interleaved round by round so that both see
the same machine load: `mlcycle serve` (one process) and `mlcycle serve --workers 2` (two processes on one port,
each with its own batcher and log writer). Every 200 is a committed row in the log. Reports medians over rounds."""
import argparse, json, os, resource, statistics, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import free_port, postgres, start, stop, wait, wrk   # noqa: E402


def demo_champion(workspace=None):
    "A scratch workspace whose @champion is the deployment notebook's stand-in Adult model; returns (workspace, version)."
    from mlcycle.core import Workspace
    from mlcycle.deploy import demo_model_version, promote, scratch_workspace
    from mlcycle.feasibility import run_through_data
    home = run_through_data(None, Workspace(workspace or tempfile.mkdtemp(prefix='bench-home-')), log=lambda *_: None)
    ws = scratch_workspace(home)
    v = demo_model_version(ws, max_iter=100)
    promote(ws, v, reason='benchmark')
    return ws, v


def tree_cpu(pid):
    "CPU seconds (user + system) used so far by process `pid` and its children (uvicorn's workers)."
    import psutil
    try:
        procs = [psutil.Process(pid)]; procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess: return 0.0
    total = 0.0
    for q in procs:
        try: t = q.cpu_times(); total += t.user + t.system
        except psutil.NoSuchProcess: pass
    return total


def log_rows(url):
    import sqlalchemy as sa
    eng = sa.create_engine(url)
    try:
        with eng.connect() as c: return c.execute(sa.text('SELECT count(*) FROM predictions')).scalar_one()
    finally: eng.dispose()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--workspace', default=None, help='a workspace where stage 02 ran (default: a new one)')
    ap.add_argument('--seconds', type=int, default=15); ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--connections', type=int, default=32); ap.add_argument('--out', default=None)
    a = ap.parse_args()
    from mlcycle.data import adult
    ws, v = demo_champion(a.workspace)
    body = json.dumps(json.loads(adult('test').head(1).drop(columns=['income']).to_json(orient='records'))).encode()
    url, down = postgres()
    if url is None: raise SystemExit('PostgreSQL binaries not found (apt-get install postgresql)')
    env = {k: v for k, v in os.environ.items() if k not in ('MLFLOW_TRACKING_URI', 'MLCYCLE_PREDICTION_LOG_URL')}
    configs = {'1 process': [], '2 workers': ['--workers', '2']}
    runs = {k: [] for k in configs}
    res = {'machine': {'cpus': os.cpu_count(), 'load_avg_at_start': os.getloadavg()}, 'connections': a.connections, 'seconds': a.seconds}
    try:
        for rnd in range(a.rounds):
            for name, extra in (configs.items() if rnd % 2 == 0 else reversed(configs.items())):
                port = free_port()
                p = start([sys.executable, '-c', 'from mlcycle.serve import cli_main; cli_main()', 'serve', '--workspace', str(ws.root),
                           '--port', str(port), '--log-url', url, *extra], env, ws.root/f'serve-{rnd}-{port}.log')
                try:
                    u = f'http://127.0.0.1:{port}/predict'
                    wait(f'http://127.0.0.1:{port}/ready')
                    before = log_rows(url)
                    wrk(u, body, a.connections, 3)                      # warm up (both workers load their models lazily on first batches)
                    load0, cpu0, kids0, t0 = os.getloadavg()[0], tree_cpu(p.pid), resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
                    r = wrk(u, body, a.connections, a.seconds)
                    wall, kids1 = time.monotonic() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
                    r['server_cores_used'] = round((tree_cpu(p.pid) - cpu0) / wall, 2)     # CPU seconds per second of the measured window
                    r['wrk_cores_used'] = round((kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime) / wall, 2)
                    r['load_avg_1min'] = [round(load0, 1), round(os.getloadavg()[0], 1)]
                    time.sleep(1)
                    r['log_rows_added'] = log_rows(url) - before
                    runs[name].append(r)
                    print(json.dumps({'round': rnd, 'config': name, **r}), flush=True)
                finally: stop(p)
    finally: down()
    summary = {}
    for name, rs in runs.items():
        summary[name] = {k: statistics.median(x[k] for x in rs) for k in ('requests_per_s', 'p50_ms', 'p99_ms', 'server_cores_used', 'wrk_cores_used')}
        summary[name]['non_2xx'] = sum(x['non_2xx'] for x in rs)
    summary['ratio_2_workers_vs_1'] = summary['2 workers']['requests_per_s'] / summary['1 process']['requests_per_s']
    per_round = [w['requests_per_s'] / o['requests_per_s'] for w, o in zip(runs['2 workers'], runs['1 process'])]
    summary['ratio_per_round'] = [round(x, 2) for x in per_round]; summary['median_ratio_per_round'] = statistics.median(per_round)
    res.update(runs=runs, summary=summary)
    res['machine']['load_avg_at_end'] = os.getloadavg()
    print(json.dumps(summary, indent=2))
    if a.out: Path(a.out).write_text(json.dumps(res, indent=2))


if __name__ == '__main__':
    main()
