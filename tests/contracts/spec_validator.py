"""Validate provider requests against the trimmed official API specs in ``tests/specs/``.

A spec file holds one operation (``operation``) or several (``operations.<name>``), each with
``request.schema`` (JSON Schema in the OpenAPI 3.0 flavour: ``nullable``, ``readOnly``),
``request.headers`` and the provider's idempotency rules (``x-idempotency``).
:func:`validate_request` reports every problem it finds; an empty list means the request is
valid. Functions take the provider and optionally ``operation``, named ``"<file stem>:<name>"``
(``"stripe_payment_intents:capture"``; a one-operation file's is ``create``); without it they
check the provider's hosted-checkout create call (the first file of :data:`OPERATION_FILES`).
:func:`find_operation` names the operation a (method, path) calls.

Stripe takes ``application/x-www-form-urlencoded`` bodies with bracketed keys;
:func:`stripe_form_to_dict` turns such a body into the nested JSON the schema describes (integer
and boolean leaves converted where the schema says so), so it can be validated the same way.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from jsonschema import Draft7Validator, ValidationError, validators

__all__ = [
    "OPERATION_FILES",
    "SEMANTIC_RULES",
    "SPEC_AMENDMENTS",
    "SPEC_FILES",
    "find_operation",
    "load_spec",
    "operation_spec",
    "operations",
    "request_schema",
    "stripe_form_to_dict",
    "validate_body",
    "validate_headers",
    "validate_request",
    "validate_response",
]

SPEC_DIR = Path(__file__).resolve().parent.parent / "specs"
SPEC_FILES = {
    "stripe": "stripe_checkout_sessions.json",
    "adyen": "adyen_sessions.json",
    "paypal": "paypal_orders_v2.json",
}
#: every spec file of a provider, its hosted-checkout create first
OPERATION_FILES = {
    "stripe": (
        "stripe_checkout_sessions.json",
        "stripe_payment_intents.json",
        "stripe_refunds.json",
    ),
    "adyen": ("adyen_sessions.json", "adyen_payments.json"),
    "paypal": ("paypal_orders_v2.json", "paypal_payments_v2.json", "paypal_vault_v3.json"),
}


@cache
def _spec_file(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SPEC_DIR / name).read_text(encoding="utf-8"))
    return data


def load_spec(provider: str, operation: str | None = None) -> dict[str, Any]:
    """The parsed spec file of ``provider``'s create call, or of the file holding
    ``operation``."""
    if provider not in SPEC_FILES:
        raise ValueError(f"no spec for provider {provider!r}")
    if operation is None:
        return _spec_file(SPEC_FILES[provider])
    stem = operation.partition(":")[0]
    return _spec_file(f"{stem}.json")


def operations(provider: str) -> list[str]:
    """Every operation of ``provider``'s spec files, as ``"<file stem>:<name>"``."""
    found: list[str] = []
    for name in OPERATION_FILES[provider]:
        data = _spec_file(name)
        stem = name.removesuffix(".json")
        names = list(data["operations"]) if "operations" in data else ["create"]
        found.extend(f"{stem}:{op}" for op in names)
    return found


def operation_spec(provider: str, operation: str | None = None) -> dict[str, Any]:
    """The ``operation`` node (method, path, request, responses) of one operation."""
    if operation is None:
        return dict(load_spec(provider)["operation"])
    stem, _, name = operation.partition(":")
    if f"{stem}.json" not in OPERATION_FILES[provider]:
        raise ValueError(f"{operation!r} is not an operation of {provider}")
    data = _spec_file(f"{stem}.json")
    node = data["operations"][name] if "operations" in data else data["operation"]
    return dict(node)


def _server_prefix(data: Mapping[str, Any]) -> str:
    servers = data.get("servers") or []
    return urlsplit(servers[0]["url"]).path.rstrip("/") if servers else ""


def find_operation(provider: str, method: str, path: str, body: Any = None) -> str | None:
    """The operation ``method path`` (relative to the provider's API base, without the
    server's own path prefix such as Adyen's ``/v71``) calls, or None. Where two operations
    share a path (PayPal's order create with a vault ``payment_source``), ``body`` decides."""
    matches: list[str] = []
    for operation in operations(provider):
        node = operation_spec(provider, operation)
        prefix = _server_prefix(load_spec(provider, operation))
        pattern = re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(prefix + node["path"]))
        if node["method"].upper() == method.upper() and re.fullmatch(pattern, path):
            matches.append(operation)
    if len(matches) > 1 and provider == "paypal":
        vaulted = isinstance(body, Mapping) and "payment_source" in body
        return next((m for m in matches if m.endswith("_with_vault") == vaulted), matches[0])
    return matches[0] if matches else None


