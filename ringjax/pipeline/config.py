"""`PipelineConfig`: one YAML file drives `ringjax train` (SFT -> entropy-band pick -> RL stages -> eval -> export).

    cfg = load_pipeline("configs/ring_1t_gpu_sglang.yaml", overrides=["out=runs/x", "stages.0.steps=5"])

Loaded strictly (`ringjax.config_io`): an unknown key or a bad value fails naming its dotted path, and every
stage's RL config is built and checked at load time, before any compute. `rl_base: FILE` (relative to the config)
reads the shared RL section from an RL config file (`configs/*_rl.yaml`); the file's own `rl:` keys override it.
Every path (`out`, weights, tokenizer, data files) is made absolute when the config is built (relative paths
are relative to the current folder, also inside a config file), so the run folder's `run.json` records where
everything is; `check_inputs` then checks that every path the run reads exists, naming it as typed and as
resolved. Overrides address list items by index (`stages.1.rl.phi=4096`, `ringjax.config_io.apply_overrides`).
`load_pipeline(None)` is the embedded demo (`ringjax/pipeline/demo.yaml`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ringjax.config_io import build_config, from_dict, read_yaml, shown_path, to_dict, user_path
from ringjax.trainer.rl import RLConfig
from ringjax.trainer.sft import SFTConfig

DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.yaml")


def _resolve_paths(section: Any, prefix: str, *names: str, urls: bool = False) -> None:
    """Makes the path fields `names` of the frozen `section` (`prefix`: its dotted key, "" at the top) absolute
    (`user_path`) and remembers what was typed (`section._typed`, resolved -> typed) for error messages."""
    typed = dict(getattr(section, "_typed", {}))
    for name in names:
        value = getattr(section, name)
        if value is None:
            continue
        paths = (value,) if isinstance(value, str) else tuple(value)
        resolved = tuple(user_path(p, prefix + name, urls) for p in paths)
        typed.update({r: typed.get(p, p) for r, p in zip(resolved, paths)})
        object.__setattr__(section, name, resolved[0] if isinstance(value, str) else resolved)
    object.__setattr__(section, "_typed", typed)


def typed_path(section: Any, path: str) -> str:
    """`path` (resolved) as the user typed it, with the resolved form when they differ."""
    return shown_path(getattr(section, "_typed", {}).get(path, path), path)


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """`preset` names the architecture (with `overrides`: `LingConfig` fields); alone it starts from random weights.
    The weights of a released model come from `hf_path` (an HF folder) or `checkpoint` (an Orbax checkpoint, e.g.
    `ringjax import` output); with a preset too, the loaded architecture must equal it (`ringjax plan` needs only
    the preset). `overrides.compute` (dtypes, remat) applies to all three."""

    preset: str | None = None  # architecture preset (ringjax info preset:NAME); alone: random initial weights
    hf_path: str | None = None  # HF folder to load the weights (and architecture) from
    checkpoint: str | None = None  # Orbax model checkpoint to load instead (e.g. from ringjax import)
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    """LingConfig fields changed on the preset; its `compute` part (dtypes, remat, ...) applies to loaded weights too"""

    def __post_init__(self):
        if self.hf_path and self.checkpoint:
            raise ValueError("set at most one of model.hf_path and model.checkpoint")
        if not (self.preset or self.hf_path or self.checkpoint):
            raise ValueError("set model.preset (architecture, random init), model.hf_path or model.checkpoint")
        if not self.preset and set(self.overrides) - {"compute"}:
            raise ValueError(f"model.overrides {sorted(set(self.overrides) - {'compute'})} apply to presets only")
        _resolve_paths(self, "model.", "hf_path", "checkpoint")


@dataclasses.dataclass(frozen=True)
class MeshSection:
    """Device mesh (axes data, fsdp, context, expert, tensor; -1: all remaining devices). `cpu_devices`: simulate
    that many devices when JAX would run on the CPU (set before JAX starts). `distributed`: call `jax.distributed` first
    (TPU pods auto-detect; elsewhere RINGJAX_COORDINATOR / RINGJAX_NUM_PROCESSES / RINGJAX_PROCESS_ID).
    `device_memory_gb`: per-device capacity for `ringjax plan` (None: read from the local device when it has one)."""

    data: int = 1  # data-parallel devices (each holds whole parameters); -1: all remaining devices
    fsdp: int = -1  # devices sharding the batch and the parameters (ZeRO-3 style); -1: all remaining devices
    context: int = 1  # context-parallel devices: each holds 1/context of every row's tokens (long rows)
    expert: int = 1  # expert-parallel devices (each computes its share of the experts); -1: all remaining
    tensor: int = 1  # tensor-parallel devices (heads, MLP width, vocabulary split); -1: all remaining
    cpu_devices: int = 0  # simulate this many devices when JAX runs on the CPU; 0: the real device count
    distributed: bool = False  # call jax.distributed.initialize() first (multi-host runs)
    device_memory_gb: float | None = None  # per-device memory for ringjax plan; None: read from the local device

    def __post_init__(self):
        for name in ("data", "fsdp", "context", "expert", "tensor"):
            if getattr(self, name) == 0 or getattr(self, name) < -1:
                raise ValueError(f"mesh.{name}={getattr(self, name)} must be >= 1 or -1 (all remaining devices)")
        if self.cpu_devices < 0:
            raise ValueError(f"mesh.cpu_devices={self.cpu_devices} must be >= 0")

    def axes(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("data", "fsdp", "context", "expert", "tensor")}


@dataclasses.dataclass(frozen=True)
class TokenizerSection:
    """`bpe`: byte-level BPE trained at start-up on the run's own texts (the demo); `hf`: a tokenizer.json folder
    (defaults to model.hf_path). Either way the run keeps a copy in `out/tokenizer` and exports it with the model."""

    kind: Literal["bpe", "hf"] = "bpe"  # bpe: train a byte-level BPE on the run's texts; hf: load tokenizer.json
    vocab_size: int = 512  # vocabulary of the trained BPE tokenizer (kind bpe)
    path: str | None = None  # folder holding tokenizer.json (kind hf); None: model.hf_path

    def __post_init__(self):
        if self.kind not in ("bpe", "hf"):
            raise ValueError(f"tokenizer.kind={self.kind!r} is not 'bpe' or 'hf'")
        _resolve_paths(self, "tokenizer.", "path")


SYNTHETIC_DOMAINS = ("math", "code", "logic")  # the fields of SyntheticSection giving each domain's prompt count


@dataclasses.dataclass(frozen=True)
class SyntheticSection:
    """Locally generated verifiable tasks (`ringjax.pipeline.tasks`, `ringjax.pipeline.logic_tasks`): RL prompts per
    domain, teacher traces per domain for SFT (a programmatic teacher that slips on `teacher_error_rate` of its
    traces), held-out prompts."""

    math: int = 0  # arithmetic RL prompts answered in \boxed{} (0: no math domain)
    code: int = 0  # "write f(x)" RL prompts checked by hidden tests (0: no code domain)
    logic: int = 0  # countdown RL prompts ("Make 10 from 2 3 5."), an expression in \boxed{} (0: no logic domain)
    sft_per_domain: int = 0  # teacher traces per domain for SFT, drawn from the RL prompts
    eval_per_domain: int = 64  # held-out prompts per domain, never trained on
    teacher_error_rate: float = 0.3  # share of teacher traces with one deliberate slip (a wrong answer)
    math_max_operand: int = 9  # operands of the arithmetic prompts lie in 0..math_max_operand

    def __post_init__(self):
        for name in (*SYNTHETIC_DOMAINS, "sft_per_domain", "eval_per_domain", "math_max_operand"):
            if getattr(self, name) < 0:
                raise ValueError(f"data.synthetic.{name}={getattr(self, name)} must be >= 0")
        if not 0.0 <= self.teacher_error_rate <= 1.0:
            raise ValueError(f"data.synthetic.teacher_error_rate={self.teacher_error_rate} must lie in [0, 1]")


@dataclasses.dataclass(frozen=True)
class DataSection:
    """`synthetic` tasks, or files: RL `prompts` (JSONL / Parquet rows, `ringjax.data.read_records`), held-out
    `eval_prompts` (default: `eval_size` rows split off the prompts), SFT `sft` JSONL rows {prompt, response}."""

    source: Literal["synthetic", "files"] = "files"  # synthetic: generated tasks; files: the paths below
    synthetic: SyntheticSection = SyntheticSection()  # the generated tasks (source synthetic)
    prompts: tuple[str, ...] = ()  # RL prompt files, JSONL / Parquet rows {prompt, answer or tests, domain}
    eval_prompts: tuple[str, ...] = ()  # held-out prompt files; empty: eval_size rows split off the prompts
    eval_size: int = 256  # prompts held out when eval_prompts is empty (at most half of them)
    sft: tuple[str, ...] = ()  # SFT files, JSONL rows {prompt, response}

    def __post_init__(self):
        if self.source not in ("synthetic", "files"):
            raise ValueError(f"data.source={self.source!r} is not 'synthetic' or 'files'")
        for name in ("prompts", "eval_prompts", "sft"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        _resolve_paths(self, "data.", "prompts", "eval_prompts", "sft")
        if self.source == "files" and not self.prompts:
            raise ValueError("data.prompts is empty: give prompt files or set data.source: synthetic")


@dataclasses.dataclass(frozen=True)
class SFTSection:
    """SFT, then RL starts from the latest checkpoint whose held-out token entropy lies in `entropy_band`
    (Ring-lite: 0.3-0.5); `band_miss: closest` takes the checkpoint nearest the band instead of failing."""

    enabled: bool = True  # run SFT and the entropy-band pick; false: RL starts from the model's weights
    entropy_band: tuple[float, float] = (0.3, 0.5)  # [lo, hi] held-out token entropy of the checkpoint RL starts from
    band_miss: Literal["error", "closest"] = "error"  # no checkpoint in the band: fail, or take the closest
    train: SFTConfig = SFTConfig(steps=100, checkpoint_every=10)  # the SFT run

    def __post_init__(self):
        object.__setattr__(self, "entropy_band", tuple(float(b) for b in self.entropy_band))
        lo, hi = self.entropy_band if len(self.entropy_band) == 2 else (1, 0)
        if not 0 <= lo <= hi:
            raise ValueError(f"sft.entropy_band={list(self.entropy_band)} must be [lo, hi] with 0 <= lo <= hi")
        if self.band_miss not in ("error", "closest"):
            raise ValueError(f"sft.band_miss={self.band_miss!r} is not 'error' or 'closest'")
        if self.enabled and not self.train.checkpoint_every:
            raise ValueError("sft.train.checkpoint_every must be >= 1: the entropy-band pick needs checkpoints")


@dataclasses.dataclass(frozen=True)
class FilterSection:
    """Ring-lite's difficulty filter: before an RL stage trains, each of its prompts is answered `samples` times by
    the model the stage starts from (the SFT pick or the previous stage's final model) through the evaluation engine
    (`eval.engine`), at the stage's temperature and response cap; a prompt whose pass rate (mean reward) is >= `hi`
    (always solved) or <= `lo` (never solved) teaches nothing and is dropped (`ringjax.data.filter_by_pass_rate`).
    The result is kept in the run's `state.json`: a resumed run reuses it. A stage left without prompts fails."""

    enabled: bool = False  # measure and filter each RL stage's prompts before it trains
    samples: int = 8  # sampled responses per prompt to measure its pass rate
    lo: float = 0.0  # drop prompts with pass rate <= lo (never solved)
    hi: float = 1.0  # drop prompts with pass rate >= hi (always solved)

    def __post_init__(self):
        if not isinstance(self.enabled, bool):
            raise ValueError(f"filter.enabled={self.enabled!r} must be true or false")
        if self.samples < 1:
            raise ValueError(f"filter.samples={self.samples} must be >= 1")
        for name in ("lo", "hi"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"filter.{name}={getattr(self, name)} must be in [0, 1]")
        if not self.lo < self.hi:
            raise ValueError(f"filter.lo={self.lo} and hi={self.hi}: need lo < hi")


@dataclasses.dataclass(frozen=True)
class StageSection:
    """One RL stage: `rl` with these `domains` (weights; prompts of other domains are not drawn), `steps` and
    further `rl` keys as a nested mapping, merged over the shared section (e.g. {"loss": {"alpha": 0.4}}).
    `enabled: false` keeps an optional stage in a config file without running it: it is checked when the config
    loads, then left out of `PipelineConfig.stages` as if it were not listed (the run, its resume state, its
    `run.json` and `ringjax plan` never see it); `stages.N.enabled=true` turns it on. `filter` keys change the
    shared `filter` section for this stage (e.g. {"enabled": true, "hi": 0.9})."""

    name: str  # identifier; names the stage's folder in out/ and its metrics
    domains: dict[str, float]  # prompt domains of this stage and their mixing weights, e.g. {math: 1}
    steps: int  # RL optimisation steps of this stage
    rl: dict[str, Any] = dataclasses.field(default_factory=dict)  # keys of the rl section to change for this stage
    enabled: bool = True  # false: an optional stage, checked but left out of the run (as if not listed)
    filter: dict[str, Any] = dataclasses.field(default_factory=dict)  # keys of the filter section to change here

    def __post_init__(self):
        if not self.name.isidentifier():
            raise ValueError(f"stage name {self.name!r} must be an identifier (it names a folder and metrics)")
        if not self.domains or any(w <= 0 for w in self.domains.values()):
            raise ValueError(f"stage {self.name}: domains {self.domains} must be a non-empty map of weights > 0")
        if not isinstance(self.enabled, bool):
            raise ValueError(f"stage {self.name}: enabled={self.enabled!r} must be true or false")
        if not isinstance(self.filter, Mapping):
            raise ValueError(f"stage {self.name}: filter={self.filter!r} must be a mapping of filter keys")


@dataclasses.dataclass(frozen=True)
class EvalSection:
    """Held-out accuracy (mean reward over `samples` sampled responses per prompt, as Ring's avg@k) after SFT and
    after every RL stage; `temperature` / `max_new_tokens` None: those of the RL stage. `engine: rollout` (the
    default) generates with the configured `rl.rollout` engine (embedded JAX in this process, Ray workers or
    SGLang servers, started on the evaluated weights and closed after); `jax` with the embedded JAX engine in this
    process at the trainer's numerics, sampling from `seed` (same weights, same numbers). The pass-rate filter
    measures with the same choice (a stage's own `rl.rollout` for `rollout`)."""

    enabled: bool = True  # evaluate after SFT (or at the start) and after every RL stage
    engine: Literal["rollout", "jax"] = "rollout"  # rollout: the rl.rollout engine; jax: embedded, this process
    samples: int = 4  # sampled responses per held-out prompt (avg@k)
    temperature: float | None = None  # sampling temperature; None: rl.temperature
    max_new_tokens: int | None = None  # response cap; None: rl.max_new_tokens
    slots: int = 64  # KV-cache rows of the evaluation engine (responses decoded together)

    def __post_init__(self):
        if self.samples < 1 or self.slots < 1:
            raise ValueError(f"eval.samples={self.samples} and eval.slots={self.slots} must be >= 1")
        if self.engine not in ("rollout", "jax"):
            raise ValueError(f"eval.engine={self.engine!r} is not 'rollout' or 'jax'")


@dataclasses.dataclass(frozen=True)
class ExportSection:
    enabled: bool = True  # export the final model with its tokenizer to out/hf
    dtype: str | None = None  # cast on export (bfloat16, float16); None: the training dtype
    max_shard_size: str = "2GB"  # largest safetensors file of the export
    mtp: Literal["drop", "keep"] = "drop"  # MTP layers: drop (what SGLang and vLLM serve) or keep (MTP drafting)

    def __post_init__(self):
        if self.mtp not in ("drop", "keep"):
            raise ValueError(f"export.mtp={self.mtp!r} is not 'drop' or 'keep'")
        if self.dtype not in (None, "float32", "bfloat16", "float16"):
            raise ValueError(f"export.dtype={self.dtype!r} is not float32, bfloat16 or float16")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    out: str = "runs/demo"  # run folder: checkpoints, logs, state.json, the export; a rerun resumes it
    seed: int = 0  # data generation and held-out split, initial weights of a preset, evaluation sampling
    model: ModelSection = ModelSection(preset="tiny-v2")  # architecture and starting weights
    mesh: MeshSection = MeshSection()  # device mesh
    tokenizer: TokenizerSection = TokenizerSection()  # trained BPE or a checkpoint's tokenizer
    data: DataSection = DataSection(source="synthetic")  # RL prompts, held-out prompts, SFT pairs
    sft: SFTSection = SFTSection()  # SFT and the entropy-band checkpoint pick
    rl: RLConfig = RLConfig()  # RL settings shared by every stage
    stages: tuple[StageSection, ...] = ()  # RL stages, run in order from the previous final model; disabled: dropped
    filter: FilterSection = FilterSection()  # pass-rate filter of each stage's prompts (stages.N.filter changes it)
    eval: EvalSection = EvalSection()  # held-out accuracy
    export: ExportSection = ExportSection()  # the final Hugging Face folder

    def __post_init__(self):
        _resolve_paths(self, "", "out", urls=True)  # a run folder may be a Cloud Storage folder
        stages = tuple(s if isinstance(s, StageSection) else from_dict(StageSection, s, f"stages.{i}.")
                       for i, s in enumerate(self.stages))
        object.__setattr__(self, "stages", stages)
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names {names} are not unique")
        if "sft" in names:
            raise ValueError("a stage may not be named 'sft' (the SFT stage's folder)")
        for i, stage in enumerate(stages):
            self.stage_filter(stage, f"stages.{i}.")  # a bad stage filter key fails at load time, naming its index
            if self.stage_rl(stage).checkpoint_every < 1:  # also fails at load time on a bad stage override
                raise ValueError(f"stage {stage.name}: rl.checkpoint_every must be >= 1 (the next stage starts from "
                                 "its final checkpoint, and a rerun resumes from the newest)")
        stages = tuple(s for s in stages if s.enabled)
        object.__setattr__(self, "stages", stages)
        if self.mesh.context > 1:  # every row splits over the context devices: checked before anything runs
            lengths = {"sft.train.seq_len": self.sft.train.seq_len} if self.sft.enabled else {}
            lengths.update({f"stages.{s.name}.rl.seq_len": self.stage_rl(s).seq_len for s in stages})
            for key, n in lengths.items():
                if n % self.mesh.context:
                    raise ValueError(f"{key}={n} is not divisible by mesh.context={self.mesh.context} (each "
                                     f"context device holds an equal share of every row's tokens)")
        if self.data.source == "synthetic":
            for stage in stages:
                empty = [d for d in stage.domains if d not in SYNTHETIC_DOMAINS or not getattr(self.data.synthetic, d)]
                if empty:
                    raise ValueError(f"stage {stage.name} draws domains {empty}, of which data.synthetic generates no "
                                     f"prompts (its domains {list(SYNTHETIC_DOMAINS)} need data.synthetic.DOMAIN > 0)")

    def stage_rl(self, stage: StageSection) -> RLConfig:
        """The RL config of `stage`: the shared `rl` section, then the stage's steps, domains and `rl` keys."""
        values = _merge(to_dict(self.rl), stage.rl)
        values.update(steps=stage.steps, domain_weights=dict(stage.domains))
        try:
            return from_dict(RLConfig, values)
        except (ValueError, TypeError) as e:
            raise ValueError(f"stages.{stage.name}.rl: {e}") from e

    def stage_filter(self, stage: StageSection, key: str | None = None) -> FilterSection:
        """The pass-rate filter of `stage`: the shared `filter` section with the stage's `filter` keys. Errors name
        the key as `key` + `filter.NAME` (default `stages.NAME.`)."""
        key = f"stages.{stage.name}." if key is None else key
        try:
            return from_dict(FilterSection, _merge(to_dict(self.filter), stage.filter), f"{key}filter.")
        except (ValueError, TypeError) as e:
            raise ValueError(str(e) if f"{key}filter." in str(e) else f"{key}{e}") from e


def _merge(base: dict, top: Mapping) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def load_pipeline(path: str | None = None, overrides: Sequence[str] = ()) -> PipelineConfig:
    """The pipeline config of YAML file `path` (None: the embedded demo) with dotted overrides."""
    source = path or DEMO
    values = read_yaml(source)
    base = values.pop("rl_base", None)
    if base is not None:
        base_path = os.path.join(os.path.dirname(os.path.abspath(source)), base)
        if not os.path.isfile(base_path):
            raise FileNotFoundError(f"{source}: rl_base {base} ({base_path}) does not exist")
        values["rl"] = _merge(read_yaml(base_path), values.get("rl") or {})
    values["stages"] = values.get("stages") or []
    return build_config(PipelineConfig, values, overrides, source)


def check_inputs(cfg: PipelineConfig) -> None:
    """FileNotFoundError naming the config key of the first input path that does not exist."""
    paths = [("model.hf_path", cfg.model, cfg.model.hf_path), ("model.checkpoint", cfg.model, cfg.model.checkpoint),
             ("tokenizer.path", cfg.tokenizer, cfg.tokenizer.path)]
    if cfg.data.source == "files":
        paths += [(f"data.{k}", cfg.data, p) for k in ("prompts", "eval_prompts", "sft") for p in getattr(cfg.data, k)]
    for key, section, path in paths:
        if path and not os.path.exists(path):
            raise FileNotFoundError(f"{key}: {typed_path(section, path)} does not exist")
    if cfg.tokenizer.kind == "hf" and not (cfg.tokenizer.path or cfg.model.hf_path):
        raise ValueError("tokenizer.kind=hf needs tokenizer.path or model.hf_path")
    if cfg.sft.enabled and cfg.data.source == "files" and not cfg.data.sft:
        raise ValueError("sft.enabled but data.sft lists no SFT files (set sft.enabled=false to start RL directly)")
