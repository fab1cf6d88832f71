"""JupyterLab for real: a JupyterLab server on 127.0.0.1 (free port, token auth, bounded time, stopped at the end); a stage
notebook opened through the contents API; a kernel started through the sessions API; the notebook's cells run over the
kernel's websocket (the Jupyter messaging protocol), with the papermill parameters injected after the `parameters` cell."""
import json, os, secrets, signal, socket, subprocess, sys, time, uuid
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(1800)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    "A JupyterLab server serving the repository's nbs/ folder; yields (url, token); the server and its kernels are stopped after."
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, 'JUPYTER_RUNTIME_DIR': str(tmp_path/'runtime'), 'JUPYTER_CONFIG_DIR': str(tmp_path/'config'), 'MPLBACKEND': 'Agg'}
    env.pop('MLFLOW_TRACKING_URI', None)
    log = open(tmp_path/'jupyterlab.log', 'wb')
    proc = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', '--ip=127.0.0.1', f'--port={port}', '--port-retries=0',
                             f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={ROOT/"nbs"}']
                            + (['--allow-root'] if os.geteuid() == 0 else []),
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f'http://127.0.0.1:{port}'
    try:
        t0 = time.monotonic()
        while True:
            assert proc.poll() is None, f'jupyterlab exited: {(tmp_path/"jupyterlab.log").read_text()[-2000:]}'
            assert time.monotonic() - t0 < 180, 'jupyterlab did not start within 180 s'
            try:
                if requests.get(f'{url}/api/status', headers={'Authorization': f'token {token}'}, timeout=2).status_code == 200: break
            except requests.RequestException: pass
            time.sleep(0.3)
        yield url, token
    finally:
        try: os.killpg(proc.pid, signal.SIGTERM)          # the server and the kernels it started (its own process group)
        except ProcessLookupError: pass
        try: proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL); proc.wait(10)
        log.close()


def _execute(ws, session: str, code: str, timeout: float = 900) -> list[dict]:
    "Send one execute_request over the kernel websocket; return the outputs (stream, display_data, execute_result, error)."
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({'header': {'msg_id': msg_id, 'username': 'test', 'session': session, 'msg_type': 'execute_request', 'version': '5.3',
                                   'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())},
                        'parent_header': {}, 'metadata': {}, 'channel': 'shell', 'buffers': [],
                        'content': {'code': code, 'silent': False, 'store_history': True, 'user_expressions': {}, 'allow_stdin': False,
                                    'stop_on_error': True}}))
    outputs, replied, idle, t0 = [], False, False, time.monotonic()
    while not (replied and idle):
        assert time.monotonic() - t0 < timeout, f'cell did not finish within {timeout} s:\n{code[:300]}'
        m = json.loads(ws.recv())
        if m.get('parent_header', {}).get('msg_id') != msg_id: continue
        t = m['header']['msg_type']
        if m['channel'] == 'shell' and t == 'execute_reply': replied = True
        elif t == 'status' and m['content']['execution_state'] == 'idle': idle = True
        elif t in ('stream', 'display_data', 'execute_result', 'error'): outputs.append({'type': t, **m['content']})
    return outputs


def _text(outputs) -> str:
    parts = []
    for o in outputs:
        if o['type'] == 'stream': parts.append(o['text'])
        elif o['type'] in ('display_data', 'execute_result'): parts += [o['data'].get('text/plain', ''), o['data'].get('text/html', '')]
    return '\n'.join(parts)


def test_retirement_notebook_runs_in_jupyterlab(lab, history_ws):
    import websocket
    url, token = lab
    H = {'Authorization': f'token {token}'}
    r = requests.get(f'{url}/api/contents/09_retirement.ipynb', headers=H, params={'content': 1}, timeout=30)
    assert r.status_code == 200 and r.json()['type'] == 'notebook'
    nb = r.json()['content']
    cells = [c for c in nb['cells'] if c['cell_type'] == 'code']
    assert any('parameters' in c['metadata'].get('tags', []) for c in cells)
    s = requests.post(f'{url}/api/sessions', headers=H, timeout=60,
                      json={'path': '09_retirement.ipynb', 'name': '09_retirement.ipynb', 'type': 'notebook', 'kernel': {'name': 'python3'}})
    assert s.status_code == 201, s.text
    sid, kid = s.json()['id'], s.json()['kernel']['id']
    assert any(k['id'] == kid for k in requests.get(f'{url}/api/kernels', headers=H, timeout=10).json())
    ws = websocket.create_connection(f'{url.replace("http", "ws")}/api/kernels/{kid}/channels?session_id={sid}',
                                     header=[f'Authorization: token {token}'], timeout=900)
    params = {'workspace': str(history_ws.root), 'version': '1', 'replacement': '2', 'retention_days': 30, 'dry_run': True}
    transcript = []
    try:
        for c in cells:
            out = _execute(ws, sid, c['source'])
            errors = [o for o in out if o['type'] == 'error']
            assert not errors, f"cell failed: {errors[0]['ename']}: {errors[0]['evalue']}\n{c['source'][:500]}"
            transcript.append(out)
            if 'parameters' in c['metadata'].get('tags', []):      # what papermill does: a cell of injected parameters after it
                transcript.append(_execute(ws, sid, '\n'.join(f'{k} = {v!r}' for k, v in params.items())))
        plan = _execute(ws, sid, 'import json; print(json.dumps(result["plan"]["deletes"], default=str)); print(result["dry_run"])')
    finally:
        ws.close()
    assert json.loads(_text(plan).splitlines()[0])['predictions'] == 1500
    assert _text(plan).splitlines()[1] == 'True'
    assert 'retired: ' in _text(sum(transcript, []))                          # the example retirement ran in the kernel
    assert requests.get(f'{url}/api/kernels/{kid}', headers=H, timeout=10).json()['execution_state'] == 'idle'
    assert requests.delete(f'{url}/api/sessions/{sid}', headers=H, timeout=60).status_code == 204
