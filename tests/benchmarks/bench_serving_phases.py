"""Where a served request's time goes (run on demand, not by pytest): `mlcycle serve` in a process with timers on each
garbage collection (`gc.callbacks`) and, unless `--light`, on parsing, batch scoring, log commits, each request and the
event loop's lag; `wrk` loads it line by line in the order given.

    python tests/benchmarks/bench_serving_phases.py --workspace WS [--order inv:8:3,inv:1:15,inv:32:15,pred:1:15,pred:32:15] [--light]

WS is a workspace where `mlcycle run --stages 01-05 --no-circle` ran. A line is `route:connections:seconds` (`inv` is
`/invocations` with `dataframe_split`, `pred` is `/predict`; one Adult test row per request). `--light` times only the
full (generation-2) collections, so the timers' own records do not move when the collector runs. Prints wrk's figures
per line, each full collection with the line it fell in, and the slowest of each phase. This found the `/invocations`
p99 tail of reports/BENCHMARKS.md: one full collection in the first seconds of traffic."""
import argparse, asyncio, gc, json, os, sys, tempfile, threading, time
from pathlib import Path

pc = time.perf_counter


def instrumented_server(out: str, light: bool, argv: list):
    "Run `mlcycle serve` (argv) with timers; write the records to `out` every 2 s."
    ev = {'gc': [], 'score': [], 'commit': [], 'req': [], 'parse': [], 'lag': []}
    began = {}
    def on_gc(phase, info):
        if phase == 'start': began['t'] = pc()
        elif not light or info['generation'] == 2: ev['gc'].append((began['t'], pc() - began['t'], info['generation']))
    gc.callbacks.append(on_gc)
    import mlcycle.batching as B, mlcycle.predlog as P, mlcycle.request as R, mlcycle.serve as S
    def timed(key, f):
        def g(*a, **k):
            t = pc(); r = f(*a, **k); ev[key].append((t, pc() - t)); return r
        return g
    if not light:
        B.score_batch = timed('score', B.score_batch)
        P.PredictionLog._commit = timed('commit', P.PredictionLog._commit)
        R.RowParser.parse = timed('parse', R.RowParser.parse)
        predict = S.ModelServer.predict
        async def timed_predict(self, records, t0=None):
            t = t0 or pc(); r = await predict(self, records, t0); ev['req'].append((t, pc() - t)); return r
        S.ModelServer.predict = timed_predict
        start = S.ModelServer.start
        async def timed_start(self):
            await start(self)
            async def lag():
                while True:
                    t = pc(); await asyncio.sleep(0.005)
                    if (d := pc() - t - 0.005) > 0.02: ev['lag'].append((t, d))
            self._lag = asyncio.get_running_loop().create_task(lag())
        S.ModelServer.start = timed_start
    def dump():
        while True:
            time.sleep(2)
            Path(out + '.tmp').write_text(json.dumps({k: list(v) for k, v in ev.items()})); os.replace(out + '.tmp', out)
    threading.Thread(target=dump, daemon=True).start()
    S.cli_main(argv)


def report(ev: dict, marks: list):
    import numpy as np
    t0 = marks[0][1]
    line = lambda t: next((m[0] for m in marks if m[1] <= t <= m[2]), 'before traffic')
    for t, d, g in ev['gc']:
        if g == 2 and t > t0 - 1: print(f'full collection at {t - t0:6.2f} s: {d * 1000:7.1f} ms  ({line(t)})')
    for k in ('parse', 'score', 'commit', 'req', 'lag'):
        if ev[k]:
            d = np.array([x[1] for x in ev[k]]) * 1000; t, s = max(ev[k], key=lambda x: x[1])
            print(f'{k:7} n {len(d):6}  p50 {np.percentile(d, 50):7.2f}  p99 {np.percentile(d, 99):7.2f}  max {s * 1000:7.1f} ms at {t - t0:6.2f} s ({line(t)})')


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--workspace', required=True)
    ap.add_argument('--order', default='inv:8:3,inv:1:15,inv:32:15,pred:1:15,pred:32:15')
    ap.add_argument('--light', action='store_true')
    ap.add_argument('--serve', nargs=argparse.REMAINDER, help=argparse.SUPPRESS)   # internal: the instrumented server
    a = ap.parse_args()
    if a.serve is not None: return instrumented_server(os.environ['PHASES_OUT'], a.light, a.serve)
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_serving import free_port, start, stop, wait, wrk
    from mlcycle.charter import workspace_charter
    from mlcycle.core import Workspace
    from mlcycle.data import adult
    ws = Workspace(a.workspace)
    head = adult('test').head(1).drop(columns=[workspace_charter(ws).data.target])
    row = json.loads(head.to_json(orient='records'))
    split = json.dumps({'dataframe_split': json.loads(head.to_json(orient='split', index=False))}).encode()
    tmp = Path(tempfile.mkdtemp(prefix='bench-phases-'))
    env = {k: v for k, v in os.environ.items() if k != 'MLFLOW_TRACKING_URI'}
    env['PHASES_OUT'] = out = str(tmp/'phases.json')
    port = free_port()
    p = start([sys.executable, __file__, '--workspace', str(ws.root)] + (['--light'] if a.light else []) +
              ['--serve', 'serve', '--workspace', str(ws.root), '--port', str(port), '--log-url', f'sqlite:///{tmp}/predictions.db'],
              env, tmp/'serve.log')
    marks = []
    try:
        wait(f'http://127.0.0.1:{port}/ready')
        for step in a.order.split(','):
            route, c, s = step.split(':')
            t = pc()
            r = wrk(f'http://127.0.0.1:{port}' + ('/invocations' if route == 'inv' else '/predict'), split if route == 'inv' else json.dumps(row).encode(), int(c), int(s))
            marks.append((step, t, pc()))
            print(f"{step:12} {r['requests_per_s']:7.1f} requests/s  p50 {r['p50_ms']:7.1f}  p90 {r['p90_ms']:7.1f}  p99 {r['p99_ms']:7.1f} ms  "
                  f"n {r['requests']}  non-2xx {r['non_2xx']}  load average {os.getloadavg()[0]:.2f}", flush=True)
        time.sleep(3)
    finally: stop(p)
    report(json.loads(Path(out).read_text()), marks)


if __name__ == '__main__':
    main()
