"""How stable are the circle's decisions? Over N seeds, the retraining gate's verdict and the A/B decision (run on demand):

    mlcycle run --stages 01-05 --no-circle -w WS          # once: a workspace with v1 as @champion on the bundled charter
    python tests/benchmarks/bench_verdict_stability.py -w WS [--champion 1] [--seeds 20] [--scenarios gig_economy,new_category] [--out r.json]

For each scenario and each seed, the deciding parts of the default circle run in one process, without a server:
- production traffic: `--rows` (4000, the circle's default) production rows, replayed and reshaped by the scenario with
  that seed (`mlcycle.simulate.replay_rows`), scored by @champion, all labelled (the circle's feedback);
- stage 07, phase train: the same functions as the stage (`retraining_parts`, `challenger_candidates`, `select_model`),
  stage 04's measurements (`gate_model`) on the held-out new rows, and the evidence design (`gate_evidence`):
  passed / failed / insufficient_evidence;
- the A/B test, when the gate passed: the design of `start_ab_test` (`ab_design` and `primary_design`), that many fresh
  production rows (another seed), routed by the server's hash of distinct request ids, both models' answers, and
  `analyze_ab` + `decision_for`.
The figure is the count of seeds whose verdict (and decision) equals the most common one: the issue's goal is 19 of 20.
The seed changes which production rows are replayed and how the scenario draws them, so this measures how much the
decisions depend on the sample, once thread timing no longer matters (tests/test_evidence.py shows that part)."""
import argparse, collections, json, os, time
from pathlib import Path

import numpy as np
import pandas as pd


def one_seed(ws, c, contract, champ, scenario: str, seed: int, rows: int) -> dict:
    from mlcycle.batching import bucket
    from mlcycle.charter import binary_target
    from mlcycle.data import feature_frame
    from mlcycle.retrain import (ab_design, analyze_ab, challenger_candidates, decision_for, gate_evidence, primary_design,
                                 retraining_parts)
    from mlcycle.simulate import replay_rows
    from mlcycle.train import select_model
    from mlcycle.validate import gate_model
    t0 = time.perf_counter()
    target = c.data.target
    df = replay_rows(rows, scenario, 1.0, seed, workspace=ws)[0].reset_index(drop=True)
    new = df.assign(_ts=np.arange(len(df), dtype=float), _request_id=[f'{seed}-{i}' for i in range(len(df))])
    data = retraining_parts(ws, c, contract, new, test_share=0.3)
    sel = select_model(challenger_candidates(c, contract, data['parts'], champ, 'hist_gradient_boosting', n_jobs=1), c)
    out = {'scenario': scenario, 'seed': seed, 'test_source': data['test_source'], 'selected': sel.chosen.name if sel.chosen else None}
    if sel.chosen is None:
        return {**out, 'verdict': 'not registered', 'decision': 'keep', 'seconds': time.perf_counter() - t0}
    test = data['parts']['test']
    gate = gate_model(sel.chosen.model, c, contract, test, train_df=data['parts']['train_recent'] if len(data['parts']['train_recent']) >= 200
                      else data['parts']['train'], validation_df=data['parts']['validation'], champion=champ, champion_version='1')
    ev = gate_evidence(c, gate['rules'], gate['rows']) if data['holdout_is_new'] else {'status': gate['status'], 'text': gate['summary']}
    out.update(verdict=ev['status'], gate=ev.get('text') or gate['summary'],
               objectives={o['rule']: round(o['value'], 4) for o in ev.get('objectives', [])})
    if ev['status'] != 'passed': return {**out, 'decision': 'keep', 'seconds': time.perf_counter() - t0}
    Xt, yt = feature_frame(test, contract), binary_target(c, test[target])
    right_c = champ.predict(Xt) == yt
    design = ab_design(c, float(right_c.mean()), 0.5)
    prim = primary_design(c, yt, champ.predict_proba(Xt)[:, 1], gate['proba'], 0.5)
    design.update(champion=max(design['champion'], prim['champion']), challenger=max(design['challenger'], prim['challenger']))
    n = int(np.ceil(max(design['champion'], design['challenger']) / 0.5 * 1.15))
    ab = replay_rows(n, scenario, 1.0, 10_000 + seed, workspace=ws)[0].reset_index(drop=True)
    X = feature_frame(ab, contract)
    rid = [f'ab{seed}-{i}' for i in range(n)]
    to_ch = bucket(rid, salt='2') < 0.5
    pc, pn = champ.predict_proba(X)[:, 1], sel.chosen.model.predict_proba(X)[:, 1]
    lc, ln = champ.predict(X), sel.chosen.model.predict(X)
    log = pd.DataFrame({'request_id': rid, 'ts': np.arange(n, dtype=float), 'model_version': np.where(to_ch, '2', '1'),
                        'arm': np.where(to_ch, 'challenger', 'champion'), 'probability': np.where(to_ch, pn, pc),
                        'label': np.where(to_ch, ln, lc).astype(int), 'y_true': binary_target(c, ab[target]).astype(float),
                        'shadow_version': None, 'shadow_label': None, 'shadow_probability': None,
                        **{f'x_{f}': ab[f].to_numpy() for f in c.data.sensitive_features if f in ab}})
    an = analyze_ab(log, c, design, '1', '2')
    return {**out, 'decision': decision_for(an), 'ab_result': an.get('result'), 'ab': an.get('reason'), 'ab_rows': n,
            'seconds': time.perf_counter() - t0}


