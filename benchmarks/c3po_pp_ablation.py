"""The C3PO++ ablation: does Ring-1T's budget-partitioned rollout cost learning, against synchronous rollouts?

    PYTHONPATH=. python3 benchmarks/c3po_pp_ablation.py --seeds 0,1,2 [--arms sync,pp_phi1024_s2,pp_keep,...]
        [--steps 90] [--checkpoint STEP_DIR] [--root runs/c3po_pp_ablation] [--smoke] [--out FILE]

C3PO++ (`rl.rollout.mode=c3po++`, `rollout.c3po_pp`) ends each rollout iteration once phi tokens of complete GRPO
groups exist; the unfinished responses carry over into the next policy version and a group that has spanned sigma
iterations is dropped. Against it, `sync` waits for whole batches. Every arm starts from the same model: the
demo's (ringjax/pipeline/demo.yaml, math only) after its SFT recipe and entropy-band pick
(`mismatch_sources.demo_model`, or --checkpoint), and runs `train_rl` with the demo's RL section (8 prompts x 8
samples, omega 64, IcePop, lr 1e-4) and the embedded engine in-process with exact numerics: the only gap between
the sampling and the trained policy is the one C3PO++ itself makes (staleness; with `keep`, old keys and values).
The seed sets the prompt order and the sampling.

Arms (`arm_overrides`; any name of these forms is accepted by --arms):
- `sync`: `rollout.mode=sync` with `leftover=drop` (Ring-lite's C3PO): every trained token comes from the current
  policy (with `leftover=keep` a batch's surplus would be trained one step late); `sync_phi{P}`: the same at phi=P,
  its batch (omega) scaled by P / 1024 in whole groups, so it wastes the same share of a batch as `sync`;
- `pp_phi{P}_s{S}`: C3PO++ with phi=P and sigma=S, carried responses re-prefilled by the new weights
  (`carry_kv=recompute`), the cut tail kept for the next step (`leftover=keep`, the demo's);
- `pp_phi{P}_s{S}_keep`, and `pp_keep` = the demo's phi and sigma: carried responses stay in the engine with the
  keys and values the previous weights computed (`carry_kv=keep`); its recompute twin is `pp_phi1024_s2`.
Every arm trains the same number of tokens: --steps is the step count at the demo's phi (1024); an arm of phi P
runs steps x 1024 / P steps. Held-out math accuracy (the demo's 96 held-out prompts, --eval-samples samples each,
temperature 1) is measured at the start and at --eval-points checkpoints per run, each with its step, the
cumulative trained tokens and the cumulative wall time, so accuracy can be read against steps, tokens and time.
Wall time is the sum of `step_s` (rollout + update) less the time JAX spent compiling in it (`CompileClock`:
each new shape compiles once per process, so the first runs would pay for the later ones); checkpoint saves and
evaluations are not in it. Runs of one shape share compiled programs through JAX's persistent cache in ROOT/jax_cache.
Target accuracy: the start plus --target (0.5) of the sync arm's mean gain; each run's first evaluation point at
or above it gives the step, tokens and wall time to reach it (None if it never does).

What `train_rl` does not log is seen through the functions it calls (`Probe`): `encode` (a prompt drawn),
`decode` (a group complete) and the reward function. Per step it gives, for all responses of the groups that
completed in that step's rollout (trained now or later): count, mean length, mean reward, fraction cut at
max_new_tokens, the share with 3-operand prompts and the reward of 2- and 3-operand prompts (the prompt mix), and
by age (steps since the group's prompt was drawn: 0 = started and finished under one policy) their responses,
tokens and mean reward. `train_rl` logs no histogram of trained tokens by version gap, only `stale_tokens_frac`
(gap >= 1) and `version_lag_mean`; the age histogram of finished tokens stands in for it (a carried response's
tokens span the versions from its start to its end; age is that span).

Each (arm, seed) runs in ROOT/ARM_seedS; a folder that already holds checkpoints is resumed (its per-step rows are
kept in steps.jsonl), so an ablation of another size needs its own --root. Prints one JSON line per run and a
final {"summary": ...} line; --out gets everything, per-step rows included (notebooks/c3po_pp_ablation.ipynb plots
that file).

Cost, measured on 2 otherwise idle cores: the 500-step SFT 2.5 min; a run at 90 steps of phi 1024 (or the same
tokens at another phi) 35-65 s of RL plus 5-12 s of evaluations, once the persistent cache holds its shapes (the
first run of a process compiles for about a minute). The default full run (3 seeds x 13 arms) takes about 40 min;
a rerun with more arms in the same --root reads the finished runs back and runs only the new ones. A busy machine
stretches everything (an SFT took 17 min instead of 2.5 under a load of 7).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import threading
import time

import jax
import numpy as np

from _lab import (SMOKE_GROUPS, add_lab_args, checkpoint_accuracy, compile_cache, lab_rl_config, log, math_records,
                  start_model)
from _lab import mean_std as _mean_std
from _lab import short as _short
from _summary import emit_summary
from ringjax.trainer.checkpoint import checkpoint_steps
from ringjax.trainer.rl import RLConfig, train_rl
from rollout.rewards import RewardRouter
from rollout.rewards.base import Verdict

DEFAULT_ARMS = ("sync,sync_phi512,pp_phi512_s1,pp_phi512_s2,pp_phi512_s4,pp_phi1024_s1,pp_phi1024_s2,pp_phi1024_s4,"
                "pp_phi2048_s1,pp_phi2048_s2,pp_phi2048_s4,pp_keep,pp_phi512_s2_keep")
PP_ARM = re.compile(r"pp_phi(\d+)_s(\d+)(_keep)?")
SYNC_ARM = re.compile(r"sync(?:_phi(\d+))?")
SMOKE_PHI = 128  # the smoke size's phi at the demo's phi (other arms scale with it)
KEPT = ("reward_mean", "response_len_mean", "grad_norm", "tokens", "stale_tokens_frac", "version_lag_mean",
        "rollout_s", "step_s", "tokens_per_s", "icepop_masked_frac", "correction_zero_frac", "logp_diff_mean",
        "logp_diff_max", "entropy_mean", "pool_tokens", "inflight_groups", "dropped_tokens", "step_responses",
        "rollout_completed_groups", "rollout_dropped_groups", "rollout_dropped_tokens", "rollout_resubmitted",
        "rollout_kept", "rollout_tokens_generated")
MATH_EXPR = re.compile(r"Compute ([0-9+\-*]+)\.")


# -- arms --------------------------------------------------------------------------------------------------------------
def arm_overrides(arm: str, phi: int, sigma: int) -> list[str]:
    """RL config overrides of an arm; `phi` / `sigma`: the demo's (what `sync` and `pp_keep` use)."""
    if m := SYNC_ARM.fullmatch(arm):
        return ["rollout.mode=sync", "rollout.carry_kv=recompute", "leftover=drop", f"phi={m.group(1) or phi}"]
    if arm == "pp_keep":
        arm = f"pp_phi{phi}_s{sigma}_keep"
    m = PP_ARM.fullmatch(arm)
    if m is None:
        raise ValueError(f"--arms: unknown arm {arm!r}; expected sync, sync_phi<P>, pp_keep, pp_phi<P>_s<S> or "
                         "pp_phi<P>_s<S>_keep")
    return ["rollout.mode=c3po++", f"phi={int(m.group(1))}", f"rollout.sigma={int(m.group(2))}",
            f"rollout.carry_kv={'keep' if m.group(3) else 'recompute'}", "leftover=keep"]


