"""Where the one-row tail beside bulk clients goes (issue 32 item 4): `bench_fairness.py` run against a probed copy of
the package, then the probes matched to the benchmark's phases on the machine's monotonic clock. Run on demand:

    python tests/benchmarks/probe_log_waits.py --workspace DIR [--rounds 3] [--serve-args "--log-hold-ms 0"] [--out probes.json]

The copy (a temporary folder; the checkout is not changed) has two probes the product does not carry, because they
would sit on the serving path:
- in the server's event loop, a task that sleeps 1 ms and records how late it wakes (is the loop blocked while bulk
  bodies are relayed to the lane?);
- around each of the server's own prediction-log transactions, its start, its length and how long it waited for the log's
  lock file (`WriterLock.wait_s`), i.e. for a lane worker's transaction.
Both are written when the server shuts down. Prints, per phase: the loop's lateness and the commits' lengths and waits.
"""
import argparse, json, os, shutil, subprocess, sys, tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

EDITS = {
    'serve.py': [("""        yield
        await srv.stop()
        if warming is not None: warming.cancel()""",
                  """        import os as _os, time as _t, json as _j
        _lags = []
        async def _lagmon():
            while True:
                t = _t.perf_counter(); await asyncio.sleep(0.001); _lags.append((_t.perf_counter(), _t.perf_counter() - t - 0.001))
        _mon = asyncio.get_running_loop().create_task(_lagmon())
        yield
        _mon.cancel()
        from .predlog import _PROBE
        _j.dump({'loop': _lags, 'commits': _PROBE}, open(_os.environ['MLCYCLE_PROBE_OUT'] + f'.{_os.getpid()}.json', 'w'))
        await srv.stop()
        if warming is not None: warming.cancel()""")],
    'predlog.py': [("PredictionLog._run, PredictionLog._commit, PredictionLog._insert, PredictionLog.txn_rows, PredictionLog._unlock = _run, _commit, _insert, txn_rows, _unlock",
                    """PredictionLog._run, PredictionLog._commit, PredictionLog._insert, PredictionLog.txn_rows, PredictionLog._unlock = _run, _commit, _insert, txn_rows, _unlock
_PROBE = []

def _insert_probed(self: PredictionLog, parts):
    t0, w0 = time.perf_counter(), (self.lock.wait_s if self.lock is not None else 0.0)
    try: return _insert(self, parts)
    finally: _PROBE.append((t0, time.perf_counter() - t0, (self.lock.wait_s if self.lock is not None else 0.0) - w0))

PredictionLog._insert = _insert_probed""")],
}


def probed_copy(dest: Path) -> Path:
    "A copy of the package with the probes in it (each edit must apply once: the probe says so if the code moved)."
    shutil.copytree(ROOT/'mlcycle', dest/'mlcycle')
    for name, edits in EDITS.items():
        f = dest/'mlcycle'/name; s = f.read_text()
        for old, new in edits:
            if s.count(old) != 1: raise SystemExit(f'the probe no longer fits mlcycle/{name}: update EDITS in {Path(__file__).name}')
            s = s.replace(old, new)
        f.write_text(s)
    return dest


def q(v) -> str:
    return 'p50 %.2f p90 %.2f p99 %.2f max %.1f ms' % (*np.percentile(v, [50, 90, 99]), v.max()) if len(v) else '-'


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--workspace', required=True)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--seconds', type=float, default=8.0)
    ap.add_argument('--serve-args', default='', help='extra `mlcycle serve` arguments, e.g. "--log-hold-ms 0" for one transaction per batch')
    ap.add_argument('--out', default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        code = probed_copy(Path(d))
        out = Path(d)/'probe'
        bench = Path(d)/'bench.json'
        subprocess.run([sys.executable, str(ROOT/'tests'/'benchmarks'/'bench_fairness.py'), '--workspace', a.workspace,
                        '--rounds', str(a.rounds), '--seconds', str(a.seconds), '--code', str(code), '--out', str(bench)] + (['--serve-args', a.serve_args] if a.serve_args else []),
                       env={**os.environ, 'MLCYCLE_PROBE_OUT': str(out)})       # exits 1 when its goal is missed: still measured
        if not bench.exists(): raise SystemExit('bench_fairness.py wrote no results: see its output above')
        (probe_file,) = Path(d).glob('probe.*.json')
        P, R = json.loads(probe_file.read_text()), json.loads(bench.read_text())
    loop, commits = np.array(P['loop']).reshape(-1, 2), np.array(P['commits']).reshape(-1, 3)
    res = {}
    for ph in ('quiet', 'bulk', 'explain'):
        within = lambda t: np.any([(t >= r[ph]['t_start']) & (t <= r[ph]['t_end']) for r in R['rounds']], axis=0)
        lag, c = loop[within(loop[:, 0]), 1] * 1000, commits[within(commits[:, 0])]
        res[ph] = {'one_row_p99_ms': float(np.median([r[ph]['p99_ms'] for r in R['rounds']])), 'loop_lateness': q(lag),
                   'commits': int(len(c)), 'commit': q(c[:, 1] * 1000), 'waited': int((c[:, 2] > 1e-5).sum()), 'lock_wait': q(c[:, 2] * 1000)}
        print(ph, json.dumps(res[ph]))
    if a.out: Path(a.out).write_text(json.dumps({'summary': res, 'bench': R['summary']}, indent=1))


if __name__ == '__main__':
    main()
