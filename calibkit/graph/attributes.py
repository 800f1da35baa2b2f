"""Reading a node's attributes by name, with the ONNX default where the exporter left one out."""

from __future__ import annotations

from typing import Any

import onnx
from onnx import helper


def attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of ``node``'s attribute ``name`` (ints as int, lists as lists, strings as bytes), else
    ``default``: exporters omit attributes that equal the op's default (Conv's ``group``, DQ's ``axis``)."""
    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else helper.get_attribute_value(found)


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """Every attribute ``node`` spells out, by name (lists as tuples, strings decoded)."""
    values = {}
    for found in node.attribute:
        value = helper.get_attribute_value(found)
        values[found.name] = (tuple(value) if isinstance(value, list)
                              else value.decode() if isinstance(value, bytes) else value)
    return values
