"""Subprocess entry point of runner.py: one SGLang CPU engine, per-token log-probs of every sequence.

Usage: python _engine_main.py REQUEST.json RESULT.json
REQUEST: {"model_dir": str, "sequences": [[int, ...], ...], "engine_kwargs": {...}}
RESULT:  {"logprobs": [[float, ...], ...], "sglang_version": str, "start_s": float, "run_s": float, "max_rss_mb": float}
Needs SGLANG_USE_CPU_ENGINE=1 and the sgl_kernel stand-in on PYTHONPATH (runner.py sets both).

CPU fix (SGLANG_CPU_ROUTED_SCALING_FIX=1, runner.py's default): `rollout.sglang.cpu_fix` (SGLang 0.5.23's CPU MoE
path forgets `routed_scaling_factor`). It is applied at import time, i.e. also in the scheduler processes SGLang
spawns (spawn re-imports this file as __mp_main__; everything else sits under the __main__ guard).
"""

import json
import os
import resource
import sys
import time


if os.environ.get("SGLANG_CPU_ROUTED_SCALING_FIX", "0") == "1":
    from rollout.sglang.cpu_fix import patch_routed_scaling_on_cpu

    patch_routed_scaling_on_cpu()


def main(request_path: str, result_path: str) -> None:
    req = json.load(open(request_path))
    import sglang

    kwargs = dict(model_path=req["model_dir"], device="cpu", dtype="float32", max_total_tokens=4096,
                  skip_tokenizer_init=True, trust_remote_code=True, log_level="error")
    kwargs.update(req.get("engine_kwargs", {}))
    t0 = time.time()
    engine = sglang.Engine(**kwargs)
    start_s = time.time() - t0
    try:
        t1 = time.time()
        outs = engine.generate(input_ids=req["sequences"], sampling_params={"max_new_tokens": 1, "temperature": 0.0},
                               return_logprob=True, logprob_start_len=0)
        run_s = time.time() - t1
    finally:
        engine.shutdown()
    logprobs = []
    for seq, out in zip(req["sequences"], outs):
        rows = out["meta_info"]["input_token_logprobs"]  # (logprob, token_id, text); the first logprob is None
        if len(rows) != len(seq):
            raise RuntimeError(f"SGLang returned {len(rows)} input log-probs for a sequence of {len(seq)} tokens")
        logprobs.append([float(r[0]) for r in rows[1:]])
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    json.dump({"logprobs": logprobs, "sglang_version": sglang.__version__, "start_s": start_s, "run_s": run_s,
               "max_rss_mb": max(own, children)}, open(result_path, "w"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
