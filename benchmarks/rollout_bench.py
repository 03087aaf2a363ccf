"""C3PO++ against the synchronous scheduler on a long-tailed response-length distribution (rollout + train step).

    PYTHONPATH=. python3 benchmarks/rollout_bench.py [--preset tiny-v2] [--phi 2048] [--omega 32] [--samples 4]
        [--sigmas 2,8] [--median 32] [--len-sigma 1.2] [--max-tokens 496] [--decode-chunk 8] [--steps 6]
        [--warmup-steps 2] [--carry-kv recompute,keep] [--out FILE]

Ring-1T reports C3PO++ ~2.5x faster than synchronous rollouts in the rollout phase and ~1.5x end to end per step.
Here both `rollout.c3po_pp` modes drive the same embedded `JaxEngine` (slots = omega) over a numpy-drawn Ling:
- response lengths are lognormal (median `--median`, log-std `--len-sigma`, capped at `--max-tokens`), drawn
  deterministically per (prompt index, sample index) and imposed through the scheduler's sampling function
  (`SamplingParams(max_tokens=L, stop_ids=())`), so a response that completes has exactly its drawn length
  (checked: `length_mismatches`) and both modes see the same prompts with the same lengths;
- every step is the loop of `ringjax.trainer.rl.train_rl`: hand the engine the current policy (version = step),
  run `run_iteration` until the training pool holds >= phi tokens (`rollout_s`), take exactly phi
  (`assemble_step`, leftover kept), pack, and run the jitted `make_train_step` on it (`e2e_s` = rollout + host
  assembly + train step);
- compilation is kept out of the figures: the engine's prefill (every request-count x context-width bucket) and
  decode are compiled before the first step, the train step is compiled ahead of time once (its shapes do not
  depend on the micro-batch count; `train_compiles`), `--warmup-steps` unmeasured steps per mode reach the
  carry-over steady state, and any compile that still happens inside a measured step is reported
  (`compile_s_in_measured`).
`sync` is the scheduler's baseline (`mode="sync"`) with retention so large that it never drops; one C3PO++ run per
`--sigmas` value. `ratios_sync_over_c3po` = sync time / C3PO++ time (median and mean over measured steps).
Per step the engine's own work is split out: `prefill_s` (of which `resume_prefill_s`: prefills holding
continuations, which C3PO++ re-prefills at every iteration because it aborts and re-submits them; with
`--carry-kv keep` a run keeps them in the engine with their KV caches instead: `kept_per_step`), `decode_s`, the
rest (`host_s`) is scheduler / host time; `slot_util` = generated tokens / (decode steps run * slots), the idle
slots the synchronous mode waits with; `prefill_by_bucket` = calls and seconds per fill, keyed by its padded
[K, P] prefill shapes.
A step can need no rollout at all (`zero_rollout_steps`): the last group of an iteration may bring more than phi
tokens, and what a step does not take stays in the pool, as in `train_rl`. `load_avg` is the 1-minute load
average before and after each mode: figures taken while other work loads the machine are not comparable.
Prints one JSON line per mode and a final {"summary": ...} line (also written to --out).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import time
import zlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ringjax.data import PromptRecord
from ringjax.losses import LossConfig
from ringjax.model import Ling, abstract_model, preset
from ringjax.trainer import assemble_step, pack_micro_batches, response_tokens
from ringjax.trainer.batch import stack_micro_batches
from ringjax.trainer.optim import OptimConfig, make_optimizer
from ringjax.trainer.rollout_io import to_responses
from ringjax.trainer.state import init_train_state, merge_model, split_model
from ringjax.trainer.step import finalize_metrics, make_train_step, rl_loss_fn
from rollout.c3po_pp import C3POPlusPlus, C3POPPConfig
from rollout.jax_engine import JaxEngine, _bucket, run_to_completion
from rollout.rewards import RewardPool
from rollout.types import Request, SamplingParams
from _summary import emit_summary

NEVER_DROP = 10**9  # sync's retention: the baseline never drops a rollout
ANCHOR = {"rollout": 2.5, "e2e": 1.5}  # Ring-1T's reported sync / C3PO++ speed-ups
_COMPILE_S = [0.0]  # backend compile seconds since start (jax.monitoring listener)


def _on_event(event: str, seconds: float, **_) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILE_S[0] += seconds


jax.monitoring.register_event_duration_secs_listener(_on_event)


# -- workload --------------------------------------------------------------------------------------------------------
def draw_length(seed: int, prompt: int, sample: int, median: float, sigma: float, cap: int) -> int:
    """Lognormal response length of (prompt, sample), the same on every call: round(median * e^(sigma z))."""
    z = np.random.default_rng([seed, prompt, sample]).standard_normal()
    return int(np.clip(round(median * np.exp(sigma * z)), 1, cap))


def prompt_source(seed: int, vocab: int, prompt_len: int) -> Iterator[tuple[PromptRecord, list[int]]]:
    """An endless stream of random prompts `p0, p1, ...` of `prompt_len` ids (the same for every mode)."""
    i = 0
    while True:
        ids = np.random.default_rng([seed, 1, i]).integers(2, vocab, prompt_len).tolist()
        yield PromptRecord(id=f"p{i}", prompt=f"prompt {i}", domain="math", answer="0"), ids
        i += 1


def random_model(cfg, seed: int) -> Ling:
    """Random weights drawn with numpy (N(0, 0.02), norms 1): no init compile, same seed -> same model."""
    graphdef, abstract = nnx.split(abstract_model(cfg))
    rng = np.random.default_rng(seed)

    def draw(path, x):
        name = jax.tree_util.keystr(path)
        value = np.ones(x.shape) if "norm" in name else 0.02 * rng.standard_normal(x.shape)
        return jnp.asarray(value, x.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(draw, abstract))


def _reward(record: PromptRecord, text: str) -> float:
    """A deterministic pseudo-reward in [0, 1): non-zero GRPO advantages, no cost."""
    return zlib.crc32(f"{record.id}/{text}".encode()) % 1000 / 1000


def _decode(ids: np.ndarray) -> str:
    return " ".join(map(str, ids[:8].tolist()))


def length_stats(lengths: list[int], median: float) -> dict:
    x = np.asarray(lengths, np.float64)
    if not len(x):
        return {"n": 0}
    return {"n": len(x), "median": float(np.median(x)), "mean": round(float(x.mean()), 1),
            "p95": round(float(np.percentile(x, 95)), 1), "p99": round(float(np.percentile(x, 99)), 1),
            "max": int(x.max()), "frac_ge_10x_median": round(float(np.mean(x >= 10 * median)), 4)}


# -- engine with its work split out -----------------------------------------------------------------------------------
class TimedEngine(JaxEngine):
    """`JaxEngine` that also times its prefill and decode calls and counts the decode steps they run.

    It reads the engine's internals (`_queue`, `_active`, `_bucket`, the two per-step methods): keep it in step
    with `rollout/jax_engine.py`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.work: collections.Counter[str] = collections.Counter()
        self.buckets: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])  # "KxP": [calls, s]

    def _fill_slots(self) -> None:
        todo = list(self._queue)[:sum(s is None for s in self._active)]
        if not todo:
            return
        contexts = [len(r.prompt) + len(r.generated) for r in todo]
        widths = collections.Counter(_bucket(c - 1, 16) for c in contexts)  # one prefill call per width bucket
        shapes = [f"{_bucket(n)}x{w}" for w, n in sorted(widths.items())]
        t0 = time.perf_counter()
        super()._fill_slots()
        jax.block_until_ready(self._cache)
        seconds = time.perf_counter() - t0
        resume = any(len(r.generated) for r in todo)  # re-prefills continuations of a previous iteration
        self.work["prefill_s"] += seconds
        self.work["resume_prefill_s"] += seconds if resume else 0.0
        self.work["prefill_calls"] += len(shapes)
        self.work["prefill_cells"] += sum(_bucket(n) * w for w, n in widths.items())  # padded tokens run over
        self.work["prefill_tokens"] += sum(contexts) - len(todo)  # real tokens written into the cache
        key = "+".join(shapes)  # the [K, P] prefill shapes of this fill
        self.buckets[key][0] += 1
        self.buckets[key][1] += seconds

    def _decode_chunk(self):
        # no stop ids: every active slot emits min(chunk, allowance) tokens, so the chunk runs the largest of them
        left = [s.request.remaining - s.emitted for s in self._active if s is not None]
        t0 = time.perf_counter()
        out = super()._decode_chunk()
        self.work["decode_s"] += time.perf_counter() - t0
        self.work["decode_chunks"] += 1
        self.work["decode_steps"] += min(self.decode_chunk, max(left))
        return out


