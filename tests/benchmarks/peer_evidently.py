"""Evidently's default data-drift preset on windows written by bench_drift.py (run by the benchmark with the python of
Evidently's own virtual environment, so the project's pins do not move):

    <venv>/bin/python peer_evidently.py FOLDER

FOLDER holds reference.parquet, windows.parquet (the window's id in column `_window`) and columns.json
({"numerical": [...], "categorical": [...]}); writes evidently.json: per window, per column the preset's drift value,
method and threshold, the preset's dataset-level verdict (share of drifted columns >= drift_share) and the seconds."""
import json, sys, time
from pathlib import Path

import pandas as pd
from evidently import DataDefinition, Dataset, Report
import evidently
from evidently.presets import DataDriftPreset


def main(folder):
    d = Path(folder)
    cols = json.loads((d/'columns.json').read_text())
    dd = DataDefinition(numerical_columns=cols['numerical'], categorical_columns=cols['categorical'])
    ref = pd.read_parquet(d/'reference.parquet')
    for c in cols['categorical']: ref[c] = ref[c].astype(object)
    ref_ds = Dataset.from_pandas(ref, data_definition=dd)
    wins = pd.read_parquet(d/'windows.parquet')
    out = {'evidently': evidently.__version__, 'pandas': pd.__version__, 'windows': {}}
    for wid, w in wins.groupby('_window', sort=False):
        w = w.drop(columns='_window').reset_index(drop=True)
        for c in cols['categorical']: w[c] = w[c].astype(object)
        t0 = time.perf_counter()
        snap = Report([DataDriftPreset()]).run(current_data=Dataset.from_pandas(w, data_definition=dd), reference_data=ref_ds)
        secs = time.perf_counter() - t0
        res = {'seconds': secs, 'columns': {}}
        for m in snap.dict()['metrics']:
            cfg = m['config']
            if cfg['type'].endswith('ValueDrift'):
                res['columns'][cfg['column']] = {'value': m['value'], 'method': cfg['method'], 'threshold': cfg['threshold']}
            elif cfg['type'].endswith('DriftedColumnsCount'):
                res['drifted_share'], res['drift_share'] = m['value']['share'], cfg['drift_share']
        out['windows'][str(wid)] = res
    (d/'evidently.json').write_text(json.dumps(out))


if __name__ == '__main__':
    main(sys.argv[1])
