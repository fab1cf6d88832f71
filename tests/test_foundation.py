"""Issue: foundation. The CLI runs stages 01-02 end to end on Adult and on a user's own data; bad charters and
bad data are refused with messages that name the key or column; the audit log catches tampering; a failing
stage leaves the workspace as it was. Everything runs through the real `mlcycle` command and papermill."""
import hashlib, json, re, sqlite3, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT, mlcycle_cmd


def tree_digest(root: Path) -> dict:
    "Every file under `root` with the SHA-256 of its bytes."
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob('*')) if p.is_file()}


# --- the bundled Adult data, stages 01-02 ---------------------------------------------------------------

def test_run_01_02_on_adult_writes_reports_manifests_and_audit(adult_workspace_0102):
    d = adult_workspace_0102
    ws = d/'ws'
    (run_dir,) = [p for p in (d/'reports').iterdir() if p.name.startswith('run-')]
    for f in ['index.html', '01_problem_definition.ipynb', '01_problem_definition.html', '02_data.ipynb', '02_data.html']:
        assert (run_dir/f).stat().st_size > 1000, f
    index = (run_dir/'index.html').read_text()
    assert '01_problem_definition.html' in index and '02_data.html' in index and 'verdict: feasible' in index
    # papermill injected our parameters after the cell tagged `parameters`
    nb = json.loads((run_dir/'02_data.ipynb').read_text())
    injected = [c for c in nb['cells'] if 'injected-parameters' in c['metadata'].get('tags', [])]
    assert injected and str(ws) in ''.join(injected[0]['source'])

    m1 = json.loads((ws/'stages'/'01_problem_definition.json').read_text())
    assert m1['outputs']['verdict'] == 'feasible' and m1['outputs']['rows'] == 32561
    m2 = json.loads((ws/'stages'/'02_data.json').read_text())
    splits = m2['outputs']['splits']
    assert sum(s['rows'] for s in splits.values()) == 32561
    for s in splits.values():   # snapshots keyed by content fingerprint, and the content still matches
        from mlcycle.core import fingerprint_df
        assert fingerprint_df(pd.read_parquet(ws/'data'/f"{s['fingerprint']}.parquet")) == s['fingerprint']
    contract = json.loads((ws/'data'/'contract.json').read_text())
    assert 'fnlwgt' not in contract['features'] and contract['target'] == 'income'

    r = mlcycle_cmd('audit', 'verify', '--workspace', ws)
    assert r.returncode == 0 and 'hash chain intact' in r.stdout
    events = [json.loads(l)['event'] for l in (ws/'audit.jsonl').read_text().splitlines()]
    assert events.count('stage_completed') == 2 and 'feasibility_verdict' in events and 'data_accepted' in events

    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{ws/'mlflow.db'}")
    exp = client.get_experiment_by_name('adult-income')
    runs = client.search_runs([exp.experiment_id])
    data_run = [r for r in runs if r.data.tags.get('mlcycle.stage') == '02_data'][0]
    assert sorted(i.tags[0].value for i in data_run.inputs.dataset_inputs) == ['test', 'train', 'validation']
    life = [r for r in runs if 'mlcycle.lifecycle_run' in r.data.tags][0]
    arts = [a.path for a in client.list_artifacts(life.info.run_id, 'reports')]
    assert 'reports/index.html' in arts and 'reports/02_data.ipynb' in arts


def test_stage_parameter_reaches_the_notebook(tmp_path, adult_workspace_0102):
    import shutil
    ws = tmp_path/'ws'; shutil.copytree(adult_workspace_0102/'ws', ws)
    r = mlcycle_cmd('stage', '02', '-w', ws, '-r', tmp_path/'reports', '-p', 'test_size', '0.3', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m2 = json.loads((ws/'stages'/'02_data.json').read_text())
    assert abs(m2['outputs']['splits']['test']['rows'] / 32561 - 0.3) < 0.001


# --- a second, different dataset through a user-written charter -----------------------------------------

def make_churn_data(n=4000, seed=7) -> pd.DataFrame:
    "A synthetic customer-churn table: other column names, a yes/no target, one sensitive feature."
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        'customer_ref': [f'C{i:06d}' for i in range(n)],
        'region': rng.choice(['north', 'south', 'east', 'west'], n),
        'plan': rng.choice(['basic', 'plus', 'premium'], n, p=[.5, .3, .2]),
        'tenure_months': rng.integers(1, 120, n),
        'monthly_fee': rng.normal(40, 12, n).round(2),
        'support_calls': rng.poisson(1.5, n),
        'gender': rng.choice(['f', 'm', 'x'], n, p=[.48, .48, .04]),
    })
    logit = -1.0 + 0.45 * df.support_calls - 0.03 * df.tenure_months + 0.02 * (df.monthly_fee - 40) + (df.plan == 'basic') * 0.6
    df['churned'] = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), 'yes', 'no')
    df.loc[rng.random(n) < 0.03, 'monthly_fee'] = np.nan
    return df