def warm_engine(engine: JaxEngine, max_context: int) -> None:
    """Compiles decode and every prefill bucket (request count x context width) a run can hit."""
    widest = _bucket(max_context - 2, 16)  # a continuation holds at most max_context - 1 tokens
    k = 1
    while k <= engine.slots:
        w = 16
        while w <= widest:
            c = w // 2 + 2 if w > 16 else 10  # context length whose prefill (c - 1 tokens) lands in bucket w
            reqs = [Request(f"warm{k}/{w}/{j}", np.ones((1,), np.int32), SamplingParams(max_tokens=c),
                            np.ones((c - 1,), np.int32)) for j in range(k)]
            run_to_completion(engine, reqs)
            w *= 2
        k *= 2


# -- one mode --------------------------------------------------------------------------------------------------------
def _stats(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 4), "mean": round(statistics.fmean(xs), 4),
            "min": round(min(xs), 4), "max": round(max(xs), 4)}


def run_mode(model, args, mode: str, sigma: int, step_fn, carry_kv: str = "recompute") -> dict:
    cfg = model.config
    max_context = args.prompt_len + args.max_tokens
    loss = LossConfig()
    tx = make_optimizer(OptimConfig(lr=1e-5))
    graphdef, state = init_train_state(model, tx, args.seed)
    lengths: dict[tuple[str, int], int] = {}

    def sampling(record: PromptRecord, sample: int) -> SamplingParams:
        key = (record.id, sample)
        if key not in lengths:
            lengths[key] = draw_length(args.seed, int(record.id[1:]), sample, args.median, args.len_sigma,
                                       args.max_tokens)
        return SamplingParams(temperature=1.0, max_tokens=lengths[key], stop_ids=())

    sched_cfg = C3POPPConfig(phi=args.phi, omega=args.omega, sigma=sigma, samples=args.samples, mode=mode,
                             carry_kv=carry_kv)
    rewards = RewardPool(_reward, workers=1, timeout_s=60.0)
    sched = C3POPlusPlus(sched_cfg, sampling, prompt_source(args.seed, cfg.vocab_size, args.prompt_len), rewards,
                         _decode)
    engine = TimedEngine(model, slots=args.omega, max_context=max_context, decode_chunk=args.decode_chunk,
                         seed=args.seed)
    t0 = time.perf_counter()
    engine.update_weights(merge_model(graphdef, state.params, state.frozen), version=0)
    if not args.no_prewarm:
        warm_engine(engine, max_context)
    prewarm_s = time.perf_counter() - t0
    pool, rows, mismatches, trained_lengths = [], [], 0, []
    load_before = os.getloadavg()[0]
    try:
        for i in range(args.warmup_steps + args.steps):
            step = int(state.step)
            before, work, compile0 = collections.Counter(sched.stats), collections.Counter(engine.work), _COMPILE_S[0]
            if i == args.warmup_steps:
                engine.buckets.clear()
            t0 = time.perf_counter()
            engine.update_weights(merge_model(graphdef, state.params, state.frozen), version=step)
            engine.reseed(jax.random.fold_in(state.rng, step))
            iterations = 0
            while response_tokens(pool) < args.phi:
                finished = sched.run_iteration(engine)
                iterations += 1
                for f in finished:
                    for j, m in enumerate(f.group.members):
                        mismatches += len(m.tokens) != lengths[(f.group.record.id, j)]
                        trained_lengths.append(len(m.tokens))
                pool += to_responses(finished, loss)
            t_rollout = time.perf_counter() - t0
            taken, pool = assemble_step(pool, args.phi, max_response_len=args.max_tokens)
            mbs = pack_micro_batches(taken, args.rows, max_context)
            batch = step_fn.inputs(stack_micro_batches(mbs, loss.aggregation, taken.phi))
            compile_s, aot_backend_s = 0.0, 0.0
            if not step_fn.compiles:  # ahead of time, outside the timing; one compile serves every micro-batch count
                c0, b0 = time.perf_counter(), _COMPILE_S[0]
                step_fn.compile(state, batch)
                compile_s, aot_backend_s = time.perf_counter() - c0, _COMPILE_S[0] - b0
            t1 = time.perf_counter()
            state, sums = step_fn(state, batch)
            metrics = finalize_metrics(jax.device_get(sums))
            t_train = time.perf_counter() - t1
            e2e = time.perf_counter() - t0 - compile_s
            versions = np.concatenate([r.versions for r in taken.responses])
            done = engine.work - work
            delta = {k: sched.stats[k] - before[k] for k in
                     ("tokens_generated", "dropped_tokens", "dropped_groups", "resubmitted", "kept", "groups_started",
                      "completed_groups")}
            rows.append({
                "step": step + 1, "measured": i >= args.warmup_steps, "rollout_s": round(t_rollout, 4),
                "train_s": round(t_train, 4), "e2e_s": round(e2e, 4), "iterations": iterations,
                "prefill_s": round(done["prefill_s"], 4), "resume_prefill_s": round(done["resume_prefill_s"], 4),
                "decode_s": round(done["decode_s"], 4),
                "host_s": round(t_rollout - done["prefill_s"] - done["decode_s"], 4),
                **{k: done[k] for k in ("prefill_calls", "prefill_cells", "prefill_tokens", "decode_chunks",
                                        "decode_steps")},
                **delta, "trained_tokens": int(sum(len(r) for r in taken.responses)),
                "trained_sequences": len(taken.responses), "micro_batches": batch.micro_batches,
                "version_lag_mean": round(float(np.mean(step - versions)), 4),
                "version_lag_max": int(np.max(step - versions)),
                "stale_frac": round(float(np.mean(versions < step)), 4),
                "pool_left": response_tokens(pool), "inflight_groups": len(sched.groups),
                "compile_s_in_step": round(_COMPILE_S[0] - compile0 - aot_backend_s, 3),
                "skipped_update": int(metrics.get("update_skipped", 0))})
    finally:
        rewards.close()
        engine.close()
    measured = [r for r in rows if r["measured"]]
    out = {"mode": mode, "sigma": sigma if mode == "c3po++" else None,
           "carry_kv": carry_kv if mode == "c3po++" else None, "prewarm_s": round(prewarm_s, 1),
           "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    for key in ("rollout_s", "e2e_s", "train_s", "prefill_s", "resume_prefill_s", "decode_s", "host_s"):
        out[key] = _stats([r[key] for r in measured])
    for key in ("tokens_generated", "dropped_tokens", "dropped_groups", "resubmitted", "kept", "iterations",
                "decode_steps",
                "prefill_calls", "prefill_tokens", "prefill_cells", "version_lag_mean", "stale_frac",
                "trained_tokens"):
        out[f"{key}_per_step"] = round(statistics.fmean(r[key] for r in measured), 4)
    steps_run = sum(r["decode_steps"] for r in measured)
    out["slot_util"] = round(sum(r["tokens_generated"] for r in measured) / max(1, steps_run * args.omega), 4)
    out["zero_rollout_steps"] = sum(r["iterations"] == 0 for r in measured)  # the kept leftover already held phi
    out["prefill_by_bucket"] = {b: {"calls": n, "s_per_call": round(t / n, 4)}
                                for b, (n, t) in sorted(engine.buckets.items(), key=lambda kv: -kv[1][1])}
    out["version_lag_max"] = max(r["version_lag_max"] for r in measured)
    out["generated_over_trained"] = round(sum(r["tokens_generated"] for r in measured) / (args.phi * len(measured)), 3)
    out["compile_s_in_measured"] = round(sum(max(0.0, r["compile_s_in_step"]) for r in measured), 3)
    out["trained_response_len"] = length_stats(trained_lengths, args.median)
    out["started_response_len"] = length_stats(list(lengths.values()), args.median)
    out["length_mismatches"] = mismatches
    out["totals"] = {k: int(sched.stats[k]) for k in sorted(sched.stats)}
    out["steps"] = rows
    return out


# -- entry point -----------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny-v2")
    ap.add_argument("--phi", type=int, default=2048, help="trained response tokens per step")
    ap.add_argument("--omega", type=int, default=32, help="inference pool capacity = engine slots")
    ap.add_argument("--samples", type=int, default=4, help="responses per prompt (GRPO group)")
    ap.add_argument("--sigmas", default="2,8", help="C3PO++ retention values, one run each (comma separated)")
    ap.add_argument("--median", type=float, default=32.0, help="median response length")
    ap.add_argument("--len-sigma", type=float, default=1.2, help="log-std of the response length")
    ap.add_argument("--max-tokens", type=int, default=496, help="response length cap")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--decode-chunk", type=int, default=8)
    ap.add_argument("--rows", type=int, default=8, help="micro-batch rows (row length = prompt + max tokens)")
    ap.add_argument("--steps", type=int, default=6, help="measured steps per mode")
    ap.add_argument("--warmup-steps", type=int, default=2, help="unmeasured steps per mode (steady state)")
    ap.add_argument("--modes", default="sync,c3po++")
    ap.add_argument("--carry-kv", default="recompute",
                    help="c3po++: rollout.carry_kv values, one run each per sigma (recompute,keep)")
    ap.add_argument("--no-prewarm", action="store_true", help="skip compiling every prefill bucket up front")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.phi < args.max_tokens:
        raise SystemExit(f"--phi {args.phi} must be >= --max-tokens {args.max_tokens} (assemble_step)")
    cfg = preset(args.preset, **{"compute.dtype": "float32", "compute.param_dtype": "float32"})
    if args.prompt_len + args.max_tokens > cfg.max_position_embeddings:
        raise SystemExit(f"--prompt-len + --max-tokens exceeds the preset's {cfg.max_position_embeddings} positions")
    env = {"jax": jax.__version__, "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
           "cpus": os.cpu_count(), "load_avg_start": [round(x, 2) for x in os.getloadavg()]}
    config = {k: getattr(args, k) for k in ("preset", "phi", "omega", "samples", "median", "len_sigma", "max_tokens",
                                            "prompt_len", "decode_chunk", "rows", "steps", "warmup_steps", "seed")}
    config.update(slots=args.omega, sigmas=[int(s) for s in args.sigmas.split(",")], sync_sigma=NEVER_DROP,
                  carry_kv=args.carry_kv.split(","))
    draws = [draw_length(args.seed, p, j, args.median, args.len_sigma, args.max_tokens)
             for p in range(2500) for j in range(args.samples)]
    groups = np.asarray(draws).reshape(-1, args.samples).max(axis=1)
    dist = {"responses": length_stats(draws, args.median), "group_max": length_stats(groups.tolist(), args.median)}
    print(json.dumps({"env": env, "config": config, "length_dist": dist}), flush=True)

    model = random_model(cfg, seed=args.seed)
    tx = make_optimizer(OptimConfig(lr=1e-5))
    step_fn = make_train_step(split_model(model)[0], tx, rl_loss_fn(LossConfig()))
    runs = []
    for mode in args.modes.split(","):
        for sigma, carry in ([(NEVER_DROP, "recompute")] if mode == "sync" else
                             [(s, c) for s in config["sigmas"] for c in config["carry_kv"]]):
            c0 = _COMPILE_S[0]
            result = run_mode(model, args, mode, sigma, step_fn, carry)
            result["compile_s_total"] = round(_COMPILE_S[0] - c0, 1)
            runs.append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "steps"}), flush=True)
    ratios = {}
    base = next((r for r in runs if r["mode"] == "sync"), None)
    for r in runs:
        if base is not None and r["mode"] == "c3po++":
            keep = " carry_kv=keep" if r["carry_kv"] == "keep" else ""
            ratios[f"c3po++ sigma={r['sigma']}{keep}"] = {
                f"{key}_{stat}": round(base[f"{key}_s"][stat] / r[f"{key}_s"][stat], 3)
                for key in ("rollout", "e2e") for stat in ("median", "mean")}
    summary = {"env": {**env, "load_avg_end": [round(x, 2) for x in os.getloadavg()]}, "config": config,
               "length_dist": dist, "ratios_sync_over_c3po": ratios, "anchor_ring1t": ANCHOR,
               "train_compiles": max(step_fn.compiles.values()), "runs": runs}
    return emit_summary(summary, args.out, shown={k: v for k, v in summary.items() if k != "runs"})


if __name__ == "__main__":
    main()
