"""Records: dataclasses that also read as the JSON mapping they are written as.

A result's fields are read as attributes by calibkit's own code; ``record["metrics"]``,
``record.get("engine")`` and ``"note" in record`` read the same fields by their JSON keys, like
scikit-learn's ``Bunch``, so notebooks and scripts written against ``report.json`` (or calibkit's
dictionaries before the records) keep working. A field that is ``None`` (a section that did not run)
counts as absent and is left out of the JSON.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Iterator, Mapping


class Record:
    """Mapping-style reading of a dataclass's fields (``None`` counts as absent, except for the fields in
    ``always``, which the JSON spells out as ``null``) and its JSON form."""

    always: ClassVar[tuple[str, ...]] = ()

    def __getitem__(self, key: str) -> Any:
        if key not in self:
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in field_names(type(self)) and (getattr(self, key) is not None or key in self.always)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self else default

    def keys(self) -> Iterator[str]:
        return (name for name in field_names(type(self)) if name in self)

    def to_dict(self) -> dict:
        """The JSON form: fields in declaration order, ``None`` left out, records and lists converted."""
        return {name: _plain(getattr(self, name)) for name in self.keys()}


def field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def known_fields(cls: type, document: Mapping) -> dict:
    """The entries of ``document`` that are fields of ``cls`` (later versions may add others)."""
    names = set(field_names(cls))
    return {k: v for k, v in document.items() if k in names}
