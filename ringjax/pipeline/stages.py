"""The pipeline's stages as functions of a shared `Context` (config, mesh, data, tokenizer)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np

from ringjax import storage
from ringjax.data import filter_by_pass_rate
from ringjax.data.records import PromptRecord
from ringjax.model import Ling
from ringjax.pipeline.config import FilterSection, PipelineConfig, StageSection
from ringjax.pipeline.data import RunData, build_data
from ringjax.pipeline.evaluate import engine_slots, evaluate
from ringjax.pipeline.tokenizer import Tokenizer, train_tokenizer
from ringjax.sharding import process_layout
from ringjax.trainer.driver import Driver, rollout_driver
from ringjax.trainer.engines import export_for_servers, make_engine
from ringjax.trainer.model_checkpoint import latest_step_dir, restore_model
from ringjax.trainer.sft import SFTExample, eval_entropies, train_sft
from rollout.rewards import RewardRouter
from rollout.types import SamplingParams
from rollout.weights import flat_weights


@dataclasses.dataclass
class Context:
    cfg: PipelineConfig
    log: Callable[[str], None]
    mesh: jax.sharding.Mesh
    data: RunData
    tokenizer: Tokenizer

    @property
    def devices(self) -> int:
        return jax.device_count()

    @property
    def mesh_shape(self) -> dict[str, int]:
        return dict(self.mesh.shape)

    @property
    def params(self) -> int:
        from ringjax.model.params import count_params
        from ringjax.plan import model_config

        return count_params(model_config(self.cfg)).total

    def initial_model(self) -> Ling:
        """The starting weights (a preset's random init, an HF folder or a checkpoint); read only when needed, so
        a resumed run whose SFT is done never loads them."""
        return _initial_model(self.cfg, self.tokenizer, self.mesh)

    @property
    def sft_steps(self) -> int:
        return self.cfg.sft.train.total_steps(len(self.data.sft))

    def compute(self) -> dict:
        return self.cfg.model.overrides.get("compute", {})


def setup(cfg: PipelineConfig, log, rl: bool = True) -> Context:
    """The run's data, mesh and tokenizer; with `rl`, Ray before JAX when an RL stage still to run needs it."""
    from ringjax.sharding import initialize_distributed, make_mesh

    data = build_data(cfg)
    _check_sandbox(data)
    if rl:
        _start_ray(cfg)  # before JAX starts threads: Ray forks this process to start its own
    if cfg.mesh.distributed:
        initialize_distributed(detect=True)  # joined already by `run_pipeline`; other commands join here
    mesh = make_mesh(**cfg.mesh.axes())
    tokenizer = _tokenizer(cfg, data, log)
    log(f"ringjax: {len(data.prompts)} RL prompts, {len(data.eval)} held out, {len(data.sft)} SFT pairs; "
        f"tokenizer vocab {tokenizer.vocab_size}; {jax.device_count()} devices, mesh {dict(mesh.shape)}")
    return Context(cfg, log, mesh, data, tokenizer)


def _check_sandbox(data: RunData) -> None:
    """Code prompts are graded in the sandbox: one that cannot be created stops the run now, saying why, rather
    than scoring every program 0."""
    if any(r.domain == "code" for r in data.prompts + data.eval):
        from rollout.sandbox import sandbox_available

        reason = sandbox_available()
        if reason is not None:
            raise ValueError(f"code prompts need the sandbox, which cannot run here: {reason}")


def eval_points(cfg: PipelineConfig) -> list[str]:
    """The points the held-out accuracy is taken at: after SFT (or at the start), then after every RL stage."""
    return (["sft"] if cfg.sft.enabled else ["start"]) + [s.name for s in cfg.stages]


def _start_ray(cfg: PipelineConfig) -> None:
    """Starts (or joins) Ray now if an RL stage still to run (its training or pass-rate filter), or an evaluation
    still to take (`eval.engine: rollout`), generates in Ray workers. Ray starts its processes with a `preexec_fn`,
    a fork of this process, unsafe once JAX runs threads (and JAX warns); started here, the stages' worker pools
    find it up and share it, and it stops when the process exits.

    A cluster of our own gets token authentication, asked for as Ray documents it (`RAY_AUTH_MODE=token`, read when
    Ray is imported; Ray then generates the token) unless the user chose a mode; a joined cluster keeps its own."""
    from ringjax.pipeline.run_dir import read_state

    state = read_state(cfg.out)
    rollouts = [cfg.stage_rl(s).rollout for s in cfg.stages if s.name not in state["done"]]
    if cfg.eval.enabled and cfg.eval.engine == "rollout" and set(eval_points(cfg)) - set(state["evals"]):
        rollouts.append(cfg.rl.rollout)
    addresses = {r.ray_address for r in rollouts if r.workers}
    if len(addresses) != 1:  # none, or stages that join different clusters: each pool starts its own, as before
        return
    address = addresses.pop()
    if address is None and not os.environ.get("RAY_ADDRESS") and "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")  # what Ray picks by default, chosen: no notice about it
    if process_layout()[0] != 0:  # process 0 runs the workers; the others join its cluster with the same mode
        return
    from rollout.ray_pool import start_ray

    start_ray(address)


