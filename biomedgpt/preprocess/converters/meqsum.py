"""MeQSum -> `train.tsv`, `val.tsv`, `test.tsv` (gigaword layout `source, target`).

Reads the release spreadsheet `MeQSum_ACL2019_BenAbacha_Demner-Fushman.xlsx` (columns File, CHQ, Summary) or a
CSV/TSV export of it with a header row (`CHQ`/`source` and `Summary`/`target` columns, any case). The .xlsx is
read with the standard library (zip + XML; no openpyxl needed). Rows keep the file's order and are split into
the first 800 (train), the next 100 (val) and the rest (test), the sizes of BiomedGPT's shipped MeQSum TSVs.
Text is kept as written; tabs and line breaks inside a question become spaces (counted in the summary).
"""
import glob
import os
import re
import zipfile
from typing import Iterator, List, Optional, Tuple
from xml.etree import ElementTree

from .. import SUMMARY_COLUMNS, Conversion, Item, Report, iter_delimited, sniff_delimiter
from ...data.errors import DataError

NAME = "meqsum"
HELP = "MeQSum consumer-question summarisation (.xlsx release, or its CSV/TSV export)"
LAYOUT = """\
ROOT/MeQSum_ACL2019_BenAbacha_Demner-Fushman.xlsx (first sheet: header File, CHQ, Summary), or ROOT/*.csv / *.tsv
  with a header row naming CHQ (or source) and Summary (or target); ROOT may also be the file itself"""
SOURCE_NAMES = ("chq", "source")
TARGET_NAMES = ("summary", "target")
DEFAULT_SIZES = "800,100"
_MAIN = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_REL = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
_PKG_REL = "{http://schemas.openxmlformats.org/package/2006/relationships}"


def add_arguments(parser) -> None:
    parser.add_argument("--split-sizes", default=DEFAULT_SIZES,
                        help="rows for train and val, in file order; the rest is test (default: %(default)s)")


# ---------------------------------------------------------------------------------------------- .xlsx
def _column_index(reference: Optional[str], previous: int) -> int:
    """0-based column of a cell reference like `C12` (the optional `r` missing: the next column)."""
    letters = re.match(r"[A-Z]+", reference or "")
    if not letters:
        return previous + 1
    index = 0
    for char in letters.group(0):
        index = index * 26 + ord(char) - ord("A") + 1
    return index - 1


_ESCAPED = re.compile(r"_x([0-9A-Fa-f]{4})_")


def _text(node) -> str:
    """The text of a shared or inline string: its `<t>`, or the `<t>` of its rich-text runs (phonetic hints
    left out), with Excel's `_xHHHH_` escapes (e.g. `_x000D_` for a carriage return) decoded."""
    if node is None:
        return ""
    parts = []
    for child in node:
        if child.tag == f"{_MAIN}t":
            parts.append(child.text or "")
        elif child.tag == f"{_MAIN}r":
            parts.extend(t.text or "" for t in child.iter(f"{_MAIN}t"))
    return _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), "".join(parts))


def _first_sheet_path(archive: zipfile.ZipFile) -> str:
    workbook = ElementTree.fromstring(archive.read("xl/workbook.xml"))
    sheet = workbook.find(f"{_MAIN}sheets/{_MAIN}sheet")
    rel_id = sheet.get(f"{_REL}id") if sheet is not None else None
    if rel_id and "xl/_rels/workbook.xml.rels" in archive.namelist():
        rels = ElementTree.fromstring(archive.read("xl/_rels/workbook.xml.rels"))
        for rel in rels.iter(f"{_PKG_REL}Relationship"):
            if rel.get("Id") == rel_id:
                target = rel.get("Target").lstrip("/")
                return target if target.startswith("xl/") else "xl/" + target
    return "xl/worksheets/sheet1.xml"


