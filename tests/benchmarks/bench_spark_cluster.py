"""What the suite's Spark standalone cluster costs (tests/spark_cluster.py): seconds from launch until the master lists
both workers ALIVE, and stage 06's `window_statistics` on a 16,281-row shifted Adult window on the cluster against the
same call on Spark local mode (`local[2]`, the peer: the same 2 cores, no cluster), each in a fresh process, and on pandas.

    python tests/benchmarks/bench_spark_cluster.py --repeats 3

Each repetition starts a cluster, runs the three engines in fresh processes (alternating the Spark order), and stops
it; prints the medians, the ratio cluster / local, and the load average before and after."""
import argparse, json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spark_cluster import StandaloneCluster  # noqa: E402

STATISTICS = r'''
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from mlcycle.charter import load_charter
from mlcycle.data import adult, feature_frame, infer_contract
from mlcycle.simulate import apply_scenario
from mlcycle.monitor import window_statistics
c, train = load_charter(), adult()
contract = infer_contract(train, c)
w = apply_scenario(adult('test'), 'gig_economy', seed=0)
rng = np.random.default_rng(0)
log = feature_frame(w, contract).add_prefix('x_').assign(ts=np.arange(len(w), dtype=float), model_version='1', arm='champion',
      probability=rng.uniform(size=len(w)), y_true=(w.income.str.startswith('>50K')).astype(float), feedback_ts=np.arange(len(w)) + 60.0)
log['label'] = (log.probability >= 0.5).astype(int)
ref = feature_frame(train, contract)
t1 = time.perf_counter()
st = window_statistics(ref, log, contract, engine=sys.argv[1], master=sys.argv[2], chunk_rows=4000)
t2 = time.perf_counter()
print(json.dumps({'setup': t1 - t0, 'statistics': t2 - t1, 'rows': st['rows']}))
'''


def once(engine: str, master: str) -> dict:
    env = {**os.environ, 'SPARK_LOCAL_IP': '127.0.0.1', 'OMP_NUM_THREADS': '1'}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, '-c', STATISTICS, engine, master], check=True, capture_output=True, text=True, env=env)
    return {'total': time.perf_counter() - t0, **json.loads(out.stdout.strip().splitlines()[-1])}


def main():
    ap = argparse.ArgumentParser(); ap.add_argument('--repeats', type=int, default=3); a = ap.parse_args()
    print('load average before:', os.getloadavg())
    rows = []
    for i in range(a.repeats):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            cluster = StandaloneCluster(Path(d)/'logs').start()
            start = time.perf_counter() - t0
            try:
                order = [('spark', cluster.url), ('spark', 'local[2]')][::1 if i % 2 == 0 else -1]
                r = {m: once(e, m) for e, m in order}
                apps = len(cluster.completed_apps())
            finally:
                t1 = time.perf_counter(); cluster.stop(); stop = time.perf_counter() - t1
        pandas = once('pandas', '')
        rows.append({'start': start, 'stop': stop, 'cluster': r[cluster.url]['statistics'], 'local': r['local[2]']['statistics'],
                     'pandas': pandas['statistics'], 'cluster_total': r[cluster.url]['total'], 'local_total': r['local[2]']['total'], 'apps': apps})
        print(json.dumps(rows[-1]))
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"medians over {a.repeats}: cluster start {med['start']:.1f} s, stop {med['stop']:.1f} s; window_statistics on the cluster "
          f"{med['cluster']:.1f} s, on local[2] {med['local']:.1f} s (cluster / local {med['cluster'] / med['local']:.2f}x), on pandas "
          f"{med['pandas']:.2f} s; whole process on the cluster {med['cluster_total']:.1f} s, on local[2] {med['local_total']:.1f} s")
    print('load average after:', os.getloadavg())


if __name__ == '__main__':
    main()
