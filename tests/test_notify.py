"""Alerts that reach a person: stage 06's alerts delivered to a real local HTTP receiver (JSON and Slack-compatible),
retried after a 500, recorded; a receiver that never succeeds recorded as failed; `mlcycle monitor --notify-only`
on a workspace with a real stage 06 run; the run's figures as gauges on the server's /metrics; the CronJob beside the
Deployment. No new circle: stage 06 runs in-process on the `history_template` workspace."""
import json

import pytest
import yaml


def _alerts():
    return [{'severity': 'critical', 'rule': 'feature_drift', 'subject': 'age', 'value': 0.4, 'threshold': 0.25, 'message': 'age: PSI 0.4'},
            {'severity': 'warning', 'rule': 'missing_rate_change', 'subject': 'x', 'value': 0.1, 'threshold': 0.05, 'message': 'x: missing 2% -> 12%'},
            {'severity': 'info', 'rule': 'fairness_not_monitored', 'subject': 'log', 'value': None, 'threshold': None, 'message': 'note'}]


def test_webhook_retries_after_a_500_and_records_what_was_sent(tmp_path):
    from mlcycle.charter import Webhook
    from mlcycle.core import Workspace
    from mlcycle.notify import WebhookReceiver, notify_alerts
    ws = Workspace.local(tmp_path/'ws')
    ctx = {'model': 'm', 'window': 'all', 'rows': 10, 'labelled': 0, 'recommendation': 'retrain', 'why': 'drift', 'mlflow_run_id': 'r1', 'stage_run': 's1'}
    waits = []
    with WebhookReceiver(statuses=[500]) as js, WebhookReceiver() as sl:
        recs = notify_alerts(ws, [Webhook(url=js.url), Webhook(url=sl.url, format='slack', min_severity='critical')], _alerts(), ctx, sleep=waits.append)
    assert [(r['ok'], r['status'], r['attempts']) for r in recs] == [(True, 200, 2), (True, 200, 1)]
    assert len(js.received) == 2 and js.received[0] == js.received[1]                  # the retry sent the same message
    body = js.received[-1]
    assert body['model'] == 'm' and body['stage_run'] == 's1' and body['counts'] == {'critical': 1, 'warning': 1, 'info': 0}
    assert [a['rule'] for a in body['alerts']] == ['feature_drift', 'missing_rate_change']   # info stays in the report
    assert list(sl.received[0]) == ['text'] and 'age: PSI 0.4' in sl.received[0]['text'] and 'missing' not in sl.received[0]['text']
    assert len(waits) == 1 and 1.0 <= waits[0] <= 1.1
    lines = [json.loads(l) for l in (ws.root/'notifications.jsonl').read_text().splitlines()]
    assert [(l['ok'], l['attempts'], l['status'], l['stage_run']) for l in lines] == [(True, 2, 200, 's1'), (True, 1, 200, 's1')]
    assert all(l['time'] and l['url'].startswith('http://127.0.0.1:') and '/hook' not in l['url'] for l in lines)
    assert [e['event'] for e in ws.audit.entries()] == ['notification_sent', 'notification_sent'] and ws.audit.verify().ok


def test_a_receiver_that_never_succeeds_is_recorded_as_failed(tmp_path):
    from mlcycle.charter import Webhook
    from mlcycle.core import Workspace
    from mlcycle.notify import WebhookReceiver, notify_alerts
    ws = Workspace.local(tmp_path/'ws')
    with WebhookReceiver(then=503) as rx:
        rec, = notify_alerts(ws, [Webhook(url=rx.url, retries=3)], _alerts(), {'model': 'm'}, sleep=lambda s: None)
    assert (rec['ok'], rec['status'], rec['attempts'], len(rx.received)) == (False, 503, 4, 4) and 'HTTP 503' in rec['error']
    e = ws.audit.entries()[-1]
    assert e['event'] == 'notification_failed' and e['details']['attempts'] == 4 and e['details']['ok'] is False
    assert json.loads((ws.root/'notifications.jsonl').read_text())['ok'] is False


def test_webhook_credentials_reach_no_file(tmp_path):
    "A receiver URL with a user name, password and a token in its path (issue 32): the audit log and notifications.jsonl keep neither."
    from mlcycle.charter import Webhook
    from mlcycle.core import Workspace
    from mlcycle.notify import WebhookReceiver, notify_alerts
    ws = Workspace.local(tmp_path/'ws')
    with WebhookReceiver(path='/services/tok3nPath') as rx:
        url = rx.url.replace('http://', 'http://bob:s3cretPW@')
        rec, = notify_alerts(ws, [Webhook(url=url)], _alerts(), {'model': 'm'}, sleep=lambda s: None)
    assert rec['ok'] and len(rx.received) == 1                      # the credentials were still used to post
    for f in ('audit.jsonl', 'notifications.jsonl'):
        text = (ws.root/f).read_text()
        assert '127.0.0.1' in text and not any(s in text for s in ('bob', 's3cretPW', 'tok3nPath')), (f, text)


