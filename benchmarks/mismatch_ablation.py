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
import statistics
import sys
import time

import jax
import numpy as np

from _summary import emit_summary
from mismatch_sources import demo_model
from ringjax.config_io import build_config, to_dict
from ringjax.pipeline.evaluate import evaluate
from ringjax.trainer.model_checkpoint import restore_model
from ringjax.trainer.rl import RLConfig, train_rl
from rollout.rewards import RewardRouter
from rollout.types import SamplingParams

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


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def heldout(model, ctx, args) -> float:
    """Mean math reward over the held-out prompts (avg@k)."""
    rl = ctx.cfg.rl
    records = [r for r in ctx.data.eval if r.domain == "math"]
    sampling = SamplingParams(rl.temperature, 1.0, rl.max_new_tokens, (ctx.tokenizer.eos_id,))
    result = evaluate(model, records, RewardRouter(), encode=ctx.tokenizer.encode, decode=ctx.tokenizer.decode,
                      sampling=sampling, samples=args.eval_samples, slots=64,
                      max_context=rl.max_prompt_len + rl.max_new_tokens, seed=1234)
    return result["accuracy"]["math"]


def rl_config(ctx, arm: str, seed: int, args, every: int) -> RLConfig:
    overrides = [f"steps={args.steps}", f"seed={seed}", f"checkpoint_every={every}", "keep_checkpoints=100",
                 "rollout.workers=0", f"rollout.numerics.weight_noise={args.noise}", f"rollout.numerics.seed={seed}",
                 f"eos_id={ctx.tokenizer.eos_id}", *ARMS[arm]]
    if args.smoke:
        overrides += ["phi=128", "prompts_per_batch=2", "samples_per_prompt=4", "rollout.omega=8"]
    return build_config(RLConfig, to_dict(ctx.cfg.rl), overrides, f"arm {arm}")


def run_arm(model, ctx, arm: str, seed: int, args) -> dict:
    every = max(1, args.steps // args.eval_points)
    cfg = rl_config(ctx, arm, seed, args, every)
    run_dir = os.path.join(args.root, f"{arm}_seed{seed}")
    t0 = time.perf_counter()
    records = [r for r in ctx.data.prompts if r.domain == "math"]
    result = train_rl(model, records, RewardRouter(), cfg, run_dir=run_dir, encode=ctx.tokenizer.encode,
                      decode=ctx.tokenizer.decode)
    seconds = time.perf_counter() - t0
    ckpts = os.path.join(run_dir, "checkpoints")
    accuracy = {}
    for step in sorted(int(d) for d in os.listdir(ckpts) if d.isdigit()):
        accuracy[step] = heldout(restore_model(os.path.join(ckpts, str(step))), ctx, args)
    history = [{k: _short(h.get(k)) for k in KEPT} | {"step": h["step"]} for h in result.history]
    return {"arm": arm, "seed": seed, "rl_s": round(seconds, 1), "accuracy": accuracy, "history": history}


def _short(value):
    """Floats to 4 significant digits (the stored file stays small)."""
    return float(f"{value:.4g}") if isinstance(value, float) else value


def _mean_std(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else None}


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
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--arms", default="none,icepop,icepop_tight,kpop,r3,r3_icepop")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--noise", type=float, default=0.2, help="rollout.numerics.weight_noise of every arm")
    parser.add_argument("--eval-points", type=int, default=3, help="held-out evaluations per run (checkpoints)")
    parser.add_argument("--eval-samples", type=int, default=4)
    parser.add_argument("--checkpoint", help="start from this demo-run step folder instead of a fresh SFT")
    parser.add_argument("--sft-steps", type=int, default=500, help="SFT steps of the demo's recipe (its own: 500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the SFT run and its data")
    parser.add_argument("--max-new-tokens", type=int, default=0)
    parser.add_argument("--root", default="runs/mismatch_ablation")
    parser.add_argument("--smoke", action="store_true", help="tiny SFT, 2 steps, 1 eval sample: mechanics only")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    unknown = [a for a in args.arms.split(",") if a not in ARMS]
    if unknown:
        parser.error(f"--arms: unknown {unknown}; known: {sorted(ARMS)}")
    if args.smoke:
        args.sft_steps, args.steps, args.eval_points, args.eval_samples = 20, 2, 1, 1
    os.makedirs(args.root, exist_ok=True)
    t0 = time.perf_counter()
    model, ctx, sft = demo_model(args, os.path.join(os.path.abspath(args.root), "sft"))
    if args.checkpoint:
        sft["checkpoint"] = args.checkpoint  # as typed
    start = heldout(model, ctx, args)
    log(f"mismatch_ablation: start accuracy {start:.3f} ({sft}); {jax.device_count()} devices")
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
