"""`run_pipeline`: the Ring recipe end to end. SFT -> entropy-band checkpoint -> RL stages -> eval -> HF export.

Every stage writes into its own folder of `cfg.out` (`sft/`, `<stage name>/`: checkpoints and TensorBoard logs);
`state.json` records finished stages, the held-out accuracy after each and each RL stage's pass-rate filter
(`filter`: the prompts the stage trains on), so a rerun of the same command skips what is done, reuses the
filter, and resumes the stage in progress from its newest checkpoint with the same prompt stream. Ctrl-C
checkpoints after the current step and returns `{"stopped": ...}`. The final model goes to `out/hf` (safetensors +
config.json + tokenizer).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable

from ringjax.pipeline.config import PipelineConfig, check_inputs
from ringjax.pipeline.run_dir import GracefulStop, claim, read_state, write_json
from ringjax.trainer.engines import check_rollout_processes

Log = Callable[[str], None]


def _progress(total: int, desc: str, enabled: bool, keys: tuple[str, ...]):
    """(on_step callback, close) drawing a tqdm bar with a few metrics."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=True)

    def on_step(step: int, metrics: dict) -> None:
        bar.n = step
        bar.set_postfix({k: f"{metrics[k]:.3g}" for k in keys if k in metrics}, refresh=False)
        bar.refresh()

    return on_step, bar.close


def _claim(cfg: PipelineConfig, overwrite: bool, log: Log) -> bool:
    """`claim`s the run folder. A multi-process run (`mesh.distributed`) joins `jax.distributed` first; the first
    process claims the shared folder while the others wait, and all of them learn the outcome from it."""
    if not cfg.mesh.distributed:
        return claim(cfg, overwrite, log)
    from ringjax.sharding import initialize_distributed, process_layout
    from ringjax.trainer.driver import Driver, LeaderFailed

    initialize_distributed(detect=True)
    count = process_layout()[1]  # JAX's backends not started yet: process 0 may still start Ray (a fork)
    if count == 1:
        return claim(cfg, overwrite, log)
    check_rollouts_on_mesh(cfg, count)
    try:
        return Driver("claim", timeout_s=600).share(lambda: claim(cfg, overwrite, log))
    except LeaderFailed as e:
        raise FileExistsError(f"process 0 could not claim the run folder {cfg.out} ({e})") from None


def check_rollouts_on_mesh(cfg: PipelineConfig, processes: int) -> None:
    """ValueError naming the first rollout setting that a trainer of several processes cannot drive. Rollouts run
    on the trainer's mesh (the embedded engine, every process its part) or in Ray workers that process 0 drives and
    every process sends its shards to (`ringjax.trainer.driver`); SGLang servers without Ray workers take weights
    from one process, and deltas need the whole previous weights on one host."""
    rollouts = [(f"stages.{s.name}.rl.rollout", cfg.stage_rl(s).rollout) for s in cfg.stages]
    if cfg.eval.enabled and cfg.eval.engine == "rollout":
        rollouts.append(("rl.rollout (eval.engine: rollout)", cfg.rl.rollout))
    for key, r in rollouts:
        check_rollout_processes(key, r, processes)


def run_pipeline(cfg: PipelineConfig, *, overwrite: bool = False, progress: bool = True,
                 log: Log = print, only: str | None = None) -> dict:
    """Runs (or resumes) the pipeline of `cfg`; returns the summary written to `out/results.json`.

    `only="sft"` stops after SFT and its checkpoint pick (`ringjax sft`)."""
    check_inputs(cfg)
    resumed = _claim(cfg, overwrite, log)
    from ringjax.pipeline import stages  # imports JAX: after the cheap checks

    t0 = time.perf_counter()
    out, state = cfg.out, read_state(cfg.out)
    log(f"ringjax: {'resuming' if resumed else 'starting'} run in {out}")
    ctx = stages.setup(cfg, log)
    summary: dict = {"out": out, "resumed": resumed, "devices": ctx.devices, "mesh": ctx.mesh_shape,
                     "params": ctx.params}
    policy = functools.cache(ctx.initial_model)  # the model at the current point of the recipe, loaded once needed
    with GracefulStop() as stop:
        if cfg.sft.enabled:
            if "sft" not in state["done"]:
                on_step, close = _progress(ctx.sft_steps, "sft", progress, ("loss", "nll_mean", "eval_entropy"))
                try:
                    result = stages.sft(ctx, policy(), on_step, stop)
                finally:
                    close()
                if result["stopped"]:
                    return _stopped(summary, "sft", result["step"], log)
                state["done"]["sft"] = result
                write_json(os.path.join(out, "state.json"), state)
                log(f"sft: picked step {result['picked_step']} (eval entropy {result['entropy']:.3f}, band "
                    f"{list(cfg.sft.entropy_band)}{'' if result['in_band'] else ', closest: none in band'})")
            picked_dir = os.path.join(out, state["done"]["sft"]["picked_dir"])  # relative to the run folder
            policy = functools.cache(functools.partial(stages.restore, ctx, picked_dir))
        if only == "sft":
            summary.update(sft=state["done"]["sft"], seconds=round(time.perf_counter() - t0, 1))
            return summary
        points = stages.eval_points(cfg)
        _evaluate(ctx, policy, points[0], state, 0)
        rl_steps = 0
        for stage in cfg.stages:
            if stage.name not in state["done"]:
                records = filtered_prompts(ctx, stage, policy, state, rl_steps)
                on_step, close = _progress(stage.steps, f"rl {stage.name}", progress,
                                           ("reward_mean", "icepop_masked_frac", "response_len_mean"))
                try:
                    result = stages.rl(ctx, stage, policy(), on_step, stop, records)
                finally:
                    close()
                if result["stopped"]:
                    return _stopped(summary, stage.name, result["step"], log)
                state["done"][stage.name] = result
                write_json(os.path.join(out, "state.json"), state)
            final_dir = os.path.join(out, state["done"][stage.name]["final_dir"])  # relative to the run folder
            policy = functools.cache(functools.partial(stages.restore, ctx, final_dir))
            rl_steps += stage.steps
            _evaluate(ctx, policy, stage.name, state, rl_steps)
        if cfg.export.enabled:
            summary["export"] = stages.export(ctx, policy())
    summary.update(accuracy={p: state["evals"][p]["accuracy"] for p in points if p in state["evals"]},
                   stages={k: {kk: v for kk, v in d.items() if not kk.endswith("_dir")}
                           for k, d in state["done"].items()},
                   filters={k: {kk: v for kk, v in d.items() if kk != "pass_rates"}
                            for k, d in state["filters"].items()},
                   plot=stages.plot(ctx, state, points), seconds=round(time.perf_counter() - t0, 1))
    write_json(os.path.join(out, "results.json"), summary)
    log(accuracy_table(summary["accuracy"]))
    return summary


