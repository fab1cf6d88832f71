"""How stable are the circle's decisions? Over N seeds, the retraining gate's verdict and the A/B decision (run on demand):

    mlcycle run --stages 01-05 --no-circle -w WS --approver NAME   # once: a workspace with v1 as @champion on the bundled charter
    python tests/benchmarks/bench_verdict_stability.py -w WS [--champion 1] [--seeds 20] [--first-seed 0 | --seed-list 2,10] [--scenarios gig_economy,new_category] [--out r.json]

For each scenario and each seed, the deciding parts of the default circle run in one process, without a server, and follow
the circle to its decision:
- production traffic: `--rows` (4000, the circle's default) production rows, in the seeded order `simulate` sends them and
  reshaped by the scenario with that seed (`mlcycle.simulate.replay_rows`), scored by @champion, all labelled (the feedback);
- stage 07, phase train: the same functions as the stage (`retraining_parts`, `challenger_candidates`, `select_model`),
  stage 04's measurements (`gate_model`) on the held-out new rows, and the evidence design (`gate_evidence`):
  passed / failed / insufficient_evidence. This is the first look, kept in the output (`first_verdict`, `first_look`);
- when the first look is insufficient evidence, the circle's wait (`mlcycle.cli.evidence_plan`, as `evidence_traffic`):
  the rows it asks for + 10 %, the next rows of the same seeded order (never sent before), and phase regate's gate on every
  new row the challenger was never fitted or selected on (`mlcycle.retrain.unseen_split`, as `run_regate`);
- the A/B test, when the final gate passed: stage 07's design (`ab_plan`: sized for the primary metric's test, sequential), and as many
  production rows not sent before as it asks for (`ab_rows`, `unsent_rows`, as `ab_traffic`; when too few are left, those
  left: the sequential analysis looks at them and decides only on strong enough evidence, else says continue), routed by the server's hash of distinct request ids, both models'
  answers, `analyze_ab` + `decision_for`. `decision_reusing_rows`: the decision at the full design on rows drawn again from
  the whole pool (what the circle did before it sent only unsent rows), for comparison.
The figure is the count of seeds whose final verdict and A/B decision equal the most common pair (`same_both`): the
issue's goal is 19 of 20. The seed changes which production rows are replayed and how the scenario draws them, so this
measures how much the decisions depend on the sample, once thread timing no longer matters (tests/test_evidence.py shows
that part)."""
import argparse, collections, json, os, time
from pathlib import Path

import numpy as np
import pandas as pd


def ab_decision(c, contract, champ, chal, ab, seed: int, design: dict, tag: str) -> dict:
    "The A/B test on the production rows `ab`: routed by the server's hash of distinct request ids, both models' answers, `analyze_ab` + `decision_for`."
    from mlcycle.batching import bucket
    from mlcycle.charter import binary_target
    from mlcycle.data import feature_frame
    from mlcycle.retrain import analyze_ab, decision_for
    n, target = len(ab), c.data.target
    X = feature_frame(ab, contract)
    rid = [f'{tag}{seed}-{i}' for i in range(n)]
    to_ch = bucket(rid, salt='2') < 0.5
    pc, pn = champ.predict_proba(X)[:, 1], chal.predict_proba(X)[:, 1]
    lc, ln = champ.predict(X), chal.predict(X)
    log = pd.DataFrame({'request_id': rid, 'ts': np.arange(n, dtype=float), 'model_version': np.where(to_ch, '2', '1'),
                        'arm': np.where(to_ch, 'challenger', 'champion'), 'probability': np.where(to_ch, pn, pc),
                        'label': np.where(to_ch, ln, lc).astype(int), 'y_true': binary_target(c, ab[target]).astype(float),
                        'shadow_version': None, 'shadow_label': None, 'shadow_probability': None,
                        **{f'x_{f}': ab[f].to_numpy() for f in c.data.sensitive_features if f in ab}})
    an = analyze_ab(log, c, design, '1', '2')
    return {'decision': decision_for(an), 'result': an.get('result'), 'reason': an.get('reason'), 'rows': n}


