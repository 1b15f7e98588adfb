"""Class vocabularies: the one parser of class lists written as text, and :class:`Vocabulary`.

Plain Python (no torch), so the CLI, the plugin's forms and the engine read vocabularies the same
way. Two dialects of one grammar (one class per entry, synonyms on the entry, the first synonym is
the display name):

* **inline** (the default: ``--classes "cat; dog; person, man"`` and the plugin's text box):
  classes separated by newlines or ``;``, synonyms by ``,``; blank entries and lines starting
  with ``#`` are skipped; an entry may start with ``<value>:`` to give its mask value (then every
  entry must); a class name on two entries is an error (synonyms belong on one entry).
* **class file** (``class_file=True``: the SCLIP family's ``configs/cls_*.txt`` and the presets'
  files): one class per line, synonyms separated by exactly ``sep`` (``", "``), no values or
  comments; a blank line inside the file is an error, because skipping it would shift every later
  class index (blank lines at the end are ignored).

Both give ``[(value, [name, synonym, ...]), ...]``; without explicit values, value = position.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from tfovss_core.errors import ConfigError

#: mask values are stored in uint8 / uint16 PNGs
MAX_VALUE = 65535
_VALUE_RE = re.compile(r"^\s*(\d+)\s*:\s*(.*)$")

Rows = list[tuple[int, list[str]]]


@dataclass(frozen=True)
class Vocabulary:
    """Classes with synonyms, flattened into queries.

    ``classes[c]`` is the list of query strings of class ``c``; ``query_class[q]`` is the class
    of query ``q``. The display name of a class is its first query.
    """

    classes: tuple[tuple[str, ...], ...]

    @classmethod
    def from_spec(cls, spec: Iterable) -> "Vocabulary":
        classes = []
        for i, item in enumerate(spec):
            names = [item] if isinstance(item, str) else list(item)
            names = [str(n).strip() for n in names]
            if not names or any(not n for n in names):
                raise ConfigError(f"class {i} ({item!r}) has an empty name")
            classes.append(tuple(names))
        if not classes:
            raise ConfigError("the class list is empty: give at least one class name or a preset name")
        return cls(tuple(classes))

    @property
    def queries(self) -> list[str]:
        return [q for names in self.classes for q in names]

    @property
    def query_class(self) -> list[int]:
        return [c for c, names in enumerate(self.classes) for _ in names]

    @property
    def names(self) -> list[str]:
        return [names[0] for names in self.classes]

    def __len__(self) -> int:
        return len(self.classes)


def parse_vocabulary(text: str | Sequence[str], *, class_file: bool = False, sep: str | None = None
                     ) -> Rows:
    """``[(value, [name, synonym, ...]), ...]`` from text (a string or its lines); see the module
    docstring for the two dialects. ``sep``: the synonym separator (inline ``","``, class file
    ``", "``). Raises :class:`~tfovss_core.errors.ConfigError` naming the line and the problem."""
    if class_file:
        return _parse_class_file(text, ", " if sep is None else sep)
    return _parse_inline(text, "," if sep is None else sep)


def _lines(text) -> list[str]:
    if isinstance(text, str):
        return text.splitlines()
    return [str(line).rstrip("\r\n") for line in (text or [])]


def _parse_class_file(text, sep: str) -> Rows:
    if not sep:
        raise ConfigError("sep must be a non-empty string")
    rows = _lines(text)
    while rows and not rows[-1].strip():
        rows.pop()
    out: Rows = []
    for i, row in enumerate(rows):
        if not row.strip():
            raise ConfigError(f"class-name line {i + 1} is empty (class {i} would have no name)")
        # whitespace around a synonym is dropped (the official parsers keep e.g. Context60's
        # "wood "; CLIP's tokenizer encodes both the same)
        names = [name.strip() for name in row.split(sep)]
        if any(not name for name in names):
            raise ConfigError(f"class-name line {i + 1} has an empty synonym: {row!r}")
        out.append((i, names))
    if not out:
        raise ConfigError("no class names found")
    return out


def _parse_inline(text, sep: str) -> Rows:
    entries = []
    for raw_line in _lines(text if text is not None else ""):
        if raw_line.strip().startswith("#"):
            continue
        for raw in raw_line.split(";"):
            line = raw.strip()
            if not line:
                continue
            m = _VALUE_RE.match(line)
            names = [n.strip() for n in (m.group(2) if m else line).split(sep) if n.strip()]
            if not names:
                raise ConfigError(f"vocabulary line {raw!r} has no class name")
            entries.append((int(m.group(1)) if m else None, names))
    if not entries:
        raise ConfigError("the vocabulary is empty: give one class per line")
    explicit = [v is not None for v, _ in entries]
    if any(explicit) and not all(explicit):
        raise ConfigError("give a '<value>:' prefix on every vocabulary line or on none")
    rows: Rows = entries if all(explicit) else [(i, names) for i, (_, names) in enumerate(entries)]
    check_rows(rows)
    return rows


def check_rows(rows: Rows) -> None:
    """Mask values unique and storable, display names unique (case-insensitive)."""
    values = [v for v, _ in rows]
    if len(set(values)) != len(values):
        dup = sorted({v for v in values if values.count(v) > 1})
        raise ConfigError(f"vocabulary values {dup} are used twice")
    if max(values) > MAX_VALUE:
        raise ConfigError(f"vocabulary values must be <= {MAX_VALUE}")
    names = [n[0].lower() for _, n in rows]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"class names {dup} appear on several lines; put synonyms on one "
                          "line, separated by commas")


def vocabulary_from_mask_targets(targets: Mapping) -> Rows:
    """A field's ``{value: name}`` mask targets as rows, sorted by value."""
    rows = [(k, [str(v)]) for k, v in sorted((int(k), v) for k, v in targets.items())]
    if not rows:
        raise ConfigError("the mask_targets are empty")
    return rows


def vocabulary_to_text(rows: Sequence[tuple[int, Sequence[str]]]) -> str:
    """Inverse of :func:`parse_vocabulary` (explicit values unless they are 0..n-1)."""
    implicit = [v for v, _ in rows] == list(range(len(rows)))
    return "\n".join(", ".join(names) if implicit else f"{v}: {', '.join(names)}"
                     for v, names in rows)


__all__ = ["Vocabulary", "parse_vocabulary", "check_rows", "vocabulary_from_mask_targets",
           "vocabulary_to_text", "MAX_VALUE", "Rows"]
