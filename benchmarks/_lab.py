"""What the RL labs share (mismatch_ablation, c3po_ablation, c3po_pp_ablation, entropy_band): the demo's math
prompts, RL on them from a model, held-out accuracy of a model and of every checkpoint of a run, the start model and
its accuracy, the command-line options of a lab, the smoke RL size, and JAX's persistent compilation cache."""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import jax
from jax.experimental.compilation_cache import compilation_cache

from mismatch_sources import demo_model, log
from ringjax.config_io import build_config, to_dict
from ringjax.pipeline.evaluate import evaluate
from ringjax.trainer.checkpoint import checkpoint_steps
from ringjax.trainer.model_checkpoint import restore_model
from ringjax.trainer.rl import RLConfig, RLResult, train_rl
from rollout.rewards import RewardRouter
from rollout.types import SamplingParams

SMOKE_GROUPS = ["prompts_per_batch=2", "samples_per_prompt=4", "rollout.omega=8"]  # the smoke size's rollout batch
SMOKE_RL = ["phi=128", *SMOKE_GROUPS]  # ... and its token budget


def short(value):
    """Floats to 4 significant digits (the stored file stays small)."""
    return float(f"{value:.4g}") if isinstance(value, float) else value


def mean_std(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else None}


def math_records(ctx) -> list:
    """The demo's RL prompts of the math domain (what every lab trains on)."""
    return [r for r in ctx.data.prompts if r.domain == "math"]


def heldout(model, ctx, args) -> float:
    """Mean math reward over the held-out prompts (avg@k, k = --eval-samples)."""
    rl = ctx.cfg.rl
    records = [r for r in ctx.data.eval if r.domain == "math"]
    sampling = SamplingParams(rl.temperature, 1.0, rl.max_new_tokens, (ctx.tokenizer.eos_id,))
    result = evaluate(model, records, RewardRouter(), encode=ctx.tokenizer.encode, decode=ctx.tokenizer.decode,
                      sampling=sampling, samples=args.eval_samples, slots=64,
                      max_context=rl.max_prompt_len + rl.max_new_tokens, seed=1234)
    return result["accuracy"]["math"]


def checkpoint_accuracy(ctx, run_dir: str, args) -> dict[int, float]:
    """{step: held-out accuracy} of every checkpoint of the RL run in `run_dir`, in step order."""
    ckpts = os.path.join(run_dir, "checkpoints")
    return {step: heldout(restore_model(os.path.join(ckpts, str(step))), ctx, args)
            for step in checkpoint_steps(ckpts)}


def lab_rl_config(ctx, steps: int, seed: int, every: int, overrides: list[str], name: str) -> RLConfig:
    """The demo's RL section for one lab run: `steps` steps from `seed`, a checkpoint every `every` steps, all kept
    (the held-out evaluations read them), rollouts in this process, then the run's own `overrides`."""
    base = [f"steps={steps}", f"seed={seed}", f"checkpoint_every={every}", "keep_checkpoints=100", "rollout.workers=0",
            f"eos_id={ctx.tokenizer.eos_id}"]
    return build_config(RLConfig, to_dict(ctx.cfg.rl), base + overrides, name)


def train_math(model, ctx, cfg: RLConfig, run_dir: str) -> tuple[RLResult, float]:
    """(result, seconds) of `train_rl` from `model` on the math prompts, with the demo's rewards and tokenizer."""
    t0 = time.perf_counter()
    result = train_rl(model, math_records(ctx), RewardRouter(), cfg, run_dir=run_dir, encode=ctx.tokenizer.encode,
                      decode=ctx.tokenizer.decode)
    return result, time.perf_counter() - t0


def add_lab_args(parser: argparse.ArgumentParser, root: str, eval_points: int, smoke: str) -> None:
    """The options every ablation takes: seeds, held-out evaluations, the start model, its run folder, the output."""
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--eval-points", type=int, default=eval_points,
                        help="held-out evaluations per run (checkpoints)")
    parser.add_argument("--eval-samples", type=int, default=4)
    parser.add_argument("--checkpoint", help="start from this demo-run step folder instead of a fresh SFT")
    parser.add_argument("--sft-steps", type=int, default=500, help="SFT steps of the demo's recipe (its own: 500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the SFT run and its data")
    parser.add_argument("--root", default=root)
    parser.add_argument("--smoke", action="store_true", help=smoke)
    parser.add_argument("--out")


def start_model(args, name: str):
    """(model, pipeline context, SFT info, held-out accuracy) of the model every arm starts from
    (`mismatch_sources.demo_model`: the demo's SFT recipe in ROOT/sft, or --checkpoint as typed)."""
    model, ctx, sft = demo_model(args, os.path.join(os.path.abspath(args.root), "sft"))
    if args.checkpoint:
        sft["checkpoint"] = args.checkpoint  # as typed
    start = heldout(model, ctx, args)
    log(f"{name}: start accuracy {start:.3f} ({sft}); {jax.device_count()} devices")
    return model, ctx, sft, start


@contextlib.contextmanager
def compile_cache(folder: str):
    """JAX's persistent compilation cache in `folder` while the block runs: every run builds its own jitted train
    step, and runs of the same shapes then load it instead of compiling it again."""
    old = jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    compilation_cache.reset_cache()  # a cache checked (and found off) by an earlier compile is checked again
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", old[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
        compilation_cache.reset_cache()
