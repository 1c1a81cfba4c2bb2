"""Hypothesis against `/graphql`: queries and mutations generated from the schema (hypothesis-graphql, valid and
invalid ones), and the operations with hostile variables. No answer is a 5xx, and none is the masked
"Unexpected error." that stands for an exception inside the gateway."""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st
from hypothesis_graphql import Mode, mutations, queries

from fulfillment.settings import Settings
from gateway.graphql.schema import create_schema
from tests.fuzz.conftest import FUZZ_SETTINGS, tally
from tests.fuzz.hostile import field, json_text, order_request, texts, values

SCHEMA = str(create_schema(Settings()))
ANY_MODE = st.sampled_from(Mode)
OPERATIONS = {
    "createOrder": ("mutation($input: CreateOrderInput!) { createOrder(input: $input) { __typename "
                    "... on OrderCreated { order { id totalAmount } } ... on ValidationError { errors { field } } } }",
                    st.fixed_dictionaries({"input": order_request()})),
    "ordersByCustomer": ("query($c: String!, $first: Int, $after: String) { ordersByCustomer(customerId: $c, "
                         "first: $first, after: $after) { edges { node { id } } pageInfo { endCursor } } }",
                         st.fixed_dictionaries({"c": field(texts)}, optional={
                             "first": field(st.integers()),
                             "after": field(texts | texts.map(lambda t: base64.urlsafe_b64encode(
                                 json_text([t, t])).decode()))})),
    "order": ("query($id: ID!) { order(id: $id) { id } sagaState(orderId: $id) { attempt } }",
              st.fixed_dictionaries({"id": field(texts)})),
    "cancelOrder": ("mutation($id: ID!) { cancelOrder(id: $id) { __typename } }",
                    st.fixed_dictionaries({"id": field(st.uuids().map(str) | texts)})),
}


def post(client, body: object, target: str) -> None:
    response = client.post("/graphql", content=json_text(body), headers={"content-type": "application/json"})
    tally(target).record(response.status_code)
    assert response.status_code < 500, response.text
    if not response.headers["content-type"].startswith("application/json"):
        return  # strawberry's plain-text 400 for a request that is not GraphQL (variables not an object, ...)
    errors = response.json().get("errors") or []
    assert not [error for error in errors if error["message"] == "Unexpected error."], response.text


@FUZZ_SETTINGS
@given(data=st.data())
def test_no_generated_query_or_mutation_answers_5xx_or_unexpected_error(client, data):
    strategy = data.draw(st.sampled_from([queries, mutations]))
    post(client, {"query": data.draw(strategy(SCHEMA, mode=data.draw(ANY_MODE)))}, "GraphQL (hypothesis-graphql)")


@FUZZ_SETTINGS
@given(operation=st.sampled_from(sorted(OPERATIONS)), data=st.data())
def test_no_hostile_variable_answers_5xx_or_unexpected_error(client, operation, data):
    query, variables = OPERATIONS[operation]
    body = {"query": query, "variables": data.draw(variables | values)}
    post(client, body, "GraphQL variables (hypothesis)")
