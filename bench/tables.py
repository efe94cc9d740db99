"""The results in bench/results/, one Markdown table per kind of CPU, for bench/README.md.

    python bench/tables.py

Each row is one saved run (benchmark, quick or full, date) with its headline figures: the
`name=value` pairs of its last line. Runs under `--emulate-avx2` are their own kind
("AVX2, capped"), apart from real AVX2 machines.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def headline(figures: dict) -> str:
    """The scalar figures, as the last line prints them."""
    return " ".join(f"{k}={round(v, 4) if isinstance(v, float) else v}" for k, v in figures.items()
                    if isinstance(v, (int, float, str)))


def main() -> None:
    tables: dict[str, list[tuple]] = defaultdict(list)
    for file in sorted(RESULTS.glob("*.json")):
        run = json.loads(file.read_text())
        hw = run["hardware"]
        kind = hw["kind"] + (", capped (" + " ".join(hw["limits"]) + ")" if hw.get("limits") else "")
        tables[f"{kind} — {hw['model']}, {hw['cores']} cores"].append(
            (run["bench"], "quick" if run.get("quick") else "full", run["date"], headline(run["figures"])))
    for title, rows in tables.items():
        print(f"\n### {title}\n\n| benchmark | mode | date | last line |\n|---|---|---|---|")
        for bench, mode, date, line in rows:
            print(f"| `{bench}.py` | {mode} | {date} | `{line}` |")


if __name__ == "__main__":
    main()