def _tokenizer(cfg: PipelineConfig, data: RunData, log) -> Tokenizer:
    folder = storage.join(cfg.out, "tokenizer")
    if storage.is_file(storage.join(folder, "tokenizer.json")):
        return Tokenizer.load(folder)
    kind = cfg.tokenizer.kind
    if kind == "hf":
        tok = Tokenizer.load(cfg.tokenizer.path or cfg.model.hf_path)
    else:
        tok = train_tokenizer(data.texts(), cfg.tokenizer.vocab_size)
        log(f"ringjax: trained a byte-level BPE tokenizer, {tok.vocab_size} tokens")
    tok.save(folder)
    return tok


def _initial_model(cfg: PipelineConfig, tok: Tokenizer, mesh) -> Ling:
    from ringjax.hf import from_pretrained
    from ringjax.model import create_model
    from ringjax.plan import model_config

    m = cfg.model
    compute = m.overrides.get("compute", {})
    if m.hf_path or m.checkpoint:
        model = from_pretrained(m.hf_path, mesh, **compute) if m.hf_path else restore_model(m.checkpoint, mesh,
                                                                                            **compute)
        if m.preset:
            _check_architecture(model_config(cfg), model.config, m.hf_path or m.checkpoint)
    else:
        mcfg = model_config(cfg)
        extra = dict(mcfg.hf_extra) | {"eos_token_id": str(tok.eos_id), "pad_token_id": str(tok.pad_id)}
        with jax.set_mesh(mesh):
            model = create_model(mcfg.replace(hf_extra=tuple(sorted(extra.items()))), mesh, seed=cfg.seed)
    if model.config.vocab_size < tok.vocab_size:
        raise ValueError(f"model vocab_size={model.config.vocab_size} < tokenizer vocab {tok.vocab_size}")
    return model


def _check_architecture(want, got, source: str) -> None:
    a, b = want.to_dict(), got.to_dict()
    # MTP layers are optional: released checkpoints and ringjax's default exports ship without them
    ignore = ("compute", "hf_extra", "num_nextn_predict_layers")
    differ = sorted(k for k in a if k not in ignore and a[k] != b.get(k))
    if differ:
        raise ValueError(f"{source} is not the configured model.preset: it differs in {differ} "
                         f"({', '.join(f'{k}={b.get(k)!r} vs {a[k]!r}' for k in differ[:3])})")


def restore(ctx: Context, step_dir: str) -> Ling:
    return restore_model(step_dir, ctx.mesh, **ctx.compute())


def _examples(ctx: Context, pairs) -> list[SFTExample]:
    enc, eos = ctx.tokenizer.encode, ctx.tokenizer.eos_id
    return [SFTExample(enc(p), enc(r) + [eos], id=i) for i, (p, r) in enumerate(pairs)]


def sft(ctx: Context, model: Ling, on_step, stop) -> dict:
    cfg, run_dir = ctx.cfg, os.path.join(ctx.cfg.out, "sft")
    evals = _examples(ctx, ctx.data.sft_eval) or None
    result = train_sft(model, _examples(ctx, ctx.data.sft), cfg.sft.train, run_dir, mesh=ctx.mesh,
                       eval_examples=evals, on_step=on_step, should_stop=stop)
    step = int(result.state.step)
    if result.stopped:
        return {"stopped": True, "step": step}
    picked, entropy, in_band = pick(run_dir, cfg.sft.entropy_band, cfg.sft.band_miss)
    return {"stopped": False, "step": step, "picked_step": picked, "entropy": entropy, "in_band": in_band,
            "skipped": result.skipped, "picked_dir": os.path.join("sft", "checkpoints", str(picked))}  # in cfg.out


