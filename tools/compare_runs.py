"""Compare the round logs of two ``hgo-experiment run`` outputs, record by record.

Usage: ``python tools/compare_runs.py OLD_DIR NEW_DIR`` — every ``logs/*.jsonl`` (plain or
``.jsonl.gz``) of OLD_DIR is read against the file of the same run in NEW_DIR; prints one
line per run (identical, or the first record and fields that differ) and exits 1 when any
run differs. Used to check that a refactoring leaves the simulator's numbers unchanged
(docs/experiments.md "Re-running the published numbers").
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any


def _read(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
        return [json.loads(line) for line in fh if line.strip()]


def _runs(folder: Path) -> dict[str, Path]:
    out = {}
    for p in sorted((folder / "logs").glob("*.jsonl*")):
        out[p.name.removesuffix(".gz").removesuffix(".jsonl")] = p
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    old, new = (_runs(Path(a)) for a in argv)
    differ = 0
    for name, path in old.items():
        if name not in new:
            print(f"{name}: missing in {argv[1]}")
            differ += 1
            continue
        a, b = _read(path), _read(new[name])
        if a == b:
            print(f"{name}: identical ({len(a)} records)")
            continue
        differ += 1
        for k, (x, y) in enumerate(zip(a, b, strict=False)):
            if x != y:
                keys = sorted(key for key in set(x) | set(y) if x.get(key) != y.get(key))
                shown = [(key, x.get(key), y.get(key)) for key in keys][:3]
                print(f"{name}: record {k} differs in {keys}: {shown}")
                break
        else:
            print(f"{name}: {len(a)} vs {len(b)} records")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
