"""Records appended as they are made, with the drop counts beside them: a run stopped at any moment
resumes from what is on disk, redoing nothing already kept."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path


class Output:
    """OUT.jsonl (kept records, appended and flushed one by one) and OUT.state.json (drops per rule, progress)."""

    def __init__(self, path: str | Path, resume: bool):
        from tunelab.errors import ConfigError

        self.path = Path(path)
        self.state_path = self.path.with_name(self.path.name.removesuffix(".jsonl") + ".state.json")
        if self.path.exists() and not resume:
            raise ConfigError(f"{self.path}: already exists; add --resume to continue it, or choose another output")
        self.records: list[dict] = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    self.records.append(json.loads(line))
                except ValueError:
                    break  # a line cut short by a crash: it is written again
        state = json.loads(self.state_path.read_text(encoding="utf-8")) if self.state_path.exists() else {}
        self.dropped: Counter = Counter(state.get("dropped", {}))
        self.round: int = state.get("round", 0)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rewrite()  # drops a cut-short last line
        self.file = open(self.path, "a", encoding="utf-8")

    def _rewrite(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records), encoding="utf-8")
        os.replace(tmp, self.path)

    def keep(self, record: dict) -> None:
        self.records.append(record)
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()

    def drop(self, rule: str) -> None:
        self.dropped[rule] += 1

    def checkpoint(self, round_: int) -> None:
        self.round = round_
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps({"round": round_, "kept": len(self.records), "dropped": dict(self.dropped)}))
        os.replace(tmp, self.state_path)

    def summary(self) -> dict:
        total = len(self.records) + sum(self.dropped.values())
        return {"output": str(self.path), "kept": len(self.records), "candidates": total,
                "dropped": dict(self.dropped.most_common()),
                "dropped_share": {k: round(v / max(total, 1), 4) for k, v in self.dropped.most_common()}}

    def close(self) -> None:
        self.file.close()