# schema normalisation (OAS 3.0 -> JSON Schema draft 7) ---------------------------------------


def _normalise(schema: Any) -> Any:
    """Rewrite ``nullable: true`` as a JSON Schema null type, recursively; keywords only."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if out.pop("nullable", False):
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
        elif isinstance(kind, list) and "null" not in kind:
            out["type"] = [*kind, "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        if "type" not in out and any(k in out for k in ("anyOf", "oneOf")):
            key = "anyOf" if "anyOf" in out else "oneOf"
            out[key] = [*out[key], {"type": "null"}]
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: _normalise(v) for k, v in out["properties"].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = _normalise(out[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(out.get(key), list):
            out[key] = [_normalise(s) for s in out[key]]
    return out


def _read_only(
    validator: Any, value: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if value:
        yield ValidationError("is read-only and must not be sent in a request")


_RequestValidator = validators.extend(Draft7Validator, {"readOnly": _read_only})


#: Enum values a spec excerpt lacks because it is older than the API it describes, each added
#: to exactly one place (operation -> [(path of the enum list in the request schema, value)]).
#: Vault v3 3.1 (the stored blob) only knows ``BILLING_AGREEMENT`` for a payment token's
#: ``payment_source.token.type``; PayPal's current API makes a payment token from an approved
#: setup token with ``type: SETUP_TOKEN`` (``token_id_request``), the only way to finish a
#: setup-token flow. The file's own ``x-spec-notes`` records the gap.
SPEC_AMENDMENTS: dict[str, list[tuple[tuple[str, ...], str]]] = {
    "paypal_vault_v3:payment_tokens_create": [
        (
            ("properties", "payment_source", "properties", "token", "properties", "type"),
            "SETUP_TOKEN",
        )
    ],
}


def _amend(schema: dict[str, Any], operation: str | None) -> dict[str, Any]:
    for path, value in SPEC_AMENDMENTS.get(operation or "", []):
        node: Any = schema
        for key in path:
            node = node[key]
        node["enum"] = [*node["enum"], value]
    return schema


@cache
def request_schema(provider: str, operation: str | None = None) -> dict[str, Any]:
    """The normalised request body schema of one operation (an empty body: ``{}``), with the
    :data:`SPEC_AMENDMENTS` of that operation."""
    schema = copy.deepcopy(operation_spec(provider, operation)["request"].get("schema") or {})
    normalised: dict[str, Any] = _amend(_normalise(schema), operation)
    if provider == "stripe":
        # The listed top-level params are the closed set (the spec says so, made explicit).
        normalised["additionalProperties"] = False
    return normalised


@cache
def _validator(provider: str, operation: str | None = None) -> Any:
    return _RequestValidator(request_schema(provider, operation))


# headers ------------------------------------------------------------------------------------


def _header_rules(
    provider: str, operation: str | None = None
) -> list[tuple[str, dict[str, Any], bool]]:
    request = operation_spec(provider, operation)["request"]
    rules: list[tuple[str, dict[str, Any], bool]] = []
    for key, spec in request.get("headers", {}).items():
        name = spec.get("name", key)
        schema = dict(spec.get("schema") or {})
        for keyword in ("type", "const", "enum", "maxLength", "minLength", "pattern"):
            if keyword in spec:
                schema[keyword] = spec[keyword]
        rules.append((name, schema, bool(spec.get("required", False))))
    idem = load_spec(provider, operation).get("x-idempotency", {})
    limit = idem.get("max_length", idem.get("maxLength"))
    if idem.get("header") and limit is not None:
        for name, schema, _ in rules:
            if name.lower() == idem["header"].lower():
                schema["maxLength"] = min(int(limit), int(schema.get("maxLength", limit)))
                break
        else:
            rules.append((idem["header"], {"type": "string", "maxLength": int(limit)}, False))
    return rules


def _auth_problem(provider: str, headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if provider == "stripe" and not re.match(r"^(Bearer \S+|Basic \S+)$", auth):
        return "header Authorization: must be 'Bearer <secret key>' (or Basic)"
    if provider == "adyen" and not (headers.get("x-api-key") or auth.startswith("Basic ")):
        return "header X-API-Key: required (or HTTP Basic authentication)"
    if provider == "paypal" and not re.match(r"^Bearer \S+$", auth):
        return "header Authorization: must be 'Bearer <OAuth2 access token>'"
    return None


def validate_headers(
    provider: str, headers: Mapping[str, str], operation: str | None = None
) -> list[str]:
    """Problems with the request headers: Content-Type, idempotency key length, auth."""
    lowered = {k.lower(): v for k, v in headers.items()}
    problems: list[str] = []
    content_type = operation_spec(provider, operation)["request"].get("contentType")
    sent = lowered.get("content-type", "").split(";")[0].strip().lower()
    if content_type is not None and sent != content_type:
        problems.append(f"header Content-Type: must be {content_type}, got {sent or 'nothing'}")
    for name, schema, required in _header_rules(provider, operation):
        if name.lower() == "content-type":
            continue  # checked above, parameters (charset) allowed
        value = lowered.get(name.lower())
        if value is None:
            if required:
                problems.append(f"header {name}: required")
            continue
        for error in Draft7Validator(schema).iter_errors(value):
            # never echo the value: headers carry credentials
            problems.append(f"header {name}: violates {error.validator} {error.validator_value!r}")
    auth = _auth_problem(provider, lowered)
    if auth:
        problems.append(auth)
    return problems


# body ---------------------------------------------------------------------------------------


def _path(provider: str, parts: Iterator[Any] | list[Any]) -> str:
    items = list(parts)
    if not items:
        return "body"
    if provider == "stripe":
        head, *rest = items
        return str(head) + "".join(f"[{p}]" for p in rest)
    return ".".join(str(p) for p in items)


def validate_body(
    provider: str,
    body: Mapping[str, Any],
    *,
    now: datetime | None = None,
    operation: str | None = None,
) -> list[str]:
    """Schema problems plus, for the create call, the provider's semantic rules
    (:data:`SEMANTIC_RULES`)."""
    validator = _validator(provider, operation)
    problems = [
        f"{_path(provider, error.absolute_path)}: {error.message}"
        for error in sorted(validator.iter_errors(body), key=lambda e: list(e.path))
    ]
    rule = SEMANTIC_RULES.get(provider) if operation is None else None
    if rule is not None and not problems:
        problems.extend(rule(body, now or datetime.now(UTC)))
    return problems


def validate_request(
    provider: str,
    headers: Mapping[str, str],
    body: Mapping[str, Any] | str | bytes,
    *,
    now: datetime | None = None,
    operation: str | None = None,
) -> list[str]:
    """Every problem with one request (the create call unless ``operation`` names another);
    an empty list means valid.

    ``body`` is the parsed body, or the raw text (form-decoded for Stripe, JSON otherwise; an
    empty text is an empty object).
    """
    problems = validate_headers(provider, headers, operation)
    if isinstance(body, bytes | str):
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        if provider == "stripe":
            parsed: Any = stripe_form_to_dict(text, request_schema(provider, operation))
        elif not text.strip():
            parsed = {}
        else:
            try:
                parsed = json.loads(text, parse_float=Decimal)
            except ValueError as exc:
                return [*problems, f"body: malformed JSON ({exc})"]
        if not isinstance(parsed, dict):
            return [*problems, "body: must be an object"]
        body = parsed
    return problems + validate_body(provider, body, now=now, operation=operation)


@cache
def _response_validator(provider: str, status: str, operation: str | None = None) -> Any:
    responses = operation_spec(provider, operation)["responses"]
    answer = responses.get(status) or responses["default"]
    schema = answer.get("schema")
    if schema is None:  # PayPal-style {"content": {"application/json": {"schema": ...}}}
        schema = next(iter(answer["content"].values()))["schema"]
    return Draft7Validator(_normalise(copy.deepcopy(schema)))


def validate_response(
    provider: str, status: int, body: Any, operation: str | None = None
) -> list[str]:
    """Problems of a response body against the spec's schema for ``status`` (or ``default``)."""
    validator = _response_validator(provider, str(status), operation)
    return [
        f"{_path(provider, error.absolute_path)}: {error.message}"
        for error in sorted(validator.iter_errors(body), key=lambda e: list(e.path))
    ]


