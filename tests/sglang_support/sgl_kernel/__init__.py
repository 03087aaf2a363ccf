from sgl_kernel._standin import _missing
assign_draft_cache_locs_contiguous_cpu = _missing('sgl_kernel.assign_draft_cache_locs_contiguous_cpu')
assign_extend_cache_locs_cpu = _missing('sgl_kernel.assign_extend_cache_locs_cpu')
assign_req_to_token_pool_cpu = _missing('sgl_kernel.assign_req_to_token_pool_cpu')
build_tree_kernel_efficient_cpu = _missing('sgl_kernel.build_tree_kernel_efficient_cpu')
copy_all_layer_kv_cache_cpu = _missing('sgl_kernel.copy_all_layer_kv_cache_cpu')
fill_accept_out_cache_loc_cpu = _missing('sgl_kernel.fill_accept_out_cache_loc_cpu')
fill_bonus_tokens_cpu = _missing('sgl_kernel.fill_bonus_tokens_cpu')
verify_tree_greedy_cpu = _missing('sgl_kernel.verify_tree_greedy_cpu')
