"""Fair service under load (issue 32, item 4), run on demand, not by pytest:

    python tests/benchmarks/bench_fairness.py --workspace DIR [--rounds 5] [--seconds 8] [--out fairness.json]

One `mlcycle serve` on the workspace's @champion (the bundled charter's, as `bench_serving.py` builds it: `mlcycle run
--stages 01-05 --no-circle`, run here in a new workspace when DIR has none), prediction log on. Each round, in this order:

- alone: one 10,000-row request on the otherwise idle server (what the chunking costs a large request);
- quiet: a one-row client alone (one keep-alive connection, one request after the other);
- bulk: the same one-row client while 4 clients send 10,000-row /predict bodies (the largest allowed) back to back;
- explain: the same while 8 connections send 100-row /predict?explain=true requests back to back (after a 429 or
  503, a load client waits the 1 s of Retry-After, as a well-behaved client does).

The load runs in a child process (asyncio, raw sockets), the one-row client in this one, so neither waits for the
other's interpreter. The verdict, per phase, on the median over rounds: the one-row client's p99 is at most 100 ms
and at most twice the quiet p99 of the same run. `--code DIR` serves the package from another checkout (to measure
the code before a change with the same clients). Only 127.0.0.1 is used; every phase is bounded in time."""
import argparse, asyncio, json, multiprocessing as mp, os, socket, subprocess, sys, time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_serving import champion_workspace, free_port, start, stop, wait   # noqa: E402
sys.path.insert(0, str(Path(__file__).parents[1]))
from loadgen import post_raw as post   # noqa: E402


async def _aconn(port, path, body, until, out):
    reader, writer = await asyncio.open_connection('127.0.0.1', port, limit=1 << 24)
    head = (b'POST ' + path + b' HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ' + str(len(body)).encode() + b'\r\n\r\n')
    try:
        while time.monotonic() < until:
            t0 = time.perf_counter()
            writer.write(head + body); await writer.drain()
            status = int((await reader.readline()).split()[1]); n = 0
            while (line := await reader.readline()) not in (b'\r\n', b''):
                k, _, v = line.partition(b':')
                if k.strip().lower() == b'content-length': n = int(v)
            await reader.readexactly(n)
            out.append((status, time.perf_counter() - t0))
            if status in (429, 503): await asyncio.sleep(1.0)      # as Retry-After says
    finally: writer.close()


def load(port, path, body, connections, seconds, q):
    "Child process: `connections` keep-alive connections posting `body` back to back for `seconds`; puts [(status, s)] on `q`."
    out = []
    async def main():
        until = time.monotonic() + seconds
        await asyncio.gather(*[_aconn(port, path, body, until, out) for _ in range(connections)], return_exceptions=True)
    asyncio.run(main()); q.put(out)


def one_row_client(port, body, seconds) -> np.ndarray:
    "Latencies (ms) of one-row requests, one after the other on one connection, for `seconds`; every answer must be 200."
    lat, until = [], time.monotonic() + seconds
    with socket.create_connection(('127.0.0.1', port), timeout=60) as sock:
        while time.monotonic() < until:
            t0 = time.perf_counter(); status, _ = post(sock, b'/predict', body)
            assert status == 200, status
            lat.append((time.perf_counter() - t0) * 1000)
    return np.array(lat)