# Stripe form bodies -------------------------------------------------------------------------

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_INT = re.compile(r"^-?\d+$")
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")


def _insert(tree: dict[str, Any], parts: list[str], value: str) -> None:
    node: Any = tree
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "":  # "key[]": append
            part = str(len(node))
        if last:
            node[part] = value
        else:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {k: _listify(v) for k, v in node.items()}
    keys = list(converted)
    if keys and all(k.isdigit() for k in keys):
        indexes = sorted(int(k) for k in keys)
        if indexes == list(range(len(indexes))):
            return [converted[str(i)] for i in indexes]
    return converted


def _types(schema: Any) -> set[str]:
    if not isinstance(schema, dict):
        return set()
    kind = schema.get("type")
    found = {kind} if isinstance(kind, str) else set(kind or [])
    for key in ("anyOf", "oneOf", "allOf"):
        for branch in schema.get(key, []):
            found |= _types(branch)
    return found


def _branches(schema: Any) -> list[dict[str, Any]]:
    if not isinstance(schema, dict):
        return []
    found = [schema]
    for key in ("anyOf", "oneOf", "allOf"):
        for branch in schema.get(key, []):
            found.extend(_branches(branch))
    return found


def _coerce(value: Any, schema: Any) -> Any:
    if isinstance(value, str):
        kinds = _types(schema)
        if "integer" in kinds and _INT.match(value):
            return int(value)
        if "number" in kinds and _NUMBER.match(value):
            return Decimal(value)
        if "boolean" in kinds and value in ("true", "false"):
            return value == "true"
        return value
    if isinstance(value, list):
        items = next((b["items"] for b in _branches(schema) if "items" in b), None)
        return [_coerce(v, items) for v in value]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            sub: Any = None
            for branch in _branches(schema):
                if key in branch.get("properties", {}):
                    sub = branch["properties"][key]
                    break
                if isinstance(branch.get("additionalProperties"), dict):
                    sub = branch["additionalProperties"]
            out[key] = _coerce(item, sub)
        return out
    return value


