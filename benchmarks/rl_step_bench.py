"""The whole RL step (generate, score, reference log-probs, update) of ringjax against Tunix's GRPO learner.

    PYTHONPATH=. python3 benchmarks/rl_step_bench.py [--tunix-python V/bin/python] [--sizes bench-tiny,bench-100m]
        [--prompts 4] [--group 4] [--prompt-len 64] [--new-tokens 192] [--warmup 2] [--runs 3] [--out FILE]

Both sides, one after the other in one run, on the same sizes (`bench-tiny`, `bench-100m`: all layers MoE, float32,
random weights), the same work per step: `--prompts` prompts of `--prompt-len` random ids x `--group` samples of
exactly `--new-tokens` tokens (no stop id), temperature 1.0, the same reward (share of even ids in the response,
so advantages are non-zero), GRPO advantages, a KL term to the starting policy (coefficient 0.04, Tunix's default
beta: both sides compute reference log-probs every step) and one AdamW update.
- ringjax: `train_rl` with the embedded JAX engine in this process, synchronous rollouts, `rl.budget: groups`
  (each step trains the prompts' whole groups), IcePop-corrected loss; a step is the loop's `step_s` (rollout,
  rewards, packing, reference and old log-probs, update).
- Tunix: `benchmarks/peers/tunix_rl_step.py` run by `--tunix-python` (Tunix 0.1.7 in its own virtualenv:
  `python3 -m venv V && V/bin/pip install google-tunix==0.1.7 "jax[cpu]"`); a step is its learner's generate-and-
  advantage phase plus `update_actor`. Without `--tunix-python` only ringjax is measured; a Tunix side that cannot
  run is reported as {"missing": why}, with no ratio.
Each side's figure is the median of `--runs` steps after `--warmup` steps (compilation). `tunix_over_ringjax` is
Tunix's step time over ringjax's; the bar (docs/benchmarks.md) is 3.0 or more. Prints one JSON line per side and
size and a final {"summary": ...} (also written to --out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

from ringjax.data import PromptRecord
from ringjax.losses import LossConfig
from ringjax.model import count_params, create_model, preset
from ringjax.trainer.optim import OptimConfig
from ringjax.trainer.rl import RLConfig, train_rl
from rollout.config import RolloutConfig
from _peer import run_peer
from _summary import emit_summary

TARGET = 3.0  # Tunix's step time over ringjax's
KL_COEF = 0.04  # Tunix's default GRPO beta


def even_share(record, text: str) -> float:
    """The reward both sides use: the share of even ids among the response's ids."""
    ids = text.split()
    return sum(int(i) % 2 == 0 for i in ids) / len(ids) if ids else 0.0


def _records(vocab: int, n: int, prompt_len: int, seed: int) -> list[PromptRecord]:
    rng = np.random.default_rng(seed)
    return [PromptRecord(id=f"p{i}", prompt=" ".join(map(str, rng.integers(4, vocab, prompt_len))), domain="math",
                         answer="") for i in range(n)]


def bench_ringjax(size: str, args) -> dict:
    model = create_model(preset(size), seed=args.seed)
    steps = args.warmup + args.runs
    cfg = RLConfig(steps=steps, budget="groups", prompts_per_batch=args.prompts, samples_per_prompt=args.group,
                   max_prompt_len=args.prompt_len, max_new_tokens=args.new_tokens,
                   phi=args.prompts * args.group * args.new_tokens, rows=args.rows,
                   seq_len=args.prompt_len + args.new_tokens, seed=args.seed,
                   loss=LossConfig(kl_coef=KL_COEF), optim=OptimConfig(lr=1e-6),
                   rollout=RolloutConfig(mode="sync", decode_chunk=args.decode_chunk))
    t0 = time.perf_counter()
    result = train_rl(model, _records(model.config.vocab_size, args.prompts * steps, args.prompt_len, args.seed),
                      even_share, cfg, encode=lambda text: [int(t) for t in text.split()],
                      decode=lambda ids: " ".join(str(int(i)) for i in ids))
    total = time.perf_counter() - t0
    hist = result.history
    measured = hist[args.warmup:]
    bad = [h["step"] for h in hist if h["tokens"] != args.prompts * args.group * args.new_tokens]
    if bad:
        raise RuntimeError(f"ringjax steps {bad} did not train every token of {args.prompts} x {args.group} "
                           f"responses of {args.new_tokens}")
    return {"side": "ringjax", "size": size, "params": count_params(model.config).total, "steps": len(hist),
            "total_s": round(total, 2), "step_s": round(statistics.median(h["step_s"] for h in measured), 3),
            "rollout_s": round(statistics.median(h["rollout_s"] for h in measured), 3),
            "update_s": round(statistics.median(h["step_s"] - h["rollout_s"] for h in measured), 3),
            "steps_s": [round(h["step_s"], 3) for h in hist], "step_compiles": hist[-1]["step_compiles"]}


def bench_tunix(size: str, args) -> dict:
    lines = run_peer(args.tunix_python, "tunix_rl_step.py",
                     ["--size", size, "--prompts", str(args.prompts), "--group", str(args.group), "--prompt-len",
                      str(args.prompt_len), "--new-tokens", str(args.new_tokens), "--beta", str(KL_COEF), "--warmup",
                      str(args.warmup), "--runs", str(args.runs), "--seed", str(args.seed)], args.peer_timeout)
    return {"side": "tunix", **(lines if isinstance(lines, dict) else lines[-1])}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tunix-python", default=None, help="the python of a virtualenv with google-tunix 0.1.7")
    ap.add_argument("--sizes", default="bench-tiny,bench-100m")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=192)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--decode-chunk", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peer-timeout", type=float, default=3600.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    env = {"python": sys.version.split()[0], "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg()[0]}
    config = {k: v for k, v in vars(args).items() if k not in ("out", "tunix_python")}
    print(json.dumps({"env": env, "config": config}), flush=True)
    sizes = {}
    for size in args.sizes.split(","):
        row = {"ringjax": bench_ringjax(size, args)}
        print(json.dumps(row["ringjax"]), flush=True)
        if args.tunix_python:
            row["tunix"] = bench_tunix(size, args)
            print(json.dumps(row["tunix"]), flush=True)
            tunix_s = row["tunix"].get("step_s")  # absent when the Tunix side is missing
            row["tunix_over_ringjax"] = round(tunix_s / row["ringjax"]["step_s"], 2) if tunix_s else None
            if row["tunix_over_ringjax"] is not None:
                row["target_met"] = row["tunix_over_ringjax"] >= TARGET
        sizes[size] = row
    env["load_avg_end"] = os.getloadavg()[0]
    return emit_summary({"env": env, "config": config, "target": TARGET, "sizes": sizes}, args.out)


if __name__ == "__main__":
    main()
