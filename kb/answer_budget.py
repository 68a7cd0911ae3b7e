"""The size of a /query answer, counted as it is assembled (KB_MAX_ANSWER_BYTES).

An answer holds, per query, up to top_k documents (twice that with explain) with their whole
texts and metadata: 64 copies of one query at top_k 100 over 12 KB texts answered 77 MB and
grew kb serve by 178 MiB, and texts of 200,000 characters would have made about 1.3 GB, with a
read key alone (review helper 80). An answer past the limit is a 422 naming the fields that
set its size, raised as the texts are read and the matches made, before the rest is.
"""

from __future__ import annotations

import json

import orjson

from kb.errors import ValidationFailed, field_error

CODE = "answer_too_large"


def json_bytes(value: object) -> int:
    """What a value takes in the answer: its JSON as the service writes it (non-ASCII
    characters as \\u escapes, quotes and control characters escaped). orjson's is the same
    for ASCII and 16 times faster (0.34 against 5.45 us a typical match, on every answer):
    json's only for the rest."""
    raw = orjson.dumps(value)
    return len(raw) if raw.isascii() else len(json.dumps(value))


class AnswerBudget:
    """The bytes an answer may take (`limit`; None: no limit), for a request of `queries`
    texts (`distinct` of them different) at `top_k` matches each, with or without `explain`.

    Two counts, each refused past the limit: `read`, the characters of the texts read for
    the answer, each as many times as the answer shows it (a lower bound of its size, counted
    before and while whole documents are fetched), and `charge`, the JSON bytes of each part
    of the answer as it is made."""

    def __init__(
        self, limit: int | None, queries: int | None, distinct: int, top_k: int, explain: bool
    ) -> None:
        self.limit = limit
        self.queries = queries  # None: one query (`query`), not a batch
        self.distinct = distinct
        self.top_k = top_k
        self.explain = explain
        self._read = 0
        self._used = 0

    def read(self, characters: int) -> None:
        self._read += characters
        self._check(self._read)

    def charge(self, times: int, *values: object) -> None:
        """Count `values`, shown `times` in the answer."""
        if self.limit is None:
            return
        self._used += times * sum(json_bytes(value) for value in values if value is not None)
        self._check(self._used)

    def _check(self, size: int) -> None:
        if self.limit is not None and size > self.limit:
            raise self._refusal(self.limit)

    def _refusal(self, limit: int) -> ValidationFailed:
        fewer = []
        details = []
        if self.queries is not None:
            fewer.append("fewer queries")
            distinct = f" ({self.distinct} different)" if self.distinct < self.queries else ""
            details.append(
                field_error(
                    "queries",
                    f"{self.queries} queries{distinct}: send fewer a request",
                    "too_large",
                )
            )
        fewer.append("a smaller top_k")
        details.append(
            field_error("top_k", f"{self.top_k} matches a query: ask for fewer", "too_large")
        )
        if self.explain:
            fewer.append("no explain")
            details.append(
                field_error("explain", "near misses show up to top_k more documents", "too_large")
            )
        return ValidationFailed(
            f"the answer would hold more than {limit:,} bytes of texts and metadata "
            f"(KB_MAX_ANSWER_BYTES): ask for {_listed(fewer)}",
            details=details,
            code=CODE,
        )


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"
