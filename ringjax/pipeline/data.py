"""The texts a pipeline run trains and evaluates on: RL prompts, held-out prompts, SFT (prompt, response) pairs.

Synthetic (`data.source: synthetic`): math and code tasks from `ringjax.pipeline.tasks`, logic (countdown) tasks from
`ringjax.pipeline.logic_tasks`, held-out prompts split off before anything else (never trained on, in SFT or RL),
SFT traces from the programmatic teachers on training prompts, and the entropy probe of the SFT checkpoint pick
from teacher traces on held-out prompts. Files: `read_records` rows (bad rows skipped and counted) and SFT JSONL
rows {prompt, response} (`read_sft_rows`).
"""

from __future__ import annotations

import dataclasses
import functools
import json

import numpy as np

from ringjax.data import PromptRecord, read_records
from ringjax.pipeline.config import PipelineConfig
from ringjax.pipeline.logic_tasks import LOGIC, logic_teacher_response, logic_tasks
from ringjax.pipeline.tasks import code_tasks, math_tasks, split_heldout, teacher_response
from ringjax.trainer.sft import read_sft_rows



@dataclasses.dataclass
class RunData:
    prompts: list[PromptRecord]  # RL prompts, all domains
    eval: list[PromptRecord]  # held-out prompts
    sft: list[tuple[str, str]]  # (prompt, response) texts
    sft_eval: list[tuple[str, str]]  # held-out pairs for the SFT entropy probe ([] : SFTConfig.eval_size)
    stats: dict  # rows read / skipped by reason, per input

    def texts(self):
        """Every text of the run (what a locally trained tokenizer learns from)."""
        for r in self.prompts + self.eval:
            yield r.prompt
        for prompt, response in self.sft + self.sft_eval:
            yield prompt
            yield response


def synthetic_data(cfg: PipelineConfig) -> RunData:
    s = cfg.data.synthetic
    rng = np.random.default_rng([cfg.seed, 1])
    prompts, held, sft, sft_eval = [], [], [], []
    # in this order: each domain's seed depends on its place, so adding a domain changes no other domain's tasks
    makers = {"math": functools.partial(math_tasks, max_operand=s.math_max_operand), "code": code_tasks,
              LOGIC: logic_tasks}
    for i, (domain, make) in enumerate(makers.items()):
        n = getattr(s, domain)
        if n == 0:
            continue
        train, evals = split_heldout(make(n + s.eval_per_domain, cfg.seed + 1000 * i), s.eval_per_domain, cfg.seed)
        prompts += train
        held += evals
        picks = rng.choice(len(train), size=s.sft_per_domain, replace=s.sft_per_domain > len(train))
        teacher = logic_teacher_response if domain == LOGIC else teacher_response
        sft += [(train[j].prompt, teacher(train[j], rng, s.teacher_error_rate)) for j in picks]
        sft_eval += [(r.prompt, teacher(r, rng, s.teacher_error_rate)) for r in evals]
    if not prompts:
        raise ValueError("data.synthetic: no domain has prompts (set data.synthetic.math, .code or .logic > 0)")
    return RunData(prompts, held, sft, sft_eval, {"synthetic": dataclasses.asdict(s)})


def file_data(cfg: PipelineConfig) -> RunData:
    d = cfg.data
    prompts, stats = read_records(list(d.prompts))
    info = {"prompts": stats.as_dict()}
    if d.eval_prompts:
        held, eval_stats = read_records(list(d.eval_prompts))
        info["eval_prompts"] = eval_stats.as_dict()
    else:
        prompts, held = split_heldout(prompts, min(d.eval_size, len(prompts) // 2), cfg.seed)
    sft, bad = [], 0
    for path in d.sft:
        rows, skipped = read_sft_rows(path)
        sft += [(prompt, response) for prompt, response, _ in rows]
        bad += skipped
    info["sft"] = {"rows": len(sft), "skipped": bad}
    if not prompts:
        raise ValueError(f"data.prompts {list(d.prompts)}: no usable prompt ({json.dumps(info['prompts'])})")
    return RunData(prompts, held, sft, [], info)


def build_data(cfg: PipelineConfig) -> RunData:
    return synthetic_data(cfg) if cfg.data.source == "synthetic" else file_data(cfg)
