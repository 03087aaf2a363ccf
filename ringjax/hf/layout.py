"""Where each ringjax parameter lives in a Hugging Face checkpoint, and how to convert it.

ringjax keeps weights as [in, out] and q/k/v separate with a head axis; HF keeps [out, in] and one
fused `query_key_value` (rows Q heads | K heads | V heads). Every rule reads any rectangular slice of
the ringjax array straight from the safetensors file (`get_slice`), so a sharded load reads only the
bytes each device needs; expert weights are read expert by expert.

MTP layer i (Ling 2.0 `num_nextn_predict_layers`) is stored as the extra decoder layer
`model.layers.{num_hidden_layers + i}.`: its own `enorm`, `hnorm`, `eh_proj` and `final_layernorm` plus
the usual attention / MoE tensors of one MoE layer. That is how Ling 2.0's checkpoint converter writes
MTP "as an extra layer", and what SGLang's `bailing_moe_nextn` and vLLM's `bailing_moe_mtp` draft models
read. Serving the main model, vLLM's Bailing loader refuses those tensors (SGLang skips them), so an
export leaves them out unless asked (`export_config`, `MTP_MODES`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

from ringjax.model.config import LingConfig
from ringjax.model.decoder import layer_spec

Slices = tuple[slice, ...]
Reader = Callable[[str, Slices], np.ndarray]  # (tensor name, slices in HF layout) -> array


class Rule(NamedTuple):
    kind: str  # "id" | "t2" | "qkv" | "qkv_bias" | "o" | "expert"
    name: str  # HF name relative to the layer prefix (or absolute for top-level tensors)
    part: str = ""  # q / k / v for fused tensors


LAYER_RULES: dict[str, Rule] = {
    "attn_norm": Rule("id", "input_layernorm.weight"),
    "mlp_norm": Rule("id", "post_attention_layernorm.weight"),
    "wq": Rule("qkv", "attention.query_key_value.weight", "q"),
    "wk": Rule("qkv", "attention.query_key_value.weight", "k"),
    "wv": Rule("qkv", "attention.query_key_value.weight", "v"),
    "bq": Rule("qkv_bias", "attention.query_key_value.bias", "q"),
    "bk": Rule("qkv_bias", "attention.query_key_value.bias", "k"),
    "bv": Rule("qkv_bias", "attention.query_key_value.bias", "v"),
    "q_norm": Rule("id", "attention.query_layernorm.weight"),
    "k_norm": Rule("id", "attention.key_layernorm.weight"),
    "wo": Rule("o", "attention.dense.weight"),
    "mlp_wg": Rule("t2", "mlp.gate_proj.weight"),
    "mlp_wu": Rule("t2", "mlp.up_proj.weight"),
    "mlp_wd": Rule("t2", "mlp.down_proj.weight"),
    "router": Rule("t2", "mlp.gate.weight"),
    "expert_bias": Rule("id", "mlp.gate.expert_bias"),
    "wg": Rule("expert", "mlp.experts.{e}.gate_proj.weight"),
    "wu": Rule("expert", "mlp.experts.{e}.up_proj.weight"),
    "wd": Rule("expert", "mlp.experts.{e}.down_proj.weight"),
    "shared_wg": Rule("t2", "mlp.shared_experts.gate_proj.weight"),
    "shared_wu": Rule("t2", "mlp.shared_experts.up_proj.weight"),
    "shared_wd": Rule("t2", "mlp.shared_experts.down_proj.weight"),
}
MTP_RULES: dict[str, Rule] = {
    "enorm": Rule("id", "enorm.weight"),
    "hnorm": Rule("id", "hnorm.weight"),
    "final_norm": Rule("id", "final_layernorm.weight"),
    "eh_proj": Rule("t2", "eh_proj.weight"),
}
TOP_RULES: dict[str, Rule] = {
    "embed": Rule("id", "model.word_embeddings.weight"),
    "final_norm": Rule("id", "model.norm.weight"),
    "lm_head": Rule("id", "lm_head.weight"),
}


class Placement(NamedTuple):
    """One ringjax variable: its rule and, for stacked variables, the HF layer index of each stack entry."""

    rule: Rule
    layers: tuple[int, ...] | None  # None: a top-level tensor


def placements(cfg: LingConfig) -> dict[tuple[str, ...], Placement]:
    """ringjax state path -> placement, for every variable of a model of this config."""
    k, n_layers = cfg.num_dense_layers, cfg.num_hidden_layers
    out = {(name,): Placement(rule, None) for name, rule in TOP_RULES.items()
           if not (name == "lm_head" and cfg.tie_word_embeddings)}
    for stack, moe, first, count in (("dense_layers", False, 0, k), ("moe_layers", True, k, n_layers - k)):
        if count:
            for name in layer_spec(cfg, moe):
                out[(stack, name)] = Placement(LAYER_RULES[name], tuple(range(first, first + count)))
    mtp = tuple(range(n_layers, n_layers + cfg.num_nextn_predict_layers))
    if mtp:
        for name, rule in MTP_RULES.items():
            out[("mtp", name)] = Placement(rule, mtp)
        for name in layer_spec(cfg, True):
            out[("mtp", "layers", name)] = Placement(LAYER_RULES[name], mtp)
    return out


MTP_MODES = ("drop", "keep")


def export_config(cfg: LingConfig, mtp: str = "drop") -> LingConfig:
    """The config an export describes: `mtp="drop"` (default) writes no MTP layer (`num_nextn_predict_layers: 0`,
    as released Ling 2.0 checkpoints ship and as SGLang and vLLM serve by default), `"keep"` writes them all."""
    if mtp not in MTP_MODES:
        raise ValueError(f"mtp={mtp!r}; expected one of {MTP_MODES}")
    return cfg if mtp == "keep" else cfg.replace(num_nextn_predict_layers=0)


def _span(s: slice, size: int) -> tuple[int, int]:
    start, stop, step = s.indices(size)
    if step != 1:
        raise ValueError("strided slices are not supported")
    return start, stop


def _qkv_offset(cfg: LingConfig, part: str) -> int:
    n, g, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    return {"q": 0, "k": n * d, "v": (n + g) * d}[part]


def read(cfg: LingConfig, rule: Rule, prefix: str, shape: tuple[int, ...], idx: Slices, reader: Reader) -> np.ndarray:
    """The slice `idx` of one ringjax (per-layer) array of `shape`, read from the checkpoint."""
    name = prefix + rule.name
    d = cfg.head_dim
    if rule.kind == "id":
        return reader(name, idx)
    if rule.kind == "t2":
        return reader(name, (idx[1], idx[0])).T
    if rule.kind == "qkv":  # ours [H, n, D] <- rows off + n*D + d, columns H
        (n0, n1), off = _span(idx[1], shape[1]), _qkv_offset(cfg, rule.part)
        block = reader(name, (slice(off + n0 * d, off + n1 * d), idx[0]))  # [(n1-n0)*D, h]
        return block.reshape(n1 - n0, d, -1).transpose(2, 0, 1)[:, :, idx[2]]
    if rule.kind == "qkv_bias":  # ours [n, D]
        (n0, n1), off = _span(idx[0], shape[0]), _qkv_offset(cfg, rule.part)
        return reader(name, (slice(off + n0 * d, off + n1 * d),)).reshape(n1 - n0, d)[:, idx[1]]
    if rule.kind == "o":  # ours [N, D, H] <- HF [H, N*D]
        n0, n1 = _span(idx[0], shape[0])
        block = reader(name, (idx[2], slice(n0 * d, n1 * d)))  # [h, (n1-n0)*D]
        return block.reshape(block.shape[0], n1 - n0, d).transpose(1, 2, 0)[:, idx[1], :]
    if rule.kind == "expert":  # ours [E, a, b] <- per expert HF [b, a]
        e0, e1 = _span(idx[0], shape[0])
        return np.stack([reader(name.format(e=e), (idx[2], idx[1])).T for e in range(e0, e1)])
    raise ValueError(f"unknown rule kind {rule.kind!r}")


def write(cfg: LingConfig, rule: Rule, prefix: str, value: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """HF tensors of one full per-layer ringjax array (fused q/k/v parts are joined by the caller)."""
    name = prefix + rule.name
    if rule.kind == "id":
        yield name, value
    elif rule.kind == "t2":
        yield name, value.T
    elif rule.kind == "qkv":  # [H, n, D] -> rows [n*D, H]
        yield name, value.transpose(1, 2, 0).reshape(-1, value.shape[0])
    elif rule.kind == "qkv_bias":
        yield name, value.reshape(-1)
    elif rule.kind == "o":  # [N, D, H] -> [H, N*D]
        yield name, value.transpose(2, 0, 1).reshape(value.shape[2], -1)
    elif rule.kind == "expert":
        for e in range(value.shape[0]):
            yield name.format(e=e), value[e].T
    else:
        raise ValueError(f"unknown rule kind {rule.kind!r}")


def hf_shape(cfg: LingConfig, rule: Rule, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the HF tensor behind a rule, given the ringjax per-layer shape (fused: the whole tensor)."""
    n, g, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    if rule.kind == "qkv":
        return ((n + 2 * g) * d, shape[0])
    if rule.kind == "qkv_bias":
        return ((n + 2 * g) * d,)
    if rule.kind == "o":
        return (shape[2], shape[0] * shape[1])
    if rule.kind in ("t2",):
        return shape[::-1]
    if rule.kind == "expert":
        return shape[:0:-1]
    return shape


def expected_tensors(cfg: LingConfig, shapes: dict[tuple[str, ...], tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name a checkpoint of this config holds, with its shape."""
    out = {}
    for path, place in placements(cfg).items():
        shape = shapes[path]
        per_layer = shape if place.layers is None else shape[1:]
        prefixes = [""] if place.layers is None else [f"model.layers.{i}." for i in place.layers]
        for prefix in prefixes:
            names = ([prefix + place.rule.name.format(e=e) for e in range(per_layer[0])]
                     if place.rule.kind == "expert" else [prefix + place.rule.name])
            for name in names:
                out[name] = hf_shape(cfg, place.rule, per_layer)
    return out
