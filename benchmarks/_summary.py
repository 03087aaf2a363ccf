"""The ending every benchmark script shares: print the summary as one JSON line, write it to --out if given."""

from __future__ import annotations

import gzip
import json


def emit_summary(summary: dict, out: str | None, shown: dict | None = None) -> dict:
    """Prints {"summary": shown or summary} and writes `summary` (indented) to `out`, gzip-compressed when `out` ends
    with .gz (the per-step rows of a lab's full run); returns `summary`."""
    print(json.dumps({"summary": summary if shown is None else shown}), flush=True)
    if out:
        with (gzip.open(out, "wt") if out.endswith(".gz") else open(out, "w")) as f:
            json.dump(summary, f, indent=2)
    return summary