def pick(run_dir: str, band: tuple[float, float], miss: str) -> tuple[int, float, bool]:
    """(step, entropy, inside the band) of the SFT checkpoint RL starts from."""
    from ringjax.trainer.sft import pick_checkpoint

    try:
        return (*pick_checkpoint(run_dir, band), True)
    except ValueError:
        if miss != "closest":
            raise
    known = {s: e for s, e in eval_entropies(run_dir).items() if e is not None and math.isfinite(e)}
    if not known:
        raise ValueError(f"{run_dir}: no checkpoint recorded an eval entropy")
    lo, hi = band
    step = min(known, key=lambda s: (max(lo - known[s], known[s] - hi, 0.0), -s))
    return step, known[step], False


def stage_records(ctx: Context, stage: StageSection) -> list[PromptRecord]:
    records = [r for r in ctx.data.prompts if r.domain in stage.domains]
    if not records:
        raise ValueError(f"stage {stage.name}: no RL prompt of domains {sorted(stage.domains)}")
    return records


def rl(ctx: Context, stage: StageSection, model: Ling, on_step, stop,
       records: Sequence[PromptRecord] | None = None) -> dict:
    """Trains `stage` from `model` on `records` (default: every RL prompt of its domains)."""
    from ringjax.trainer.rl import train_rl

    cfg = _stage_rl(ctx, stage)
    run_dir = os.path.join(ctx.cfg.out, stage.name)
    records = stage_records(ctx, stage) if records is None else records
    result = train_rl(model, records, RewardRouter(), cfg, run_dir=run_dir, mesh=ctx.mesh,
                      encode=ctx.tokenizer.encode, decode=ctx.tokenizer.decode, on_step=on_step, should_stop=stop)
    step = int(result.state.step)
    if result.stopped:
        return {"stopped": True, "step": step}
    rewards = [h["reward_mean"] for h in result.history]
    return {"stopped": False, "step": step, "final_dir": storage.relative(latest_step_dir(run_dir), ctx.cfg.out),
            "reward_first": rewards[0] if rewards else None, "reward_last": rewards[-1] if rewards else None}


def _stage_rl(ctx: Context, stage: StageSection):
    cfg = ctx.cfg.stage_rl(stage)
    return cfg if cfg.eos_id is not None else dataclasses.replace(cfg, eos_id=ctx.tokenizer.eos_id)


