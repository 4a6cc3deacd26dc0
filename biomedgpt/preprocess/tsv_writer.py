"""Safe TSV writing: no field can break the row structure, and no crash leaves a file that looks complete.

* **Text fields.** A tab, newline or carriage return inside a field would split the row (or the line) and
  shift every following column. By default each run of them is replaced by one space and the cleaned fields
  are counted (`TSVWriter.cleaned`); with `strict=True` the row is refused with a `DataError` naming the
  source item (or the output row) and the field.
* **Atomic files.** Rows go to `<file>.tmp`; only a successful `close()` (the end of the `with` block)
  flushes, fsyncs and renames it to `<file>`. An exception inside the block deletes the temporary file, so
  the final name only ever holds a complete file (an earlier complete version stays untouched). A process
  killed outright leaves at most `<file>.tmp`, which the next run overwrites. With `defer_commit=True` the
  rename waits for `commit()`, so a converter can publish all its splits together (`Conversion`).
"""
import json
import os
import re
from typing import Any, Optional, Sequence

from ..data.errors import DataError

BREAKING = re.compile(r"[\t\r\n]+")
TMP_SUFFIX = ".tmp"


def _finish(handle) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()


def _discard(handle, tmp: str) -> None:
    try:
        handle.close()
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(path: str, obj: Any, commit: bool = True) -> str:
    """`json.dump(obj)` to `<path>.tmp` (UTF-8, non-ASCII kept, indented), then renamed to `path` unless
    `commit=False` (the caller renames it later); returns the temporary path."""
    path = os.fspath(path)
    tmp = path + TMP_SUFFIX
    handle = open(tmp, "w", encoding="utf-8")
    try:
        json.dump(obj, handle, ensure_ascii=False, indent=1)
        handle.write("\n")
    except BaseException:
        _discard(handle, tmp)
        raise
    _finish(handle)
    if commit:
        os.replace(tmp, path)
    return tmp


class TSVWriter:
    """Write rows of `len(columns)` text fields to `path`, atomically.

    Args:
        path: the final TSV file.
        columns: column names (for error messages and the column-count check; no header is written).
        strict: refuse fields containing tab/newline/carriage return instead of replacing them by a space.
        defer_commit: the end of the with-block only finishes `<path>.tmp`; `commit()` renames it later (to
            publish several files together).

    Use as a context manager; `write(fields, item=...)` where `item` (optional) has
    `error(problem, column) -> DataError` describing where the row came from (see `biomedgpt.preprocess.Item`).
    """

    def __init__(self, path: str, columns: Sequence[str], strict: bool = False, defer_commit: bool = False):
        self.path = os.fspath(path)
        self.defer_commit = defer_commit
        self.tmp_path = self.path + TMP_SUFFIX
        self.columns = list(columns)
        self.strict = strict
        self.rows = 0
        self.cleaned = 0  # fields in which tabs/newlines were replaced
        self._handle = None
        self._done = False

    def __enter__(self) -> "TSVWriter":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self.defer_commit:
            self.finish()
        else:
            self.close()

    def open(self) -> None:
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        self._handle = open(self.tmp_path, "w", encoding="utf-8", newline="\n")

    def _error(self, item, problem: str, column: Optional[str]) -> DataError:
        if item is not None:
            return item.error(problem, column)
        return DataError(self.path, self.rows + 1, problem, column)

    def clean(self, value: Any, column: str, item=None) -> str:
        """One field as safe text (see the module notes); DataError for None or, when strict, a breaking char."""
        if value is None:
            raise self._error(item, "missing value", column)
        text = value if isinstance(value, str) else str(value)
        if BREAKING.search(text):
            if self.strict:
                found = sorted({repr(ch)[1:-1] for ch in text if ch in "\t\r\n"})
                raise self._error(item, f"field {column!r} contains {', '.join(found)} (not allowed in a TSV "
                                        f"field; run without strict mode to replace them by spaces)", column)
            text = BREAKING.sub(" ", text)
            self.cleaned += 1
        return text

    def write(self, fields: Sequence[Any], item=None) -> None:
        if self._handle is None:
            raise RuntimeError(f"{self.path}: write() outside of the writer's with-block")
        if len(fields) != len(self.columns):
            raise ValueError(f"{self.path}: a row needs {len(self.columns)} fields ({', '.join(self.columns)}), "
                             f"got {len(fields)}")
        texts = [self.clean(value, name, item) for value, name in zip(fields, self.columns)]
        if not any(t.strip() for t in texts):
            raise self._error(item, "every field of the row is empty", None)
        self._handle.write("\t".join(texts) + "\n")
        self.rows += 1

    def finish(self) -> None:
        """Flush and fsync `<path>.tmp` without renaming it (see `commit`)."""
        if self._handle is None or self._done:
            return
        self._done = True
        _finish(self._handle)

    def commit(self) -> None:
        """The finished temporary file becomes `path`."""
        self.finish()
        if os.path.exists(self.tmp_path):
            os.replace(self.tmp_path, self.path)

    def close(self) -> None:
        """Finish and commit (the end of a successful with-block)."""
        self.commit()

    def abort(self) -> None:
        """Drop everything written; `path` is not created (an existing one is left as it was)."""
        if self._handle is not None and not self._done:
            self._done = True
            _discard(self._handle, self.tmp_path)
        elif os.path.exists(self.tmp_path):
            os.remove(self.tmp_path)
