"""Raw biomedical datasets -> the TSV files BiomedGPT's tasks read (`biomedgpt-prepare`).

One converter module per dataset lives in `biomedgpt.preprocess.converters`; `biomedgpt.preprocess.folder`
handles generic image folders and CSV lists. This module holds what they share:

* `Item`: where one raw record came from (file, line or item number), to build `DataError`s naming it;
* `Conversion`: writes one TSV per split through `TSVWriter` (atomic, tab/newline-safe), counts rows written,
  skipped (bad records, with `skip_invalid`) and filtered (dropped by the dataset's rules, e.g. non-English
  SLAKE questions), and reports progress;
* the row layouts of the tasks (`VQA_COLUMNS`, `CAPTION_COLUMNS`, ...), matching the reference's files and the
  `--selected-cols` of its scripts;
* readers for JSON, JSON lines, pickles (plain data only) and delimited text.
"""
import csv
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ..data.answers import _DataOnlyUnpickler
from ..data.errors import DataError
from .images import ImageOptions, encode_image_file
from .tsv_writer import TSVWriter, write_json_atomic

# Row layouts (no header line). The task's --selected-cols for each is given in the README.
VQA_COLUMNS = ("question_id", "image_id", "question", "answers", "objects", "image")  # 0,5,2,3,4
CAPTION_COLUMNS = ("uniq_id", "image_id", "caption", "objects", "image")  # 0,4,2 (evaluation: 1,4,2)
CLASSIFY_COLUMNS = ("image", "label_index", "label_name")  # 0,2
SUMMARY_COLUMNS = ("source", "target")  # 0,1
NLI_COLUMNS = ("sentence1", "sentence2", "label", "genre_sentence1")  # 0,1,2
IMAGE_COLUMNS = ("id", "image")  # pretraining images, before biomedgpt-image-codes appends VQ-GAN codes

MAX_REPORTED_ERRORS = 20


@dataclass
class Options:
    """Settings shared by every converter.

    Args:
        skip_invalid: leave out (and count) records that raise DataError instead of stopping.
        strict_text: refuse text with tabs/newlines instead of replacing them by spaces.
        image: image handling (`ImageOptions`).
        progress: called with progress / summary lines (None: silent).
        progress_every: rows between progress lines.
    """

    skip_invalid: bool = False
    strict_text: bool = False
    image: ImageOptions = field(default_factory=ImageOptions)
    progress: Optional[Callable[[str], None]] = None
    progress_every: int = 1000


class Item:
    """One raw record: its source file, 1-based line (line-oriented files) and a label such as `item 3 (qid 7)`."""

    __slots__ = ("source", "line", "label")

    def __init__(self, source: str, line: Optional[int] = None, label: str = ""):
        self.source, self.line, self.label = os.fspath(source), line, label

    def __repr__(self) -> str:
        return f"Item({self.source!r}, line={self.line}, label={self.label!r})"

    def error(self, problem: str, column: Optional[str] = None) -> DataError:
        return DataError(self.source, self.line, f"{self.label}: {problem}" if self.label else problem, column)

    def field(self, record: Any, key: str, column: Optional[str] = None, allow_empty: bool = False) -> str:
        """`record[key]` as stripped text; DataError when the record is not a mapping, the key is missing/null or
        (unless `allow_empty`) the text is empty."""
        if not isinstance(record, dict):
            raise self.error(f"expected an object with field {key!r}, got {type(record).__name__}")
        if key not in record or record[key] is None:
            raise self.error(f"missing field {key!r}", column or key)
        value = str(record[key]).strip()
        if not value and not allow_empty:
            raise self.error(f"empty field {key!r}", column or key)
        return value

    def image(self, path: str, options: Optional[ImageOptions] = None) -> str:
        """Base64 of the image file at `path`; a bad or missing file becomes a DataError naming this item."""
        try:
            return encode_image_file(path, options)
        except DataError as exc:
            raise self.error(f"image {exc.path}: {exc.problem}", "image") from None


@dataclass
class SplitReport:
    name: str
    path: str
    written: int = 0
    skipped: int = 0
    filtered: int = 0
    cleaned: int = 0
    errors: List[str] = field(default_factory=list)

    def summary(self, dataset: str) -> str:
        parts = [f"{self.written} rows written", f"{self.skipped} skipped"]
        if self.filtered:
            parts.append(f"{self.filtered} filtered")
        if self.cleaned:
            parts.append(f"{self.cleaned} fields with tabs/newlines replaced")
        return f"{dataset} {self.name}: {', '.join(parts)} -> {self.path}"


@dataclass
class Report:
    """What a conversion produced: one `SplitReport` per TSV, plus extra files (answer sets)."""

    dataset: str
    splits: List[SplitReport] = field(default_factory=list)
    files: List[str] = field(default_factory=list)

    def split(self, name: str) -> SplitReport:
        return next(s for s in self.splits if s.name == name)

    @property
    def written(self) -> int:
        return sum(s.written for s in self.splits)

    @property
    def skipped(self) -> int:
        return sum(s.skipped for s in self.splits)


