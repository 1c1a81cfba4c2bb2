"""Hypothesis strategies for hostile JSON: the values a fuzzer's first hour finds, as request bodies.

`json_text` turns a generated value into the bytes of a JSON body, with a raw token in place of each `Raw`:
what `json.dumps` cannot write (NaN, 1e999999, a 5,000-digit number, a number with a decimal point where a
string belongs) and bodies nested deeper than any decoder recurses.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from hypothesis import strategies as st


@dataclass(frozen=True)
class Raw:
    token: str

    def __repr__(self) -> str:  # a falsifying example stays readable
        return f"Raw({self.token[:20]!r}{f'... {len(self.token)} chars' if len(self.token) > 20 else ''})"


MARK = "\x00raw\x00"
MARKED = re.compile(r'"\\u0000raw\\u0000(.*?)\\u0000raw\\u0000"')


def json_text(value: object) -> bytes:
    """`value` as JSON (lone surrogates escaped as `\\udXXX`, as JSON allows), each `Raw` spliced in as is."""
    text = json.dumps(value, default=lambda raw: f"{MARK}{raw.token}{MARK}")
    return MARKED.sub(lambda match: json.loads(f'"{match.group(1)}"'), text).encode("utf-8", "surrogatepass")


def nested(depth: int) -> Raw:
    return Raw("[" * depth + "]" * depth)


lone_surrogates = st.characters(categories=["Cs"])
texts = st.one_of(
    st.text(max_size=20),
    st.lists(st.one_of(st.characters(), lone_surrogates), min_size=1, max_size=8).map("".join),  # not st.text:
    # it drops surrogates from its alphabet
    st.sampled_from(["", " ", "\x00", "prod-100", "cust-001", "a" * 10_000]),
)
numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("1e999999"), Raw("1.5"), Raw("-0.0"),
                     Raw("1" * 5000), Raw("0.000000000000000000000000001")]),
)
depths = st.sampled_from([2, 64, 500, 990, 1500, 100_000]).map(nested)
scalars = st.one_of(texts, numbers, st.booleans(), st.none())
values = st.recursive(scalars | depths, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(texts, inner, max_size=4), max_leaves=12)


def field(valid: st.SearchStrategy) -> st.SearchStrategy:
    """A valid value, a hostile string or number, or anything: a body that gets past the shape checks now and then."""
    return st.one_of(valid, texts, numbers, values)


def order_request() -> st.SearchStrategy[dict]:
    item = st.fixed_dictionaries({
        "productId": field(st.sampled_from(["prod-100", "hazmat-1"]) | texts),
        "productName": field(texts), "quantity": field(st.integers(min_value=-1, max_value=200_000)),
        "unitPrice": field(st.sampled_from([0, 9.99, Raw("49.99"), Raw("0.001")])),
    })
    return st.fixed_dictionaries({"customerId": field(texts), "items": field(st.lists(item, max_size=3))})
