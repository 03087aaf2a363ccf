"""Benchmark scripts run end to end at minimal sizes (the shape of what they report, not their numbers)."""

import gzip
import importlib.util
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.append(str(ROOT / "benchmarks"))  # as when run as a script: the shared _summary module
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rollout_bench_compares_sync_and_c3po_pp(tmp_path):
    bench = _load("rollout_bench")
    out = tmp_path / "rollout.json"
    # one token per decode call and a pool of 4 groups: an iteration ends with groups still generating (carried)
    summary = bench.main(["--phi", "16", "--omega", "8", "--samples", "2", "--sigmas", "2", "--median", "4",
                          "--max-tokens", "16", "--prompt-len", "4", "--rows", "2", "--decode-chunk", "1",
                          "--steps", "1", "--warmup-steps", "1", "--no-prewarm", "--carry-kv", "recompute,keep",
                          "--out", str(out)])
    assert json.loads(out.read_text())["ratios_sync_over_c3po"] == summary["ratios_sync_over_c3po"]
    assert [(r["mode"], r["sigma"], r["carry_kv"]) for r in summary["runs"]] == [
        ("sync", None, None), ("c3po++", 2, "recompute"), ("c3po++", 2, "keep")]
    recompute, keep = summary["runs"][1:]
    assert recompute["totals"]["resubmitted"] > 0  # carried responses were aborted and re-submitted...
    assert keep["totals"]["resubmitted"] == 0 and keep["totals"]["kept"] > 0  # ...or held, never re-prefilled
    for run in summary["runs"]:
        assert run["length_mismatches"] == 0  # every completed response has exactly its drawn length
        assert run["steps"][0]["trained_tokens"] == 16 and run["rollout_s"]["median"] > 0
    assert set(summary["ratios_sync_over_c3po"]["c3po++ sigma=2 carry_kv=keep"]) == {
        "rollout_median", "rollout_mean", "e2e_median", "e2e_mean"}


def test_demo_seeds_aggregates_finished_runs(tmp_path):
    """Finished run folders are read, not rerun: the noise is the sample std over seeds, margins are per seed."""
    bench = _load("demo_seeds")
    acc = {0: {"sft": {"math": 0.4, "code": 0.7}, "math": {"math": 0.6, "code": 0.7}},
           1: {"sft": {"math": 0.5, "code": 0.6}, "math": {"math": 0.6, "code": 0.8}}}
    for seed, a in acc.items():
        (tmp_path / f"seed{seed}").mkdir()
        (tmp_path / f"seed{seed}" / "results.json").write_text(json.dumps({"accuracy": a, "seconds": 100 + seed}))
    summary = bench.main(["--seeds", "0,1", "--root", str(tmp_path)])
    assert summary["accuracy"]["sft"]["math"] == {"mean": 0.45, "std": 0.0707, "values": [0.4, 0.5]}
    assert summary["margin_over_sft"]["math"]["math"]["values"] == [0.2, 0.1]
    assert summary["margin_over_sft"]["math"]["mean"]["values"] == [0.1, 0.15]
    assert summary["reward_trend"] == {0: {}, 1: {}}  # no stage logged a step


def test_summary_written_gzipped_for_gz_paths(tmp_path):
    """--out FILE.gz is written gzip-compressed (a lab's per-step rows), any other path as plain JSON."""
    emit = _load("_summary").emit_summary
    summary = {"runs": [{"step": s} for s in range(3)]}
    emit(summary, str(tmp_path / "s.json.gz"))
    emit(summary, str(tmp_path / "s.json"))
    with gzip.open(tmp_path / "s.json.gz", "rt") as f:
        assert json.load(f) == summary
    assert json.loads((tmp_path / "s.json").read_text()) == summary