class SplitSink:
    """Adds rows to one split's TSV: `add(item, build)` calls `build()` for the row's fields; a DataError (from
    `build` or from the writer in strict mode) stops the conversion, or is counted with `skip_invalid`."""

    def __init__(self, writer: TSVWriter, report: SplitReport, options: Options, dataset: str):
        self.writer, self.report, self.options, self.dataset = writer, report, options, dataset

    def add(self, item: Item, build: Callable[[], Sequence[Any]]) -> Optional[Sequence[Any]]:
        try:
            row = build()
            self.writer.write(row, item=item)
        except DataError as exc:
            self.fail(exc)
            return None
        self.report.written += 1
        every = self.options.progress_every
        if self.options.progress and every and self.report.written % every == 0:
            self.options.progress(f"{self.dataset} {self.report.name}: {self.report.written} rows")
        return row

    def fail(self, error: DataError) -> None:
        """A bad record: raise `error`, or with `skip_invalid` count and log it."""
        if not self.options.skip_invalid:
            raise error
        self.report.skipped += 1
        if len(self.report.errors) < MAX_REPORTED_ERRORS:
            self.report.errors.append(str(error))
        if self.options.progress:
            self.options.progress(f"skipped: {error}")

    def filter(self, count: int = 1) -> None:
        """Count records dropped on purpose by the dataset's rules (not errors)."""
        self.report.filtered += count


class Conversion:
    """Output side of one converter run: split TSVs and extra files under `out_dir`, and the `Report`.

    Use as a context manager. Every file is written to `<name>.tmp` and all of them are renamed together at
    the end of the `with` block, so an error in a later split leaves no new file at all (nor a mix of new and
    old splits); an earlier run's complete files stay as they were.
    """

    def __init__(self, dataset: str, out_dir: str, options: Optional[Options] = None):
        self.dataset = dataset
        self.out_dir = os.fspath(out_dir)
        self.options = options or Options()
        self.report = Report(dataset)
        self._pending: List[Tuple[str, str]] = []  # (temporary file, final file)

    def __enter__(self) -> "Conversion":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            for tmp, final in self._pending:
                os.replace(tmp, final)
        else:
            for tmp, _ in self._pending:
                if os.path.exists(tmp):
                    os.remove(tmp)
        self._pending = []

    def path(self, filename: str) -> str:
        return os.path.join(self.out_dir, filename)

    @contextmanager
    def split(self, name: str, filename: str, columns: Sequence[str]) -> Iterator[SplitSink]:
        report = SplitReport(name, self.path(filename))
        with TSVWriter(report.path, columns, strict=self.options.strict_text, defer_commit=True) as writer:
            yield SplitSink(writer, report, self.options, self.dataset)
        self._pending.append((writer.tmp_path, writer.path))
        report.cleaned = writer.cleaned
        self.report.splits.append(report)
        if self.options.progress:
            self.options.progress(f"{self.dataset} {name}: done, {report.written} rows")

    def write_json(self, filename: str, obj: Any) -> str:
        path = self.path(filename)
        os.makedirs(self.out_dir, exist_ok=True)
        self._pending.append((write_json_atomic(path, obj, commit=False), path))
        self.report.files.append(path)
        return path


class AnswerSet:
    """`{answer: label}` in order of first appearance (the reference's `ans2label` construction)."""

    def __init__(self):
        self.labels: Dict[str, int] = {}

    def add(self, answer: str) -> None:
        if answer not in self.labels:
            self.labels[answer] = len(self.labels)

    def __len__(self) -> int:
        return len(self.labels)


# ---------------------------------------------------------------------------------------------- row layouts
CONFIDENCE_PREFIX = "1|!+"


def vqa_row(item: Item, question_id: str, image_id: str, question: str, answer: str, objects: str,
            image_b64: str) -> List[str]:
    """`question_id, image_id, question, 1|!+answer, objects, base64` (confidence 1, as the reference)."""
    for marker in ("&&", "|!+"):
        if marker in answer:
            raise item.error(f"answer {answer!r} contains {marker!r}, which the answer column uses as a separator",
                             "answer")
    return [question_id, image_id, question, CONFIDENCE_PREFIX + answer, objects, image_b64]


def add_vqa(sink: SplitSink, item: Item, build: Callable[[], List[str]], answers: Optional[AnswerSet]) -> None:
    """`sink.add(item, build)` for a `vqa_row`; the answer of a written row joins `answers` (when given)."""
    row = sink.add(item, build)
    if row is not None and answers is not None:
        answers.add(row[3][len(CONFIDENCE_PREFIX):])


def caption_row(uniq_id: str, image_id: str, caption: str, image_b64: str) -> List[str]:
    """`uniq_id, image_id, caption, objects (empty), base64`."""
    return [uniq_id, image_id, caption, "", image_b64]


