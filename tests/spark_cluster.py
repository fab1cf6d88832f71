"""A real Spark standalone cluster on this machine for the tests: one master and two workers on 127.0.0.1, started from
pyspark's own `bin/spark-class` (no Spark download), one core and a small memory each. `tests/conftest.py` wraps it in
the session fixture `spark_cluster`."""
import json, os, subprocess, sys, time, urllib.request
from pathlib import Path


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def spark_class() -> Path:
    "pyspark's `bin/spark-class`, which starts Spark's JVM daemons."
    import pyspark
    p = Path(pyspark.__file__).parent/'bin'/'spark-class'
    if not p.exists(): raise RuntimeError(f'pyspark has no bin/spark-class at {p}: install pyspark from PyPI (pip install ".[spark]")')
    return p


def master_status(ui_url: str, timeout: float = 5) -> dict:
    "The master's JSON status (`/json/`): workers, their state, active and completed applications."
    with urllib.request.urlopen(ui_url.rstrip('/') + '/json/', timeout=timeout) as r: return json.loads(r.read())


def _tail(logs: Path, chars: int = 3000) -> str:
    return '\n'.join(f'--- {p.name}\n{p.read_text(errors="replace")[-chars:]}' for p in sorted(logs.glob('*.log')))


class StandaloneCluster:
    """`start()` launches the master, then `workers` workers of `cores` core(s) and `memory` each, on free ports, with
    their logs in `logs`; it returns when the master lists every worker ALIVE (else it stops them and raises with the
    logs' tails). `url` is the `spark://` master URL, `ui` the master's web UI, `stop()` ends them all."""
    def __init__(self, logs: Path, workers: int = 2, cores: int = 1, memory: str = '1g', timeout: float = 120):
        self.logs, self.n, self.cores, self.memory, self.timeout = Path(logs), workers, cores, memory, timeout
        self.procs, self.files, self.started = [], [], []
        self.port, self.ui_port = _free_port(), _free_port()
        self.url, self.ui = f'spark://127.0.0.1:{self.port}', f'http://127.0.0.1:{self.ui_port}'
        self.env = {**os.environ, 'SPARK_LOCAL_IP': '127.0.0.1', 'SPARK_MASTER_HOST': '127.0.0.1', 'SPARK_DAEMON_MEMORY': '256m',
                    'PYSPARK_PYTHON': sys.executable, 'PYSPARK_DRIVER_PYTHON': sys.executable, 'OMP_NUM_THREADS': '1'}
        self.env.pop('SPARK_HOME', None)     # pyspark's own installation

    def _launch(self, name: str, *args):
        self.logs.mkdir(parents=True, exist_ok=True)
        f = open(self.logs/f'{name}.log', 'wb')
        self.files.append(f)
        self.procs.append(subprocess.Popen([str(spark_class()), *args], env=self.env, stdout=f, stderr=subprocess.STDOUT, cwd=self.logs))
        self.started.append(self.procs[-1])

    def start(self) -> 'StandaloneCluster':
        t0 = time.monotonic()
        self._launch('master', 'org.apache.spark.deploy.master.Master', '--host', '127.0.0.1', '--port', str(self.port),
                     '--webui-port', str(self.ui_port))
        for i in range(self.n):
            self._launch(f'worker-{i}', 'org.apache.spark.deploy.worker.Worker', '--host', '127.0.0.1', '--port', str(_free_port()),
                         '--webui-port', str(_free_port()), '--cores', str(self.cores), '--memory', self.memory,
                         '--work-dir', str(self.logs/f'work-{i}'), self.url)
        while True:
            dead = [p.args[1].rsplit('.', 1)[-1] for p in self.procs if p.poll() is not None]
            alive = -1                 # the master not answering yet
            try: alive = sum(w.get('state') == 'ALIVE' for w in master_status(self.ui, 2).get('workers', []))
            except Exception: pass
            if alive >= self.n: break
            if dead or time.monotonic() - t0 > self.timeout:
                why = f'{", ".join(dead)} exited' if dead else f'{max(alive, 0)} of {self.n} workers registered after {self.timeout:.0f} s'
                self.stop()
                raise RuntimeError(f'the Spark standalone cluster did not come up ({why}); logs in {self.logs}:\n{_tail(self.logs)}')
            time.sleep(0.5)
        self.start_seconds = time.monotonic() - t0
        return self

    def completed_apps(self) -> list[dict]:
        "The applications the master has seen finish (name, cores, state, duration)."
        return master_status(self.ui).get('completedapps', [])

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None: p.terminate()
        for p in reversed(self.procs):
            try: p.wait(30)
            except subprocess.TimeoutExpired: p.kill(); p.wait(10)
        for f in self.files: f.close()
        self.procs, self.files = [], []