def one_seed(ws, c, contract, champ, scenario: str, seed: int, rows: int, pool: int) -> dict:
    from mlcycle.cli import ab_rows, evidence_plan, unsent_rows
    from mlcycle.retrain import ab_plan, challenger_candidates, retraining_parts, unseen_split
    from mlcycle.validate import gate_evidence
    from mlcycle.simulate import replay_rows
    from mlcycle.train import select_model
    from mlcycle.validate import gate_model
    t0 = time.perf_counter()
    target, sent = c.data.target, min(rows, pool)                 # the circle's production traffic: each row once (`distinct_rows`)
    # as `simulate(seed=s, skip=k)` sends them: the first `k + n` rows of the seeded order, the first `k` left out (sent before)
    replay = lambda n, skip: replay_rows(skip + n, scenario, 1.0, seed, workspace=ws)[0].iloc[skip:].reset_index(drop=True)
    df = replay(sent, 0)[[*contract['features'], target]]          # what the prediction log keeps of a row: the contract's features and the label
    new = df.assign(_ts=np.arange(len(df), dtype=float), _request_id=[f'{seed}-{i}' for i in range(len(df))])
    data = retraining_parts(ws, c, contract, new, test_share=0.3)
    parts = data['parts']
    sel = select_model(challenger_candidates(c, contract, parts, champ, 'hist_gradient_boosting', n_jobs=1), c)
    out = {'scenario': scenario, 'seed': seed, 'test_source': data['test_source'], 'selected': sel.chosen.name if sel.chosen else None}
    if sel.chosen is None:
        return {**out, 'first_verdict': 'not registered', 'verdict': 'not registered', 'decision': 'keep', 'seconds': time.perf_counter() - t0}
    model = sel.chosen.model
    def gate_on(test, fitted):
        g = gate_model(model, c, contract, test, train_df=fitted if len(fitted) >= 200 else parts['train'], validation_df=parts['validation'],
                       champion=champ, champion_version='1')
        return g, (gate_evidence(c, g['rules'], g['rows']) if data['holdout_is_new'] else {'status': g['status'], 'text': g['summary']})
    test = parts['test']
    gate, ev = gate_on(test, parts['train_recent'])
    out.update(first_verdict=ev['status'], first_gate=ev.get('text') or gate['summary'], first_rows=gate['rows'],
               first_objectives={o['rule']: round(o['value'], 4) for o in ev.get('objectives', [])})
    if ev['status'] == 'insufficient_evidence':       # the circle waits: `evidence_traffic` sends the rows asked for, phase regate gates again
        plan = evidence_plan(ev.get('more_rows_needed'), sent, pool)
        out.update(more_rows_needed=ev.get('more_rows_needed'), evidence_rows=plan['rows'], evidence_why=plan['why'])
        if plan['rows']:
            extra = replay(plan['rows'], sent)[[*contract['features'], target]]
            extra = extra.assign(_ts=len(new) + np.arange(len(extra), dtype=float), _request_id=[f'{seed}-{len(new) + i}' for i in range(len(extra))])
            sent += plan['rows']
            holdout, fitted = unseen_split(pd.concat([new, extra], ignore_index=True), parts['train'], parts['validation'])   # as `run_regate`
            strip = lambda d: d.drop(columns=[x for x in d.columns if str(x).startswith('_')]).reset_index(drop=True)
            test = strip(holdout)
            gate, ev = gate_on(test, strip(fitted))
    out.update(verdict=ev['status'], gate=ev.get('text') or gate['summary'], gate_rows=gate['rows'],
               objectives={o['rule']: round(o['value'], 4) for o in ev.get('objectives', [])})
    if ev['status'] != 'passed': return {**out, 'decision': 'keep', 'seconds': time.perf_counter() - t0}
    design = ab_plan(c, champ, gate, test, contract)              # stage 07's design: sized on the test that decides, sequential
    out.update(ab_design_accuracy=[design.get('accuracy_design', design)['champion'], design.get('accuracy_design', design)['challenger']],
               ab_design_primary=[design['champion'], design['challenger']], ab_method=design['method'])
    need = ab_rows(design)
    plan = unsent_rows(need, sent, pool, 'the A/B')             # as the circle's `ab_traffic`: only rows not sent before
    out.update(ab_needed=need, ab_unsent=plan['rows'], ab_short=plan['short'])
    ab = ab_decision(c, contract, champ, model, replay(plan['rows'], sent), seed, design, 'ab') if plan['rows'] else {'decision': 'continue'}
    reused = ab_decision(c, contract, champ, model, replay_rows(need, scenario, 1.0, 10_000 + seed, workspace=ws)[0].reset_index(drop=True),
                         seed, design, 'abr')           # what the A/B decided before, on rows drawn again from the whole pool
    return {**out, 'decision': ab['decision'], 'ab_result': ab.get('result'), 'ab': ab.get('reason'), 'ab_rows': ab.get('rows', 0),
            'decision_reusing_rows': reused['decision'], 'ab_reusing_rows': reused.get('reason'), 'seconds': time.perf_counter() - t0}