def test_demo_seeds_reward_trend(tmp_path):
    """The per-stage trend of the training reward: a known line plus alternating noise gives back its slope, its
    endpoint means and the noise; stages without RL steps (sft) have none."""
    bench = _load("demo_seeds")
    out = tmp_path / "seed0"
    (out / "math" / "logs").mkdir(parents=True)
    (out / "results.json").write_text(json.dumps({"accuracy": {"sft": {"math": 0.4}, "math": {"math": 0.5}},
                                                  "seconds": 1}))
    reward = [0.5 + 0.002 * s + (0.1 if s % 2 else -0.1) for s in range(1, 81)]  # 0.2 per 100 steps, noise 0.1
    rows = [{"step": s, "reward_mean": r} for s, r in zip(range(1, 81), reward)]
    (out / "math" / "logs" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    trend = bench.main(["--seeds", "0", "--root", str(tmp_path)])["reward_trend"][0]
    assert list(trend) == ["math"]
    t = trend["math"]
    assert t["steps"] == 80 and t["first"] == round(reward[0], 4) and t["last"] == round(reward[-1], 4)
    assert t["first10"] == round(sum(reward[:10]) / 10, 4) and t["last10"] == round(sum(reward[-10:]) / 10, 4)
    assert abs(t["slope_per_100"] - 0.2) < 0.01 and 0 < t["slope_se_per_100"] < 0.05
    assert abs(t["step_std"] - 0.1) < 0.005
    with pytest.raises(ValueError, match="at least 3 steps"):
        bench.reward_trend([0.5, 0.6])


def test_sandbox_bench_reports_runs_and_rewards(tmp_path):
    bench = _load("sandbox_bench")
    out = tmp_path / "sandbox.json"
    summary = bench.main(["--programs", "4", "--workers", "1,2", "--out", str(out)])
    assert json.loads(out.read_text())["runs_per_s"] == summary["runs_per_s"]
    assert [(r["workers"], r["failed"]) for r in summary["results"]] == [(1, 0), (2, 0)]
    assert [(r["workers"], r["failed"]) for r in summary["rewards"]] == [(1, 0), (2, 0)]  # every reward scored 1
    assert set(summary["code_reward_per_s"]) == {"w1", "w2"} and summary["median_start_latency_s"] > 0


def test_mismatch_sources_measures_every_source(tmp_path):
    """The baseline engine matches the trainer to float32 rounding; a perturbed one does not; SGLang is reported
    skipped in --smoke."""
    bench = _load("mismatch_sources")
    out = tmp_path / "mismatch.json"
    summary = bench.main(["--smoke", "--out", str(out)])
    assert json.loads(out.read_text())["table"] == summary["table"]
    assert list(summary["table"]) == ["fp32", "moe=dense", "bf16", "fp8 block32", "noise 0.1", "sglang"]
    rows = {r["source"]: r for r in summary["sources"]}
    assert all(0 < r["tokens"] <= 8 * 8 for name, r in rows.items() if name != "sglang")  # 8 prompts, 8 tokens
    # the same numerics on both sides: float32 rounding (~1e-6), far below every perturbed source
    assert rows["fp32"]["logp_diff_max"] < 1e-3 and rows["fp32"]["routing_disagree"] == 0.0
    assert rows["noise 0.1"]["logp_diff_mean"] > rows["fp32"]["logp_diff_mean"]
    assert "skipped" in rows["sglang"]


@pytest.mark.parametrize("notebook", sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb")))
def test_notebook_sets_its_cell_timeout(notebook):
    """Each notebook carries its own cell time limit (the 300 s default is too short for a lab's smoke run when
    the suite shares the machine); nbmake reads it from the notebook's metadata."""
    meta = json.loads((ROOT / "notebooks" / notebook).read_text())["metadata"]
    assert meta.get("execution", {}).get("timeout", 0) >= 600, f"{notebook}: metadata.execution.timeout unset"


def test_gpu_suite_runs_every_part_at_toy_size(tmp_path):
    """The accelerator suite's code path on CPU: one compiled train step, profile ops, decode rows, log-prob memory."""
    suite = _load("gpu_suite")
    out = tmp_path / "gpu.json"
    summary = suite.main(["--size", "toy", "--out", str(out)])
    assert json.loads(out.read_text())["parts"].keys() == summary["parts"].keys() == {
        "train", "profile", "logprob_memory", "decode"}
    train = summary["parts"]["train"]
    assert train["compiles"] == {"accumulate": 1, "apply": 1} and train["skipped"] == 0 and train["step_s"] > 0
    assert train["mfu"] is None  # no known peak for a CPU: never a made-up figure
    ops = summary["parts"]["profile"]["top_ops"]
    assert ops and all(op["ms"] > 0 for op in ops) and sum(op["share"] for op in ops) <= 1.0 + 1e-6
    assert [r["batch"] for r in summary["parts"]["decode"]["runs"]] == [4, 8]
    memory = summary["parts"]["logprob_memory"]
    assert memory["chunked_temp_mib"] < memory["unchunked_temp_mib"]  # chunking bounds the logits buffer


def test_cost_curves_measure_every_curve_at_toy_size(tmp_path):
    """The cost curves' code path: every curve at 2 points, the experts curve at equal active parameters, chunked
    log-prob memory under the unchunked at the largest vocabulary, and the three figures drawn."""
    bench = _load("cost_curves")
    out = tmp_path / "cost.json"
    summary = bench.main(["--size", "toy", "--figures", str(tmp_path), "--out", str(out)])
    curves = json.loads(out.read_text())["curves"]
    assert curves.keys() == summary["curves"].keys() == {
        "decode_batch", "decode_context", "update_seq_len", "update_experts", "logprob_memory"}
    assert all(len(points) == 2 for points in curves.values())
    assert [p["batch"] for p in curves["decode_batch"]] == [1, 2] and all(
        p["gen_tok_per_s"] > 0 for p in curves["decode_batch"] + curves["decode_context"])
    assert [p["context"] for p in curves["decode_context"]] == [16, 32]
    assert all(p["step_s"] > 0 and p["skipped"] == 0 for p in curves["update_seq_len"] + curves["update_experts"])
    assert [p["seq_len"] for p in curves["update_seq_len"]] == [64, 128]
    experts = curves["update_experts"]
    assert [p["experts"] for p in experts] == [4, 16] and len({p["params_active"] for p in experts}) == 1
    assert experts[0]["params_total"] < experts[1]["params_total"]  # more experts, same active parameters
    largest = max(curves["logprob_memory"], key=lambda p: p["vocab"])
    # 16384 entries in vocabulary blocks of 4096 hold less than token chunks alone, which hold less than one chunk
    assert 0 < largest["chunked_temp_mib"] < largest["token_chunked_temp_mib"] < largest["unchunked_temp_mib"]
    assert all(0 < p["prefill_temp_mib"] <= p["whole_row_temp_mib"] for p in curves["decode_context"])
    assert summary["env"]["load_avg_start"] and summary["env"]["load_avg_end"]
    for name in ("cost_decode.png", "cost_update.png", "cost_logprob_memory.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_profile_gaps_profiles_decode_and_update_at_toy_size(tmp_path):
    """The gap profiles' code path: both parts traced, XLA ops only (no host event, no while container), shares
    that add up, the expert bytes of the model."""
    bench = _load("profile_gaps")
    summary = bench.main(["--size", "toy", "--out", str(tmp_path / "gaps.json")])
    assert json.loads((tmp_path / "gaps.json").read_text()) == summary
    for part in ("decode", "update"):
        row = summary["parts"][part]
        ops = [o["op"] for o in row["top_ops"]]
        assert ops and all(bench.HLO.fullmatch(o) and not o.startswith("while") for o in ops)
        assert 0 < row["top1_share"] <= row["top25_share"] <= 1.0 and 0 <= row["gather_share"] <= 1.0
    decode = summary["parts"]["decode"]
    assert 0 < decode["routed_expert_mb"] < decode["all_weights_mb"] and decode["gen_tok_per_s"] > 0
    assert summary["parts"]["update"]["gflop_per_s"] > 0


def test_rl_step_bench_times_whole_steps(tmp_path):
    """ringjax's side of the whole-step comparison (Tunix lives in its own virtualenv, outside the test run): every
    step trains all tokens of its groups, the warm-up step is left out of the median, one train-step compile."""
    bench = _load("rl_step_bench")
    summary = bench.main(["--sizes", "bench-tiny", "--prompts", "2", "--group", "2", "--prompt-len", "8",
                          "--new-tokens", "8", "--warmup", "1", "--runs", "2", "--out", str(tmp_path / "s.json")])
    row = summary["sizes"]["bench-tiny"]["ringjax"]
    assert row["steps"] == 3 and row["step_compiles"] == 1 and "tunix" not in summary["sizes"]["bench-tiny"]
    assert 0 < row["rollout_s"] < row["step_s"] < row["steps_s"][0]  # the first step compiles
    assert bench.even_share(None, "2 3 4 7") == 0.5


def test_missing_peer_is_reported_and_gets_no_ratio(tmp_path):
    """A peer interpreter that does not exist: ringjax is still measured, the peer is reported missing, and no ratio
    or pass / fail is printed against a figure this run did not measure."""
    bench = _load("train_bench")
    summary = bench.main(["--presets", "bench-tiny", "--seqs", "2", "--seq-len", "48", "--rows", "2", "--runs", "1",
                          "--tunix-python", str(tmp_path / "no-venv" / "python")])
    row = summary["results"][0]
    assert row["tokens_per_s"] > 0 and row["peak_rss_gb"] > 0
    assert "does not exist" in row["tunix"]["missing"] and str(tmp_path) in row["tunix"]["missing"]
    assert row["over_tunix"] is None and "target_met" not in row


def test_failing_peer_is_reported_with_its_error():
    """A peer script that fails to run (here: an interpreter without Tunix) comes back as missing, with its error."""
    peer = _load("_peer")
    got = peer.run_peer(sys.executable, "tunix_parts.py", ["--part", "update", "--size", "bench-tiny"], 300)
    assert set(got) == {"missing"} and "exit 1" in got["missing"] and "tunix" in got["missing"]
    assert peer.ratio(10.0, got, "tokens_per_s") is None
    assert peer.ratio(10.0, {"tokens_per_s": 4.0}, "tokens_per_s") == 2.5


def test_engine_bench_targets_only_peers_measured_in_the_run():
    """The decode bar is 2x the best peer measured in the same run; a missing peer is never the best one, and a
    column without a measured peer gets no target."""
    bench = _load("engine_bench")
    jax_rows = [{"decode_chunk": 8, "gen_tok_per_s": 900.0}, {"decode_chunk": 32, "gen_tok_per_s": 1000.0}]
    results = [{"column": "tiny/b8", "jax_engine": jax_rows, "tunix": {"missing": "no venv"},
                "sglang": {"gen_tok_per_s": 400.0}},
               {"column": "tiny/b32", "jax_engine": jax_rows, "tunix": {"gen_tok_per_s": 600.0},
                "sglang": {"gen_tok_per_s": 450.0}},
               {"column": "100m/b8", "jax_engine": jax_rows}]
    got = bench.targets(results)
    assert set(got) == {"tiny/b8", "tiny/b32"}
    assert got["tiny/b8"]["best_peer"] == "sglang" and got["tiny/b8"]["passed"] is True
    assert got["tiny/b8"]["decode_chunk"] == 32 and got["tiny/b8"]["jax_over_sglang"] == 2.5
    assert got["tiny/b32"]["best_peer"] == "tunix" and got["tiny/b32"]["passed"] is False
    assert got["tiny/b32"]["ratio_to_best_peer"] == 1.67


def test_context_parallel_bench_compiles_every_point(tmp_path):
    """Every (row length, context) point compiled on the 8 simulated devices; splitting a row over 2 devices lowers
    the per-device memory of the same row."""
    bench = _load("context_parallel_bench")
    summary = bench.main(["--size", "toy", "--out", str(tmp_path / "cp.json")])
    assert json.loads((tmp_path / "cp.json").read_text()) == summary
    points = {(p["seq_len"], p["context"], p["attention"]): p for p in summary["points"]}
    assert set(points) == {(n, c, a) for n in (64, 128) for c in (1, 2) for a in ("xla/512", "xla/16", "flash/16")}
    for seq_len in (64, 128):
        one, two = points[seq_len, 1, "xla/512"], points[seq_len, 2, "xla/512"]
        assert two["tokens_per_device"] * 2 == one["tokens_per_device"] == seq_len
        assert 0 < two["temp_mib"] < one["temp_mib"]
        ratio = summary["relative_to_context_1"][f"{seq_len} xla/512"]["2"]
        assert ratio == round(two["temp_mib"] / one["temp_mib"], 3)
