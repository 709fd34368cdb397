"""Readable titles for the JSON Schema of the API's models (the OpenAPI document).

pydantic titles a field by capitalising its name, which reads ``Orderreference`` for
``orderReference``; :func:`field_title` splits the camel case instead: ``Order reference``,
``Checkout URL``, ``Duration (ms)``.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["field_title"]

_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_SPECIAL = {"id": "ID", "url": "URL", "urls": "URLs", "sku": "SKU", "ms": "(ms)"}


def field_title(name: str, _info: Any = None) -> str:
    """The title of the field ``name`` (a ``field_title_generator`` for pydantic configs)."""
    words = [_SPECIAL.get(word.lower(), word.lower()) for word in _WORD.findall(name)]
    if not words:
        return name
    first = words[0]
    words[0] = first if first in _SPECIAL.values() else first.capitalize()
    return " ".join(words)
