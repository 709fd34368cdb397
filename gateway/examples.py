"""The seed's example request (seed 003), kept as JSON text so no amount is ever a float.

Used by `make run`'s ready-to-paste curl and the OpenAPI example.
"""

from __future__ import annotations

__all__ = ["SEED_REQUEST_JSON", "seed_request_json"]

SEED_REQUEST_JSON = (
    '{"orderReference":"ORD-2024-001","paymentMethod":"card","currency":"AUD","locale":"en_AU",'
    '"amount":{"total":140.76,"shipping":9.95,"tax":11.81},"orderItems":[{"name":"Wireless Head'
    'phones","sku":"WH-100","quantity":1,"unitPrice":119}],"customer":{"firstName":"Jane","last'
    'Name":"Smith","email":"jane.smith@example.com","phone":"+61412345678","billingAddress":{"l'
    'ine1":"123 Collins Street","line2":"Level 5","city":"Melbourne","state":"VIC","postalCode"'
    ':"3000","country":"AU"},"shippingAddress":{"line1":"123 Collins Street","line2":"Level 5",'
    '"city":"Melbourne","state":"VIC","postalCode":"3000","country":"AU"}},"shipping":{"type":"'
    'express","method":"aus_post"},"additionalInformation":{"campaignId":"summer-sale-2024","re'
    'ferralCode":"REF-ABC"},"redirectUrls":{"success":"https://merchant.example.com/checkout/su'
    'ccess","failure":"https://merchant.example.com/checkout/failure"}}'
)


_SEED_ORDER = '"orderReference":"ORD-2024-001"'
_SEED_METHOD = '"paymentMethod":"card"'
_SEED_SUCCESS = '"success":"https://merchant.example.com/checkout/success"'
_SEED_FAILURE = '"failure":"https://merchant.example.com/checkout/failure"'


def seed_request_json(
    *,
    order_reference: str | None = None,
    payment_method: str | None = None,
    success_url: str | None = None,
    failure_url: str | None = None,
) -> str:
    """The seed's request with some fields replaced, as JSON text (amounts stay exact)."""
    import json

    text = SEED_REQUEST_JSON
    for needle, name, value in (
        (_SEED_ORDER, "orderReference", order_reference),
        (_SEED_METHOD, "paymentMethod", payment_method),
        (_SEED_SUCCESS, "success", success_url),
        (_SEED_FAILURE, "failure", failure_url),
    ):
        if value is not None:
            assert text.count(needle) == 1, needle
            text = text.replace(needle, f"{json.dumps(name)}:{json.dumps(value)}")
    return text