class RunningId:
    """`<prefix><n>` with n = 1, 2, ... over every row of a conversion (ids stay unique across split files;
    the reference's caption scripts used `200_` (IU X-ray), `3_` (PEIR Gross) and `1500_` (ROCO))."""

    def __init__(self, prefix: str):
        self.prefix, self.count = prefix, 0

    def next(self) -> str:
        self.count += 1
        return f"{self.prefix}{self.count}"


def image_caption_row(item: Item, ids: RunningId, image_path: str, image_id: str, caption: str,
                      options: Optional[ImageOptions]) -> List[str]:
    """A caption row for the image file at `image_path` (the id is drawn only once the image is good)."""
    image = item.image(image_path, options)
    return caption_row(ids.next(), image_id, caption, image)


def biocaption_row(item: Item, fields: Sequence[str], image_dir: str, ids: RunningId,
                   options: Optional[ImageOptions]) -> List[str]:
    """Caption row of a bioCaption list line `file name<TAB>caption` (IU X-ray, PEIR Gross; further tabs
    belong to the caption); the image is `image_dir/file name`, its id the name without extension."""
    name = fields[0].strip() if fields else ""
    caption = " ".join(f.strip() for f in fields[1:]).strip()
    if not name or not caption:
        raise item.error("expected 'file name<TAB>caption'", "caption" if name else "image")
    return image_caption_row(item, ids, os.path.join(image_dir, name), stem(name), caption, options)


# ---------------------------------------------------------------------------------------------- readers
def require_file(path: str, what: str) -> str:
    """`path` if it is a file, else FileNotFoundError explaining what was expected there."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def read_json(path: str) -> Any:
    """Parsed JSON file; DataError with the line of a syntax error."""
    require_file(path, "JSON file")
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise DataError(path, exc.lineno, f"not valid JSON ({exc.msg}, column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise DataError(path, None, f"not valid UTF-8 ({exc.reason})") from None


def read_json_list(path: str, key: Optional[str] = None) -> List[Any]:
    """A JSON file holding a list (or `{key: list}`); DataError otherwise."""
    data = read_json(path)
    if key is not None:
        if not isinstance(data, dict) or key not in data:
            raise DataError(path, None, f"expected an object with a {key!r} list")
        data = data[key]
    if not isinstance(data, list):
        raise DataError(path, None, f"expected a list of records, got {type(data).__name__}")
    return data


def iter_json_lines(path: str) -> Iterator[Tuple[Item, Any]]:
    """`(item, record or DataError)` per non-empty line of a JSON-lines file: a bad line is an item-level
    problem (skippable), not a file-level one."""
    require_file(path, "JSON-lines file")
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            item = Item(path, number)
            try:
                yield item, json.loads(line)
            except json.JSONDecodeError as exc:
                yield item, item.error(f"not valid JSON ({exc.msg}, column {exc.colno})")


def read_pickle(path: str) -> Any:
    """A pickle of plain data (lists, dicts, strings, numbers); nothing in the file is executed."""
    require_file(path, "pickle file")
    with open(path, "rb") as handle:
        try:
            return _DataOnlyUnpickler(handle).load()
        except Exception as exc:
            raise DataError(path, None, f"not a readable pickle of plain data ({type(exc).__name__}: {exc})") from None


def iter_delimited(path: str, delimiter: str = "\t", header: bool = False,
                   quoted: Optional[bool] = None) -> Iterator[Tuple[Item, Any]]:
    """`(item, fields)` per non-empty row of a delimited text file; with `header`, fields is a dict keyed by the
    (stripped) header names. `quoted` (default: for non-tab delimiters) applies CSV quoting, so quoted fields
    may hold delimiters and newlines; unquoted files are split on the delimiter only (bioCaption/ROCO lists,
    whose captions may start with a quote)."""
    require_file(path, "text file")
    quoted = delimiter != "\t" if quoted is None else quoted
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE)
        names = None
        try:
            for fields in reader:
                line = reader.line_num
                if not any(f.strip() for f in fields):
                    continue
                if header and names is None:
                    names = [n.strip() for n in fields]
                    continue
                if names is not None:
                    yield Item(path, line), dict(zip(names, fields + [None] * (len(names) - len(fields))))
                else:
                    yield Item(path, line), fields
        except csv.Error as exc:
            raise DataError(path, reader.line_num, f"not valid delimited text ({exc})") from None
        except UnicodeDecodeError as exc:
            raise DataError(path, reader.line_num + 1, f"not valid UTF-8 ({exc.reason})") from None


def sniff_delimiter(path: str) -> str:
    """Tab for .tsv/.txt files, comma otherwise."""
    return "\t" if os.path.splitext(path)[1].lower() in (".tsv", ".txt", ".tab") else ","


def find_image(folder: str, name: str, extensions=(".jpg", ".jpeg", ".png")) -> str:
    """`folder/name + ext` for the first extension that exists (the first candidate when none does, so the error
    names the expected file)."""
    candidates = [os.path.join(folder, name + ext) for ext in extensions]
    return next((c for c in candidates if os.path.isfile(c)), candidates[0])


def stem(name: str) -> str:
    """File name without folder and extension."""
    return os.path.splitext(os.path.basename(name))[0]


def print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)

