"""SGLang 0.5.23's CPU MoE path (`UnquantizedFusedMoEMethod.forward_cpu` -> `moe_forward_native`, and the AMX
kernels alike) never multiplies the routed experts' sum by `routed_scaling_factor`, which its CUDA/Triton runner
and the Ling 2.0 reference do (BailingMoESparseMoeBlock leaves the factor to the MoE runner).
`patch_routed_scaling_on_cpu()` applies it after `moe_forward_native`. tests/test_sglang_parity.py shows the fix is
needed and that it is the only gap. Importing this module imports nothing but the standard library.
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
