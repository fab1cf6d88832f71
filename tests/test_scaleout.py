"""Beyond one machine: `mlcycle predict --engine spark` (Spark local mode) equals the in-process path row for row."""
import numpy as np
import pandas as pd
import pytest


@pytest.mark.slow
def test_spark_engine_equals_in_process(registry_ws, tmp_path, mlcycle):
    from mlcycle.batch import spark_available
    why = spark_available()
    if why: pytest.skip(f'--engine spark untested here: {why}')
    from mlcycle.data import adult
    from mlcycle.deploy import promote
    promote(registry_ws, '2', reason='spark test')
    df = adult('test'); df.to_parquet(tmp_path/'in.parquet', index=False)
    mlcycle('predict', '--input', tmp_path/'in.parquet', '--output', tmp_path/'local.parquet', '--workspace', registry_ws.root, check=True)
    mlcycle('predict', '--engine', 'spark', '--master', 'local[2]', '--input', tmp_path/'in.parquet', '--output', tmp_path/'spark.parquet',
            '--workspace', registry_ws.root, check=True, env={'OMP_NUM_THREADS': '1'})
    a, b = pd.read_parquet(tmp_path/'local.parquet'), pd.read_parquet(tmp_path/'spark.parquet')
    assert len(a) == len(b) == len(df)
    assert (a['row'].to_numpy() == b['row'].to_numpy()).all()
    assert np.allclose(a['score'].to_numpy(), b['score'].to_numpy(), rtol=0, atol=1e-12)
    assert (a['prediction'].to_numpy() == b['prediction'].to_numpy()).all()
    assert set(b['model_version']) == {'2'}
    # the contract holds on Spark too: a missing column stops it before any output
    df.drop(columns=['age']).to_parquet(tmp_path/'bad.parquet', index=False)
    r = mlcycle('predict', '--engine', 'spark', '--master', 'local[1]', '--input', tmp_path/'bad.parquet', '--output', tmp_path/'bad_out.parquet',
                '--workspace', registry_ws.root)
    assert r.returncode == 1 and "'age' missing_column" in r.stderr and not (tmp_path/'bad_out.parquet').exists()
