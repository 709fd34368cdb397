"""Stripe's form encoding equals urllib's urlencode of the flattened pairs, for any text."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from hypothesis import given
from hypothesis import strategies as st

from providers.stripe.transformers import _flatten, encode_form

_text = st.text(max_size=20)
_params = st.dictionaries(
    _text.filter(bool),
    st.one_of(
        _text,
        st.integers(),
        st.booleans(),
        st.lists(_text, max_size=3),
        st.dictionaries(_text.filter(bool), _text, max_size=3),
    ),
    max_size=6,
)


@given(_params)
def test_encoding_matches_urlencode_and_round_trips(params: dict[str, object]) -> None:
    encoded = encode_form(params)
    pairs = list(_flatten("", params))
    assert encoded == urlencode(pairs)
    assert parse_qsl(encoded, keep_blank_values=True) == pairs
