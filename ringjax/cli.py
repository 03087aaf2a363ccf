"""`ringjax` command line: thin wrappers over library functions."""

from __future__ import annotations

import argparse
import json
import sys


def _demo(args) -> None:
    import os

    if args.cpu_devices:  # before JAX starts: lets the sharded path run on a machine without accelerators
        flag = f"--xla_force_host_platform_device_count={args.cpu_devices}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    from ringjax.demo import run_demo

    print(json.dumps(run_demo(args.out, args.preset, seed=args.seed), indent=2))


def _export(args) -> None:
    import jax

    from ringjax.hf import from_pretrained, save_pretrained
    from ringjax.model import create_model, preset

    if args.src.startswith("preset:"):
        model = create_model(preset(args.src.split(":", 1)[1]), seed=args.seed)
    else:
        model = from_pretrained(args.src)
    path = save_pretrained(model, args.out, dtype=args.dtype, max_shard_size=args.max_shard_size,
                           overwrite=args.overwrite)
    print(json.dumps({"export": path, "architecture": model.config.architecture, "devices": jax.device_count()}))


def _info(args) -> None:
    import dataclasses

    from ringjax.hf import read_config
    from ringjax.model import preset
    from ringjax.model.params import count_params

    cfg = read_config(args.model) if not args.model.startswith("preset:") else preset(args.model.split(":", 1)[1])
    counts = count_params(cfg)
    out = {"config": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("compute", "hf_extra")},
           "params_total": counts.total, "params_active": counts.active}
    print(json.dumps(out, indent=2, default=str))


def _pick_checkpoint(args) -> None:
    import os

    from ringjax.trainer.sft import pick_checkpoint

    step, entropy = pick_checkpoint(args.run_dir, tuple(args.band))
    print(json.dumps({"step": step, "entropy": entropy, "path": os.path.join(args.run_dir, "checkpoints", str(step))}))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ringjax", description="RL for Ling / Ring MoE reasoning models in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="forward, sampling and HF export round trip of a tiny sharded model")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--preset", default="tiny-v2", help="model preset (default: tiny-v2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu-devices", type=int, default=8, help="simulated CPU devices when running on CPU (0: off)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("export", help="write a Hugging Face folder (sharded safetensors + config.json)")
    p.add_argument("src", help="HF folder to re-export, or preset:NAME for a randomly initialised model")
    p.add_argument("out", help="output folder; written atomically")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument("--max-shard-size", default="2GB")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=_export)

    p = sub.add_parser("info", help="architecture and parameter counts of an HF folder or preset:NAME")
    p.add_argument("model")
    p.set_defaults(func=_info)

    p = sub.add_parser("pick-checkpoint", help="the latest SFT checkpoint whose eval token entropy lies in a band")
    p.add_argument("run_dir", help="an SFT run folder (holding checkpoints/ and logs/eval/)")
    p.add_argument("--band", nargs=2, type=float, metavar=("LO", "HI"), default=[0.3, 0.5],
                   help="entropy band, inclusive (default: Ring-lite's 0.3 0.5)")
    p.set_defaults(func=_pick_checkpoint)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"ringjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