def phase(port, one, seconds, load_args=None) -> dict:
    q, p = mp.Queue(), None
    if load_args:
        p = mp.Process(target=load, args=(port, *load_args, seconds + 1.5, q)); p.start()
        time.sleep(1.5)                                     # the load is under way before the one-row client starts
    t_start = time.perf_counter(); lat = one_row_client(port, one, seconds); t_end = time.perf_counter()
    res = {'t_start': t_start, 't_end': t_end,       # on the machine's monotonic clock, for probe_log_waits.py
           'one_row_requests': len(lat), 'p50_ms': float(np.percentile(lat, 50)), 'p99_ms': float(np.percentile(lat, 99)),
           'max_ms': float(lat.max())}
    if p is not None:
        out = q.get(timeout=120); p.join(30)
        st = [s for s, _ in out]
        res.update(load_requests=len(out), load_status={str(k): st.count(k) for k in sorted(set(st))},
                   load_p50_s=float(np.median([d for _, d in out])) if out else None)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--workspace', default=None, help='a workspace where `mlcycle run --stages 01-05 --no-circle` ran (default: run it in a new one)')
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--seconds', type=float, default=8.0, help='seconds the one-row client runs in each phase')
    ap.add_argument('--code', default=None, help='serve the mlcycle package of this checkout instead (PYTHONPATH), e.g. the code before a change')
    ap.add_argument('--serve-args', default='', help='extra `mlcycle serve` arguments, space-separated')
    ap.add_argument('--switch-interval-ms', type=float, default=None, help="set the server's sys.setswitchinterval (an experiment)")
    ap.add_argument('--out', default=None)
    a = ap.parse_args()
    from mlcycle.data import adult
    home = champion_workspace(a.workspace)
    recs = json.loads(adult('test').drop(columns=['income']).to_json(orient='records'))
    one = json.dumps(recs[7:8]).encode()
    big = json.dumps([recs[k % len(recs)] for k in range(10_000)]).encode()
    hundred = json.dumps(recs[:100]).encode()
    port = free_port()
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MLCYCLE_ADMIN_TOKEN': 'bench-admin-token-0123456789'}
    env.pop('MLFLOW_TRACKING_URI', None)
    log = Path(home.root)/f'bench-fairness-{port}.log'
    db = Path(home.root)/'predictions.db'
    pre = f'import sys; sys.setswitchinterval({a.switch_interval_ms / 1000}); ' if a.switch_interval_ms else ''
    if a.code: pre += f'import sys; sys.path.insert(0, {str(Path(a.code).resolve())!r}); '    # before the current folder `python -c` puts first
    srv = start([sys.executable, '-c', pre + 'from mlcycle.serve import cli_main; cli_main()', 'serve', '--workspace', str(home.root),
                 '--port', str(port), '--alias-poll-seconds', '0', *a.serve_args.split()], env, log)
    res = {'machine': {'cpus': os.cpu_count(), 'load_avg_at_start': os.getloadavg()}, 'workspace': str(home.root),
           'code': a.code or 'this checkout', 'serve_args': a.serve_args, 'big_body_bytes': len(big), 'rounds': []}
    try:
        wait(f'http://127.0.0.1:{port}/ready')
        if a.code: res['code_check'] = subprocess.run([sys.executable, '-c', pre + 'import mlcycle; print(mlcycle.__file__)'], capture_output=True, text=True).stdout.strip()
        one_row_client(port, one, 2)                        # warm-up
        for r in range(a.rounds):
            size0 = sum(f.stat().st_size for f in db.parent.glob('predictions.db*'))
            with socket.create_connection(('127.0.0.1', port), timeout=120) as sock:     # one 10,000-row request, the server otherwise idle
                time.sleep(1.2); t0 = time.perf_counter(); st, _ = post(sock, b'/predict', big); alone = time.perf_counter() - t0
                assert st == 200, st
            rnd = {'big_alone_s': alone, 'quiet': phase(port, one, a.seconds),
                   'bulk': phase(port, one, a.seconds, (b'/predict', big, 4)),
                   'explain': phase(port, one, a.seconds, (b'/predict?explain=true', hundred, 8)),
                   'load_avg': os.getloadavg()}
            rnd['log_growth_mb'] = (sum(f.stat().st_size for f in db.parent.glob('predictions.db*')) - size0) / 1e6
            res['rounds'].append(rnd)
            print(f"round {r + 1}: " + ', '.join(f"{k} p50 {rnd[k]['p50_ms']:.1f} p99 {rnd[k]['p99_ms']:.1f} ms ({rnd[k]['one_row_requests']})"
                                                 for k in ('quiet', 'bulk', 'explain')) + f", load {rnd['load_avg'][0]:.2f}", flush=True)
    finally:
        stop(srv)
    med = lambda ph, k: float(np.median([x[ph][k] for x in res['rounds']]))
    summary = {ph: {k: med(ph, k) for k in ('p50_ms', 'p99_ms', 'max_ms', 'one_row_requests')} for ph in ('quiet', 'bulk', 'explain')}
    for ph in ('bulk', 'explain'):
        s = summary[ph]
        s['p99_over_quiet_p99'] = s['p99_ms'] / summary['quiet']['p99_ms']
        s['load_requests_per_round'] = med(ph, 'load_requests')
        s['ok'] = s['p99_ms'] <= 100 and s['p99_ms'] <= 2 * summary['quiet']['p99_ms']
    summary['big_alone_s'] = float(np.median([x['big_alone_s'] for x in res['rounds']]))
    summary['explain']['load_status_first_round'] = res['rounds'][0]['explain']['load_status']
    summary['bulk']['load_status_first_round'] = res['rounds'][0]['bulk']['load_status']
    res['summary'], res['machine']['load_avg_at_end'] = summary, os.getloadavg()
    print(json.dumps(summary, indent=1))
    if a.out: Path(a.out).write_text(json.dumps(res, indent=1))
    return 0 if all(summary[ph]['ok'] for ph in ('bulk', 'explain')) else 1


if __name__ == '__main__':
    sys.exit(main())
