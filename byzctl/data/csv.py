"""A user's own tabular data: one sample per CSV row, numeric features and a label column.

Features become float32 vectors standardised with the training split's mean and
standard deviation; labels (any strings) are mapped to 0..k-1 in sorted order
(numerically when every label is a number).
"""

from __future__ import annotations

import csv as stdcsv
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from byzctl.data.base import Dataset, Splits, split_test
from byzctl.errors import ConfigError, DataError


@dataclass(kw_only=True)
class Csv(Dataset):
    """Config of `dataset=csv dataset.path=FILE`: a classification table."""

    _target_: str = "byzctl.data.csv.Csv"
    name: str = "csv"
    path: str = ""
    """The CSV file (`~` and environment variables are expanded)."""
    label_column: str | None = None
    """Column holding the label: a header name or a 0-based index (negative counts from the end); null: the last column."""
    header: bool = True
    """The first row holds column names."""
    delimiter: str = ","
    """Field separator; `\\t` stands for a tab."""
    test_size: int = 200
    """Rows held out for evaluation (a seeded random choice)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.separator) != 1:
            raise ConfigError(f"dataset.delimiter must be one character. Got delimiter={self.delimiter!r}")

    @property
    def separator(self) -> str:
        return "\t" if self.delimiter == "\\t" else self.delimiter

    def load(self, seed: int) -> Splits:
        if not self.path:
            raise DataError("dataset=csv needs a file: dataset.path=FILE.csv")
        path = Path(os.path.expandvars(os.path.expanduser(self.path)))
        names, rows = self._read(path)
        label_idx = self._label_index(names, path)
        feature_names = [n for j, n in enumerate(names) if j != label_idx]
        values: list[list[float]] = []
        labels: list[str] = []
        for lineno, row in rows:
            feats = [v for k, v in enumerate(row) if k != label_idx]
            try:
                values.append([float(v) for v in feats])
            except ValueError:
                k, v = next((k, v) for k, v in enumerate(feats) if not _is_float(v))
                raise DataError(f"{path}: row {lineno}, column {feature_names[k]}: {v!r} is not a number") from None
            labels.append(row[label_idx].strip())
        x = torch.tensor(values, dtype=torch.float32)  # (N, d)
        bad = (~torch.isfinite(x)).nonzero()
        if len(bad):
            i, k = bad[0].tolist()
            raise DataError(f"{path}: row {rows[i][0]}, column {feature_names[k]}: {rows[i][1][[j for j in range(len(names)) if j != label_idx][k]]!r} is not a finite number")
        classes = sorted(set(labels), key=_label_key(labels))
        if len(classes) < 2:
            raise DataError(f"{path}: the label column {names[label_idx]} holds {len(classes)} class ({classes}); classification needs at least 2")
        index = {c: k for k, c in enumerate(classes)}
        y = torch.tensor([index[v] for v in labels], dtype=torch.int64)  # (N,)
        if self.test_size >= len(rows):
            raise ConfigError(f"dataset.test_size={self.test_size} leaves no training data out of {len(rows)} rows of {path}; try dataset.test_size={max(1, len(rows) // 5)}")
        splits = split_test(x, y, test_size=self.test_size, seed=self.data_seed(seed), num_classes=len(classes))
        mean = splits.x_train.mean(0, keepdim=True)  # (1, d): training statistics only
        std = splits.x_train.std(0, keepdim=True).nan_to_num(1.0)
        std[std < 1e-8] = 1.0  # a constant feature stays centred, not blown up
        splits.x_train = (splits.x_train - mean) / std
        splits.x_test = (splits.x_test - mean) / std
        return splits

    def _read(self, path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
        """Column names (generated as c0, c1, ... without a header) and the non-empty rows with their line numbers."""
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                reader = stdcsv.reader(fh, delimiter=self.separator)
                rows = [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]
        except FileNotFoundError:
            raise DataError(f"dataset.path={self.path}: no such file ({path.resolve()})") from None
        except (OSError, UnicodeDecodeError, stdcsv.Error) as exc:
            raise DataError(f"dataset.path={self.path}: cannot read {path}: {exc}") from None
        if self.header and rows:
            names = [c.strip() for c in rows[0][1]]
            rows = rows[1:]
        else:
            names = [f"c{k}" for k in range(len(rows[0][1]))] if rows else []
        if not rows:
            raise DataError(f"{path}: no data rows")
        if len(names) < 2:
            raise DataError(f"{path}: {len(names)} column with delimiter {self.separator!r}; need features and a label (is dataset.delimiter right?)")
        for lineno, r in rows:
            if len(r) != len(names):
                raise DataError(f"{path}: row {lineno} has {len(r)} fields, expected {len(names)}")
        return names, rows

    def _label_index(self, names: list[str], path: Path) -> int:
        col = self.label_column
        if col is None:
            return len(names) - 1
        if self.header and col in names:
            return names.index(col)
        try:
            k = int(col)
        except ValueError:
            where = f"columns are {names}" if self.header else "the file has no header (dataset.header=false): give an index"
            raise DataError(f"{path}: dataset.label_column={col!r} not found; {where}") from None
        if not -len(names) <= k < len(names):
            raise DataError(f"{path}: dataset.label_column={k} is out of range for {len(names)} columns")
        return k % len(names)


def _is_float(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def _label_key(labels: list[str]):  # type: ignore[no-untyped-def]
    """Sort numerically when every label is a number ('2' before '10'), else as text."""
    try:
        for v in set(labels):
            float(v)
    except ValueError:
        return str
    return float
