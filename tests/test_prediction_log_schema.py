"""The prediction log's schema change for multiclass answers (issue 28): a log written before the `probabilities` column
existed gains it when the server's log opens it, on SQLite and on a real PostgreSQL; its old rows keep NULL there and
new rows keep every class's probability."""
import json, time

import pytest
import sqlalchemy as sa

OLD_TABLE = ('CREATE TABLE predictions (id {id} PRIMARY KEY, request_id VARCHAR(64) NOT NULL UNIQUE, ts FLOAT NOT NULL, '
             'model_name VARCHAR(200) NOT NULL, model_version VARCHAR(32) NOT NULL, arm VARCHAR(16) NOT NULL, features TEXT NOT NULL, '
             'probability FLOAT NOT NULL, label INTEGER NOT NULL, latency_ms FLOAT NOT NULL, flags TEXT NOT NULL, '
             'shadow_version VARCHAR(32), shadow_probability FLOAT, shadow_label INTEGER)')


def _row(rid: str, **extra) -> dict:
    return {'request_id': rid, 'ts': time.time(), 'model_name': 'm', 'model_version': '1', 'arm': 'champion', 'features': '{}',
            'probability': 0.7, 'label': 2, 'latency_ms': 1.0, 'flags': '', **extra}


@pytest.fixture(params=['sqlite', 'postgresql'])
def old_log(request, tmp_path):
    "A log in the schema before the change, with one row, on SQLite or on a real PostgreSQL."
    if request.param == 'sqlite': url, key = f'sqlite:///{tmp_path}/old.db', 'INTEGER'
    else: url, key = request.getfixturevalue('postgres_url'), 'BIGSERIAL'
    eng = sa.create_engine(url)
    with eng.begin() as conn:
        for t in ('feedback_conflicts', 'feedback', 'predictions'): conn.exec_driver_sql(f'DROP TABLE IF EXISTS {t}')
        conn.exec_driver_sql(OLD_TABLE.format(id=key))
        conn.execute(sa.text('INSERT INTO predictions (request_id, ts, model_name, model_version, arm, features, probability, label, latency_ms, flags) '
                             "VALUES ('old-0', 1.0, 'm', '1', 'champion', '{}', 0.6, 0, 2.0, '')"))
    yield url
    with eng.begin() as conn:
        for t in ('feedback_conflicts', 'feedback', 'predictions'): conn.exec_driver_sql(f'DROP TABLE IF EXISTS {t}')
    eng.dispose()


def test_an_older_log_gains_the_probabilities_column(old_log):
    from mlcycle.predlog import PredictionLog, read_log
    def columns():
        eng = sa.create_engine(old_log)
        try:
            with eng.connect() as conn: return {c['name'] for c in sa.inspect(conn).get_columns('predictions')}
        finally: eng.dispose()
    assert 'probabilities' not in columns()                         # the old schema: the test starts from it
    log = PredictionLog(old_log)
    try:
        log.write([_row('new-0', probabilities=json.dumps({'a': 0.1, 'b': 0.2, 'c': 0.7}))])
        log.submit_feedback([('new-0', 'c', 0), ('old-0', 'a', 0)]).result()
    finally: log.close()
    assert 'probabilities' in columns()
    df = read_log(old_log, features=False).set_index('request_id')
    assert df.loc['old-0', 'probability'] == 0.6 and df.loc['old-0', 'label_true'] == 'a'        # the old row, intact
    assert df.probabilities.isna().loc['old-0']                                                  # the rule: not back-filled
    assert json.loads(df.loc['new-0', 'probabilities']) == {'a': 0.1, 'b': 0.2, 'c': 0.7}
    PredictionLog(old_log).close()                                  # opening it again changes nothing
    assert len(read_log(old_log, features=False)) == 2
