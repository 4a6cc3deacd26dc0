"""The one error type for bad input data: it names the file, the line, the column and the problem."""
from typing import Optional


class DataError(ValueError):
    """A row of a data file cannot be used. `str()` reads like `train.tsv, line 12, column 'image': ...`."""

    def __init__(self, path: str, line: Optional[int], problem: str, column: Optional[str] = None):
        self.path, self.line, self.column, self.problem = path, line, column, problem
        where = [str(path)]
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {problem}")