def rl_config(ctx, arm: str, seed: int, args) -> RLConfig:
    """The arm's RL config; its step count keeps the trained tokens equal across arms (steps x demo phi)."""
    demo = ctx.cfg.rl
    overrides = arm_overrides(arm, demo.phi, demo.rollout.sigma)
    phi = int(next(o for o in overrides if o.startswith("phi=")).removeprefix("phi="))
    steps = max(1, round(args.steps * demo.phi / phi))
    every = max(1, steps // args.eval_points)
    if args.smoke:  # phi scaled down with the arm's ratio to the demo's
        overrides += [f"phi={max(demo.max_new_tokens, phi * SMOKE_PHI // demo.phi)}", *SMOKE_GROUPS]
    cfg = lab_rl_config(ctx, steps, seed, every, overrides, f"arm {arm}")
    if cfg.rollout.mode == "sync" and phi != demo.phi:  # the batch (omega) scales with phi, in whole groups
        groups = max(1, cfg.omega * phi // demo.phi // cfg.samples_per_prompt)
        cfg = lab_rl_config(ctx, steps, seed, every, [*overrides, f"rollout.omega={groups * cfg.samples_per_prompt}"],
                            f"arm {arm}")
    return cfg


# -- what train_rl does not log ----------------------------------------------------------------------------------------
def prompt_terms(prompt: str) -> int | None:
    """Operands of a demo math prompt ("Compute 3+4-1." -> 3); None for any other prompt."""
    m = MATH_EXPR.search(prompt)
    return None if m is None else len(re.findall(r"\d+", m.group(1)))


class Probe:
    """Watches a `train_rl` run through the functions it calls: `encode` (a prompt is drawn: its step is noted),
    `decode` (a group is complete: each response's token count and whether it ended without eos) and `reward`
    (the reward function: each response's score). `close_step()`, called once per step, summarises the responses
    scored since the last call: those of every group that completed in that step's rollout.

    Age of a response: steps since its prompt was last drawn (a prompt drawn again while an earlier group of it is
    still running would shorten the earlier one's age; with 840 prompts per epoch this is rare). Responses of
    groups drawn before a resume have no age."""

    def __init__(self, tokenizer, reward_fn, eos_id: int | None, first_step: int):
        self.tokenizer, self.reward_fn, self.eos_id = tokenizer, reward_fn, eos_id
        self.step = first_step  # the step whose rollout runs now
        self.drawn: dict[str, int] = {}  # prompt text -> step it was last drawn in
        self.shapes: dict[str, list] = collections.defaultdict(list)  # response text -> [(tokens, cut)] unscored
        self.scored: list[tuple] = []  # (age, terms, tokens, cut, score) since the last close_step
        self.lock = threading.Lock()  # rewards are scored in worker threads

    def encode(self, text: str) -> list[int]:
        self.drawn[text] = self.step
        return self.tokenizer.encode(text)

    def decode(self, ids) -> str:
        ids = np.asarray(ids)
        text = self.tokenizer.decode(ids)
        with self.lock:
            self.shapes[text].append((len(ids), not len(ids) or int(ids[-1]) != self.eos_id))
        return text

    def reward(self, record, response: str):
        score = 0.0
        try:
            result = self.reward_fn(record, response)
            score = float(result.score if isinstance(result, Verdict) else result)
            return result
        finally:
            with self.lock:
                shape = self.shapes[response].pop(0) if self.shapes.get(response) else (None, None)
                born = self.drawn.get(record.prompt)
                age = None if born is None else self.step - born
                self.scored.append((age, prompt_terms(record.prompt), *shape, score))

    def close_step(self) -> dict:
        """Stats of the responses scored during this step's rollout (keys `fin_*`); moves on to the next step."""
        with self.lock:
            rows, self.scored = self.scored, []
            self.step += 1
        known = [r for r in rows if r[2] is not None]
        out = {"fin_responses": len(rows), "fin_tokens": int(sum(r[2] for r in known)),
               "fin_reward": _mean([r[4] for r in rows]), "fin_len": _mean([r[2] for r in known]),
               "fin_cut_frac": _mean([float(r[3]) for r in known]),
               "fin_3term_frac": _mean([float(r[1] == 3) for r in rows if r[1] is not None]),
               "fin_reward_2term": _mean([r[4] for r in rows if r[1] == 2]),
               "fin_reward_3term": _mean([r[4] for r in rows if r[1] == 3]),
               "fin_age_unknown": sum(r[0] is None for r in rows)}
        aged = [r for r in rows if r[0] is not None]
        ages = range(max((r[0] for r in aged), default=-1) + 1)
        out["fin_age_responses"] = [sum(r[0] == a for r in aged) for a in ages]
        out["fin_age_tokens"] = [int(sum(r[2] or 0 for r in aged if r[0] == a)) for a in ages]
        out["fin_age_reward"] = [_mean([r[4] for r in aged if r[0] == a]) for a in ages]
        return out


class CompileClock:
    """Seconds JAX spends compiling (tracing, lowering, XLA compile or a persistent-cache load), from its monitoring
    events: the union of their time spans, so a compile nested in another counts once. `take()` returns the seconds
    since its last call. A run compiles the step and engine programs of each new shape once, the first run of a
    process the most: wall times without it compare arms whatever order they ran in."""

    def __init__(self):
        self.spans: list[tuple[float, float]] = []
        self.lock = threading.Lock()

    def _on_span(self, event: str, start: float, end: float, **_) -> None:
        if event.startswith("/jax/core/compile/"):
            with self.lock:
                self.spans.append((start, end))

    def take(self) -> float:
        with self.lock:
            spans, self.spans = sorted(self.spans), []
        total, reach = 0.0, float("-inf")
        for start, end in spans:
            total += max(0.0, end - max(start, reach))
            reach = max(reach, end)
        return total

    def __enter__(self) -> CompileClock:
        jax.monitoring.register_event_time_span_listener(self._on_span)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_time_span_listener(self._on_span)


def _mean(values: list[float]) -> float | None:
    return _short(float(np.mean(values))) if len(values) else None


# -- one run -----------------------------------------------------------------------------------------------------------
def _read_rows(path: str, upto: int) -> list[dict]:
    """Per-step rows of an earlier attempt, up to the checkpoint the run resumes from."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [row for row in map(json.loads, filter(str.strip, f)) if row["step"] <= upto]


def run_arm(model, ctx, arm: str, seed: int, args, start: float) -> dict:
    cfg = rl_config(ctx, arm, seed, args)
    run_dir = os.path.join(args.root, f"{arm}_seed{seed}")
    ckpts = os.path.join(run_dir, "checkpoints")
    os.makedirs(run_dir, exist_ok=True)
    resumed = max(checkpoint_steps(ckpts), default=0)
    rows_path = os.path.join(run_dir, "steps.jsonl")
    rows = _read_rows(rows_path, resumed)
    probe = Probe(ctx.tokenizer, RewardRouter(), cfg.eos_id, resumed + 1)
    t0 = time.perf_counter()
    with open(rows_path, "w") as f, CompileClock() as clock:
        for row in rows:
            f.write(json.dumps(row) + "\n")

        def on_step(step: int, metrics: dict) -> None:
            row = {"step": step, **{k: _short(metrics.get(k)) for k in KEPT}, **probe.close_step()}
            row["tokens"] = int(metrics["tokens"])  # exact: the cumulative count adds them up
            row["compile_s"] = _short(clock.take())  # in this step (and the checkpoint save before this call)
            row["run_s"] = _short(max(0.0, metrics["step_s"] - row["compile_s"]))
            rows.append(row)
            f.write(json.dumps(row) + "\n")
            f.flush()

        clock.take()  # what compiled before the run (the evaluation of an earlier run) is not its
        train_rl(model, math_records(ctx), probe.reward, cfg, run_dir=run_dir, encode=probe.encode, decode=probe.decode,
                 on_step=on_step)
    seconds = time.perf_counter() - t0
    if [r["step"] for r in rows] != list(range(1, cfg.steps + 1)):
        log(f"c3po_pp_ablation: {run_dir}: per-step rows of steps {[r['step'] for r in rows]} (a resumed run whose "
            f"rows were lost); cumulative tokens and time count only these")
    cum_tokens = np.cumsum([r["tokens"] for r in rows])
    cum_wall = np.cumsum([r["run_s"] for r in rows])
    at = {r["step"]: i for i, r in enumerate(rows)}
    points = [{"step": 0, "tokens": 0, "wall_s": 0.0, "accuracy": start}]
    t_eval = time.perf_counter()
    for step, accuracy in checkpoint_accuracy(ctx, run_dir, args).items():
        i = at.get(step)
        points.append({"step": step, "tokens": None if i is None else int(cum_tokens[i]),
                       "wall_s": None if i is None else round(float(cum_wall[i]), 2), "accuracy": accuracy})
    return {"arm": arm, "seed": seed, "phi": cfg.phi, "sigma": cfg.rollout.sigma, "steps": cfg.steps,
            "rl_s": round(seconds, 1), "eval_s": round(time.perf_counter() - t_eval, 1), "resumed_from": resumed,
            "accuracy": points, "history": rows}


# -- summary -----------------------------------------------------------------------------------------------------------
def _run_mean(run: dict, key: str) -> float:
    """Mean of a per-step key over a run (None values left out)."""
    values = [r[key] for r in run["history"] if r.get(key) is not None]
    return float(np.mean(values)) if values else float("nan")


def _run_median(run: dict, key: str) -> float:
    """Median of a per-step key: the steady state, without the steps that compiled something."""
    values = [r[key] for r in run["history"] if r.get(key) is not None]
    return float(np.median(values)) if values else float("nan")


def _run_sum(run: dict, key: str) -> float:
    return float(sum(r.get(key) or 0 for r in run["history"]))


def _by_age(run: dict, key: str) -> list[float]:
    """Finished responses' tokens (or responses) by age, pooled over the run: counts per age 0, 1, 2, ..."""
    total = collections.Counter()
    for r in run["history"]:
        for age, n in enumerate(r.get(key) or []):
            total[age] += n
    return [total[a] for a in range(max(total, default=-1) + 1)]


def _reward_by_age(run: dict) -> list[float | None]:
    n, s = collections.Counter(), collections.Counter()
    for r in run["history"]:
        for age, (count, reward) in enumerate(zip(r.get("fin_age_responses") or [], r.get("fin_age_reward") or [])):
            if count:
                n[age] += count
                s[age] += count * reward
    return [round(s[a] / n[a], 4) if n[a] else None for a in range(max(n, default=-1) + 1)]


def _fractions(counts: list[list[float]]) -> list[float]:
    """Mean over runs of each run's fractions (runs of different histogram length padded with 0)."""
    width = max((len(c) for c in counts), default=0)
    fracs = [np.pad(np.asarray(c, float), (0, width - len(c))) / max(sum(c), 1) for c in counts]
    return [round(float(x), 4) for x in np.mean(fracs, 0)] if fracs else []


def first_reaching(run: dict, target: float | None) -> dict | None:
    """The first evaluation point (step, tokens, wall_s) at or above `target`; None if none."""
    if target is None:
        return None
    return next((p for p in run["accuracy"][1:] if p["accuracy"] >= target), None)


def _ms(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return _mean_std(values) if values else None


def summarize(runs: list[dict], start: float, target_frac: float) -> dict:
    """Per arm, mean ± std over seeds; target accuracy: start + target_frac x the sync arm's mean gain."""
    sync = [r["accuracy"][-1]["accuracy"] - start for r in runs if r["arm"] == "sync"]
    target = round(start + target_frac * float(np.mean(sync)), 4) if sync else None
    out = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        mine = [r for r in runs if r["arm"] == arm]
        final = [r["accuracy"][-1]["accuracy"] for r in mine]
        hits = [first_reaching(r, target) for r in mine]
        reached = [h for h in hits if h is not None]
        head = [r["history"][:10] for r in mine]
        tail = [r["history"][-10:] for r in mine]
        trained = [max(_run_sum(r, "tokens"), 1) for r in mine]
        out[arm] = {
            "phi": mine[0]["phi"], "sigma": mine[0]["sigma"], "steps": mine[0]["steps"],
            "final_accuracy": _mean_std(final), "accuracy_gain": _mean_std([a - start for a in final]),
            "time_to_target": {"reached": len(reached), "of": len(mine),
                               **{k: _ms([h[k] for h in reached]) for k in ("step", "tokens", "wall_s")}},
            "wall_s": _ms([r["accuracy"][-1]["wall_s"] for r in mine]),
            "step_s": _ms([_run_mean(r, "run_s") for r in mine]),
            "rollout_s": _ms([_run_median(r, "rollout_s") for r in mine]),
            "tokens_per_s": _ms([t / max(_run_sum(r, "run_s"), 1e-9) for r, t in zip(mine, trained)]),
            "compile_s": _ms([_run_sum(r, "compile_s") for r in mine]),
            "stale_tokens_frac": _ms([_run_mean(r, "stale_tokens_frac") for r in mine]),
            "version_lag_mean": _ms([_run_mean(r, "version_lag_mean") for r in mine]),
            "finished_tokens_by_age": _fractions([_by_age(r, "fin_age_tokens") for r in mine]),
            "generated_tokens": _ms([_run_sum(r, "rollout_tokens_generated") for r in mine]),
            "generated_per_trained": _ms([_run_sum(r, "rollout_tokens_generated") / t for r, t in zip(mine, trained)]),
            "dropped_tokens": _ms([_run_sum(r, "rollout_dropped_tokens") for r in mine]),
            "dropped_frac": _ms([_run_sum(r, "rollout_dropped_tokens") / max(_run_sum(r, "rollout_tokens_generated"),
                                                                             1) for r in mine]),
            "leftover_dropped_tokens": _ms([_run_sum(r, "dropped_tokens") for r in mine]),
            "resubmitted": _ms([_run_sum(r, "rollout_resubmitted") for r in mine]),
            "kept": _ms([_run_sum(r, "rollout_kept") for r in mine]),
            "icepop_masked_frac": _ms([_run_mean(r, "icepop_masked_frac") for r in mine]),
            "logp_diff_mean": _ms([_run_mean(r, "logp_diff_mean") for r in mine]),
            # the demo's puzzle: trained reward vs finished reward, lengths, prompt mix, reward by age
            "reward_first10": _ms([float(np.mean([h["reward_mean"] for h in x])) for x in head]),
            "reward_last10": _ms([float(np.mean([h["reward_mean"] for h in x])) for x in tail]),
            "fin_reward_first10": _ms([_mean_of(x, "fin_reward") for x in head]),
            "fin_reward_last10": _ms([_mean_of(x, "fin_reward") for x in tail]),
            "len_trained": _ms([_run_mean(r, "response_len_mean") for r in mine]),
            "len_finished": _ms([_run_mean(r, "fin_len") for r in mine]),
            "fin_cut_frac": _ms([_run_mean(r, "fin_cut_frac") for r in mine]),
            "fin_3term_frac": _ms([_run_mean(r, "fin_3term_frac") for r in mine]),
            "reward_by_age": _reward_by_age_pooled(mine),
        }
    return {"target_accuracy": target, "arms": out}


def _mean_of(rows: list[dict], key: str) -> float:
    values = [h[key] for h in rows if h.get(key) is not None]
    return float(np.mean(values)) if values else float("nan")


def _reward_by_age_pooled(runs: list[dict]) -> list[float | None]:
    """Mean over runs of each run's finished-response reward at age 0, 1, 2, ... (None where no run has one)."""
    per_run = [_reward_by_age(r) for r in runs]
    width = max((len(x) for x in per_run), default=0)
    cols = [[x[a] for x in per_run if a < len(x) and x[a] is not None] for a in range(width)]
    return [round(float(np.mean(c)), 4) if c else None for c in cols]


# -- main --------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_lab_args(parser, "runs/c3po_pp_ablation", 5, "tiny SFT, 3 steps, 1 eval sample: mechanics only")
    parser.add_argument("--arms", default=DEFAULT_ARMS)
    parser.add_argument("--steps", type=int, default=90, help="steps at the demo's phi (others: the same tokens)")
    parser.add_argument("--target", type=float, default=0.5,
                        help="target accuracy: start + this fraction of the sync arm's mean gain")
    args = parser.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    for arm in arms:
        try:
            arm_overrides(arm, 1, 1)
        except ValueError as e:
            parser.error(str(e))
    if args.eval_points < 1 or args.steps < 1:
        parser.error(f"--steps={args.steps} and --eval-points={args.eval_points} must be >= 1")
    if args.smoke:
        args.sft_steps, args.steps, args.eval_points, args.eval_samples = 20, 3, 1, 1
    os.makedirs(args.root, exist_ok=True)
    with compile_cache(os.path.join(os.path.abspath(args.root), "jax_cache")):
        return run_all(args, arms)


def run_all(args, arms: list[str]) -> dict:
    t0 = time.perf_counter()
    model, ctx, sft, start = start_model(args, "c3po_pp_ablation")
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for arm in arms:
            run = run_arm(model, ctx, arm, seed, args, start)
            runs.append(run)
            print(json.dumps({k: run[k] for k in ("arm", "seed", "steps", "rl_s", "eval_s")}
                             | {"accuracy": [(p["step"], round(p["accuracy"], 4)) for p in run["accuracy"]]}),
                  flush=True)
    summary = {"steps": args.steps, "seeds": args.seeds, "sft": sft, "start_accuracy": start,
               **summarize(runs, start, args.target), "seconds": round(time.perf_counter() - t0, 1)}
    emit_summary({**summary, "runs": runs}, args.out, shown=summary)
    return {**summary, "runs": runs}


if __name__ == "__main__":
    main()
