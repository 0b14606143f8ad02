"""Dataset importers and the leave-one-out split.

Every importer yields the same thing: a catalog (item id -> title) and each user's chronological
sequence of item ids. Item ids are strings everywhere: they are the truth, titles are not unique.

Bad input never turns into a silently wrong dataset: structural problems (missing columns, bad
encodings, non-numeric timestamps) raise `DataError` naming the file and line; row-level problems that
a real dump does contain (unknown item ids, empty titles) are skipped and counted in `LoadReport`.
"""

from __future__ import annotations

import argparse
import csv
import io
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tqdm import tqdm


class DataError(ValueError):
    """A dataset file cannot be read as the format it claims to be."""


@dataclass
class LoadReport:
    """What an importer read and what it skipped, by reason."""

    rows_read: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(where)

    def summary(self) -> str:
        lines = [f"{self.rows_read} rows read"]
        for reason, count in sorted(self.skipped.items()):
            lines.append(f"skipped {count} rows: {reason} (e.g. {', '.join(self.examples[reason])})")
        return "; ".join(lines)


@dataclass
class Catalog:
    """Item id -> title, plus the reverse map that handles duplicate titles."""

    titles: dict[str, str]

    def __post_init__(self) -> None:
        self.items_by_title: dict[str, list[str]] = defaultdict(list)
        for item_id, title in self.titles.items():
            self.items_by_title[title].append(item_id)

    def __len__(self) -> int:
        return len(self.titles)

    @property
    def duplicate_titles(self) -> dict[str, list[str]]:
        return {t: ids for t, ids in self.items_by_title.items() if len(ids) > 1}


@dataclass
class Dataset:
    name: str
    catalog: Catalog
    sequences: dict[str, list[str]]  # user id -> chronological item ids
    report: LoadReport

    @property
    def num_interactions(self) -> int:
        return sum(len(s) for s in self.sequences.values())


# ---------------------------------------------------------------------------------------------
# Low-level readers


def _decode(path: Path, encoding: str) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: bytes are not valid {encoding} ({e.reason})") from None