def stripe_form_to_dict(body: str, schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Decode a Stripe form body into nested dicts/lists, coercing leaves per ``schema``.

    ``line_items[0][price_data][unit_amount]=1999`` becomes
    ``{"line_items": [{"price_data": {"unit_amount": 1999}}]}``. Brackets may be percent-encoded.
    Keys that are not well-formed keep their raw name (and then fail schema validation).
    """
    tree: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True, strict_parsing=False):
        match = _KEY.match(key)
        if match is None:
            tree[key] = value
            continue
        parts = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        _insert(tree, parts, value)
    listified: dict[str, Any] = _listify(tree)
    result: dict[str, Any] = _coerce(listified, schema or request_schema("stripe"))
    return result


# semantic rules (the spec's x-conditional-requirements) ---------------------------------------


def _stripe_rules(body: Mapping[str, Any], now: datetime) -> list[str]:
    problems: list[str] = []
    mode = body.get("mode")
    items = body.get("line_items") or []
    if mode in ("payment", "subscription") and not items:
        problems.append(f"line_items: required in {mode} mode")
    if mode == "payment" and len(items) > 100:
        problems.append("line_items: at most 100 line items in payment mode")
    currencies: set[str] = set()
    for i, item in enumerate(items):
        where = f"line_items[{i}]"
        if ("price" in item) == ("price_data" in item):
            problems.append(f"{where}: exactly one of price or price_data is required")
        if "quantity" not in item:
            problems.append(f"{where}[quantity]: required")
        data = item.get("price_data")
        if isinstance(data, dict):
            if ("product" in data) == ("product_data" in data):
                problems.append(f"{where}[price_data]: exactly one of product or product_data")
            if ("unit_amount" in data) == ("unit_amount_decimal" in data):
                problems.append(
                    f"{where}[price_data]: exactly one of unit_amount or unit_amount_decimal"
                )
            currencies.add(str(data.get("currency")))
    for i, option in enumerate(body.get("shipping_options") or []):
        fixed = (option.get("shipping_rate_data") or {}).get("fixed_amount")
        if isinstance(fixed, dict):
            currencies.add(str(fixed.get("currency")))
        if ("shipping_rate" in option) == ("shipping_rate_data" in option):
            problems.append(f"shipping_options[{i}]: exactly one of shipping_rate or data")
    if "currency" in body:
        currencies.add(str(body["currency"]))
    for currency in sorted(currencies):
        if not re.fullmatch(r"[a-z]{3}", currency):
            problems.append(f"currency {currency!r}: must be a lowercase ISO 4217 code")
    if len(currencies) > 1:
        problems.append(f"currencies differ: {', '.join(sorted(currencies))}")
    if body.get("ui_mode") in ("embedded_page", "elements"):
        for key in ("success_url", "cancel_url"):
            if key in body:
                problems.append(f"{key}: not allowed when ui_mode is {body['ui_mode']}")
    if "customer_update" in body and "customer" not in body:
        problems.append("customer_update: only allowed together with customer")
    expires_at = body.get("expires_at")
    if isinstance(expires_at, int):
        delta = expires_at - int(now.timestamp())
        if not 30 * 60 <= delta <= 24 * 3600:
            problems.append("expires_at: must be 30 minutes to 24 hours after creation")
    return problems


#: Per-provider rules the schema cannot express; called only when the schema validates.
SEMANTIC_RULES: dict[str, Callable[[Mapping[str, Any], datetime], list[str]]] = {
    "stripe": _stripe_rules,
}
