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
    characters as \\u escapes, quotes and control characters escaped)."""
    return len(json.dumps(value))


# orjson writes UTF-8, the service \u escapes: a character past ASCII takes at most 3 times
# its UTF-8 bytes there (6 for 2 or 3, 12 for 4), DEL 6 for 1
ESCAPED_AT_MOST = 6


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
        self._used = 0  # exact bytes of the parts counted
        self._unsure: list[tuple[int, object]] = []  # parts past ASCII not yet measured
        self._bound = 0  # at most their bytes

    def read(self, characters: int) -> None:
        self._read += characters
        self._check(self._read)

    def charge(self, times: int, *values: object) -> None:
        """Count `values`, shown `times` in the answer. orjson measures ASCII exactly, 5 to
        10 times faster than json (0.6-1.1 against 4.4-7.2 us a typical match, on every
        answer); a part past ASCII counts at most ESCAPED_AT_MOST times its UTF-8 bytes
        until the bound nears the limit, and only then is measured as the service writes it
        (json for each such part cost ~38 us a 10 kB text: ~4 ms an answer of a non-Latin
        corpus at top_k 100, review helper 97)."""
        if self.limit is None:
            return
        for value in values:
            if value is None:
                continue
            raw = orjson.dumps(value)
            if raw.isascii():
                self._used += times * len(raw)
            else:
                self._unsure.append((times, value))
                self._bound += times * ESCAPED_AT_MOST * len(raw)
        if self._used + self._bound > self.limit:
            self._used += sum(times * json_bytes(value) for times, value in self._unsure)
            self._unsure, self._bound = [], 0
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
