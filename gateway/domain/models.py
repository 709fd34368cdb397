"""The checkout-session request, exactly as merchants send it (seed 003).

Parsing is two-step: :func:`parse_checkout_request` turns raw JSON into a model with every
amount an exact ``Decimal`` (JSON numbers are never read as floats), then
:func:`semantic_problems` checks what needs several fields at once (decimal places per currency,
the order total). Both report every problem with its field path.
"""

from __future__ import annotations

import codecs
import json
import re
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import iso3166
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from gateway.domain.money import (
    MAX_AMOUNT,
    MAX_INTEGER_DIGITS,
    add,
    exponent,
    is_active_currency,
    multiply,
    scale_of,
)
from gateway.domain.titles import field_title

__all__ = [
    "CANCELLATION_REASONS",
    "PAYMENT_METHODS",
    "REFUND_REASONS",
    "Address",
    "Amount",
    "CancelRequest",
    "CaptureRequest",
    "CheckoutRequest",
    "Customer",
    "OrderItem",
    "RedirectUrls",
    "RefundRequest",
    "RequestProblems",
    "ShippingInfo",
    "describe_errors",
    "load_json_object",
    "parse_checkout_request",
    "semantic_problems",
    "session_type_problems",
]

PAYMENT_METHODS = ("card", "paypal", "apple_pay", "google_pay", "ideal", "klarna", "sepa_debit")
PaymentMethod = Literal[
    "card", "paypal", "apple_pay", "google_pay", "ideal", "klarna", "sepa_debit"
]
TOTAL_MISMATCH = "amount.total does not match the sum of line items, shipping, and tax"

_LOCALE = re.compile(r"^[a-z]{2}(?:[_-][A-Z]{2})?$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_MAX_ITEMS = 100
_SESSION_ID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


_TOO_LARGE = (
    f"must be less than {MAX_AMOUNT:f} (at most {MAX_INTEGER_DIGITS} digits before the decimal "
    "point)"
)


def _amount(value: Decimal) -> Decimal:
    if not value.is_finite():
        raise ValueError("must be a finite number")
    if value < 0:
        raise ValueError("must not be negative")
    if value >= MAX_AMOUNT:
        raise ValueError(_TOO_LARGE)
    return value.copy_abs() if value.is_zero() else value  # "-0.00" is zero, unsigned


#: The text of a JSON number, ASCII only: what an amount sent as a string must look like
_NUMBER_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def _number_text(value: Any) -> Any:
    """An amount given as a string must be a JSON number in quotes: Python's ``Decimal`` also
    reads ``"1_000"``, ``" 100"`` and digits of other scripts (Arabic-Indic, fullwidth), which
    other parsers read as another amount (JavaScript's ``parseFloat("1_000")`` is 1) or not at
    all."""
    if isinstance(value, str) and not _NUMBER_TEXT.fullmatch(value):
        raise ValueError("must be a number (a string must hold one in JSON number form)")
    return value


#: An amount in major units: finite, not negative, below :data:`gateway.domain.money.MAX_AMOUNT`
#: (comparisons are exact, so no amount out of bounds ever reaches arithmetic).
Money = Annotated[Decimal, BeforeValidator(_number_text), AfterValidator(_amount)]
Text = Annotated[str, Field(min_length=1, max_length=255)]


def _country(value: str) -> str:
    if value not in iso3166.countries_by_alpha2:
        raise ValueError("must be an ISO 3166-1 alpha-2 country code")
    return value


# RFC 5321/5322 dot-atom addresses in ASCII, the common case, checked by one compiled pattern;
# anything else (internationalised addresses) goes through email-validator.
_ASCII_EMAIL = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)


def _email(value: str) -> str:
    if len(value) > 254:
        raise ValueError("value is not a valid email address: too long")
    local = value.partition("@")[0]
    if value.isascii():
        if len(local) > 64 or not _ASCII_EMAIL.match(value):
            raise ValueError("value is not a valid email address")
        return value
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"value is not a valid email address: {exc}") from None


def _info_key(value: str) -> str:
    # Stripe's metadata keys cannot hold brackets: its form encoding nests on them
    # (``metadata[a][b]``), and no escape exists. Refused for every provider, so a request's
    # fate does not depend on where it is routed.
    if "[" in value or "]" in value:
        raise ValueError("keys must not contain '[' or ']'")
    return value


