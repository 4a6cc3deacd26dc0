"""Random-access TSV reader: a byte-offset index over the file, rows read by index.

fairseq shuffles, shards across ranks and DataLoader workers and resumes by *index*, so every row must be
readable on its own. The index (one int64 offset per line) is built in one pass and, when possible, cached
beside the file as `<file>.index.npy` with the file's size and mtime, so a changed file is re-indexed.
Each process opens its own file handle (safe with `--num-workers > 0`). Never reads the whole file into memory.
"""
import os
from typing import List, Optional, Sequence

import numpy as np

from .errors import DataError

INDEX_SUFFIX = ".index.npy"


def _build_offsets(path: str) -> np.ndarray:
    offsets = []
    position = 0
    with open(path, "rb") as handle:
        for line in handle:
            if line.strip(b"\r\n"):
                offsets.append(position)
            position += len(line)
    return np.asarray(offsets, dtype=np.int64)


def load_offsets(path: str, cache: bool = True) -> np.ndarray:
    """Byte offsets of the non-empty lines of `path` (cached beside it when the folder is writable)."""
    path = os.fspath(path)
    stat = os.stat(path)
    stamp = np.asarray([stat.st_size, stat.st_mtime_ns], dtype=np.int64)
    cache_path = path + INDEX_SUFFIX
    if cache and os.path.exists(cache_path):
        try:
            stored = np.load(cache_path)
            if stored.size >= 2 and np.array_equal(stored[:2], stamp):
                return stored[2:]
        except (OSError, ValueError):
            pass  # unreadable cache: rebuild it
    offsets = _build_offsets(path)
    if cache:
        try:
            tmp = f"{cache_path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as handle:
                np.save(handle, np.concatenate([stamp, offsets]))
            os.replace(tmp, cache_path)
        except OSError:
            pass  # read-only folder: keep the index in memory only
    return offsets


class IndexedTSV:
    """Rows of one TSV file by index, with optional column selection (`--selected-cols`, may reorder).

    Args:
        path: the TSV file.
        selected_cols: column indices to return, in that order (None: all columns).
        column_names: names used in error messages for the selected columns.
        separator: field separator.
        cache_index: keep the byte-offset index in `<path>.index.npy`.
    """

    def __init__(self, path: str, selected_cols: Optional[Sequence[int]] = None,
                 column_names: Optional[Sequence[str]] = None, separator: str = "\t", cache_index: bool = True):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data file not found: {path}")
        self.path = os.fspath(path)
        self.selected_cols = list(selected_cols) if selected_cols is not None else None
        self.column_names = list(column_names) if column_names is not None else None
        self.separator = separator
        self.offsets = load_offsets(path, cache=cache_index)
        self._handle = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.offsets)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"], state["_pid"] = None, None  # file handles do not cross process boundaries
        return state

    def _file(self):
        if self._handle is None or self._pid != os.getpid():
            self._handle = open(self.path, "rb")
            self._pid = os.getpid()
        return self._handle

    def line_number(self, index: int) -> int:
        """1-based line number of row `index` (for error messages)."""
        handle = open(self.path, "rb")
        try:
            return handle.read(int(self.offsets[index])).count(b"\n") + 1
        finally:
            handle.close()

    def column_name(self, position: int) -> str:
        if self.column_names is not None and position < len(self.column_names):
            return self.column_names[position]
        return str(self.selected_cols[position] if self.selected_cols is not None else position)

    def error(self, index: int, problem: str, position: Optional[int] = None) -> DataError:
        """A DataError for row `index` (and selected column `position`), naming file, line and column."""
        column = self.column_name(position) if position is not None else None
        return DataError(self.path, self.line_number(index), problem, column)

    def __getitem__(self, index: int) -> List[str]:
        handle = self._file()
        handle.seek(int(self.offsets[index]))
        raw = handle.readline()
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.error(index, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        fields = line.rstrip("\r\n").split(self.separator)
        if self.selected_cols is None:
            return fields
        needed = max(self.selected_cols) + 1
        if len(fields) < needed:
            missing = next(pos for pos, col in enumerate(self.selected_cols) if col >= len(fields))
            raise self.error(index, f"missing: the row has {len(fields)} columns, but --selected-cols "
                                    f"{','.join(map(str, self.selected_cols))} needs at least {needed}", missing)
        return [fields[i] for i in self.selected_cols]


def parse_selected_cols(value: Optional[str]) -> Optional[List[int]]:
    """`"0,4,2"` -> `[0, 4, 2]`; None/empty -> None."""
    if value is None or str(value).strip() == "":
        return None
    try:
        return [int(part) for part in str(value).split(",")]
    except ValueError:
        raise ValueError(f"--selected-cols must be comma-separated column numbers, got {value!r}") from None
