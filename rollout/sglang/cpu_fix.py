"""Two opt-in fixes of SGLang 0.5.23's CPU path, applied by the server launcher (rollout/sglang/_server_main.py).
Importing this module imports nothing but the standard library.

`patch_routed_scaling_on_cpu()` (SGLANG_CPU_ROUTED_SCALING_FIX=1): SGLang's CPU MoE path
(`UnquantizedFusedMoEMethod.forward_cpu` -> `moe_forward_native`, and the AMX kernels alike) never multiplies the
routed experts' sum by `routed_scaling_factor`, which its CUDA/Triton runner and the Ling 2.0 reference do
(BailingMoESparseMoeBlock leaves the factor to the MoE runner). The patch applies it after `moe_forward_native`.
tests/test_sglang_parity.py shows the fix is needed and that it is the only gap.

`patch_routed_experts_host_cache_on_cpu()` (SGLANG_CPU_ROUTED_EXPERTS_FIX=1; `SGLangServer` sets it for a CPU
server with `return_routed_experts`): with --enable-return-routed-experts on device "cpu" the server dies while it
starts. `ModelRunner.init_routed_experts_capturer` builds a `RoutedExpertsCapturer`, whose `BaseTopkCapturer`
allocates its host cache (`BaseHostCache.__init__`, sglang/srt/state_capturer/base.py) with `pin_memory=True`
through `ALLOC_MEMORY_FUNCS[device]`. That table (sglang/srt/mem_cache/pool_host/common.py) has no "cpu" entry,
so it falls to its default `alloc_with_host_register`, which pins the buffer with `_cuda_host_register` ->
`torch.cuda.cudart()`: "Found no NVIDIA driver". Pinning only speeds up copies between a GPU and the host, so a
CPU server loses nothing without it: the patch gives "cpu" its own entry, SGLang's own allocation with
`pin_memory=False`. Only allocations keyed "cpu" change, i.e. those of a server whose device is the CPU; the
capture itself already runs there (the Bailing MoE's `TopK.forward_cpu` -> `select_experts` ->
`capture_routed_experts_if_allowed`). tests/test_sglang_engine.py shows the crash without the patch and the
records it gives with it: the model's own top-k.
"""


def patch_routed_scaling_on_cpu() -> None:
    from sglang.srt.layers.moe import fused_moe_native

    original = fused_moe_native.moe_forward_native
    if getattr(original, "_ringjax_patched", False):
        return

    def moe_forward_native(layer, x, topk_output, moe_runner_config):
        out = original(layer, x, topk_output, moe_runner_config)
        scale = moe_runner_config.routed_scaling_factor
        if scale is not None and scale != 1.0 and not getattr(layer, "should_fuse_routed_scaling_factor_in_topk",
                                                              False):
            out = out * scale
        return out

    moe_forward_native._ringjax_patched = True
    fused_moe_native.moe_forward_native = moe_forward_native


def patch_routed_experts_host_cache_on_cpu() -> None:
    from sglang.srt.mem_cache.pool_host import common

    if getattr(common.ALLOC_MEMORY_FUNCS.get("cpu"), "_ringjax_patched", False):
        return

    def alloc_unpinned(dims, dtype, device, pin_memory, allocator, registration_granularity_bytes=None):
        return common.alloc_with_host_register(dims=dims, dtype=dtype, device=device, pin_memory=False,
                                               allocator=allocator,
                                               registration_granularity_bytes=registration_granularity_bytes)

    alloc_unpinned._ringjax_patched = True
    common.ALLOC_MEMORY_FUNCS["cpu"] = alloc_unpinned  # the same dict object every importer of the table holds
