"""The query of ``GET /api/v1/sessions`` (a merchant's sessions of an orderReference) and its
opaque page cursor.

A cursor is the base64url (unpadded) form of ``["<createdAt>", "<sessionId>"]`` of the last
session of a page, createdAt in ISO 8601 UTC with microseconds. It is not signed: it only says
where to go on in the merchant's own sessions, and anything that does not decode to exactly
that shape is refused (400), never passed to the store.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from multidict import MultiMapping
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from gateway.domain.errors import BadRequest
from gateway.domain.models import describe_errors
from gateway.domain.session import SessionRecord
from gateway.domain.titles import field_title
from gateway.store.base import SessionCursor

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_CURSOR_LENGTH",
    "MAX_LIMIT",
    "SessionQuery",
    "decode_cursor",
    "encode_cursor",
    "parse_session_query",
]

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_CURSOR_LENGTH = 200

_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_DIGITS = re.compile(r"[0-9]{1,9}")


def _whole_number(value: Any) -> Any:
    """Query values are text: only plain digits are a number (no sign, space, ``_`` or ``.``)."""
    if isinstance(value, str) and not _DIGITS.fullmatch(value):
        raise ValueError("must be a whole number")
    return value


def encode_cursor(record: SessionRecord) -> str:
    """The cursor pointing just past ``record`` in the newest-first order."""
    created = record.createdAt.astimezone(UTC).isoformat(timespec="microseconds")
    raw = orjson.dumps([created, record.sessionId])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(text: str) -> SessionCursor:
    """The position ``text`` names; ValueError for anything :func:`encode_cursor` never makes."""
    if len(text) > MAX_CURSOR_LENGTH or not _BASE64URL.fullmatch(text):
        raise ValueError("not a cursor")
    try:
        data = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, orjson.JSONDecodeError):
        raise ValueError("not a cursor") from None
    if not (
        isinstance(data, list) and len(data) == 2 and all(isinstance(part, str) for part in data)
    ):
        raise ValueError("not a cursor")
    created_text, session_id = data
    try:
        created = datetime.fromisoformat(created_text)
        if created.tzinfo is None:
            raise ValueError("no time zone")
        created = created.astimezone(UTC)
        canonical = str(uuid.UUID(session_id)) == session_id
    except (ValueError, OverflowError):
        raise ValueError("not a cursor") from None
    if not canonical:
        raise ValueError("not a cursor")
    return SessionCursor(created, session_id)


def _cursor(value: Any) -> Any:
    if isinstance(value, str):
        try:
            decode_cursor(value)
        except ValueError:
            raise ValueError("not a cursor this API issued (use nextCursor as given)") from None
    return value


class SessionQuery(BaseModel):
    """The query parameters of GET /api/v1/sessions."""

    model_config = ConfigDict(extra="forbid", frozen=True, field_title_generator=field_title)

    orderReference: Annotated[str, Field(min_length=1, max_length=128)] = Field(
        description="The merchant's order id the sessions were created for"
    )
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT), BeforeValidator(_whole_number)] = Field(
        default=DEFAULT_LIMIT, description="The most sessions in one page"
    )
    cursor: (
        Annotated[str, Field(min_length=1, max_length=MAX_CURSOR_LENGTH), BeforeValidator(_cursor)]
        | None
    ) = Field(default=None, description="The nextCursor of the previous page")

    @property
    def before(self) -> SessionCursor | None:
        """The position the page starts after (None: the newest session)."""
        return decode_cursor(self.cursor) if self.cursor is not None else None


def parse_session_query(query: MultiMapping[str]) -> SessionQuery:
    """The validated query; :class:`BadRequest` listing every problem with its parameter."""
    repeated = sorted({name for name in query if len(query.getall(name)) > 1})
    problems = [f"{name}: must be given once" for name in repeated]
    try:
        parsed = SessionQuery.model_validate({name: query[name] for name in query})
    except ValidationError as exc:
        problems += [p for p in describe_errors(exc) if p.split(":", 1)[0] not in repeated]
        raise BadRequest(problems) from None
    if problems:
        raise BadRequest(problems)
    return parsed