def _evaluate(ctx, policy: Callable, point: str, state: dict, rl_step: int) -> None:
    if not ctx.cfg.eval.enabled or point in state["evals"]:
        return
    from ringjax.pipeline import stages

    state["evals"][point] = {**stages.evaluate_model(ctx, policy(), rl_step), "rl_step": rl_step}
    write_json(os.path.join(ctx.cfg.out, "state.json"), state)
    acc = state["evals"][point]["accuracy"]
    ctx.log(f"eval after {point}: " + ", ".join(f"{d} {a:.3f}" for d, a in acc.items()))


def filtered_prompts(ctx, stage, policy: Callable, state: dict, rl_step: int):
    """The prompts `stage` trains on: None (all of its domains) when its filter is off; else those the pass-rate
    filter keeps, measured with the model the stage starts from (`policy()`) or, on a rerun, from the pass rates
    `state.json` holds (not measured again: the same prompts, so the stage resumes with the same prompt stream).
    A new measurement is stored, logged to `out/logs/filter` at `rl_step` and printed. ValueError naming the
    stage and the thresholds when no prompt is left."""
    import jax

    from ringjax.pipeline import stages
    from ringjax.trainer.metrics import MetricsWriter

    f = ctx.cfg.stage_filter(stage)
    if not f.enabled:
        return None
    records = stages.stage_records(ctx, stage)
    stored = state["filters"].get(stage.name)
    measured = stages.pass_rates(ctx, stage, policy()) if stored is None else None
    kept, counts = stages.filter_prompts(records, (stored or measured)["pass_rates"], f)
    if measured is not None:
        state["filters"][stage.name] = {**counts, "lo": f.lo, "hi": f.hi, "samples": f.samples, "rl_step": rl_step,
                                        "engine": measured["engine"], "failed": measured["failed"],
                                        "pass_rates": measured["pass_rates"]}
        write_json(os.path.join(ctx.cfg.out, "state.json"), state)
        writer = MetricsWriter(os.path.join(ctx.cfg.out, "logs", "filter"), prefix="filter",
                               enabled=jax.process_index() == 0)
        try:
            writer.write(rl_step, {f"{stage.name}_{k}": v for k, v in counts.items() if v is not None})
        finally:
            writer.close()
    how = "measured" if measured is not None else "stored by an earlier run"
    ctx.log(f"filter {stage.name}: kept {counts['kept']} of {counts['prompts']} prompts, dropped "
            f"{counts['dropped_solved']} solved (pass rate >= {f.hi}) and {counts['dropped_unsolved']} unsolved "
            f"(<= {f.lo}); {f.samples} samples each, {how}")
    if not kept:
        raise ValueError(f"stage {stage.name}: the pass-rate filter (lo={f.lo}, hi={f.hi}, {f.samples} samples) "
                         f"dropped all {counts['prompts']} prompts ({counts['dropped_solved']} solved, "
                         f"{counts['dropped_unsolved']} unsolved): nothing to train on; change "
                         f"filter.lo / filter.hi (or stages.N.filter) or turn the filter off for this stage")
    return kept


def _stopped(summary: dict, stage: str, step: int, log: Log) -> dict:
    log(f"ringjax: stopped in stage {stage} at step {step}; checkpoint saved. Run the same command again to resume.")
    return {**summary, "stopped": {"stage": stage, "step": step}}


def accuracy_table(accuracy: dict[str, dict[str, float]]) -> str:
    """Markdown table: one row per evaluation point (after SFT, after each stage), one column per domain."""
    domains = sorted({d for acc in accuracy.values() for d in acc})
    lines = ["| after | " + " | ".join(domains) + " | mean |", "|---" * (len(domains) + 2) + "|"]
    for point, acc in accuracy.items():
        cells = [f"{acc[d]:.3f}" if d in acc else "-" for d in domains]
        mean = sum(acc.values()) / max(len(acc), 1)
        lines.append(f"| {point} | " + " | ".join(cells) + f" | {mean:.3f} |")
    return "\n".join(lines)

