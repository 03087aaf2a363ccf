"""The mismatch ablation: RL arms (none, IcePop bands, KPop, router replay, ...) under one controlled engine mismatch.

    PYTHONPATH=. python3 benchmarks/mismatch_ablation.py --seeds 0,1,2 [--arms none,icepop,...] [--steps 60]
        [--noise 0.2] [--checkpoint STEP_DIR] [--root runs/mismatch_ablation] [--smoke] [--out FILE]

Every arm starts from the same model: the demo's (ringjax/pipeline/demo.yaml, math only) after its SFT recipe and
entropy-band pick (`mismatch_sources.demo_model`, or --checkpoint). Each (arm, seed) then runs `train_rl` for
--steps steps of the demo's RL section (phi 1024 tokens, 8 prompts x 8 samples, C3PO++, lr 1e-4) with the embedded
engine in-process and the mismatch source `rollout.numerics.weight_noise=--noise`: every policy version's engine
samples with weights w * (1 + noise * N(0, 1)) while the trainer scores with the exact weights; the seed sets the
prompt order, the sampling and the noise. Held-out math accuracy (the demo's held-out prompts, --eval-samples
samples each, temperature 1) is measured at the start and at every checkpoint (--eval-points per run).

Arms (`ARMS`): a loss correction and the router-replay switch, the rest of the config equal. Each (arm, seed) runs
in ROOT/ARM_seedS; a folder that already holds checkpoints is resumed, so an ablation of another size needs its own
--root. Prints one JSON line per
run and a final {"summary": ...} line; --out gets everything, per-step metrics included (the notebook
notebooks/mismatch_ablation.ipynb plots that file).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from _lab import SMOKE_RL, add_lab_args, checkpoint_accuracy, lab_rl_config, start_model, train_math
from _lab import mean_std as _mean_std
from _lab import short as _short
from _summary import emit_summary
from ringjax.trainer.rl import RLConfig

ARMS = {  # name -> RL config overrides
    "none": ["loss.correction=none"],
    "icepop": ["loss.correction=icepop", "loss.alpha=0.5", "loss.beta=5.0"],
    "icepop_tight": ["loss.correction=icepop", "loss.alpha=0.5", "loss.beta=2.0"],
    "kpop": ["loss.correction=kpop"],
    "r3": ["loss.correction=none", "router_replay=replay"],
    "r3_icepop": ["loss.correction=icepop", "router_replay=replay"],
    "tis": ["loss.correction=tis"],
    "seq_mask": ["loss.correction=seq_mask"],
}
KEPT = ("reward_mean", "grad_norm", "correction_zero_frac", "icepop_masked_frac", "kpop_masked_frac",
        "seq_masked_frac", "seq_masked_seq_frac", "logp_diff_mean", "logp_diff_max", "binary_kl_mean",
        "routing_disagree", "entropy_mean", "response_len_mean", "routing_dropped")


def rl_config(ctx, arm: str, seed: int, args, every: int) -> RLConfig:
    overrides = [f"rollout.numerics.weight_noise={args.noise}", f"rollout.numerics.seed={seed}", *ARMS[arm]]
    return lab_rl_config(ctx, args.steps, seed, every, overrides + (SMOKE_RL if args.smoke else []), f"arm {arm}")


def run_arm(model, ctx, arm: str, seed: int, args) -> dict:
    every = max(1, args.steps // args.eval_points)
    cfg = rl_config(ctx, arm, seed, args, every)
    run_dir = os.path.join(args.root, f"{arm}_seed{seed}")
    result, seconds = train_math(model, ctx, cfg, run_dir)
    accuracy = checkpoint_accuracy(ctx, run_dir, args)
    history = [{k: _short(h.get(k)) for k in KEPT} | {"step": h["step"]} for h in result.history]
    return {"arm": arm, "seed": seed, "rl_s": round(seconds, 1), "accuracy": accuracy, "history": history}


def summarize(runs: list[dict], start_accuracy: float) -> dict:
    out = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        mine = [r for r in runs if r["arm"] == arm]
        last = [r["history"][-10:] for r in mine]
        final = [list(r["accuracy"].values())[-1] for r in mine]
        out[arm] = {"final_accuracy": _mean_std(final), "accuracy_gain": _mean_std([a - start_accuracy for a in final]),
                    "reward_last10": _mean_std([float(np.mean([h["reward_mean"] for h in x])) for x in last]),
                    "grad_norm_max": _mean_std([max(h["grad_norm"] for h in r["history"]) for r in mine]),
                    "masked_frac": _mean_std([float(np.mean([h["correction_zero_frac"] for h in r["history"]]))
                                              for r in mine]),
                    "logp_diff_mean": _mean_std([float(np.mean([h["logp_diff_mean"] for h in r["history"]]))
                                                 for r in mine]),
                    "routing_disagree": _mean_std([float(np.mean([h["routing_disagree"] for h in r["history"]]))
                                                   for r in mine])}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_lab_args(parser, "runs/mismatch_ablation", 3, "tiny SFT, 2 steps, 1 eval sample: mechanics only")
    parser.add_argument("--arms", default="none,icepop,icepop_tight,kpop,r3,r3_icepop")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--noise", type=float, default=0.2, help="rollout.numerics.weight_noise of every arm")
    parser.add_argument("--max-new-tokens", type=int, default=0)
    args = parser.parse_args(argv)
    unknown = [a for a in args.arms.split(",") if a not in ARMS]
    if unknown:
        parser.error(f"--arms: unknown {unknown}; known: {sorted(ARMS)}")
    if args.smoke:
        args.sft_steps, args.steps, args.eval_points, args.eval_samples = 20, 2, 1, 1
    os.makedirs(args.root, exist_ok=True)
    t0 = time.perf_counter()
    model, ctx, sft, start = start_model(args, "mismatch_ablation")
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for arm in args.arms.split(","):
            run = run_arm(model, ctx, arm, seed, args)
            runs.append(run)
            print(json.dumps({k: run[k] for k in ("arm", "seed", "rl_s", "accuracy")}), flush=True)
    summary = {"noise": args.noise, "steps": args.steps, "seeds": args.seeds, "sft": sft, "start_accuracy": start,
               "arms": summarize(runs, start), "seconds": round(time.perf_counter() - t0, 1)}
    emit_summary({**summary, "runs": runs}, args.out, shown=summary)
    return {**summary, "runs": runs}


if __name__ == "__main__":
    main()
