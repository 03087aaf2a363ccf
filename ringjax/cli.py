"""`ringjax` command line: thin wrappers over library functions.

    ringjax train [CONFIG] [key=value ...]   SFT -> entropy-band pick -> RL stages -> eval -> HF export
    ringjax sft CONFIG | eval CONFIG | plan CONFIG | config CONFIG | export SRC OUT | import HF OUT | info MODEL

Bad input (a missing file, an unknown key or value, an output folder holding another run) exits with status 2 and
one line naming the culprit, before any compute. Ctrl-C during training saves a checkpoint and exits with 130;
the same command resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ringjax import storage
from ringjax.config_io import shown_path, user_path

_CONFIG_HELP = "pipeline YAML (default: the embedded demo, ringjax/pipeline/demo.yaml)"
_OVERRIDES_HELP = "dotted overrides, e.g. out=runs/x seed=1 stages.0.steps=5 rl.loss.alpha=0.4"


def _input(typed: str, what: str, urls: bool = False) -> str:
    """An input path given on the command line, absolute (or, with `urls`, a gs:// folder); FileNotFoundError
    naming it as typed and as resolved."""
    path = user_path(typed, what, urls)
    if not storage.path(path).exists():
        raise FileNotFoundError(f"{what} {shown_path(typed, path)} does not exist")
    return path


def _pipeline(args, inputs: bool = True):
    from ringjax.pipeline.config import check_inputs, load_pipeline

    cfg = load_pipeline(args.config, args.overrides)
    if inputs:
        check_inputs(cfg)
    if cfg.mesh.cpu_devices and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        flag = f"--xla_force_host_platform_device_count={cfg.mesh.cpu_devices}"  # read when JAX starts its backend
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    return cfg


def _train(args, only: str | None = None) -> int:
    from ringjax.pipeline import run_pipeline

    cfg = _pipeline(args, inputs=False)  # run_pipeline checks the inputs first
    summary = run_pipeline(cfg, overwrite=args.overwrite, progress=not args.no_progress, only=only)
    print(json.dumps(summary, indent=2))
    return 130 if "stopped" in summary else 0


def _eval(args) -> int:
    from ringjax.hf import from_pretrained
    from ringjax.pipeline import stages
    from ringjax.pipeline.run import accuracy_table

    cfg = _pipeline(args)
    if not storage.is_file(storage.join(cfg.out, "tokenizer", "tokenizer.json")) and cfg.tokenizer.kind == "bpe":
        raise FileNotFoundError(f"{cfg.out} has no trained tokenizer: run `ringjax train` (or sft) with this config "
                                "first, or point out=... at its run folder")
    if args.hf or args.checkpoint:
        target = _input(args.hf, "--hf") if args.hf else _input(args.checkpoint, "--checkpoint")
    else:
        target = storage.join(cfg.out, "hf")
        if not storage.path(target).exists():
            raise FileNotFoundError(f"{target} does not exist (the run's export); pass --hf or --checkpoint")
    ctx = stages.setup(cfg, print, rl=False)  # evaluation generates in-process: no Ray
    if args.checkpoint:
        model = stages.restore(ctx, target)
    else:
        with storage.local_copy(target) as local:  # a run folder in Cloud Storage: its export, downloaded
            model = from_pretrained(local, ctx.mesh)
    result = stages.evaluate_model(ctx, model, 0, log=False)
    print(accuracy_table({target: result["accuracy"]}))
    print(json.dumps(result, indent=2))
    return 0


def _plan(args) -> int:
    from ringjax.plan import plan_pipeline

    cfg = _pipeline(args, inputs=False)  # shapes only: needs neither data nor weights when a preset is given
    plans = plan_pipeline(cfg, devices=args.devices, device_memory_gb=args.device_memory_gb)
    if args.json:
        print(json.dumps({k: p.as_dict() for k, p in plans.items()}, indent=2))
    else:
        for name, p in plans.items():
            print(f"== {name} ==\n{p.table()}\n")
    return 0 if all(p.fits is not False for p in plans.values()) else 1


def _export(args) -> int:
    import jax

    from ringjax.hf import from_pretrained, save_pretrained
    from ringjax.model import create_model, preset
    from ringjax.trainer.model_checkpoint import restore_model

    tokenizer, out = None, user_path(args.out, "export destination")
    if args.src.startswith("preset:"):
        model = create_model(preset(args.src.split(":", 1)[1]), seed=args.seed)
    else:
        src = _input(args.src, "export source", urls=True)  # a checkpoint may be in a Cloud Storage run folder
        if storage.is_file(storage.join(src, "config.json")):
            with storage.local_copy(src) as local:
                model, tokenizer = from_pretrained(local), src
        else:
            model = restore_model(src)  # an Orbax step folder, checkpoints folder or run folder
            tokenizer = _run_tokenizer(src)
    path = save_pretrained(model, out, dtype=args.dtype, max_shard_size=args.max_shard_size, mtp=args.mtp,
                           overwrite=args.overwrite)
    copied = []
    if tokenizer is not None:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if storage.is_file(storage.join(tokenizer, name)):
                storage.write_bytes(os.path.join(path, name), storage.path(storage.join(tokenizer, name)).read_bytes())
                copied.append(name)
    print(json.dumps({"export": path, "architecture": model.config.architecture, "tokenizer_files": copied,
                      "devices": jax.device_count()}))
    return 0


def _run_tokenizer(src: str) -> str | None:
    """The `tokenizer/` folder of the pipeline run that holds checkpoint `src`, if any."""
    here = src
    for _ in range(4):
        if storage.is_file(storage.join(here, "tokenizer", "tokenizer.json")):
            return storage.join(here, "tokenizer")
        here = os.path.dirname(here)
        if storage.is_url(src) and here.count("/") < 3:  # not above the bucket (gs://bucket)
            break
    return None


def _import(args) -> int:
    from ringjax.hf import from_pretrained
    from ringjax.trainer.model_checkpoint import save_model

    model = from_pretrained(_input(args.src, "import source"), param_dtype=args.dtype)
    step_dir = save_model(model, user_path(args.out, "import destination"))
    print(json.dumps({"checkpoint": step_dir, "architecture": model.config.architecture,
                      "use": f"model.checkpoint={step_dir}"}))
    return 0


def _info(args) -> int:
    import dataclasses

    from ringjax.hf import read_config
    from ringjax.model import preset
    from ringjax.model.params import count_params

    if args.model.startswith("preset:"):
        cfg = preset(args.model.split(":", 1)[1])
    else:
        cfg = read_config(_input(args.model, "model"))
    counts = count_params(cfg)
    out = {"config": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("compute", "hf_extra")},
           "params_total": counts.total, "params_active": counts.active}
    print(json.dumps(out, indent=2, default=str))
    return 0


def _pick_checkpoint(args) -> int:
    from ringjax.trainer.sft import pick_checkpoint

    run_dir = _input(args.run_dir, "run folder")
    step, entropy = pick_checkpoint(run_dir, tuple(args.band))
    print(json.dumps({"step": step, "entropy": entropy, "path": os.path.join(run_dir, "checkpoints", str(step))}))
    return 0


def _config(args) -> int:
    from ringjax.config_doc import commented_yaml

    cfg = _pipeline(args, inputs=False)  # printing reads neither data nor weights
    source = args.config or "the embedded demo (ringjax/pipeline/demo.yaml)"
    header = [f"ringjax config: {source}" + (f" with {' '.join(args.overrides)}" if args.overrides else ""),
              "resolved as `ringjax train` runs it (rl_base merged, overrides applied, defaults filled in);",
              "each comment is the field's description from its config dataclass"]
    print(commented_yaml(cfg, header), end="")
    return 0


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default=None, help=_CONFIG_HELP)
    p.add_argument("overrides", nargs="*", metavar="key=value", help=_OVERRIDES_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ringjax", description="RL for Ling / Ring MoE reasoning models in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    for name, text, func in (
            ("train", "the whole pipeline: SFT, entropy-band checkpoint pick, RL stages, eval, HF export",
             lambda a: _train(a)),
            ("sft", "the SFT stage and its entropy-band checkpoint pick only", lambda a: _train(a, only="sft"))):
        p = sub.add_parser(name, help=text, description=text + ". Reruns resume; Ctrl-C checkpoints and exits.")
        _config_args(p)
        p.add_argument("--overwrite", action="store_true", help="replace the output folder of an earlier run")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.set_defaults(func=func)

    p = sub.add_parser("eval", help="held-out accuracy of a run's exported model (or of --hf / --checkpoint)")
    _config_args(p)
    p.add_argument("--hf", help="evaluate this HF folder")
    p.add_argument("--checkpoint", help="evaluate this Orbax checkpoint (step folder or run folder)")
    p.set_defaults(func=_eval)

    p = sub.add_parser("plan", help="per-device parameter, optimiser and activation memory on the configured mesh; "
                                    "exit 1 if a phase does not fit")
    _config_args(p)
    p.add_argument("--devices", type=int, help="device count for mesh axes of -1 (default: the local devices)")
    p.add_argument("--device-memory-gb", type=float, help="per-device memory (default: mesh.device_memory_gb)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_plan)

    p = sub.add_parser("export", help="write a Hugging Face folder (sharded safetensors + config.json [+ tokenizer])")
    p.add_argument("src", help="an Orbax checkpoint (step folder, checkpoints folder or run folder: newest step), "
                               "an HF folder to re-export, or preset:NAME (random init)")
    p.add_argument("out", help="output folder; written atomically")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument("--max-shard-size", default="2GB")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mtp", choices=["drop", "keep"], default="drop",
                   help="drop (default): no MTP layers, num_nextn_predict_layers 0, as SGLang and vLLM serve it; "
                        "keep: also write the MTP layers (for MTP speculative decoding)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=_export)

    p = sub.add_parser("import", help="an HF folder -> an Orbax model checkpoint (start runs from model.checkpoint)")
    p.add_argument("src", help="HF folder (config.json + safetensors)")
    p.add_argument("out", help="new Orbax checkpoint folder")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None, help="parameter dtype")
    p.set_defaults(func=_import)

    p = sub.add_parser("info", help="architecture and parameter counts of an HF folder or preset:NAME")
    p.add_argument("model")
    p.set_defaults(func=_info)

    p = sub.add_parser("pick-checkpoint", help="the latest SFT checkpoint whose eval token entropy lies in a band")
    p.add_argument("run_dir", help="an SFT run folder (holding checkpoints/ and logs/eval/)")
    p.add_argument("--band", nargs=2, type=float, metavar=("LO", "HI"), default=[0.3, 0.5],
                   help="entropy band, inclusive (default: Ring-lite's 0.3 0.5)")
    p.set_defaults(func=_pick_checkpoint)

    p = sub.add_parser("config", help="the resolved config (after overrides) as YAML, each field described",
                       description="Print the config as `ringjax train` would run it (rl_base merged, overrides "
                                   "applied, defaults filled in) as YAML, each field's description as a comment.")
    _config_args(p)
    p.set_defaults(func=_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides after an option (`train --no-progress seed=1`) are left over by argparse
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if getattr(args, "config", None) and "=" in args.config:  # `ringjax train key=value`: the demo, overridden
        args.overrides, args.config = [args.config, *args.overrides], None
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"ringjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ringjax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