def run(workspace, seeds: int = 20, scenarios=('gig_economy', 'new_category'), rows: int = 4000, champion: str | None = None, log=print,
        out: str | None = None, first_seed: int = 0, seed_list=None) -> dict:
    import mlflow
    from mlcycle.charter import workspace_charter
    from mlcycle.core import Workspace, read_json
    from mlcycle.deploy import aliases
    from mlcycle.simulate import production_data
    from mlcycle.train import load_model_version
    ws = Workspace(workspace)
    c, contract = workspace_charter(ws), read_json(ws.root/'data'/'contract.json')
    champ = load_model_version(ws, c, champion or aliases(ws)['champion'])
    mlflow.set_tracking_uri(None)
    pool = len(production_data(ws)['data'])
    results, summary = [], {}
    for sc in scenarios:
        rs = []
        for s in (seed_list or range(first_seed, first_seed + seeds)):
            r = one_seed(ws, c, contract, champ, sc, s, rows, pool); rs.append(r)
            log(f"{sc} seed {s}: first look {r['first_verdict']}, gate {r['verdict']}, A/B {r['decision']} (reusing rows: "
                f"{r.get('decision_reusing_rows')}) ({r['seconds']:.0f} s) · {r.get('gate', '')[:160]} · {r.get('ab_short') or ''}")
            if out: Path(out).write_text(json.dumps({'results': results + rs}, indent=2, default=str))     # partial results survive an interrupted run
        first = collections.Counter(r['first_verdict'] for r in rs)
        verdicts = collections.Counter(r['verdict'] for r in rs)
        reused = collections.Counter((r['verdict'], r.get('decision_reusing_rows', r['decision'])) for r in rs)
        decisions = collections.Counter(r['decision'] for r in rs)
        both = collections.Counter((r['verdict'], r['decision']) for r in rs)
        summary[sc] = {'seeds': len(rs), 'seed_list': [r['seed'] for r in rs], 'first_look': dict(first), 'same_first_look': first.most_common(1)[0][1], 'verdicts': dict(verdicts), 'decisions': dict(decisions),
                       'same_verdict': verdicts.most_common(1)[0][1], 'same_decision': decisions.most_common(1)[0][1],
                       'same_both': both.most_common(1)[0][1], 'most_common': list(both.most_common(1)[0][0]),
                       'same_both_reusing_rows': reused.most_common(1)[0][1], 'most_common_reusing_rows': list(reused.most_common(1)[0][0]),
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
    ap.add_argument('--first-seed', type=int, default=0, help='seeds first_seed .. first_seed + seeds - 1 (to split a run)')
    ap.add_argument('--seed-list', default='', help='these seeds instead, e.g. 2,10,16 (to split a run)')
    a = ap.parse_args()
    r = run(a.workspace, a.seeds, tuple(a.scenarios.split(',')), a.rows, a.champion, out=a.out, first_seed=a.first_seed,
            seed_list=[int(x) for x in a.seed_list.split(',')] if a.seed_list else None)
    print(json.dumps(r['summary'], indent=2))
    print('load average at the end:', r['load_average'])
    if a.out: Path(a.out).write_text(json.dumps(r, indent=2, default=str))
