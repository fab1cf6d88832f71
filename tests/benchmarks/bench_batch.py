"""Batch scoring throughput: `mlcycle.batch.score_table` (in-process, chunks, from a Parquet file, validated, written)
against the pipeline's own `predict_proba` on the whole table already in memory, and optionally Spark local, on
1x..Nx the Adult test file; plus peak RSS of `mlcycle predict` on the largest file. Run on demand:

    python tests/benchmarks/bench_batch.py --scales 1,4,16 [--spark [--spark-scales 1,4,16]] [--rss-scale 64]

With --spark, Spark local mode (`--spark-master`, default local[2]) scores the same file in the same run, after a
warm-up call per size (JVM, session, model copy), `--repeats` times; its median is reported beside the other two.
"""
import argparse, json, os, resource, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import pandas as pd
import pyarrow as pa, pyarrow.parquet as pq


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--scales', default='1,4,16'); ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--chunk-rows', type=int, default=50_000); ap.add_argument('--spark', action='store_true')
    ap.add_argument('--spark-scales', default=None, help='the sizes Spark scores (default: every --scales size)')
    ap.add_argument('--spark-master', default='local[2]')
    ap.add_argument('--rss-scale', type=int, default=0, help='also measure peak RSS of `mlcycle predict` on this many copies')
    a = ap.parse_args()
    from mlcycle.core import Workspace, read_json
    from mlcycle.charter import workspace_charter
    from mlcycle.data import adult, feature_frame
    from mlcycle.feasibility import run_through_data
    from mlcycle.deploy import demo_model_version, promote
    from mlcycle.train import load_model_version
    from mlcycle.batch import score_table, score_table_spark
    tmp = Path(tempfile.mkdtemp(prefix='bench-batch-'))
    ws = run_through_data(None, tmp/'ws', log=lambda *_: None)     # stages 01 and 02 on the bundled data
    v = demo_model_version(ws, max_iter=100); promote(ws, v, reason='benchmark')
    contract = read_json(ws.root/'data'/'contract.json')
    model = load_model_version(ws, workspace_charter(ws), v)
    base = adult('test'); t = pa.Table.from_pandas(base, preserve_index=False)
    rows = []
    spark_scales = set(map(int, (a.spark_scales or a.scales).split(','))) if a.spark else set()
    print(json.dumps({'cpus': os.cpu_count(), 'load_avg_at_start': os.getloadavg(), 'omp_num_threads': os.environ.get('OMP_NUM_THREADS')}), flush=True)
    for k in map(int, a.scales.split(',')):
        path = tmp/f'x{k}.parquet'
        with pq.ParquetWriter(path, t.schema) as w:
            for _ in range(k): w.write_table(t)
        df = pd.read_parquet(path); X = feature_frame(df, contract)
        raw, ours, spark = [], [], []
        for _ in range(a.repeats):   # interleaved, so both see the same machine load
            t0 = time.perf_counter(); model.predict_proba(X); raw.append(time.perf_counter() - t0)
            t0 = time.perf_counter(); score_table(path, tmp/'out.parquet', ws, chunk_rows=a.chunk_rows, progress=False); ours.append(time.perf_counter() - t0)
        if k in spark_scales:
            score_table_spark(path, tmp/'outs.parquet', ws, master=a.spark_master)   # warm-up: JVM and session start
            for _ in range(a.repeats):
                t0 = time.perf_counter(); score_table_spark(path, tmp/'outs.parquet', ws, master=a.spark_master); spark.append(time.perf_counter() - t0)
            same = pd.read_parquet(tmp/'outs.parquet'), pd.read_parquet(tmp/'out.parquet')
            spark_equal = bool((same[0]['prediction'].to_numpy() == same[1]['prediction'].to_numpy()).all()
                               and abs(same[0]['score'].to_numpy() - same[1]['score'].to_numpy()).max() <= 1e-12)
        r = {'scale': k, 'rows': len(df), 'raw_predict_proba_rows_s': round(len(df) / statistics.median(raw)),
             'score_table_rows_s': round(len(df) / statistics.median(ours))}
        r['ratio'] = round(r['score_table_rows_s'] / r['raw_predict_proba_rows_s'], 2)
        if spark:
            r['spark_local_rows_s'] = round(len(df) / statistics.median(spark))
            r['spark_vs_raw'] = round(r['spark_local_rows_s'] / r['raw_predict_proba_rows_s'], 2)
            r['spark_vs_score_table'] = round(r['spark_local_rows_s'] / r['score_table_rows_s'], 2)
            r['spark_seconds'] = [round(x, 2) for x in spark]; r['spark_equals_in_process'] = spark_equal
        r['load_avg'] = [round(x, 1) for x in os.getloadavg()]
        print(json.dumps(r), flush=True); rows.append(r)
        del df, X
    if a.rss_scale:
        path = tmp/f'x{a.rss_scale}.parquet'
        with pq.ParquetWriter(path, t.schema) as w:
            for _ in range(a.rss_scale): w.write_table(t, row_group_size=a.chunk_rows)
        code = ('import sys, resource; from mlcycle.cli import main; rc = main(sys.argv[1:]); '
                'print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)')
        out = {}
        for name, src in (('1x', tmp/'x1.parquet'), (f'{a.rss_scale}x', path)):
            r = subprocess.run([sys.executable, '-c', code, 'predict', '--workspace', str(ws.root), '--no-progress', '--input', str(src),
                                '--output', str(tmp/'rss.parquet'), '--chunk-rows', str(a.chunk_rows)], capture_output=True, text=True, check=True)
            out[name] = round(int(r.stderr.split('MAXRSS_KB')[-1].split()[0]) / 1024)
        whole = pd.read_parquet(path)
        print(json.dumps({'rss_mib': out, 'rows': len(whole), 'file_mib': round(path.stat().st_size / 2**20),
                          'table_in_memory_mib': round(whole.memory_usage(deep=True).sum() / 2**20)}), flush=True)


if __name__ == '__main__':
    main()
