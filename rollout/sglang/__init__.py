"""The SGLang rollout engine: one SGLang server per engine, driven over HTTP, weights synced from the trainer.

- `rollout.sglang.engine.SGLangEngine`: the `rollout.types.Engine` interface over one server;
- `rollout.sglang.config.SGLangConfig`: how the server is started, called and synced;
- `rollout.sglang.server`: the server process and its HTTP client; `rollout.sglang.generate`: one `/generate` call;
- `rollout.sglang.sync` / `rollout.sglang.weights`: bucketed weight sync over a process group, or through a folder;
- `rollout.sglang.cpu_fix`: the opt-in fix of SGLang 0.5.23's CPU MoE path; `_server_main.py`: the launcher the
  engine runs by path (so SGLang's spawned scheduler processes import nothing but that fix).

This file imports nothing: the launcher's processes import `rollout.sglang.cpu_fix` through it and must not load
aiohttp or JAX. Import the submodules.
"""