def run(workspace, seeds: int = 20, scenarios=('gig_economy', 'new_category'), rows: int = 4000, champion: str | None = None, log=print) -> dict:
    import mlflow
    from mlcycle.charter import workspace_charter
    from mlcycle.core import Workspace, read_json
    from mlcycle.deploy import aliases
    from mlcycle.train import load_model_version
    ws = Workspace(workspace)
    c, contract = workspace_charter(ws), read_json(ws.root/'data'/'contract.json')
    champ = load_model_version(ws, c, champion or aliases(ws)['champion'])
    mlflow.set_tracking_uri(None)
    results, summary = [], {}
    for sc in scenarios:
        rs = []
        for s in range(seeds):
            r = one_seed(ws, c, contract, champ, sc, s, rows); rs.append(r)
            log(f"{sc} seed {s}: gate {r['verdict']}, A/B {r['decision']} ({r['seconds']:.0f} s) · {r.get('gate', '')[:160]}")
        verdicts = collections.Counter(r['verdict'] for r in rs)
        decisions = collections.Counter(r['decision'] for r in rs)
        both = collections.Counter((r['verdict'], r['decision']) for r in rs)
        summary[sc] = {'seeds': seeds, 'verdicts': dict(verdicts), 'decisions': dict(decisions),
                       'same_verdict': verdicts.most_common(1)[0][1], 'same_decision': decisions.most_common(1)[0][1],
                       'same_both': both.most_common(1)[0][1], 'most_common': list(both.most_common(1)[0][0]),
                       'seconds': round(sum(r['seconds'] for r in rs), 1)}
        results += rs
    return {'summary': summary, 'results': results, 'load_average': os.getloadavg()}


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('-w', '--workspace', required=True, help='a workspace where stages 01-05 ran (v1 @champion)')
    ap.add_argument('--seeds', type=int, default=20)
    ap.add_argument('--scenarios', default='gig_economy,new_category')
    ap.add_argument('--rows', type=int, default=4000, help='production rows before retraining (the circle default)')
    ap.add_argument('--champion', default=None, help='the version to retrain from (default: @champion; e.g. 1 in a workspace where the circle ran)')
    ap.add_argument('--out', default=None)
    a = ap.parse_args()
    r = run(a.workspace, a.seeds, tuple(a.scenarios.split(',')), a.rows, a.champion)
    print(json.dumps(r['summary'], indent=2))
    print('load average at the end:', r['load_average'])
    if a.out: Path(a.out).write_text(json.dumps(r, indent=2, default=str))
