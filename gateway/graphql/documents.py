"""Each GraphQL document parsed and validated once, within the request limits.

One extension does what Strawberry's `MaxTokensLimiter`, `AddValidationRules`, `ParserCache` and
`ValidationCache` did as four, with the variable-list limit as a fifth: Strawberry runs every hook of every
extension on every request, and one instead of five took about a tenth off executing `order(id)`. Clients
send the same few documents again and again, so the cache is keyed by the document's text (hashing a parsed
document walks it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache

from graphql import ASTValidationRule, DocumentNode, GraphQLError, GraphQLSchema, parse, specified_rules
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import validate_document

from gateway.limits import longest_list

Checked = tuple[DocumentNode, tuple[GraphQLError, ...]]


class DocumentCache:
    """Documents by their text: parsed with at most `max_tokens` tokens, and the errors of validating them with
    GraphQL's rules and `rules`. A document that does not parse is not kept (its error is raised each time)."""

    def __init__(self, *, max_tokens: int, rules: Sequence[type[ASTValidationRule]], maxsize: int):
        self._max_tokens = max_tokens
        self._rules = (*specified_rules, *rules)
        self.checked = lru_cache(maxsize=maxsize)(self._check)

    def _check(self, schema: GraphQLSchema, query: str) -> Checked:
        document = parse(query, max_tokens=self._max_tokens)
        return document, tuple(validate_document(schema, document, self._rules))


class CheckedDocuments(SchemaExtension):
    """Takes the document and its validation errors from the cache, and refuses variables holding a list longer
    than `max_list` before GraphQL coerces them: graphql-core coerces each element in pure Python, on the event
    loop (9,000 order items took 0.7 s). Lists written in the document itself are bounded by the token limit."""

    def __init__(self, cache: DocumentCache, max_list: int):
        self._cache = cache
        self._max_list = max_list
        self._errors: tuple[GraphQLError, ...] = ()

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        context.graphql_document, self._errors = self._cache.checked(context.schema._schema, context.query)
        yield

    def on_validate(self) -> Iterator[None]:
        errors = list(self._errors)  # errors set before validation stop the request before execution
        longest = longest_list(self.execution_context.variables)
        if longest > self._max_list:
            errors.append(GraphQLError(
                f"a list in the variables holds {longest} values; at most {self._max_list} are accepted"))
        self.execution_context.pre_execution_errors = errors
        yield