Email = Annotated[str, AfterValidator(_email), Field(json_schema_extra={"format": "email"})]
Country = Annotated[str, Field(pattern=r"^[A-Z]{2}$"), AfterValidator(_country)]


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, str_strip_whitespace=False, field_title_generator=field_title
    )


class Amount(_Strict):
    """Order amounts in major units of the currency, each with at most the currency's decimal
    places (JPY 0, USD 2, KWD 3) and below 10^15. The total must equal the sum of quantity x
    unit price over the order lines, plus shipping, plus tax, exactly."""

    total: Money
    shipping: Money = Field(default=Decimal(0), description="Included in the total; default 0")
    tax: Money = Field(default=Decimal(0), description="Included in the total; default 0")


Quantity = Annotated[StrictInt, Field(gt=0, le=1_000_000)]


class OrderItem(_Strict):
    """One order line."""

    name: Text
    sku: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    quantity: Quantity = Field(description="A positive integer, at most 1 000 000")
    unitPrice: Money = Field(description="In major units, bounded like the amounts")


class Address(_Strict):
    """A postal address."""

    line1: Text
    line2: Annotated[str, Field(max_length=255)] | None = None
    city: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    state: Annotated[str, Field(max_length=128)] | None = None
    postalCode: Annotated[str, Field(max_length=32)] | None = None
    country: Country = Field(description="ISO 3166-1 alpha-2 code, such as AU")


class Customer(_Strict):
    """The paying customer. Personal data: never logged, never sent in notifications."""

    firstName: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    lastName: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    email: Email | None = None
    phone: Annotated[str, Field(pattern=r"^\+[1-9][0-9]{1,14}$")] | None = Field(
        default=None, description="E.164, such as +61412345678"
    )
    billingAddress: Address | None = None
    shippingAddress: Address | None = None


class ShippingInfo(_Strict):
    """How the order ships."""

    type: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    method: Annotated[str, Field(min_length=1, max_length=64)] | None = None


class RedirectUrls(_Strict):
    """Where the hosted checkout sends the customer back to: absolute https URLs (in sandbox
    mode http://localhost too)."""

    success: Annotated[str, Field(min_length=1, max_length=2048)]
    failure: Annotated[str, Field(min_length=1, max_length=2048)]

    @field_validator("success", "failure")
    @classmethod
    def _absolute_https(cls, value: str, info: ValidationInfo) -> str:
        allow_http_local = bool(info.context and info.context.get("allow_http_localhost"))
        problem = _redirect_problem(value, allow_http_local)
        if problem:
            raise ValueError(problem)
        return value


@lru_cache(maxsize=4096)
def _redirect_problem(value: str, allow_http_local: bool) -> str | None:
    """Why ``value`` is not an acceptable redirect URL (merchants reuse a handful of URLs, so
    the answers are cached)."""
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        return "must be an absolute https URL without spaces or control characters"
    parts = urlsplit(value)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and allow_http_local and parts.hostname in _LOCAL_HOSTS:
        return None
    if parts.scheme == "http" and parts.netloc:
        return "must be an absolute https URL (http is allowed for localhost in sandbox mode)"
    return "must be an absolute https URL"


