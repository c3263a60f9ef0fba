"""The trainer's JSON records, never half-written: atomic JSON files and append-only JSONL logs.

A JSON file is written to a temporary name in the same directory, flushed to disk and renamed
over the target, so a reader (or a resumed run) sees the old file or the new one, never a part.
A JSONL log gets one complete line per ``write`` call; a run killed in the middle of one leaves at
most a torn last line, which :func:`trim_jsonl` drops on resume together with the records of the
steps that the resumed run redoes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["write_json_atomic", "append_jsonl", "read_jsonl", "trim_jsonl"]


def _replace_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | Path, payload: Any, **dump_kwargs: Any) -> None:
    """Write ``payload`` as JSON to ``path`` by temporary file and rename (``dump_kwargs``: of ``json.dumps``)."""
    _replace_atomic(Path(path), json.dumps(payload, **dump_kwargs))


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one line (one ``write`` of the whole line, then a flush)."""
    line = json.dumps(record) + "\n"
    with open(path, "a") as f:
        f.write(line)
        f.flush()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL log, leaving out a torn last line (one without its newline)."""
    path = Path(path)
    if not path.is_file():
        return []
    *complete, _torn = path.read_text().split("\n")   # what follows the last newline: "" or a torn line
    records = []
    for i, line in enumerate(complete):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {i + 1} is not JSON ({e})") from None
    return records


def trim_jsonl(path: str | Path, step: int) -> None:
    """Keep only the complete records with ``record["step"] <= step`` (atomically); no file: nothing to do."""
    path = Path(path)
    if path.is_file():
        kept = [r for r in read_jsonl(path) if isinstance(r, dict) and r.get("step", 0) <= step]
        _replace_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
