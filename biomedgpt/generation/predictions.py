"""The reference's `{gen_subset}_predict.json`: one JSON record per evaluated row, written by `fairseq-generate`.

Records are keyed by the dataset row so re-decoded rows replace (never duplicate) earlier ones; the file is
rewritten atomically after every batch, so an interrupted run leaves a valid JSON list of the rows done so far.
"""
import json
import os
from typing import Dict, Iterable, Tuple


class PredictionsFile:
    """Collects `(row index, record)` pairs and keeps `path` a JSON list of the records in row order."""

    def __init__(self, path: str):
        self.path = path
        self.records: Dict[int, dict] = {}
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)

    def add(self, rows: Iterable[Tuple[int, dict]]) -> None:
        for index, record in rows:
            self.records[int(index)] = record
        self.write()

    def write(self) -> None:
        temporary = self.path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump([self.records[i] for i in sorted(self.records)], handle, ensure_ascii=False, indent=1)
        os.replace(temporary, self.path)
