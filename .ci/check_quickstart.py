"""The README's first command, read from the README, and the checks of its run (used by .ci/quickstart.sh).

    python3 .ci/check_quickstart.py --command README.md
    python3 .ci/check_quickstart.py --check console.log --rc 0 --out runs/demo
"""

import argparse
import json
import os
import re
import sys

# A console line a dependency printed: a Python warning, a log record (Python logging, absl / glog, Ray's C++ core),
# a traceback.
NOISE = re.compile(r"Warning\b|\b(WARNING|ERROR|INFO|DEBUG)\b|\bError\b|Traceback|(^|\s)[IWEF]\d{4} \d\d:\d\d"
                   r"|\[\d{4}-\d\d-\d\d [\d:,.]+ [IWEF] \d+ \d+\]")


def first_command(readme: str) -> str:
    """The first command line of the README's quick start code block (comment lines skipped)."""
    text = open(readme).read()
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return next(line.strip() for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#"))


def check(log_path: str, rc: int, out: str) -> list[str]:
    log = open(log_path).read()
    problems = [] if rc == 0 else [f"exit status {rc}"]
    if "| after |" not in log:
        problems.append("no accuracy table on the console")
    results_path = os.path.join(out, "results.json")
    if not os.path.isfile(results_path):
        return [*problems, f"{results_path} missing"]
    accuracy = json.load(open(results_path))["accuracy"]
    means = {point: sum(acc.values()) / len(acc) for point, acc in accuracy.items()}
    last = list(means)[-1]
    if not ("sft" in means and last != "sft" and means[last] > means["sft"]):
        problems.append(f"the final stage is not above SFT: mean accuracy {means}")
    export = os.path.join(out, "hf")
    if not (os.path.isfile(os.path.join(export, "config.json"))
            and any(f.endswith(".safetensors") for f in os.listdir(export))
            and os.path.isfile(os.path.join(export, "tokenizer.json"))):
        problems.append(f"{export} holds no complete HF export")
    run = log.rsplit("Successfully installed", 1)[-1]  # the console of `ringjax train`, after pip's own lines
    lines = run.replace("\r", "\n").splitlines()[1:]  # progress bars redraw with carriage returns
    noise = [line for line in lines if NOISE.search(line) and not line.startswith("ringjax")]
    if noise:
        problems.append("dependency messages on the console:\n  " + "\n  ".join(noise[:20]))
    print(f"quickstart: accuracy (mean) {json.dumps({k: round(v, 3) for k, v in means.items()})}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--command", metavar="README")
    parser.add_argument("--check", metavar="LOG")
    parser.add_argument("--rc", type=int, default=0)
    parser.add_argument("--out", default="runs/demo")
    args = parser.parse_args()
    if args.command:
        print(first_command(args.command))
        return 0
    problems = check(args.check, args.rc, args.out)
    if problems:
        print(open(args.check).read()[-6000:], file=sys.stderr)
        print("quickstart: FAILED\n- " + "\n- ".join(problems), file=sys.stderr)
        return 1
    print("quickstart: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