@contextlib.contextmanager
def _eval_engine(ctx: Context, model: Ling, rl_cfg, requests: int, max_context: int, driver: Driver | None = None,
                 export: str | None = None) -> Iterator:
    """The engine an evaluation of `requests` responses generates with: None with `eval.engine: jax` (`evaluate`
    builds its embedded engine), else `rl_cfg.rollout`'s, started on `model`'s weights (an SGLang server starts
    from an export into a temporary folder, or from `export`) and closed after. With `driver` (process 0 of a
    multi-process trainer), every process sends the workers its shards of `model` first."""
    if ctx.cfg.eval.engine == "jax":
        yield None
        return
    workers = rl_cfg.rollout.workers
    slots = engine_slots(-(-min(ctx.cfg.eval.slots, requests) // max(1, workers)), None if workers else ctx.mesh)
    with tempfile.TemporaryDirectory(prefix="ringjax_eval_") as tmp:
        engine = make_engine(model, rl_cfg, ctx.mesh, tmp, slots=slots, max_context=max_context, seed=ctx.cfg.seed,
                             driver=driver, weights=lambda: flat_weights(model), export=export)
        try:
            if driver is not None:
                engine.update_weights(None, version=0)
            yield engine
        finally:
            engine.close()


def _measure(ctx: Context, model: Ling, records: Sequence[PromptRecord], rl_cfg, samples: int,
             temperature: float | None = None, max_new_tokens: int | None = None, pass_rates: bool = False) -> dict:
    """`evaluate` of `model` on `records` with the evaluation engine of `rl_cfg` (its sampling unless given)."""
    max_new = max_new_tokens or rl_cfg.max_new_tokens
    temp = temperature if temperature is not None else rl_cfg.temperature
    sampling = SamplingParams(temp, 1.0, max_new, (ctx.tokenizer.eos_id,))
    max_context = rl_cfg.max_prompt_len + max_new
    driver = _driver(ctx, rl_cfg)

    def measure(export: str | None = None) -> dict:
        with _eval_engine(ctx, model, rl_cfg, len(records) * samples, max_context, driver, export) as engine:
            return evaluate(model, records, RewardRouter(), encode=ctx.tokenizer.encode, decode=ctx.tokenizer.decode,
                            sampling=sampling, samples=samples, slots=ctx.cfg.eval.slots, max_context=max_context,
                            seed=ctx.cfg.seed, mesh=ctx.mesh, engine=engine, pass_rates=pass_rates)

    if driver is None:
        return measure()
    with tempfile.TemporaryDirectory(prefix="ringjax_eval_") as tmp:  # SGLang servers start from an export
        export = export_for_servers(model, rl_cfg, tmp)  # each process passes its folder; process 0's is written
        return driver.share(functools.partial(measure, export), lambda: flat_weights(model))


def _driver(ctx: Context, rl_cfg) -> Driver | None:
    """A trainer of several processes evaluating with Ray workers: process 0 drives them (`ringjax.trainer.driver`)."""
    return None if ctx.cfg.eval.engine == "jax" else rollout_driver("eval", rl_cfg.rollout)


def pass_rates(ctx: Context, stage: StageSection, model: Ling) -> dict:
    """`evaluate` of `model` on the RL prompts of `stage` (`filter.samples` each, the stage's sampling, the
    evaluation engine of the stage's `rl.rollout`), with "pass_rates": {prompt id: mean reward}."""
    f = ctx.cfg.stage_filter(stage)
    return _measure(ctx, model, stage_records(ctx, stage), _stage_rl(ctx, stage), f.samples, pass_rates=True)


def filter_prompts(records: Sequence[PromptRecord], rates: dict[str, float],
                   f: FilterSection) -> tuple[list[PromptRecord], dict]:
    """(kept records, counts {prompts, kept, dropped_solved, dropped_unsolved, pass_rate_mean}) of the pass-rate
    filter `f` (`ringjax.data.filter_by_pass_rate`: >= hi solved, <= lo unsolved)."""
    kept, stats = filter_by_pass_rate(records, rates, f.lo, f.hi)
    measured = [rates[r.id] for r in records if r.id in rates]
    return kept, {"prompts": len(records), "kept": stats.kept, "dropped_solved": stats.dropped_solved,
                  "dropped_unsolved": stats.dropped_unsolved, "unmeasured": stats.unmeasured,
                  "pass_rate_mean": float(np.mean(measured)) if measured else None}


def evaluate_model(ctx: Context, model: Ling, rl_step: int, log: bool = True) -> dict:
    """Held-out accuracy of `model` through the evaluation engine (`eval.engine`); logged to `out/logs/eval` at
    `rl_step` when `log`."""
    from ringjax.trainer.metrics import MetricsWriter

    e = ctx.cfg.eval
    result = _measure(ctx, model, ctx.data.eval, ctx.cfg.rl, e.samples, e.temperature, e.max_new_tokens)
    writer = MetricsWriter(os.path.join(ctx.cfg.out, "logs", "eval"), prefix="eval",
                           enabled=log and jax.process_index() == 0)
    try:
        acc = result["accuracy"]
        writer.write(rl_step, {**{f"accuracy_{d}": a for d, a in acc.items()},
                               "accuracy_mean": sum(acc.values()) / len(acc),
                               **{f"response_len_{d}": v for d, v in result["response_len"].items()}})
    finally:
        writer.close()
    return result


def export(ctx: Context, model: Ling) -> str:
    from ringjax.hf import save_pretrained

    e = ctx.cfg.export
    path = storage.join(ctx.cfg.out, "hf")
    # a Cloud Storage run folder: written to a local folder, then uploaded by the process that wrote the files
    with storage.staged(path, upload=jax.process_index() == 0) as local:
        save_pretrained(model, local, dtype=e.dtype, max_shard_size=e.max_shard_size, mtp=e.mtp, overwrite=True)
        ctx.tokenizer.save(local)
    ctx.log(f"ringjax: exported the final model with its tokenizer to {path}")
    return path


def plot(ctx: Context, state: dict, points: list[str]) -> str | None:
    from ringjax.pipeline.report import plot_curves

    if jax.process_index() != 0:
        return None
    path = os.path.join(ctx.cfg.out, "curves.png")
    stages = [(s.name, os.path.join(ctx.cfg.out, s.name, "logs")) for s in ctx.cfg.stages]
    plot_curves(path, stages, {p: state["evals"][p] for p in points if p in state["evals"]})
    storage.write_json(storage.join(ctx.cfg.out, "evals.json"), state["evals"])
    return path
