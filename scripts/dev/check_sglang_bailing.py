"""Dev check: does SGLang's CPU path compute the Bailing (Ling 1.0 / 2.0) math of docs/model.md?

Writes tiny random checkpoints by hand (torch + safetensors, docs/model.md tensor names, sharded with an index), scores
token sequences with real SGLang through tests/sglang_support/runner.py, and compares with a plain float64 torch
forward written here from docs/model.md. Usage: python scripts/dev/check_sglang_bailing.py [--keep DIR]
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from tests.sglang_support.runner import run_engine  # noqa: E402

REMOTE = os.path.join(ROOT, "ringjax", "hf", "remote_code")
COMMON = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, intermediate_size=96, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
              hidden_act="silu", use_bias=False, use_qkv_bias=False, rms_norm_eps=1e-6, rope_theta=600000.0,
              max_position_embeddings=4096, tie_word_embeddings=False, norm_topk_prob=True, rope_scaling=None,
              pad_token_id=0, eos_token_id=1, torch_dtype="float32")
V2 = dict(COMMON, architectures=["BailingMoeV2ForCausalLM"], model_type="bailing_moe_v2",
          auto_map={"AutoConfig": "configuration_bailing_moe_v2.BailingMoeV2Config"}, first_k_dense_replace=1,
          n_group=2, topk_group=1, num_shared_experts=1, moe_shared_expert_intermediate_size=32,
          score_function="sigmoid", moe_router_enable_expert_bias=True, routed_scaling_factor=2.5, use_qk_norm=True,
          use_rmsnorm=True, partial_rotary_factor=0.5, rotary_dim=8, norm_head=False, num_nextn_predict_layers=1)
V1 = dict(COMMON, architectures=["BailingMoeForCausalLM"], model_type="bailing_moe",
          auto_map={"AutoConfig": "configuration_bailing_moe.BailingMoeConfig"}, first_k_dense_replace=0,
          num_shared_experts=2, norm_head=True)  # the keys of a released Ling-lite config.json
# Ling 1.0 as ringjax exports it: the v2-style router keys written out with their Ling 1.0 values.
V1_EXPORT = dict(V1, score_function="softmax", moe_router_enable_expert_bias=False, n_group=1, topk_group=1,
                 routed_scaling_factor=1.0, partial_rotary_factor=1.0, use_qk_norm=False, num_nextn_predict_layers=0,
                 moe_shared_expert_intermediate_size=32)


def make_weights(c, seed):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.08):
        return torch.randn(*shape, generator=g) * scale

    def norm(n):
        return 1.0 + rnd(n, scale=0.1)

    H, hd, nH, nKV, E = c["hidden_size"], c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"], \
        c["num_experts"]
    w = {"model.word_embeddings.weight": rnd(c["vocab_size"], H, scale=0.5), "model.norm.weight": norm(H),
         "lm_head.weight": rnd(c["vocab_size"], H, scale=0.3)}

    def mlp(p, inter):
        w[p + "gate_proj.weight"], w[p + "up_proj.weight"] = rnd(inter, H), rnd(inter, H)
        w[p + "down_proj.weight"] = rnd(H, inter)

    def block(p, sparse):
        w[p + "input_layernorm.weight"], w[p + "post_attention_layernorm.weight"] = norm(H), norm(H)
        w[p + "attention.query_key_value.weight"] = rnd((nH + 2 * nKV) * hd, H, scale=0.25)
        w[p + "attention.dense.weight"] = rnd(H, nH * hd, scale=0.15)
        if c.get("use_qk_norm"):
            w[p + "attention.query_layernorm.weight"], w[p + "attention.key_layernorm.weight"] = norm(hd), norm(hd)
        if not sparse:
            return mlp(p + "mlp.", c["intermediate_size"])
        w[p + "mlp.gate.weight"] = rnd(E, H, scale=0.5)
        if c.get("moe_router_enable_expert_bias"):
            w[p + "mlp.gate.expert_bias"] = rnd(E, scale=0.3)
        for e in range(E):
            mlp(f"{p}mlp.experts.{e}.", c["moe_intermediate_size"])
        shared = c.get("moe_shared_expert_intermediate_size", c["moe_intermediate_size"]) * c["num_shared_experts"]
        mlp(p + "mlp.shared_experts.", shared)

    L = c["num_hidden_layers"]
    for i in range(L):
        block(f"model.layers.{i}.", i >= c["first_k_dense_replace"])
    for i in range(c.get("num_nextn_predict_layers", 0)):  # MTP layer: SGLang's main model should ignore it
        p = f"model.layers.{L + i}."
        block(p, True)
        w[p + "enorm.weight"], w[p + "hnorm.weight"], w[p + "final_layernorm.weight"] = norm(H), norm(H), norm(H)
        w[p + "eh_proj.weight"] = rnd(H, 2 * H)
    return w


def write_checkpoint(path, c, w, shards=3):
    os.makedirs(path, exist_ok=True)
    names = sorted(w)
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in w.values())}, "weight_map": {}}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: w[n].contiguous() for n in names[s::shards]}
        save_file(part, os.path.join(path, fname), metadata={"format": "pt"})
        index["weight_map"].update({n: fname for n in part})
    json.dump(index, open(os.path.join(path, "model.safetensors.index.json"), "w"), indent=1)
    json.dump(c, open(os.path.join(path, "config.json"), "w"), indent=1)
    module = c["auto_map"]["AutoConfig"].split(".")[0] + ".py"
    shutil.copy(os.path.join(REMOTE, module), path)


def rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, pos, rd, theta):  # x [T, heads, hd]; NeoX rotate_half over the first rd dims
    inv = theta ** (-torch.arange(0, rd, 2, dtype=torch.float64) / rd)
    ang = pos[:, None].double() * inv[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1)[:, None], torch.cat([ang.sin()] * 2, -1)[:, None]
    xr = x[..., :rd]
    rot = torch.cat([-xr[..., rd // 2:], xr[..., :rd // 2]], -1)
    return torch.cat([xr * cos + rot * sin, x[..., rd:]], -1)


def swiglu(x, w, p):
    return F.silu(x @ w[p + "gate_proj.weight"].T) * (x @ w[p + "up_proj.weight"].T) @ w[p + "down_proj.weight"].T


def moe(x, w, p, c):
    logits = x @ w[p + "gate.weight"].T
    k, E = c["num_experts_per_tok"], c["num_experts"]
    if c.get("score_function", "softmax") == "sigmoid":
        s = torch.sigmoid(logits)
        b = s + w[p + "gate.expert_bias"]
        G = c["n_group"]
        grp = b.view(len(x), G, E // G).topk(2, -1).values.sum(-1)
        keep = torch.zeros_like(grp).scatter_(1, grp.topk(c["topk_group"], -1).indices, 1.0)
        b = b.masked_fill(keep.repeat_interleave(E // G, 1) == 0, float("-inf"))
        idx = b.topk(k, -1).indices
        wt = s.gather(1, idx)
        wt = wt / (wt.sum(-1, keepdim=True) + 1e-20) * c["routed_scaling_factor"]
    else:
        prob = logits.softmax(-1)
        wt, idx = prob.topk(k, -1)
        if c["norm_topk_prob"]:
            wt = wt / wt.sum(-1, keepdim=True)
    out = swiglu(x, w, p + "shared_experts.")
    for t in range(len(x)):
        for j in range(k):
            out[t] += wt[t, j] * swiglu(x[t:t + 1], w, f"{p}experts.{int(idx[t, j])}.")[0]
    return out


def reference_logprobs(c, w, ids):
    w = {n: t.double() for n, t in w.items()}
    eps, hd, nH, nKV = c["rms_norm_eps"], c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"]
    rd = int(hd * c.get("partial_rotary_factor", 1.0))
    T, pos = len(ids), torch.arange(len(ids))
    h = w["model.word_embeddings.weight"][torch.tensor(ids)]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = rms(h, w[p + "input_layernorm.weight"], eps)
        qkv = x @ w[p + "attention.query_key_value.weight"].T
        q, kk, v = qkv.split([nH * hd, nKV * hd, nKV * hd], -1)
        q, kk, v = q.view(T, nH, hd), kk.view(T, nKV, hd), v.view(T, nKV, hd)
        if c.get("use_qk_norm"):
            q = rms(q, w[p + "attention.query_layernorm.weight"], eps)
            kk = rms(kk, w[p + "attention.key_layernorm.weight"], eps)
        q, kk = rope(q, pos, rd, c["rope_theta"]), rope(kk, pos, rd, c["rope_theta"])
        kk, v = kk.repeat_interleave(nH // nKV, 1), v.repeat_interleave(nH // nKV, 1)
        att = torch.einsum("qhd,khd->hqk", q, kk) / hd ** 0.5
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        h = h + torch.einsum("hqk,khd->qhd", att, v).reshape(T, nH * hd) @ w[p + "attention.dense.weight"].T
        x = rms(h, w[p + "post_attention_layernorm.weight"], eps)
        h = h + (moe(x, w, p + "mlp.", c) if i >= c["first_k_dense_replace"] else swiglu(x, w, p + "mlp."))
    head = w["lm_head.weight"]
    if c.get("norm_head"):
        head = head / head.norm(dim=0, keepdim=True).clamp_min(1e-7)
    lp = (rms(h, w["model.norm.weight"], eps) @ head.T).log_softmax(-1)
    return lp[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="write the checkpoints here and keep them")
    ap.add_argument("--only", nargs="*", help="names of the cases to run (v2, v1, v1-export-keys)")
    args = ap.parse_args()
    root = args.keep or tempfile.mkdtemp(prefix="bailing_check_")
    g = torch.Generator().manual_seed(123)
    seqs = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (37, 12, 64)]
    worst = {}
    for name, cfg, seed in (("v2", V2, 0), ("v1", V1, 1), ("v1-export-keys", V1_EXPORT, 1)):
        if args.only and name not in args.only:
            continue
        path = os.path.join(root, name)
        w = make_weights(cfg, seed)
        write_checkpoint(path, cfg, w)
        out = run_engine(path, seqs)
        diffs = [(torch.tensor(got, dtype=torch.float64) - reference_logprobs(cfg, w, s)).abs().max().item()
                 for s, got in zip(seqs, out["logprobs"])]
        worst[name] = max(diffs)
        print(f"{name}: max |logprob diff| {worst[name]:.3e} over {len(seqs)} sequences; engine start "
              f"{out['start_s']:.1f} s, max RSS {out['max_rss_mb']:.0f} MB, sglang {out['sglang_version']}")
    if not args.keep:
        shutil.rmtree(root)
    bad = {k: v for k, v in worst.items() if not v < 1e-4}
    print("FAILED" if bad else "OK", worst)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
