"""Issue 12B: gates that can fail. Direct calls on real data (the bundled Adult rows), seconds each."""
import numpy as np
import pandas as pd
import pytest

from mlcycle.core import MlcycleError


@pytest.fixture(scope='module')
def adult_model():
    "A logistic regression on 3,000 bundled Adult rows, scored on 2,000 others: real data, a few seconds."
    from mlcycle.charter import binary_target, load_charter
    from mlcycle.data import adult, feature_frame, infer_contract
    from mlcycle.train import candidate_pipeline
    c = load_charter()
    df = adult('train').sample(5000, random_state=0)
    tr, te = df.iloc[:3000], df.iloc[3000:]
    contract = infer_contract(tr, c)
    m = candidate_pipeline('logistic_regression', contract, max_iter=300).fit(feature_frame(tr, contract), binary_target(c, tr[c.data.target]))
    return c, contract, m, feature_frame(te, contract), binary_target(c, te[c.data.target])


def test_robustness_gates_the_drop(adult_model):
    "Before 12B every probe with valid outputs passed, whatever the drop; now the charter's limit decides, with the interval."
    from mlcycle.charter import parse_charter
    from mlcycle.validate import evaluate_gate, overfit_check, robustness_gate, robustness_report, _robustness_rule
    c, contract, m, X, y = adult_model
    loose = robustness_gate(m, X, y, contract, 'roc_auc', max_drop=0.9, n_resamples=100)
    assert loose.passed.all() and (loose.verdict == 'within').all()
    worst = loose.loc[loose['drop'].idxmax()]
    assert worst['drop'] > 0.02, loose        # the linear model does lose skill under some probe
    tight = robustness_gate(m, X, y, contract, 'roc_auc', max_drop=worst.drop_ci_low / 2, n_resamples=100)
    assert not tight.set_index('probe').loc[worst.probe, 'passed']
    rule = _robustness_rule(tight)
    assert not rule['passed'] and f'{worst.probe}: roc_auc drop' in rule['detail'] and rule['threshold'] == pytest.approx(worst.drop_ci_low / 2)
    # the old report (valid outputs only) still passes the same model: this is the defect the gate fixes
    assert _robustness_rule(robustness_report(m, X, y, contract, 'roc_auc'))['passed']
    # the charter field, its default and its errors
    assert c.validation.robustness_max_drop == 0.10
    with pytest.raises(Exception, match='robustness_max_drop must be in'):
        parse_charter({**c.to_dict(), 'validation': {**c.validation.model_dump(), 'robustness_max_drop': 1.5}})
    with pytest.raises(MlcycleError, match='unknown probe'):
        robustness_gate(m, X.head(50), y[:50], contract, max_drop={'noise': 0.1})


def test_robustness_says_insufficient_evidence(adult_model):
    "A limit inside the drop's interval: the verdict names the rows it had and roughly how many more would tell."
    from mlcycle.validate import robustness_gate, _robustness_rule
    c, contract, m, X, y = adult_model
    full = robustness_gate(m, X, y, contract, 'roc_auc', max_drop=0.9, n_resamples=100)
    worst = full.loc[full['drop'].idxmax()]
    few = robustness_gate(m, X.head(200), y[:200], contract, 'roc_auc', max_drop={worst.probe: worst['drop']}, n_resamples=200)
    r = few.set_index('probe').loc[worst.probe]
    lo, hi = r.drop_ci_low, r.drop_ci_high
    assert lo <= worst['drop'] <= hi, (lo, hi, worst['drop'])
    assert r.verdict == 'insufficient evidence' and not r.passed and r.rows_needed > 200
    assert 'insufficient evidence: 200 test rows cannot tell' in _robustness_rule(few)['detail']