def churn_charter(**data_changes) -> dict:
    return {
        'name': 'churn-risk', 'problem': 'Flag customers likely to cancel next month so the retention team can call them.',
        'task': 'binary_classification',
        'data': {'sources': [{'kind': 'csv', 'path': 'customers_a.csv'},
                             {'kind': 'sql', 'url': 'sqlite:///customers.db', 'query': 'SELECT * FROM customers'}],
                 'target': 'churned', 'positive_label': 'yes', 'sensitive_features': ['gender'],
                 'id_column': 'customer_ref', 'requirements': {'min_rows': 2000, 'max_missing_rate': 0.2, 'min_group_size': 30},
                 **data_changes},
        'objectives': [{'metric': 'roc_auc', 'min': 0.65, 'primary': True}, {'metric': 'accuracy', 'min': 0.6}],
        'intended_use': 'Prioritising retention calls.', 'out_of_scope': 'Pricing decisions.', 'owners': ['retention-analytics'],
    }


def write_churn_project(d: Path, df: pd.DataFrame, charter: dict) -> Path:
    "The user's project folder: half the rows in a CSV, half in a SQLite database, and the charter."
    d.mkdir(parents=True, exist_ok=True)
    half = len(df) // 2
    df.iloc[:half].to_csv(d/'customers_a.csv', index=False)
    with sqlite3.connect(d/'customers.db') as con:
        con.execute('DROP TABLE IF EXISTS customers')
        df.iloc[half:].to_sql('customers', con, index=False)
    # relative sqlite URLs are resolved by SQLAlchemy against the working directory: make it absolute
    charter = json.loads(json.dumps(charter))
    for s in charter['data']['sources']:
        if s['kind'] == 'sql': s['url'] = f"sqlite:///{d/'customers.db'}"
    (d/'charter.yaml').write_text(yaml.safe_dump(charter, sort_keys=False))
    return d/'charter.yaml'


