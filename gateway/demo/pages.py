"""The demo's HTML: the shop, the result page, and the notifications table they share."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from html import escape

from gateway.demo.inbox import Received
from gateway.domain.session import SessionRecord, SessionStatus, isoformat

__all__ = ["render_error", "render_result", "render_shop"]

_STYLE = """
body { font-family: system-ui, sans-serif; background: #f4f5f7; margin: 0; color: #222; }
main { max-width: 60rem; margin: 2rem auto; background: #fff; border-radius: 8px;
       padding: 2rem; box-shadow: 0 2px 8px rgba(0, 0, 0, .08); }
h1 { font-size: 1.3rem; margin: 0 0 1rem; } h2 { font-size: 1rem; margin: 2rem 0 .5rem; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #eee; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
button { padding: .7rem 1.5rem; border: 0; border-radius: 6px; font-size: 1rem;
         background: #1a7f37; color: #fff; cursor: pointer; }
.verified { color: #1a7f37; } .unverified { color: #b42318; font-weight: 600; }
.status { font-size: 1.6rem; font-weight: 600; margin: 0 0 .5rem; }
.COMPLETED { color: #1a7f37; } .FAILED { color: #b42318; }
.CANCELLED, .EXPIRED { color: #667085; } .PENDING, .PROCESSING { color: #b54708; }
.note { color: #555; font-size: .9rem; }
"""

#: what each status means to the person who just paid (or did not)
_HEADLINES = {
    SessionStatus.PENDING: "Waiting for the payment provider",
    SessionStatus.PROCESSING: "Payment approved; the gateway is completing it",
    SessionStatus.COMPLETED: "Payment received",
    SessionStatus.FAILED: "Payment failed",
    SessionStatus.CANCELLED: "Checkout cancelled",
    SessionStatus.EXPIRED: "Checkout ended without payment",
}
_FINAL = {
    SessionStatus.COMPLETED,
    SessionStatus.FAILED,
    SessionStatus.CANCELLED,
    SessionStatus.EXPIRED,
}

#: the demo basket: the seed request's order (the amounts it sends, exactly)
BASKET = (("Wireless Headphones (WH-100)", "1", "119.00"),)
BASKET_SHIPPING, BASKET_TAX, BASKET_TOTAL, BASKET_CURRENCY = "9.95", "11.81", "140.76", "AUD"


def _page(title: str, body: str, *, refresh: bool = False) -> str:
    meta = '<meta http-equiv="refresh" content="2">' if refresh else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex"><link rel="icon" href="data:,">'
        f"{meta}<title>{escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><main>{body}</main></body></html>"
    )


def _session_cell(item: Received, link: Callable[[str], str] | None) -> str:
    """The session id; a link to its result page when the gateway signed the notification."""
    if link is None or not item.verified:
        return escape(item.session_id)
    return f'<a href="{escape(link(item.session_id))}">{escape(item.session_id)}</a>'


def _notifications(items: Iterable[Received], link: Callable[[str], str] | None = None) -> str:
    rows = "".join(
        f'<tr class="notification" data-session="{escape(i.session_id)}" '
        f'data-status="{escape(i.status)}" data-verified="{"yes" if i.verified else "no"}">'
        f"<td>{escape(isoformat(i.at))}</td><td>{escape(i.event_type)}</td>"
        f"<td>{_session_cell(i, link)}</td><td>{escape(i.status)}</td>"
        f"<td>{'' if i.version is None else i.version}</td>"
        + (
            '<td class="verified">signature verified</td>'
            if i.verified
            else '<td class="unverified">signature NOT verified</td>'
        )
        + "</tr>"
        for i in items
    )
    if not rows:
        return '<p class="note" id="notifications">None yet.</p>'
    return (
        '<table id="notifications"><tr><th>Received</th><th>Type</th><th>Session</th>'
        f"<th>Status</th><th>Version</th><th>Gateway-Signature</th></tr>{rows}</table>"
    )


def render_shop(received: Iterable[Received], link: Callable[[str], str]) -> str:
    """The demo merchant's checkout page; ``link`` gives a session's result page."""
    lines = "".join(
        f'<tr><td>{escape(name)}</td><td class="num">{qty}</td><td class="num">{price}</td></tr>'
        for name, qty, price in BASKET
    )
    body = (
        "<h1>Demo shop</h1>"
        '<p class="note">A merchant\'s checkout page, served by the gateway in sandbox mode. '
        "Buy creates a checkout session through <code>POST /api/v1/sessions</code> as "
        "<code>demo-merchant</code>; the routing rules choose the provider.</p>"
        '<table id="basket"><tr><th>Item</th><th class="num">Qty</th>'
        f'<th class="num">Price ({BASKET_CURRENCY})</th></tr>{lines}'
        f'<tr><td>Shipping</td><td></td><td class="num">{BASKET_SHIPPING}</td></tr>'
        f'<tr><td>Tax</td><td></td><td class="num">{BASKET_TAX}</td></tr>'
        f'<tr><th>Total</th><th></th><th class="num" id="total">{BASKET_TOTAL}</th></tr></table>'
        '<form method="post" action="/demo/buy"><p><label>Pay with '
        '<select name="paymentMethod" id="payment-method">'
        '<option value="card">card</option><option value="paypal">PayPal</option>'
        '</select></label></p><button type="submit" id="buy">Buy</button></form>'
        "<h2>Notifications the demo merchant received</h2>"
        f"{_notifications(received, link)}"
    )
    return _page("Demo shop", body)


def _transitions(record: SessionRecord) -> str:
    rows = "".join(
        f'<tr class="transition"><td>{escape(t.status.value)}</td>'
        f"<td>{escape(isoformat(t.at))}</td><td>{escape(t.source)}</td>"
        f"<td>{escape(t.confirmedBy or '')}</td><td>{escape(t.eventId or '')}</td></tr>"
        for t in record.transitions
    )
    return (
        '<table id="transitions"><tr><th>Status</th><th>At</th><th>Source</th>'
        f"<th>Confirmed by</th><th>Provider event</th></tr>{rows}</table>"
    )


def render_result(record: SessionRecord, received: Iterable[Received]) -> str:
    """One session's outcome, for the customer (and the developer watching the demo)."""
    amount = record.amount.rendered(record.currency)
    status = record.status
    reason = record.failureReason or record.cancellationReason
    body = (
        f"<h1>Order {escape(record.orderReference)}</h1>"
        f'<p class="status {status.value}" id="status">{status.value}</p>'
        f'<p id="headline">{escape(_HEADLINES[status])}'
        + (f' <span id="reason">({escape(reason)})</span>' if reason else "")
        + "</p>"
        + ("" if status in _FINAL else '<p class="note">This page refreshes itself.</p>')
        + "<table>"
        f'<tr><th>Provider</th><td id="provider">{escape(record.provider)}</td></tr>'
        f"<tr><th>Provider session</th><td>{escape(record.providerSessionId)}</td></tr>"
        f'<tr><th>Total</th><td id="amount">{escape(amount["total"])} '
        f"{escape(record.currency)}</td></tr>"
        f"<tr><th>of which shipping</th><td>{escape(amount['shipping'])}</td></tr>"
        f"<tr><th>of which tax</th><td>{escape(amount['tax'])}</td></tr>"
        f"<tr><th>Payment method</th><td>{escape(record.paymentMethod)}</td></tr>"
        f'<tr><th>Session</th><td id="session-id">{escape(record.sessionId)}</td></tr>'
        f"<tr><th>Merchant</th><td>{escape(record.merchantId)}</td></tr>"
        "</table><h2>Transitions (the audit trail)</h2>"
        f"{_transitions(record)}"
        "<h2>Notifications of this session the demo merchant received</h2>"
        f"{_notifications(received)}"
        '<p><a href="/demo" id="back">Back to the demo shop</a></p>'
    )
    title = f"Order {record.orderReference}: {status.value}"
    return _page(title, body, refresh=status not in _FINAL)


def render_error(title: str, message: str) -> str:
    """A page saying what went wrong (the API's answer, when it refused the demo's request)."""
    body = (
        f'<h1>{escape(title)}</h1><pre id="error">{escape(message)}</pre>'
        '<p><a href="/demo">Back to the demo shop</a></p>'
    )
    return _page(title, body)