def _csv_rows(path: Path, required: list[str]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Rows of a UTF-8 CSV file with a header, as (line number, row dict)."""
    reader = csv.reader(io.StringIO(_decode(path, "utf-8-sig"), newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}:1: empty file, expected a header with {required}") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}:1: missing columns {missing} (header is {header})")
    rows = []
    for fields in reader:
        if not fields:
            continue
        if len(fields) != len(header):
            raise DataError(
                f"{path}:{reader.line_num}: {len(fields)} fields, header has {len(header)}"
            )
        rows.append((reader.line_num, dict(zip(header, fields))))
    return header, rows


def _delimited_rows(
    path: Path, sep: str, ncols: int, encoding: str
) -> list[tuple[int, list[str]]]:
    """Rows of a headerless file split on `sep` (MovieLens .dat / u.* formats)."""
    rows = []
    for lineno, line in enumerate(_decode(path, encoding).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) < ncols:
            raise DataError(f"{path}:{lineno}: expected at least {ncols} '{sep}'-separated fields")
        rows.append((lineno, fields))
    return rows


def _integer(value: str, path: Path, lineno: int, column: str) -> int:
    try:
        return int(float(value)) if "." in value else int(value)
    except ValueError:
        raise DataError(f"{path}:{lineno}: {column} {value!r} is not a number") from None


# ---------------------------------------------------------------------------------------------
# Building a dataset from (item, title) and (user, item, timestamp) records


def _build(
    name: str,
    items: list[tuple[str, str, str]],  # (item id, title, where)
    interactions: list[tuple[str, str, int, str]],  # (user, item, timestamp, where)
) -> Dataset:
    report = LoadReport()
    titles: dict[str, str] = {}
    for item_id, title, where in items:
        title = " ".join(title.split())  # newlines/tabs inside a title would break item boundaries
        if not title:
            report.skip("empty title", where)
        elif item_id in titles:
            report.skip("duplicate item id", where)
        else:
            titles[item_id] = title
    events: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for order, (user, item_id, ts, where) in enumerate(
        tqdm(interactions, desc=f"{name}: interactions", unit="row", leave=False, mininterval=1)
    ):
        report.rows_read += 1
        if item_id not in titles:
            report.skip("unknown item id", where)
            continue
        events[user].append((ts, order, item_id))
    sequences = {u: [item for _, _, item in sorted(ev)] for u, ev in events.items()}
    if not titles:
        raise DataError(f"{name}: no items with a title")
    if not sequences:
        raise DataError(f"{name}: no interactions with a known item")
    return Dataset(name, Catalog(titles), sequences, report)


def _load_csv_pair(name: str, items_path: Path, item_cols: tuple[str, str], inter_path: Path,
                   inter_cols: tuple[str, str, str]) -> Dataset:
    """Items and interactions from two headed CSV files, by column names."""
    item_id, title = item_cols
    user, item, timestamp = inter_cols
    _, item_rows = _csv_rows(items_path, [item_id, title])
    items = [(r[item_id].strip(), r[title], f"{items_path.name}:{n}") for n, r in item_rows]
    _, inter_rows = _csv_rows(inter_path, [user, item, timestamp])
    interactions = [
        (r[user].strip(), r[item].strip(), _integer(r[timestamp], inter_path, n, timestamp), f"{inter_path.name}:{n}")
        for n, r in inter_rows
    ]
    return _build(name, items, interactions)


def load_canonical(root: Path) -> Dataset:
    name = root.parent.name if root.name == "canonical" else root.name
    return _load_csv_pair(name, root / "items.csv", ("item_id", "title"),
                          root / "interactions.csv", ("user_id", "item_id", "timestamp"))


def load_movielens_latest(root: Path) -> Dataset:
    return _load_csv_pair(root.name, root / "movies.csv", ("movieId", "title"),
                          root / "ratings.csv", ("userId", "movieId", "timestamp"))


def _load_movielens_delimited(
    root: Path, items_file: str, ratings_file: str, item_sep: str, rating_sep: str
) -> Dataset:
    items_path, ratings_path = root / items_file, root / ratings_file
    items = [
        (f[0].strip(), f[1], f"{items_file}:{n}")
        for n, f in _delimited_rows(items_path, item_sep, 2, "latin-1")
    ]
    interactions = [
        (f[0].strip(), f[1].strip(), _integer(f[3].strip(), ratings_path, n, "timestamp"), f"{ratings_file}:{n}")
        for n, f in _delimited_rows(ratings_path, rating_sep, 4, "latin-1")
    ]
    return _build(root.name, items, interactions)


def load_movielens_100k(root: Path) -> Dataset:
    return _load_movielens_delimited(root, "u.item", "u.data", "|", "\t")


def load_movielens_1m(root: Path) -> Dataset:
    return _load_movielens_delimited(root, "movies.dat", "ratings.dat", "::", "::")


# Detection order matters only for folders holding several formats; canonical wins.
FORMATS = [
    (("items.csv", "interactions.csv"), load_canonical),
    (("canonical/items.csv", "canonical/interactions.csv"), lambda p: load_canonical(p / "canonical")),
    (("movies.csv", "ratings.csv"), load_movielens_latest),
    (("u.item", "u.data"), load_movielens_100k),
    (("movies.dat", "ratings.dat"), load_movielens_1m),
]


def dataset_loader(root: Path) -> Callable[[Path], Dataset]:
    """The loader of the dataset folder `root`, by the files present."""
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    for files, loader in FORMATS:
        if all((root / f).is_file() for f in files):
            return loader
    expected = " | ".join("+".join(files) for files, _ in FORMATS)
    raise DataError(f"{root}: no known dataset format; expected one of: {expected}")


def load_dataset(path: str | Path) -> Dataset:
    """Load any supported dataset folder, detecting its format from the files present."""
    return dataset_loader(Path(path))(Path(path))


def dataset_folder(path: str) -> str:
    """For argparse's `type=`: a folder of no supported format is a usage error at once, before anything loads."""
    try:
        dataset_loader(Path(path))
    except DataError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return path


# ---------------------------------------------------------------------------------------------
# Leave-one-out split


@dataclass(frozen=True)
class Example:
    user_id: str
    history: tuple[str, ...]  # oldest first, truncated to the last max_history items
    target: str
    seen: frozenset[str] = frozenset()  # every earlier item of the user but the target: "seen excluded" masks these


@dataclass
class Split:
    train: dict[str, list[str]]  # user -> training part of the sequence (untruncated)
    valid: list[Example]
    test: list[Example]
    max_history: int

    def training_windows(self) -> list[list[str]]:
        """Each user's training items cut into windows of max_history + 1 items, newest window first, so the
        most recent items are predicted from a full history; every item but a window's first is a target
        once per epoch. SASRec and the LLM train on these same windows."""
        size = self.max_history + 1
        return [seq[max(0, end - size) : end] for seq in self.train.values() for end in range(len(seq), 1, -size)]

    def popularity(self) -> Counter:
        """Interaction counts on the training part only (no leakage of valid/test targets)."""
        counts: Counter = Counter()
        for seq in self.train.values():
            counts.update(seq)
        return counts


DEFAULT_MAX_HISTORY = 50  # the reference protocol's history cap (../shared/notes/reference-results.md)


def leave_one_out(dataset: Dataset, max_history: int = DEFAULT_MAX_HISTORY, min_length: int = 3) -> Split:
    """Last item = test target, second to last = validation target, the rest = training.

    Users with fewer than `min_length` interactions have no held-out target; all their items train.
    """
    if max_history < 1:
        raise ValueError("max_history must be >= 1")
    train, valid, test = {}, [], []
    for user, seq in dataset.sequences.items():
        if len(seq) < min_length:
            train[user] = list(seq)
            continue
        train[user] = seq[:-2]
        valid.append(Example(user, tuple(seq[:-2][-max_history:]), seq[-2], frozenset(seq[:-2]) - {seq[-2]}))
        test.append(Example(user, tuple(seq[:-1][-max_history:]), seq[-1], frozenset(seq[:-1]) - {seq[-1]}))
    return Split(train, valid, test, max_history)