def read_xlsx(path: str) -> List[Tuple[int, List[str]]]:
    """`(row number, cell texts)` of the first worksheet (shared, inline and formula strings; numbers as
    written); DataError when the file is not a readable .xlsx."""
    try:
        with zipfile.ZipFile(path) as archive:
            shared = []
            if "xl/sharedStrings.xml" in archive.namelist():
                strings = ElementTree.fromstring(archive.read("xl/sharedStrings.xml"))
                shared = [_text(si) for si in strings.iter(f"{_MAIN}si")]
            sheet = ElementTree.fromstring(archive.read(_first_sheet_path(archive)))
    except (zipfile.BadZipFile, KeyError, ElementTree.ParseError, OSError) as exc:
        raise DataError(path, None, f"not a readable .xlsx workbook ({type(exc).__name__}: {exc})") from None
    rows = []
    for position, row in enumerate(sheet.iter(f"{_MAIN}row"), 1):
        cells, column = {}, -1
        for cell in row.iter(f"{_MAIN}c"):
            kind, value = cell.get("t"), cell.find(f"{_MAIN}v")
            if kind == "s" and value is not None:
                try:
                    text = shared[int(value.text)]
                except (ValueError, IndexError):
                    raise DataError(path, None, f"row {position}: bad shared-string index {value.text!r}") from None
            elif kind == "inlineStr":
                text = _text(cell.find(f"{_MAIN}is"))
            else:
                text = (value.text or "") if value is not None else ""
            column = _column_index(cell.get("r"), column)
            cells[column] = text
        number = int(row.get("r") or position)
        rows.append((number, [cells.get(i, "") for i in range(max(cells) + 1)] if cells else []))
    return rows


# ---------------------------------------------------------------------------------------------- records
def find_input(root: str) -> str:
    if os.path.isfile(root):
        return root
    for pattern in ("*.xlsx", "*.csv", "*.tsv"):
        found = sorted(glob.glob(os.path.join(root, pattern)))
        if found:
            return found[0]
    raise FileNotFoundError(f"MeQSum: no .xlsx, .csv or .tsv file in {root}; expected layout:\n{LAYOUT}")


def _pick(names: List[str], wanted, path: str) -> int:
    lowered = [n.strip().lower() for n in names]
    for name in wanted:
        if name in lowered:
            return lowered.index(name)
    raise DataError(path, 1, f"no {' or '.join(wanted)} column in the header ({', '.join(names)})")


def records(path: str) -> Iterator[Tuple[Item, Optional[str], Optional[str]]]:
    """`(item, question, summary)` per data row (None for a missing cell)."""
    if path.lower().endswith(".xlsx"):
        rows = [(Item(path, None, f"sheet row {number}"), cells) for number, cells in read_xlsx(path)]
    else:
        rows = list(iter_delimited(path, sniff_delimiter(path), quoted=True))
    rows = [(item, cells) for item, cells in rows if any(c.strip() for c in cells)]
    if not rows:
        raise DataError(path, None, "no rows")
    header = rows[0][1]
    source, target = _pick(header, SOURCE_NAMES, path), _pick(header, TARGET_NAMES, path)
    for item, cells in rows[1:]:
        yield (item, cells[source] if source < len(cells) else None, cells[target] if target < len(cells) else None)


def parse_sizes(text: str) -> Tuple[int, int]:
    try:
        sizes = [int(part) for part in str(text).split(",")]
    except ValueError:
        sizes = []
    if len(sizes) != 2 or min(sizes) < 0:
        raise ValueError(f"--split-sizes must be two counts 'train,val' (test = the rest), got {text!r}")
    return sizes[0], sizes[1]


def build_row(item: Item, question: Optional[str], summary: Optional[str]) -> List[str]:
    for name, value in (("source", question), ("target", summary)):
        if value is None or not value.strip():
            raise item.error(f"empty {'question (CHQ)' if name == 'source' else 'summary'}", name)
    return [question.strip(), summary.strip()]


def convert(root: str, out_dir: str, options=None, split_sizes: str = DEFAULT_SIZES) -> Report:
    train_size, val_size = parse_sizes(split_sizes)
    path = find_input(root)
    rows = list(records(path))
    if len(rows) < train_size + val_size:
        raise DataError(path, None, f"{len(rows)} rows, fewer than --split-sizes {split_sizes} needs")
    with Conversion(NAME, out_dir, options) as conversion:
        parts = (("train", rows[:train_size]), ("val", rows[train_size:train_size + val_size]),
                 ("test", rows[train_size + val_size:]))
        for split, part in parts:
            with conversion.split(split, f"{split}.tsv", SUMMARY_COLUMNS) as sink:
                for item, question, summary in part:
                    sink.add(item, lambda: build_row(item, question, summary))
    return conversion.report