class CheckoutRequest(_Strict):
    """The body of POST /api/v1/sessions: the order to open a hosted checkout session for.
    Unknown fields are refused; a 400 lists every problem, each with its field path."""

    orderReference: Annotated[str, Field(min_length=1, max_length=128)] = Field(
        description="The merchant's order id: one order is paid at most once"
    )
    paymentMethod: PaymentMethod = Field(description="How the customer pays; drives routing")
    currency: Annotated[str, Field(pattern=_CURRENCY.pattern)] = Field(
        description="An active ISO 4217 code, such as AUD"
    )
    locale: Annotated[str, Field(pattern=_LOCALE.pattern)] | None = Field(
        default=None,
        description="A language (fr) or language and region (en_AU or en-AU) for the checkout page",
    )
    amount: Amount
    orderItems: Annotated[list[OrderItem], Field(min_length=1, max_length=_MAX_ITEMS)] | None = (
        Field(
            default=None, description="1 to 100 order lines; required unless sessionType is setup"
        )
    )
    customer: Customer | None = None
    shipping: ShippingInfo | None = None
    additionalInformation: (
        Annotated[
            dict[
                Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_info_key)],
                Annotated[str, Field(max_length=512)],
            ],
            Field(max_length=50),
        ]
        | None
    ) = Field(
        default=None,
        description="Up to 50 text pairs passed to the provider as metadata; keys up to 64 "
        "characters without [ or ], values up to 512",
    )
    redirectUrls: RedirectUrls | None = Field(
        default=None,
        description="Required, except for next_in_series (no customer is present: refused there)",
    )
    expiresIn: Annotated[StrictInt, Field(ge=300, le=86_400)] = Field(
        default=3600, description="Seconds until the session expires"
    )
    captureMethod: Literal["automatic", "manual"] = Field(
        default="automatic", description="manual: the payment is only authorised"
    )
    sessionType: Literal["one_time", "first_in_series", "setup", "next_in_series"] = Field(
        default="one_time",
        description="one_time: the customer pays now (optionally saving the method for their "
        "next payments); first_in_series: also creates a mandate for later customer-absent "
        "payments (routed only to providers that support it); setup: the customer saves a "
        "payment method and is charged nothing (amount.total 0); next_in_series: charge the "
        "method saved by mandateSessionId, customer absent (no redirectUrls, no checkoutUrl)",
    )
    mandateSessionId: (
        Annotated[
            str, Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
        ]
        | None
    ) = Field(
        default=None,
        description="next_in_series only: the sessionId of this merchant's COMPLETED "
        "first_in_series or setup session whose saved method is charged",
    )
    savePaymentMethod: StrictBool = Field(
        default=False, description="Keep the payment method for the customer's next payments"
    )
    customerReference: (
        Annotated[str, Field(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9._:@-]+$")] | None
    ) = Field(
        default=None,
        description="The merchant's own id of the customer (no personal data); Adyen keeps "
        "saved methods under it",
    )

    @field_validator("currency")
    @classmethod
    def _active_currency(cls, value: str) -> str:
        if not is_active_currency(value):
            raise ValueError("must be an active ISO 4217 currency code")
        return value

    @property
    def saves_payment_method(self) -> bool:
        """Whether the provider must keep the payment method (always for a series or a
        setup session)."""
        return self.sessionType in ("first_in_series", "setup") or self.savePaymentMethod

    @property
    def lines(self) -> list[OrderItem]:
        """The order lines (none for a setup session that sent none)."""
        return self.orderItems or []

    @property
    def return_urls(self) -> RedirectUrls:
        """The redirect URLs of a customer-present session (validation requires them there)."""
        if self.redirectUrls is None:
            raise ValueError("a next_in_series request has no redirectUrls")
        return self.redirectUrls

    @property
    def customer_present(self) -> bool:
        """False for a customer-absent charge (``next_in_series``): no hosted page."""
        return self.sessionType != "next_in_series"

    @property
    def billing_country(self) -> str | None:
        """The billing country, falling back to the shipping country."""
        if self.customer is None:
            return None
        for address in (self.customer.billingAddress, self.customer.shippingAddress):
            if address is not None:
                return address.country
        return None


CANCELLATION_REASONS = ("duplicate", "fraudulent", "requested_by_customer", "abandoned")


class CancelRequest(_Strict):
    """The body of POST /api/v1/sessions/{sessionId}/cancel."""

    cancellationReason: Literal["duplicate", "fraudulent", "requested_by_customer", "abandoned"]


class CaptureRequest(_Strict):
    """The body of POST /api/v1/sessions/{sessionId}/capture (may be empty, or {})."""

    amount: Money | None = Field(
        default=None,
        description="Major units, at most the authorized amount; default: all of it. Less is "
        "a partial capture (where the provider allows it) and releases the rest",
    )


REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")


class RefundRequest(_Strict):
    """The body of POST /api/v1/sessions/{sessionId}/refunds."""

    amount: Money = Field(description="Major units, more than 0, at most what is refundable")
    reason: Literal["duplicate", "fraudulent", "requested_by_customer"] | None = None


class RequestProblems(Exception):
    """Every validation problem of a request, each prefixed with its field path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def describe_errors(exc: ValidationError) -> list[str]:
    """Each pydantic error as ``"<field path>: <message>"``, the API's 400 wording."""
    return [_describe(err) for err in exc.errors()]


def _describe(error: Any) -> str:
    loc = tuple(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{_path(loc)}: unknown field"
    msg = str(error["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"{_path(loc) or 'body'}: {msg}"


def parse_checkout_request(raw: bytes, *, allow_http_localhost: bool = False) -> CheckoutRequest:
    """Parse and validate a request body; raises :class:`RequestProblems` listing every problem."""
    data = load_json_object(raw)
    try:
        request = CheckoutRequest.model_validate(
            data, context={"allow_http_localhost": allow_http_localhost}
        )
    except ValidationError as exc:
        problems = describe_errors(exc)
        known = set(problems)
        problems += [p for p in _partial_session_type_problems(data) if p not in known]
        raise RequestProblems(problems + _partial_money_problems(data)) from None
    problems = semantic_problems(request)
    if problems:
        raise RequestProblems(problems)
    return request


def load_json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object, read the one way every request body is read: UTF-8 only,
    numbers exactly (``Decimal``), no NaN or Infinity, no name given twice (parsers disagree
    on which value wins); raises :class:`RequestProblems` otherwise."""
    try:
        # decoding first stops json.loads from guessing UTF-16 or UTF-32 from the bytes
        text = _utf8_text(raw)
        data = json.loads(
            text,
            parse_float=_json_number,
            parse_int=_json_integer,
            parse_constant=_reject_constant,
            object_pairs_hook=_json_object,
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestProblems([f"body: malformed JSON ({_json_reason(exc)})"]) from None
    except RecursionError:
        raise RequestProblems(["body: JSON nested too deeply"]) from None
    if not isinstance(data, dict):
        raise RequestProblems(["body: must be a JSON object"])
    return data


def _utf8_text(raw: bytes) -> str:
    """``raw`` as text when it is UTF-8 JSON text (RFC 8259 §8.1); ValueError otherwise."""
    if raw.startswith(codecs.BOM_UTF8):
        raise ValueError("JSON must be UTF-8 without a byte-order mark")
    if b"\x00" in raw:
        # JSON escapes NUL even inside strings: a NUL byte means UTF-16 or UTF-32
        raise ValueError("JSON must be UTF-8, not UTF-16 or UTF-32")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"JSON must be UTF-8: invalid byte at offset {exc.start}") from None


#: no integer the API takes has more digits (amounts are below 10**15, quantities 10**6); a
#: longer one is refused before Python's int conversion spends time on it
_MAX_INTEGER_TEXT = 40


def _json_number(text: str) -> Decimal:
    """A JSON number with a fraction or exponent, exactly; one whose exponent no Decimal can
    hold (``1e99999999999999999999``) is out of range, never an arithmetic error."""
    try:
        return Decimal(text)
    except ArithmeticError:
        raise ValueError("number out of range") from None


def _json_integer(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INTEGER_TEXT:
        raise ValueError("number out of range")
    return int(text)


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose names are unique: with ``{"total": 1, "total": 100}`` parsers
    disagree on the amount (first or last wins), so it is refused."""
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"duplicate key {key[:64]!r}")
        data[key] = value
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _json_reason(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return str(exc)


def semantic_problems(request: CheckoutRequest) -> list[str]:
    """Checks that need several fields: decimal places per currency and the exact total.

    The total is compared only when every amount has the currency's places: then, with every
    amount bounded, the sum is exact in :data:`gateway.domain.money.MONEY_CONTEXT`.
    """
    amount = request.amount
    return session_type_problems(request) + _money_problems(
        request.currency,
        {"total": amount.total, "shipping": amount.shipping, "tax": amount.tax},
        [(item.unitPrice, item.quantity) for item in request.lines],
    )


def session_type_problems(request: CheckoutRequest) -> list[str]:
    """What ``sessionType`` requires or refuses of the other fields."""
    return _session_type_problems(
        request.sessionType,
        total=request.amount.total,
        capture=request.captureMethod,
        has_items=request.orderItems is not None,
        has_mandate=request.mandateSessionId is not None,
        has_redirects=request.redirectUrls is not None,
    )


def _session_type_problems(
    kind: str,
    *,
    total: Decimal | None,
    capture: object,
    has_items: bool,
    has_mandate: bool,
    has_redirects: bool,
) -> list[str]:
    """:func:`session_type_problems` over plain values (``total`` None: not a valid amount,
    reported elsewhere), so a body that failed validation elsewhere is checked too."""
    problems: list[str] = []
    if kind == "setup":
        if total is not None and total != 0:
            problems.append("amount.total: must be 0 for a setup session (it charges nothing)")
        if capture == "manual":
            problems.append("captureMethod: a setup session charges nothing; must be automatic")
    elif not has_items:
        problems.append("orderItems: Field required")
    if kind == "next_in_series":
        if not has_mandate:
            problems.append("mandateSessionId: Field required for next_in_series")
        if has_redirects:
            problems.append(
                "redirectUrls: not allowed for next_in_series (the customer is not present)"
            )
    else:
        if has_mandate:
            problems.append("mandateSessionId: only allowed for next_in_series")
        if not has_redirects:
            problems.append("redirectUrls: Field required")
    return problems


_SESSION_TYPES = frozenset({"one_time", "first_in_series", "setup", "next_in_series"})


def _partial_session_type_problems(data: dict[str, Any]) -> list[str]:
    """:func:`session_type_problems` of a body that failed validation elsewhere, on what it
    holds (nothing when ``sessionType`` itself is invalid: that is reported already)."""
    kind = data.get("sessionType", "one_time")
    if not isinstance(kind, str) or kind not in _SESSION_TYPES:
        return []
    raw_amount = data.get("amount")
    total = _valid(_MONEY, raw_amount.get("total")) if isinstance(raw_amount, dict) else None
    return _session_type_problems(
        kind,
        total=total,
        capture=data.get("captureMethod"),
        has_items=data.get("orderItems") is not None,
        has_mandate=data.get("mandateSessionId") is not None,
        has_redirects=data.get("redirectUrls") is not None,
    )


_Line = tuple[Decimal | None, int | None]
_MONEY = TypeAdapter(Money)
_QUANTITY = TypeAdapter(Quantity)


def _money_problems(
    currency: str, amounts: dict[str, Decimal | None], lines: list[_Line] | None
) -> list[str]:
    """Decimal places of every valid amount, then the total when every part is valid.

    ``None`` stands for a value that failed its own validation (reported with its path
    already): it is skipped, and the total is not compared without it.
    """
    problems: list[str] = []
    exp = exponent(currency)
    places = f"no more than {exp} decimal places for {currency}"
    for name, value in amounts.items():
        if value is not None and scale_of(value) > exp:
            problems.append(f"amount.{name}: must have {places}")
    for index, (price, _) in enumerate(lines or ()):
        if price is not None and scale_of(price) > exp:
            problems.append(f"orderItems.{index}.unitPrice: must have {places}")
    total = amounts["total"]
    if problems or total is None or not lines:
        return problems
    parts: list[Decimal] = []
    for price, quantity in lines:
        if price is None or quantity is None:
            return problems
        parts.append(multiply(price, quantity))
    shipping, tax = amounts["shipping"], amounts["tax"]
    if shipping is None or tax is None:
        return problems
    if add((*parts, shipping, tax)) != total:
        problems.append(TOTAL_MISMATCH)
    return problems


def _partial_money_problems(data: dict[str, Any]) -> list[str]:
    """The money checks of a body that failed validation elsewhere, on the parts that passed.

    So a 400 lists every problem at once: a bad email does not hide a wrong total.
    """
    currency = data.get("currency")
    if not (isinstance(currency, str) and _CURRENCY.match(currency)):
        return []
    if not is_active_currency(currency):
        return []
    raw_amount = data.get("amount")
    if not isinstance(raw_amount, dict):
        return []
    amounts: dict[str, Decimal | None] = {"total": _valid(_MONEY, raw_amount.get("total"))}
    for name in ("shipping", "tax"):  # optional, zero when absent
        amounts[name] = _valid(_MONEY, raw_amount[name]) if name in raw_amount else Decimal(0)
    raw_items = data.get("orderItems")
    lines: list[_Line] | None = None
    if isinstance(raw_items, list) and 1 <= len(raw_items) <= _MAX_ITEMS:
        lines = [
            (_valid(_MONEY, item.get("unitPrice")), _valid(_QUANTITY, item.get("quantity")))
            if isinstance(item, dict)
            else (None, None)
            for item in raw_items
        ]
    return _money_problems(currency, amounts, lines)


def _valid(adapter: TypeAdapter[Any], value: Any) -> Any:
    """``value`` validated by ``adapter``, or None when it is missing or invalid."""
    if value is None:
        return None
    try:
        return adapter.validate_python(value)
    except ValidationError:
        return None
