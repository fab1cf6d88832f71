"""Compare the stage manifests of two workspaces value by value: what two runs of the same inputs decided and measured.

    python tests/benchmarks/compare_workspaces.py WS_A WS_B

Walks the `outputs` of every `stages/*.json` and prints the values that differ, leaving out what differs between any
two runs by nature: timings, latencies, timestamps, paths, ids and ports (by key name), and text that holds them."""
import json, re, sys, tempfile
from pathlib import Path
SKIP = re.compile(r'latenc|_ms|seconds|time|date|created|run_id|path|dir|uri|load_average|wall|pid|port|url|duration|host|elapsed|started|finished|_at$|^at$|id$', re.I)
def flat(o, pre=''):
    if isinstance(o, dict):
        for k, v in o.items():
            if SKIP.search(str(k)): continue
            yield from flat(v, f'{pre}.{k}')
    elif isinstance(o, list):
        for i, v in enumerate(o): yield from flat(v, f'{pre}[{i}]')
    else:
        if isinstance(o, str) and (tempfile.gettempdir() in o or re.search(r'\d{8}-\d{6}|ms\b|p95', o)): return
        yield pre, round(o, 9) if isinstance(o, float) else o
a, b = map(Path, sys.argv[1:3])
diffs = n = 0
for f in sorted((a/'stages').glob('*.json')):
    g = b/'stages'/f.name
    if not g.exists(): print('missing in B:', f.name); continue
    A, B = dict(flat(json.loads(f.read_text()).get('outputs', {}))), dict(flat(json.loads(g.read_text()).get('outputs', {})))
    for k in sorted(set(A) | set(B)):
        n += 1
        if A.get(k) != B.get(k):
            diffs += 1
            if diffs <= 30: print(f.name, k, '|', str(A.get(k))[:100], '|', str(B.get(k))[:100])
print(f'{n} values compared, {diffs} differ')