@pytest.fixture
def monitored_ws(history_ws):
    "history_ws after one in-process stage 06 run (no papermill)."
    from mlcycle.monitor import run_monitoring
    run_monitoring(workspace=history_ws, plots=False)
    return history_ws


def test_monitor_command_notifies_metrics_show_the_window_and_a_cronjob_runs_it(monitored_ws, tmp_path, mlcycle):
    from mlcycle.charter import workspace_charter
    from mlcycle.deploy import build_container_context
    from mlcycle.notify import WebhookReceiver
    from mlcycle.serve import create_app
    from fastapi.testclient import TestClient
    ws = monitored_ws
    m = ws.manifest('06_monitoring')
    c = workspace_charter(ws).to_dict()

    def charter_with(url, tag):
        p = tmp_path/f'charter-{tag}.yaml'
        p.write_text(yaml.safe_dump({**c, 'monitoring': {'webhooks': [{'url': url, 'format': 'json', 'min_severity': 'info', 'retries': 1}]}}))
        return p

    # a receiver that answers: the command notifies it of the latest run's alerts, exits 0, and says so
    with WebhookReceiver(statuses=[502]) as rx:
        r = mlcycle('monitor', '--notify-only', '--workspace', ws.root, '--charter', charter_with(rx.url, 'ok'))
    assert r.returncode == 0, r.stderr
    assert 'ok, status 200, 2 attempt(s)' in r.stdout
    body = rx.received[-1]
    assert body['stage_run'] == m['run_id'] and body['alerts'] == m['outputs']['alerts'] and body['rows'] == m['outputs']['window']['rows']
    # a receiver that never answers 2xx: the command fails (so the schedule's own alerting fires), and the record says failed
    with WebhookReceiver(then=500) as bad:
        r = mlcycle('monitor', '--notify-only', '--workspace', ws.root, '--charter', charter_with(bad.url, 'bad'))
    assert r.returncode == 1 and 'notification(s) failed' in r.stderr and len(bad.received) == 2
    recs = [json.loads(l) for l in (ws.root/'notifications.jsonl').read_text().splitlines()]
    assert [(x['ok'], x['attempts']) for x in recs] == [(True, 2), (False, 2)]
    assert [e['event'] for e in ws.audit.entries()][-2:] == ['notification_sent', 'notification_failed'] and ws.audit.verify().ok
    # a bad webhook in the charter: one line naming the field, before anything runs
    p = tmp_path/'charter-typo.yaml'
    p.write_text(yaml.safe_dump({**c, 'monitoring': {'webhooks': [{'url': 'hooks.example.org', 'format': 'json'}]}}))
    r = mlcycle('monitor', '--workspace', ws.root, '--charter', p, '--reports', tmp_path/'reports')
    assert r.returncode == 1 and 'monitoring.webhooks[0].url' in r.stderr and not (tmp_path/'reports').exists()

    # the same run's figures on the server's /metrics
    with TestClient(create_app(ws).state.asgi) as client:
        text = client.get('/metrics').text
    for d in m['outputs']['drift']:
        assert f'mlcycle_monitoring_feature_psi{{feature="{d["feature"]}"}} {d["psi"]:.10g}' in text
    perf = m['outputs']['performance'][0]
    assert (f'mlcycle_monitoring_performance{{version="{perf["model_version"]}",arm="{perf["arm"]}",metric="accuracy"}} '
            f'{perf["accuracy"]:.10g}') in text
    assert f'mlcycle_monitoring_alerts{{severity="critical"}} {m["outputs"]["alerts_critical"]}' in text

    # the container context holds the CronJob that runs the command, with the Deployment's Secret
    ctx = build_container_context(ws, '1', out=tmp_path/'ctx')
    dep = next(yaml.safe_load_all((ctx/'kubernetes.yaml').read_text()))
    cj = yaml.safe_load((ctx/'monitoring-cronjob.yaml').read_text())
    box = cj['spec']['jobTemplate']['spec']['template']['spec']['containers'][0]
    assert cj['kind'] == 'CronJob' and box['command'] + box['args'][:1] == ['mlcycle', 'monitor']
    secrets = {e['valueFrom']['secretKeyRef']['name'] for e in dep['spec']['template']['spec']['containers'][0]['env'] if 'valueFrom' in e}
    assert {e['valueFrom']['secretKeyRef']['name'] for e in box['env'] if 'valueFrom' in e} == secrets
