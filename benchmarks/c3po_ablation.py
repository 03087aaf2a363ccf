"""The C3PO ablation: Ring-lite's token budget against the sample budget, on the demo's math RL.

    PYTHONPATH=. python3 benchmarks/c3po_ablation.py --seeds 0,1,2 [--arms c3po,seq_mean,token_mean] [--steps 250]
        [--phi 1200] [--checkpoint STEP_DIR] [--root runs/c3po_ablation] [--smoke] [--out FILE]

Every arm starts from the same model: the demo's (ringjax/pipeline/demo.yaml, math only) after its SFT recipe and
entropy-band pick (`mismatch_sources.demo_model`, or --checkpoint). Each (arm, seed) then runs `train_rl` for --steps
steps of the demo's RL section (8 prompts x 8 samples, IcePop, AdamW lr 1e-4, grad clip 1) with the embedded engine
in-process and `rollout.mode=sync` in every arm (whole batches of 8 groups, no partial rollouts: the budget is
isolated from C3PO++); the seed sets the prompt order and the sampling. Arms (`ARMS`), the rest of the config equal:
- `c3po` (Ring-lite's C3PO, the demo's RL default): `rl.budget=tokens`, `loss.aggregation=c3po`: every step trains
  on exactly phi = --phi response tokens (the last response cut), the loss summed over tokens and divided by phi; the
  rest of the rollouts waits for the next step (`rl.leftover=keep`, the demo's). In sync mode that rest is most of
  the next step: a rollout iteration generates whole batches until it holds phi tokens, and the pool is taken oldest
  first, so much of what this arm trains on comes from an older policy (`stale_tokens_frac`: 0.99 and 1.0 at
  steps 2 and 3 of a timed run);
- `seq_mean`: `rl.budget=groups`, `loss.aggregation=seq_mean`: every step trains on the 8 whole groups of one
  rollout batch, whatever their token count; per-response mean, then mean over responses (GRPO);
- `token_mean`: the same groups, summed over tokens / the step's token count (DAPO);
- `c3po_drop` (not in the default arms): `c3po` with `rl.leftover=drop`: on-policy like the groups arms, the rest of
  each iteration's batches dropped (`dropped_tokens`; an iteration generates one or two batches).
The groups arms set `rl.phi` to its least value, max_new_tokens (32): there phi only sets the rollout iteration's
token target, so each step is exactly one rollout batch (64 responses hold more than 32 tokens), all on-policy.
--phi (default 1200) is the mean tokens of a groups step of this model: 64 x 18.55 = 1187 from 512 responses of the
500-step SFT model, 1217 over the first 6 steps of a `seq_mean` run; so the arms train on about the same tokens per
step on average (the summary's `tokens_per_step` of the groups arms shows the match).

Response lengths: the summary reports their spread across responses of the starting model and of every run's final
model (--length-prompts RL prompts x 8 samples: std, quantiles, the mean std within a GRPO group) and across steps
(std of `response_len_mean`, and of the groups arms' tokens per step). On the demo's math they vary little: the
answer traces of 3-operand sums (~92% of the prompts) are 19 tokens, of 2-operand sums ~12; the SFT model's lengths
have std 2.2 tokens (p10 = p50 = p90 = 19) and 0.22 within a group, so a groups step's token count moves by ~4%
(std ~50 of ~1200 tokens).
Held-out math accuracy (the demo's held-out prompts, --eval-samples samples each, temperature 1) is measured at the
start and at every checkpoint (--eval-points per run).

Size. Measured on an idle 2-core machine: the full run of the four arms x 3 seeds x 250 steps with 5 held-out
evaluations each took 24 minutes, SFT (2 min) included: ~2 min per (arm, seed), ~0.35-0.4 s per step after the
first (which compiles); 2-3x that on a loaded machine.

XLA compilations are cached in ROOT/xla_cache (every run compiles the same functions). Each (arm, seed) runs in
ROOT/ARM_seedS; a folder that already holds checkpoints is resumed, so an ablation of another size needs its own
--root. Prints one JSON line per run and a final {"summary": ...} line; --out gets everything, per-step metrics
included (the notebook notebooks/c3po_ablation.ipynb plots that file).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import types

import numpy as np

from _lab import (SMOKE_GROUPS, add_lab_args, checkpoint_accuracy, compile_cache, lab_rl_config, log, start_model,
                  train_math)
from _lab import mean_std as _mean_std
from _lab import short as _short
from _summary import emit_summary
from mismatch_sources import requests_of, sample_jax
from ringjax.trainer.model_checkpoint import latest_step_dir, restore_model
from ringjax.trainer.rl import RLConfig
from rollout.numerics import EngineNumerics

ARMS = {  # name -> RL config overrides (phi is set per budget in `rl_config`)
    "c3po": ["budget=tokens", "loss.aggregation=c3po"],
    "seq_mean": ["budget=groups", "loss.aggregation=seq_mean"],
    "token_mean": ["budget=groups", "loss.aggregation=token_mean"],
    "c3po_drop": ["budget=tokens", "loss.aggregation=c3po", "leftover=drop"],
}
DEFAULT_ARMS = "c3po,seq_mean,token_mean"
KEPT = ("reward_mean", "grad_norm", "tokens", "step_responses", "step_s", "rollout_s", "tokens_per_s",
        "response_len_mean", "entropy_mean", "stale_tokens_frac", "version_lag_mean", "pool_tokens", "dropped_tokens",
        "rollout_tokens_generated", "clip_frac")


def length_spread(model, ctx, args) -> dict:
    """Spread of the response lengths (tokens) of `model` on --length-prompts RL math prompts x samples_per_prompt,
    at the RL sampling (temperature, max_new_tokens, eos): across responses, and within a GRPO group."""
    rl = ctx.cfg.rl
    opts = types.SimpleNamespace(seed=args.seed, prompts=args.length_prompts, samples=rl.samples_per_prompt,
                                 max_new_tokens=0, max_context=rl.max_prompt_len + rl.max_new_tokens)
    requests = requests_of(ctx, opts)
    outputs = sample_jax(model, requests, EngineNumerics(), opts)
    n = np.array([len(outputs[r.id].tokens) for r in requests], float)
    groups = n.reshape(-1, rl.samples_per_prompt)
    return {"responses": int(n.size), "mean": _short(n.mean()), "std": _short(n.std()), "min": int(n.min()),
            "p10": _short(np.quantile(n, 0.1)), "p50": _short(np.quantile(n, 0.5)),
            "p90": _short(np.quantile(n, 0.9)), "max": int(n.max()),
            "at_max_frac": _short(float(np.mean(n >= rl.max_new_tokens))),
            "within_group_std": _short(float(groups.std(1).mean()))}


def rl_config(ctx, arm: str, seed: int, args, every: int) -> RLConfig:
    budget = "tokens" if "budget=tokens" in ARMS[arm] else "groups"
    overrides = ["rollout.mode=sync", f"phi={args.phi if budget == 'tokens' else ctx.cfg.rl.max_new_tokens}",
                 *ARMS[arm], *(SMOKE_GROUPS if args.smoke else [])]
    return lab_rl_config(ctx, args.steps, seed, every, overrides, f"arm {arm}")


def run_arm(model, ctx, arm: str, seed: int, args) -> dict:
    every = max(1, args.steps // args.eval_points)
    cfg = rl_config(ctx, arm, seed, args, every)
    run_dir = os.path.join(args.root, f"{arm}_seed{seed}")
    result, seconds = train_math(model, ctx, cfg, run_dir)
    t0 = time.perf_counter()
    accuracy = checkpoint_accuracy(ctx, run_dir, args)
    lengths = length_spread(restore_model(latest_step_dir(os.path.join(run_dir, "checkpoints"))), ctx, args)
    history = [{k: _short(h.get(k)) for k in KEPT} | {"step": h["step"], "tokens": int(h["tokens"])}
               for h in result.history]
    rl = {"budget": cfg.budget, "aggregation": cfg.loss.aggregation, "phi": cfg.phi, "leftover": cfg.leftover,
          "prompts_per_batch": cfg.prompts_per_batch, "samples_per_prompt": cfg.samples_per_prompt}
    return {"arm": arm, "seed": seed, "rl": rl, "rl_s": round(seconds, 1), "eval_s": round(time.perf_counter() - t0, 1),
            "accuracy": accuracy, "final_lengths": lengths, "history": history}


def _std(values) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def run_stats(run: dict) -> dict:
    """One run's statistics over its steps (the summary's mean +- std over seeds is taken of these)."""
    h = run["history"]
    grad = [x["grad_norm"] for x in h]
    timed = h[1:] or h  # step 1 also compiles the train step
    return {"grad_norm_mean": float(np.mean(grad)), "grad_norm_std": _std(grad),
            "log_grad_norm_std": _std([math.log(g) for g in grad if g > 0]),
            "zero_grad_steps": sum(g == 0 for g in grad),  # every group of the step had equal rewards
            "tokens_per_step": float(np.mean([x["tokens"] for x in h])),
            "tokens_per_step_std": _std([x["tokens"] for x in h]),
            "step_s": float(np.mean([x["step_s"] for x in timed])), "step_s_std": _std([x["step_s"] for x in timed]),
            "step_s_median": float(np.median([x["step_s"] for x in timed])),  # robust to the steps that compile
            "tokens_per_s": float(np.mean([x["tokens_per_s"] for x in timed])),
            "generated_per_step": float(np.mean([x["rollout_tokens_generated"] for x in h])),
            "stale_tokens_frac": float(np.mean([x["stale_tokens_frac"] for x in h])),
            "response_len_mean": float(np.mean([x["response_len_mean"] for x in h])),
            "response_len_step_std": _std([x["response_len_mean"] for x in h]),
            "final_len_std": run["final_lengths"]["std"],
            "reward_last10": float(np.mean([x["reward_mean"] for x in h[-10:]]))}


def summarize(runs: list[dict], start_accuracy: float) -> dict:
    out = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        mine = [r for r in runs if r["arm"] == arm]
        stats = [run_stats(r) for r in mine]
        final = [list(r["accuracy"].values())[-1] for r in mine]
        row = {key: _mean_std([s[key] for s in stats]) for key in stats[0]}
        row["accuracy"] = {step: _mean_std([r["accuracy"][step] for r in mine]) for step in mine[0]["accuracy"]}
        row["final_accuracy"] = _mean_std(final)
        row["accuracy_gain"] = _mean_std([a - start_accuracy for a in final])
        out[arm] = row
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_lab_args(parser, "runs/c3po_ablation", 5,
                 "no SFT, 2 prompts x 4 samples, phi 128, 2 steps, 1 eval sample: mechanics only")
    parser.add_argument("--arms", default=DEFAULT_ARMS, help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--phi", type=int, default=1200,
                        help="tokens per step of the token-budget arms: the mean tokens of a groups step")
    parser.add_argument("--length-prompts", type=int, default=64, help="RL prompts of each response-length spread")
    args = parser.parse_args(argv)
    unknown = [a for a in args.arms.split(",") if a not in ARMS]
    if unknown:
        parser.error(f"--arms: unknown {unknown}; known: {sorted(ARMS)}")
    if args.smoke:
        args.sft_steps, args.steps, args.eval_points, args.eval_samples = 0, 2, 1, 1  # the demo's random init
        args.phi, args.length_prompts = 128, 8
    os.makedirs(args.root, exist_ok=True)
    # every arm compiles the same train step and engine: a persistent XLA cache compiles them once per ablation
    with compile_cache(os.path.join(os.path.abspath(args.root), "xla_cache")):
        return run_all(args)


def run_all(args) -> dict:
    t0 = time.perf_counter()
    model, ctx, sft, start = start_model(args, "c3po_ablation")
    lengths = length_spread(model, ctx, args)
    log(f"c3po_ablation: start response lengths {lengths}")
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for arm in args.arms.split(","):
            run = run_arm(model, ctx, arm, seed, args)
            runs.append(run)
            print(json.dumps({k: run[k] for k in ("arm", "seed", "rl_s", "eval_s", "accuracy")}), flush=True)
    summary = {"phi": args.phi, "steps": args.steps, "seeds": args.seeds, "sft": sft, "start_accuracy": start,
               "start_lengths": lengths, "arms": summarize(runs, start), "seconds": round(time.perf_counter() - t0, 1)}
    emit_summary({**summary, "runs": runs}, args.out, shown=summary)
    return {**summary, "runs": runs}

if __name__ == "__main__":
    main()