def test_user_dataset_with_own_charter(tmp_path):
    charter = write_churn_project(tmp_path/'project', make_churn_data(), churn_charter())
    ws = tmp_path/'ws'
    r = mlcycle_cmd('run', '--stages', '01,02', '--charter', charter, '-w', ws, '-r', tmp_path/'reports', cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    m1 = json.loads((ws/'stages'/'01_problem_definition.json').read_text())
    assert m1['outputs']['rows'] == 4000 and [s['kind'] for s in m1['outputs']['sources']] == ['csv', 'sql']
    assert m1['outputs']['verdict'] in ('feasible', 'at risk')
    contract = json.loads((ws/'data'/'contract.json').read_text())
    assert contract['target'] == 'churned' and contract['positive_label'] == 'yes'
    assert 'customer_ref' not in contract['features'] and 'churned' not in contract['features']
    assert contract['columns']['plan']['categories'] == ['basic', 'plus', 'premium']
    groups = {g['group'] for g in m1['outputs']['group_sizes']}
    assert groups == {'f', 'm', 'x'}
    assert json.loads((ws/'charter.json').read_text())['charter']['name'] == 'churn-risk'


# --- bad charters and bad data: clear messages, nothing lost ----------------------------------------------

# Each message is checked by a direct call; the first case of each group also goes through the `mlcycle` command (exit code,
# one line on stderr, no traceback), which is the same code path for every case.
@pytest.mark.parametrize('change, expected, via', [
    ({'objectives': [{'metric': 'rocauc', 'min': 0.8, 'primary': True}]},
     "objectives[0].metric: 'rocauc' is not a known metric; allowed: roc_auc", 'cli'),
    ({'objectives': [{'metric': 'accuracy', 'min': 1.4, 'primary': True}]},
     'accuracy is a rate in [0, 1] but the threshold is 1.4', 'call'),
    ({'objectives': [{'metric': 'roc_auc', 'min': 0.8}]},
     'exactly one objective must have `primary: true`, found 0', 'call'),
    ({'data': {'sources': [{'kind': 'excel', 'path': 'x.xlsx'}]}},
     "data.sources[0].kind: Input should be 'csv', 'parquet' or 'sql'", 'call'),
])
def test_bad_charter_is_refused_in_one_line(tmp_path, change, expected, via):
    base = churn_charter()
    for k, v in change.items(): base[k] = {**base[k], **v} if isinstance(v, dict) else v
    charter = write_churn_project(tmp_path/'p', make_churn_data(600), base)
    ws = tmp_path/'ws'
    if via == 'cli':
        r = mlcycle_cmd('run', '--stages', '01', '--charter', charter, '-w', ws, cwd=tmp_path)
        assert r.returncode == 1
        assert expected in r.stderr and 'Traceback' not in r.stderr and 'example' in r.stderr
        assert r.stderr.startswith('mlcycle: error: invalid charter')
    else:
        from mlcycle.charter import CharterError, load_charter
        with pytest.raises(CharterError) as e: load_charter(charter)
        assert expected in str(e.value) and 'example' in str(e.value) and str(e.value).startswith('invalid charter')
    assert not (ws/'stages').exists()


@pytest.mark.parametrize('change, expected, via', [
    ({'target': 'cancelled'}, "data.target: column 'cancelled' is not in the data", 'cli'),
    ({'sensitive_features': ['age_band']}, "data.sensitive_features[0]: column 'age_band' is not in the data", 'call'),
    ({'positive_label': 'true'}, "data.positive_label: 'true' does not occur in target 'churned'", 'call'),
])
def test_charter_that_does_not_fit_the_data(tmp_path, change, expected, via):
    charter = write_churn_project(tmp_path/'p', make_churn_data(600), churn_charter(**change))
    if via == 'cli':
        r = mlcycle_cmd('run', '--stages', '01', '--charter', charter, '-w', tmp_path/'ws', '-r', tmp_path/'reports', cwd=tmp_path)
        assert r.returncode == 1, r.stdout
        assert 'stage 01_problem_definition failed: CharterError' in r.stderr and expected in r.stderr, r.stderr
        assert 'Traceback' not in r.stderr
    else:
        import mlflow
        from mlcycle.charter import CharterError
        from mlcycle.feasibility import run_problem_definition
        from mlcycle.core import Workspace
        try:
            with pytest.raises(CharterError, match=re.escape(expected)): run_problem_definition(charter, Workspace(tmp_path/'ws'))
        finally: mlflow.set_tracking_uri(None)
    assert not (tmp_path/'ws'/'stages').exists()


@pytest.fixture(scope='module')
def churn_0102(tmp_path_factory):
    "The user's churn project after stages 01-02 (direct calls), shared read-only: tests copy it."
    import mlflow
    from mlcycle.feasibility import run_problem_definition
    from mlcycle.core import Workspace
    from mlcycle.data import run_data_stage
    d = tmp_path_factory.mktemp('churn0102')
    charter = write_churn_project(d/'p', make_churn_data(), churn_charter())
    ws = Workspace(d/'ws')
    try: run_problem_definition(charter, ws); run_data_stage(None, ws)
    finally: mlflow.set_tracking_uri(None)
    return d


@pytest.mark.parametrize('breakage, expected, via', [
    ('leak', "label leakage: column 'agent_note' alone predicts the target", 'cli'),
    ('missing', "data.requirements.max_missing_rate: column 'monthly_fee' is", 'call'),
    ('rows', 'data.requirements.min_rows: 1200 rows, the charter needs at least 2000', 'call'),
])
def test_failing_data_stage_leaves_workspace_unchanged(tmp_path, breakage, expected, via, request):
    df = make_churn_data()
    project, ws = tmp_path/'p', tmp_path/'ws'
    if via == 'cli':     # stages 01-02 through the command, as a user runs them
        charter = write_churn_project(project, df, churn_charter())
        mlcycle_cmd('run', '--stages', '01,02', '--charter', charter, '-w', ws, '-r', tmp_path/'reports', cwd=tmp_path, check=True)
    else:                # the same workspace, built once by direct calls; the charter it holds points to its own project folder
        import shutil
        churn_0102 = request.getfixturevalue('churn_0102')
        shutil.copytree(churn_0102/'ws', ws); shutil.copytree(churn_0102/'p', project)
        project = churn_0102/'p'
        assert json.loads((ws/'charter.json').read_text()) and str(project) in (ws/'charter.json').read_text()
    before = tree_digest(ws)
    # the user's data changes under the same charter, and now breaks it
    if breakage == 'leak': bad = df.assign(agent_note=np.where(df.churned == 'yes', 'called: cancelling', 'no action'))
    elif breakage == 'missing': bad = df.assign(monthly_fee=df.monthly_fee.where(np.arange(len(df)) % 2 == 0))
    else: bad = df.head(1200)
    if via == 'cli':
        write_churn_project(project, bad, churn_charter())
        r = mlcycle_cmd('stage', '02', '-w', ws, '-r', tmp_path/'reports', cwd=tmp_path)
        assert r.returncode == 1 and expected in r.stderr, r.stderr
    else:
        import mlflow
        from mlcycle.core import MlcycleError, Workspace
        from mlcycle.data import run_data_stage
        write_churn_project(project, bad, churn_charter())
        try:
            with pytest.raises(MlcycleError, match=re.escape(expected)): run_data_stage(None, Workspace(ws))
        finally:
            write_churn_project(project, df, churn_charter())      # the shared project's data as it was, for the next case
            mlflow.set_tracking_uri(None)
    assert tree_digest(ws) == before   # byte for byte, MLflow database included


# --- the audit log ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('tamper, bad_entry', [('edit', 2), ('delete', 2), ('insert', 3), ('reorder', 2), ('truncate', 4)])
def test_audit_verify_catches_tampering(tmp_path, adult_workspace_0102, tamper, bad_entry):
    import shutil
    ws = tmp_path/'ws'; shutil.copytree(adult_workspace_0102/'ws', ws)
    log = ws/'audit.jsonl'
    lines = log.read_text().splitlines(keepends=True)
    assert len(lines) == 4
    if tamper == 'edit':
        e = json.loads(lines[1]); e['details']['verdict'] = 'not feasible'
        lines[1] = json.dumps(e, sort_keys=True, separators=(',', ':')) + '\n'
    elif tamper == 'delete': del lines[1]
    elif tamper == 'insert': lines.insert(2, lines[1])
    elif tamper == 'reorder': lines[1], lines[2] = lines[2], lines[1]
    elif tamper == 'truncate': lines = lines[:3]
    log.write_text(''.join(lines))
    r = mlcycle_cmd('audit', 'verify', '-w', ws)
    assert r.returncode == 1
    assert f'BROKEN at entry {bad_entry}' in r.stdout, r.stdout


# --- a plain, non-editable install from a wheel ----------------------------------------------------------

def test_wheel_install_runs_from_an_empty_folder(tmp_path):
    dist = tmp_path/'dist'
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-q', '-w', dist, ROOT], check=True, timeout=600)
    (wheel,) = dist.glob('mlcycle-*.whl')
    import zipfile
    names = zipfile.ZipFile(wheel).namelist()
    assert 'mlcycle/notebooks/01_problem_definition.ipynb' in names and 'mlcycle/assets/adult_train.csv.gz' in names
    # A fresh virtual environment that sees the dependencies already installed here (a `.pth` line adds this
    # environment's site-packages after its own; `.pth` files in that folder, such as the editable install's, are not
    # read), so the wheel is installed without its dependencies and `pip check` proves the installed ones satisfy it.
    # Resolving and downloading them again is what the README's first command does on a fresh machine.
    venv = tmp_path/'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', venv], check=True)
    import sysconfig
    ours = sysconfig.get_paths()['purelib']
    site = subprocess.run([venv/'bin'/'python', '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, 'dependencies-from-parent.pth').write_text(ours + '\n')
    pip = subprocess.run([venv/'bin'/'python', '-m', 'pip', 'install', '-q', '--no-deps', '--ignore-installed', wheel], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    check = subprocess.run([venv/'bin'/'python', '-m', 'pip', 'check'], capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout[-3000:]
    empty = tmp_path/'empty'; empty.mkdir()
    env = {k: v for k, v in __import__('os').environ.items() if k not in ('MLCYCLE_WORKSPACE', 'MLFLOW_TRACKING_URI', 'PYTHONPATH')}
    env['PATH'] = f"{venv/'bin'}:{env.get('PATH', '')}"
    env['JUPYTER_PATH'] = str(Path(sys.prefix)/'share'/'jupyter')    # nbconvert's templates: data files of the shared dependencies
    where = subprocess.run([venv/'bin'/'python', '-c', 'import mlcycle, mlcycle.cli; print(mlcycle.__file__); print(mlcycle.cli.notebook_dir())'],
                           cwd=empty, env=env, capture_output=True, text=True, check=True).stdout
    assert str(venv) in where and str(ROOT) not in where
    r = subprocess.run([venv/'bin'/'mlcycle', 'run', '--stages', '01,02'], cwd=empty, env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (empty/'mlcycle-workspace'/'stages'/'02_data.json').exists()
    assert list((empty/'reports').glob('run-*/index.html'))


def test_stage_02_without_stage_01_is_one_clear_line(tmp_path):
    "Stage 02 does not reach back up the import graph to run stage 01: it says what to run, and writes no stage record."
    from mlcycle.core import MlcycleError, Workspace
    from mlcycle.data import run_data_stage
    with pytest.raises(MlcycleError, match=r'stage 01 has not run in .*: run it first') as e: run_data_stage(None, Workspace(tmp_path/'ws'))
    assert '\n' not in str(e.value)
    assert not (tmp_path/'ws'/'stages').exists() or not any((tmp_path/'ws'/'stages').iterdir())
