"""The pipeline's pass-rate filter of each RL stage's prompts (Ring-lite's difficulty filter) and its evaluation
through the configured rollout engine: filter counts, config errors naming the key, a stage left without prompts,
a rerun reusing the stored measurement, and a run whose held-out accuracy comes from SGLang. Tiny sizes: a
2-layer demo model from random weights, 12 math prompts, no SFT."""

import json
import os
import re

import numpy as np
import pytest
from helpers import random_model

import ringjax
from ringjax.data import PromptRecord
from ringjax.data.tokenize import ByteTokenizer
from ringjax.pipeline import load_pipeline, run_pipeline
from ringjax.pipeline.config import FilterSection
from ringjax.pipeline.evaluate import evaluate
from ringjax.pipeline.run_dir import read_state
from rollout.types import SamplingParams

TINY = ["sft.enabled=false", "data.synthetic.math=12", "data.synthetic.code=0", "data.synthetic.eval_per_domain=4",
        "data.synthetic.sft_per_domain=0", "stages=[{name: math, domains: {math: 1}, steps: 1}]",
        "model.overrides.num_hidden_layers=2", "rl.rollout.workers=0", "rl.max_new_tokens=8",
        "rl.prompts_per_batch=2", "rl.samples_per_prompt=4", "rl.rollout.omega=8", "rl.phi=32", "rl.rows=8",
        "rl.seq_len=32", "export.enabled=false", "filter.samples=2", "eval.samples=2"]


def _records(answers):
    return [PromptRecord(id=f"p{i}", prompt=f"question {i}", domain="math", answer=a) for i, a in enumerate(answers)]


def test_filter_keeps_the_prompts_strictly_between_lo_and_hi():
    from ringjax.pipeline.stages import filter_prompts

    records = _records(["1"] * 6)
    rates = {"p0": 0.0, "p1": 0.25, "p2": 0.5, "p3": 0.75, "p4": 1.0}  # p5 unmeasured: kept
    kept, counts = filter_prompts(records, rates, FilterSection(enabled=True, lo=0.25, hi=0.75))
    assert [r.id for r in kept] == ["p2", "p5"]
    assert counts == {"prompts": 6, "kept": 2, "dropped_solved": 2, "dropped_unsolved": 2, "unmeasured": 1,
                      "pass_rate_mean": 0.5}  # (0 + .25 + .5 + .75 + 1) / 5


def test_pass_rates_are_each_prompts_mean_reward_over_its_samples():
    """Through a real embedded engine: a reward reading the record gives each prompt a known rate, which the
    default filter (drop never and always solved) turns into known counts."""
    from ringjax.pipeline.stages import filter_prompts

    records = _records(["0", "0.5", "1", "0.25"])
    tok = ByteTokenizer()
    result = evaluate(random_model(ringjax.preset("tiny-v2"), seed=1), records, lambda r, text: float(r.answer),
                      encode=tok.encode, decode=tok.decode, sampling=SamplingParams(1.0, 1.0, 4, ()), samples=3,
                      slots=8, max_context=32, pass_rates=True)
    assert result["pass_rates"] == {"p0": 0.0, "p1": 0.5, "p2": 1.0, "p3": 0.25}
    assert result["engine"] == "JaxEngine" and result["prompts"] == {"math": 4}
    kept, counts = filter_prompts(records, result["pass_rates"], FilterSection(enabled=True))
    assert [r.id for r in kept] == ["p1", "p3"]
    assert (counts["kept"], counts["dropped_solved"], counts["dropped_unsolved"]) == (2, 1, 1)


@pytest.mark.parametrize("overrides, key", [
    (["filter.lo=1.2"], "filter.lo=1.2 must be in [0, 1]"),
    (["filter.hi=-0.5"], "filter.hi=-0.5 must be in [0, 1]"),
    (["filter.lo=0.5", "filter.hi=0.5"], "filter.lo=0.5 and hi=0.5: need lo < hi"),
    (["filter.samples=0"], "filter.samples=0 must be >= 1"),
    (["stages.1.filter={lo: 0.6, hi: 0.4}"], "stages.1.filter.lo=0.6 and hi=0.4"),
    (["stages.0.filter.hi=2"], "stages.0.filter.hi=2 must be in [0, 1]"),
    (["stages.2.filter.samples=0"], "stages.2.filter.samples=0"),  # a disabled stage is checked too
    (["eval.engine=vllm"], "eval.engine='vllm'"),
])
def test_bad_filter_settings_fail_at_load_naming_the_key(overrides, key):
    with pytest.raises(ValueError, match=re.escape(key)):
        load_pipeline(None, overrides)


