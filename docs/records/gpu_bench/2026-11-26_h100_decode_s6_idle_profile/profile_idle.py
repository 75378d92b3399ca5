"""Measurement script of docs/bench_gpu.md (session 6), kept verbatim with its output (records are not linted):
where a graphed speculative step's GPU sits idle. It labels the engine's pieces with record_function (a labelled
copy of the generate_spec loop, so its inline lines get labels too), profiles CPU + CUDA, and reports host and
GPU-idle time per label."""
import dataclasses, sys, torch
from torch.profiler import profile, ProfilerActivity, record_function
from vsd.config import compose
import vsd.decoding.engine as E, vsd.decoding.verify as V, vsd.decoding.runner as R
import vsd.models.drafter_eagle as DE, vsd.models.draft_runner as DR
from vsd.evaluation.prompts import load_prompt_file
from vsd.models.draft import load_draft
from vsd.models.target import load_target

def wrap(obj, name, label):
    f = getattr(obj, name)
    def g(*a, **k):
        with record_function(label):
            return f(*a, **k)
    setattr(obj, name, g)

for o, n, l in [(V, "verify_greedy", "L_verify"), (R.GraphRunner, "step", "L_target_step"), (R.GraphRunner, "keep", "L_keep"),
                (R.GraphRunner, "_fill_from_device_tree", "L_fill"), (R.GraphRunner, "_run", "L_target_run"),
                (DE.EagleDrafter, "propose", "L_propose"), (DE.EagleDrafter, "commit", "L_drafter_commit"),
                (DR.GraphDraftRunner, "commit", "L_draft_commit"), (DR.GraphDraftRunner, "grow_greedy", "L_grow"),
                (E, "node_depths", "L_depth_stat"), (E, "_stop_index", "L_stop")]:
    wrap(o, n, l)


from vsd.decoding.engine import GenResult, _Timer, make_runner, _static_rows, _pick, _stop_index, node_depths as _nd
def gen_spec_labelled(target, drafter, prompt_ids, dcfg, generator=None):
    eos, dev = target.eos_token_ids, target.device
    feats_on = True
    draft = _Timer(dev, events=True)
    res = GenResult([], 0); tokens = res.tokens
    runner = make_runner(target, dcfg); rows_static = _static_rows(drafter, dcfg)
    out = runner.prefill(list(prompt_ids), feats_on)
    drafter.reset(list(prompt_ids), out.features[0])
    root = _pick(out.logits[0, -1], dcfg, generator); tokens.append(root)
    stop = _stop_index(tokens, 0, eos, dcfg.max_new_tokens)
    while stop is None:
        with record_function("L_timer_enter"):
            draft.__enter__()
        tree = drafter.propose(root, dcfg, generator)
        with record_function("L_timer_exit"):
            draft.__exit__()
        out = runner.step(root, tree, feats_on, rows=rows_static)
        path, nxt = V.verify_greedy(tree, out.logits[0])
        with record_function("L_acc_tolist"):
            acc = tree.tokens[path].tolist() if path else []
        res.tree_depth.append(int(E.node_depths(tree.parents.cpu()).max()) if tree.size else 0)
        rows = [0] + [i + 1 for i in path]
        with record_function("L_feats_index"):
            feats = out.features[0, rows]
        runner.keep(rows)
        with record_function("L_timer_enter"):
            draft.__enter__()
        drafter.commit([root, *acc], feats)
        with record_function("L_timer_exit"):
            draft.__exit__()
        with record_function("L_bookkeeping"):
            res.drafted.append(tree.size); res.accepted.append(len(path))
            n0 = len(tokens); tokens.extend(acc); tokens.append(nxt); root = nxt
        stop = _stop_index(tokens, n0, eos, dcfg.max_new_tokens)
    del tokens[stop:]
    return res
E.generate_spec = gen_spec_labelled

over = ["device=cuda", "decoding.max_len=1024", "decoding.draft_dtype=bfloat16"] + sys.argv[2:]
_, cfg = compose(over)[0]
tg = load_target(cfg.model, cfg.paths.cache_dir, "cuda", cfg.dtype)
dr = load_draft(sys.argv[1], tg)
ids = [tg.chat_ids([{"role": "user", "content": r["turns"][0]}]) for r in load_prompt_file("/root/stash/mtbench.jsonl")][:4]
d = dataclasses.replace(cfg.decoding, temperature=0.0, max_new_tokens=128, capture="cuda_graph")
for x in ids[:2]:
    E.generate_spec(tg, dr, x, d); E.generate_ar(tg, x, d)
torch.cuda.synchronize()
steps = 0
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
    for x in ids[2:]:
        r = E.generate_spec(tg, dr, x, d); steps += len(r.accepted)
    torch.cuda.synchronize()
ev = p.events()
gpu = sorted((e.time_range.start, e.time_range.end) for e in ev if e.device_type.name == "CUDA" and not e.name.startswith("L_"))
labs = [e for e in ev if e.name.startswith("L_") and e.device_type.name == "CPU"]
t0 = min(e.time_range.start for e in labs); t1 = max(e.time_range.end for e in labs)
busy = []  # union of GPU intervals
for a, b in gpu:
    if busy and a <= busy[-1][1]: busy[-1][1] = max(busy[-1][1], b)
    else: busy.append([a, b])
def busy_in(a, b):
    return sum(max(0, min(b, y) - max(a, x)) for x, y in busy)
span = t1 - t0; gb = busy_in(t0, t1)
print(f"steps {steps}; per step: wall {span/steps/1000:.3f} ms, GPU busy {gb/steps/1000:.3f} ms, GPU idle {(span-gb)/steps/1000:.3f} ms")
from collections import defaultdict
agg = defaultdict(lambda: [0, 0.0, 0.0])
for e in labs:
    a, b = e.time_range.start, e.time_range.end
    s = agg[e.name]; s[0] += 1; s[1] += b - a; s[2] += (b - a) - busy_in(a, b)
print("| label | calls/step | host ms/step | GPU idle inside, ms/step |\n|---|---|---|---|")
for k, (n, h, i) in sorted(agg.items(), key=lambda kv: -kv[1][2]):
    print(f"| {k} | {n/steps:.2f} | {h/steps/1000:.3f} | {i/steps/1000:.3f} |")
# idle outside every top-level label
tops = sorted((e.time_range.start, e.time_range.end) for e in labs if e.name in ("L_verify", "L_target_step", "L_keep", "L_propose", "L_drafter_commit", "L_depth_stat", "L_stop", "L_acc_tolist", "L_feats_index", "L_bookkeeping", "L_timer_enter", "L_timer_exit"))
out_idle, cur = 0.0, t0
for a, b in tops:
    if a > cur: out_idle += (a - cur) - busy_in(cur, a)
    cur = max(cur, b)
print(f"GPU idle outside the labels (engine's own lines): {out_idle/steps/1000:.3f} ms/step")
kern = defaultdict(lambda: [0, 0.0])
for e in ev:
    if e.device_type.name == "CUDA" and not e.name.startswith("L_"):
        kern[e.name[:60]][0] += 1; kern[e.name[:60]][1] += e.time_range.end - e.time_range.start
print("top kernels by GPU time per step:")
for k, (n, t) in sorted(kern.items(), key=lambda kv: -kv[1][1])[:12]:
    print(f"  {t/steps/1000:.3f} ms  {n/steps:.1f}/step  {k}")
