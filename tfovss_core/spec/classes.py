"""The one class resolution: whatever a user gives as ``classes`` -> a :class:`ClassSource`.

Accepted everywhere (the engine's :class:`~tfovss_core.Segmenter`, ``tfovss segment``, the
plugin's pre-label, compare and FiftyOne model): a preset name (``"voc21"``: its class files and
the method's official settings), a class file, inline text (:mod:`tfovss_core.spec.vocabulary`),
a list whose items are a name or a list of synonyms, or ``{value: name}`` mask targets. A preset's
classes depend on the method (each official repo has its own class file), so a preset stays a
name here and :meth:`ClassSource.classes` asks for the method.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from tfovss_core.errors import ConfigError
from tfovss_core.spec import presets
from tfovss_core.spec.vocabulary import (Rows, Vocabulary, parse_vocabulary,
                                         vocabulary_from_mask_targets)


@dataclass(frozen=True)
class ClassSource:
    """A resolved ``classes`` argument.

    ``kind``: ``"preset"``, ``"file"``, ``"text"``, ``"list"`` or ``"mask_targets"``;
    ``preset``: the canonical preset name (kind ``"preset"``), else None; ``rows``:
    ``((value, (name, synonym, ...)), ...)`` for every kind but a preset.
    """

    kind: str
    preset: str | None = None
    rows: tuple[tuple[int, tuple[str, ...]], ...] = ()
    path: str | None = None

    def classes(self, method: str | None = None) -> list[list[str]]:
        """Synonyms per class (a preset's from the class file ``method`` officially uses)."""
        if self.preset is not None:
            return presets.get_preset(self.preset).classes(method)
        return [list(names) for _, names in self.rows]

    def class_names(self, method: str | None = None) -> list[str]:
        """Display name per class (a preset shows class 0 as "background" where it has one)."""
        if self.preset is not None:
            return presets.get_preset(self.preset).class_names(method)
        return [names[0] for _, names in self.rows]

    def values(self, method: str | None = None) -> list[int]:
        """The mask value of each class (its index unless given)."""
        if self.preset is not None:
            return list(range(len(self.classes(method))))
        return [v for v, _ in self.rows]

    def vocabulary(self, method: str | None = None) -> Vocabulary:
        return Vocabulary.from_spec(self.classes(method))

    def segmenter_classes(self):
        """What to pass as a Segmenter's ``classes``: the preset's name, else the synonym lists."""
        return self.preset if self.preset is not None else self.classes()


def is_preset(name) -> bool:
    if not isinstance(name, str) or not name.strip():
        return False
    try:
        presets.get_preset(name.strip())
        return True
    except KeyError:
        return False


def resolve_classes(classes, *, inline_text: bool = True, files: bool = True) -> ClassSource:
    """``classes`` as a :class:`ClassSource`; raises :class:`ConfigError` naming the problem.

    ``inline_text=False``: a string must be a preset or a class file (the engine: a mistyped
    preset name must not silently become a one-class vocabulary). ``files=False``: a string is
    never read as a path (the App's text box)."""
    if isinstance(classes, ClassSource):
        return classes
    if classes is None:
        raise ConfigError("no classes given: pass a preset name (e.g. 'voc21') or a list of class names")
    if isinstance(classes, Mapping):
        return ClassSource("mask_targets", rows=_freeze(vocabulary_from_mask_targets(classes)))
    if isinstance(classes, Path) or isinstance(classes, str):
        text = str(classes)
        single = "\n" not in text and "," not in text and ";" not in text
        if isinstance(classes, str) and single and is_preset(text):
            return ClassSource("preset", preset=presets.get_preset(text.strip()).name)
        if files and "\n" not in text and Path(text).is_file():
            return ClassSource("file", rows=_freeze(presets.read_class_file(Path(text))), path=text)
        if not inline_text or isinstance(classes, Path):
            raise ConfigError(f"classes={text!r} is neither a preset ({', '.join(presets.list_presets())}) "
                              "nor a class file; pass a list of class names for your own vocabulary")
        return ClassSource("text", rows=_freeze(parse_vocabulary(text)))
    items = list(classes)
    if not items:
        raise ConfigError("the class list is empty: give at least one class name or a preset name")
    vocab = Vocabulary.from_spec(items)  # checks every name
    return ClassSource("list", rows=tuple(enumerate(vocab.classes)))


def _freeze(rows: Rows | list) -> tuple:
    if rows and not isinstance(rows[0], tuple):  # a class file: synonym lists, value = line
        rows = list(enumerate(rows))
    return tuple((int(v), tuple(names)) for v, names in rows)


__all__ = ["ClassSource", "resolve_classes", "is_preset"]