def test_a_run_from_before_the_filter_and_eval_engine_resumes_as_it_evaluated(tmp_path):
    """run.json written before `filter` and `eval.engine` existed: no filter, and the embedded engine it evaluated
    with (`jax`, the demo's), so the demo resumes it; asking for the rollout engine now is another run."""
    from ringjax.pipeline.run_dir import claim

    cfg = load_pipeline(None, [f"out={tmp_path / 'demo'}"])
    assert cfg.eval.engine == "jax" and not cfg.filter.enabled
    assert claim(cfg, log=lambda _: None) is False
    path = tmp_path / "demo" / "run.json"
    old = json.loads(path.read_text())
    del old["filter"], old["eval"]["engine"]
    for stage in old["stages"]:
        del stage["filter"]
    path.write_text(json.dumps(old))
    assert claim(cfg, log=lambda _: None) is True
    other = load_pipeline(None, [f"out={tmp_path / 'demo'}", "eval.engine=rollout"])
    with pytest.raises(FileExistsError, match=r"differs in \['eval.engine'\]"):
        claim(other, log=lambda _: None)


@pytest.fixture(scope="module")
def filtered_out(tmp_path_factory):
    """A run whose random starting model solves no prompt: the filter (lo 0) drops every prompt of stage math."""
    out = str(tmp_path_factory.mktemp("filter") / "run")
    cfg = load_pipeline(None, [f"out={out}", *TINY, "filter.enabled=true", "eval.enabled=false"])
    lines = []
    with pytest.raises(ValueError) as err:
        run_pipeline(cfg, progress=False, log=lines.append)
    return cfg, str(err.value), lines


def test_a_stage_the_filter_leaves_empty_stops_naming_stage_and_thresholds(filtered_out):
    cfg, error, lines = filtered_out
    assert re.search(r"stage math: the pass-rate filter \(lo=0.0, hi=1.0, 2 samples\) dropped all 12 prompts", error)
    assert "filter math: kept 0 of 12 prompts, dropped 0 solved (pass rate >= 1.0) and 12 unsolved" in "\n".join(
        lines)
    stored = read_state(cfg.out)["filters"]["math"]
    assert (stored["kept"], stored["dropped_unsolved"], stored["engine"]) == (0, 12, "JaxEngine")
    assert len(stored["pass_rates"]) == 12
    assert not os.path.exists(os.path.join(cfg.out, "math"))  # never trained
    with open(os.path.join(cfg.out, "logs", "filter", "metrics.jsonl")) as f:
        row = json.loads(f.readline())
    assert (row["step"], row["math_kept"], row["math_dropped_unsolved"]) == (0, 0.0, 12.0)


def test_a_rerun_reuses_the_stored_filter_result(filtered_out):
    """The measurement in state.json is reused, not taken again (the model is never asked for): a rerun trains on
    exactly the prompts the stored pass rates keep, in the same order, so its prompt stream is the same."""
    from ringjax.pipeline import stages
    from ringjax.pipeline.run import filtered_prompts

    cfg, _, _ = filtered_out
    state = read_state(cfg.out)
    rates = state["filters"]["math"]["pass_rates"]
    for rid in list(rates)[::3]:  # as if the starting model solved these half the time
        rates[rid] = 0.5
    with open(os.path.join(cfg.out, "state.json"), "w") as f:
        json.dump(state, f)
    state = read_state(cfg.out)
    ctx = stages.setup(cfg, lambda line: None, rl=False)
    records = stages.stage_records(ctx, cfg.stages[0])

    def policy():
        raise AssertionError("the stored filter result was measured again")

    lines = []
    ctx.log = lines.append
    kept = filtered_prompts(ctx, cfg.stages[0], policy, state, 0)
    assert [r.id for r in kept] == [r.id for r in records if rates[r.id] == 0.5] and len(kept) == 4
    assert "filter math: kept 4 of 12 prompts" in lines[0] and "stored by an earlier run" in lines[0]
    assert [r.id for r in filtered_prompts(ctx, cfg.stages[0], policy, state, 0)] == [r.id for r in kept]


@pytest.mark.sglang
def test_the_pipeline_evaluates_through_the_configured_sglang_engine(tmp_path, monkeypatch):
    """`rl.rollout.engine: sglang` and the default `eval.engine: rollout`: the held-out accuracy is sampled by an
    SGLang server started on the model's weights (its counters are stored with the evaluation), then closed."""
    from sglang_support.runner import engine_env, sglang_available

    if not sglang_available():
        pytest.skip("SGLang is not installed: run scripts/install_sglang_cpu.sh")
    for key in ("PYTHONPATH", "SGLANG_USE_CPU_ENGINE"):
        monkeypatch.setenv(key, engine_env()[key])
    out = str(tmp_path / "run")
    cfg = load_pipeline(None, [f"out={out}", *TINY, "stages=[]", "eval.engine=rollout", "rl.rollout.engine=sglang",
                               "rl.rollout.sglang={device: cpu, dtype: float32, max_total_tokens: 4096, "
                               "fix_cpu_routed_scaling: true}"])
    summary = run_pipeline(cfg, progress=False, log=lambda line: None)
    ev = read_state(out)["evals"]["start"]
    assert ev["engine"] == "SGLangEngine"
    assert ev["engine_stats"]["submitted"] == 4 * 2 and ev["engine_stats"].get("errors", 0) == 0  # 4 prompts x 2
    assert 0 < ev["engine_stats"]["tokens"] <= 4 * 2 * 8 and ev["failed"] == 0
    assert list(summary["accuracy"]) == ["start"] and set(summary["accuracy"]["start"]) == {"math"}
    assert np.isfinite(summary["accuracy"]["start"]["math"])
