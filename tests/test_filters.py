"""The filter language: translation to Chroma's where, dates, and errors with paths."""

from __future__ import annotations

import pytest

from kb.errors import ValidationFailed
from kb.filters import (
    TWIN_PREFIX,
    FilterLimits,
    compile_filter,
    date_twins,
    exact_numbers,
    parse_iso,
)

DAY = 86_400.0


def test_simple_filters_become_eq_and_in() -> None:
    compiled = compile_filter(filters={"a": "x", "b": [1, 2]})
    assert compiled.where == {"$and": [{"a": {"$eq": "x"}}, {"b": {"$in": [1, 2]}}]}


def test_single_clauses_are_not_wrapped_in_and() -> None:
    assert compile_filter(where={"$and": [{"a": 1}]}).where == {"a": {"$eq": 1}}
    assert compile_filter(filters={"a": 1}).where == {"a": {"$eq": 1}}


def test_several_keys_of_a_where_are_anded() -> None:
    assert compile_filter(where={"a": 1, "b": 2}).where == {
        "$and": [{"a": {"$eq": 1}}, {"b": {"$eq": 2}}]
    }


def test_several_operators_on_one_key_are_anded() -> None:
    where = compile_filter(where={"n": {"$gte": 1, "$lt": 5}}).where
    assert where == {"$and": [{"n": {"$gte": 1}}, {"n": {"$lt": 5}}]}


def test_filters_and_where_combine() -> None:
    where = compile_filter(filters={"a": 1}, where={"b": 2}).where
    assert where == {"$and": [{"a": {"$eq": 1}}, {"b": {"$eq": 2}}]}


def test_date_bounds_use_the_numeric_twin() -> None:
    start = parse_iso("2024-01-01")
    assert compile_filter(where={"date": {"$gte": "2024-01-01"}}).where == {
        f"{TWIN_PREFIX}date": {"$gte": start}
    }
    # a bare date bound covers the whole day
    assert compile_filter(where={"date": {"$lte": "2024-01-01"}}).where == {
        f"{TWIN_PREFIX}date": {"$lt": start + DAY}
    }
    assert compile_filter(where={"date": {"$gt": "2024-01-01"}}).where == {
        f"{TWIN_PREFIX}date": {"$gte": start + DAY}
    }


def test_parse_iso_accepts_dates_and_datetimes_only() -> None:
    assert parse_iso("1970-01-02") == DAY
    assert parse_iso("1970-01-01T01:00:00Z") == 3600.0
    assert parse_iso("1970-01-01T01:00:00+01:00") == 0.0
    assert parse_iso("1970-01-01 00:01") == 60.0
    assert parse_iso("1970-01-01T00:00:01.123456789Z") == 1.123456  # to the microsecond
    assert parse_iso("1970-01-01T00:00:01,5") == 1.5
    for text in ("2024", "yesterday", "2024-02-30", "2024-1-1", "12:00"):
        assert parse_iso(text) is None


def test_date_twins_only_for_date_strings() -> None:
    twins = date_twins({"date": "2024-01-01", "title": "2024 plans", "n": 3})
    assert twins == {f"{TWIN_PREFIX}date": parse_iso("2024-01-01")}


def test_numbers_stay_numbers_in_ranges() -> None:
    assert compile_filter(where={"n": {"$lt": 3}}).where == {"n": {"$lt": 3}}
    assert compile_filter(where={"n": {"$lt": 2.0}}).where == {"n": {"$lt": 2.0}}


def test_a_fractional_bound_names_the_whole_numbers_beside_it() -> None:
    """Chroma compares stored integers with 2.5 as with 2 (test_mirror has the proof)."""
    assert compile_filter(where={"n": {"$lt": 2.5}}).where == {
        "$or": [{"$and": [{"n": {"$lt": 2.5}}, {"n": {"$nin": [3]}}]}, {"n": {"$in": [2]}}]
    }
    assert compile_filter(where={"n": {"$eq": -0.5}}).where == {
        "$and": [{"n": {"$eq": -0.5}}, {"n": {"$nin": [-1, 0]}}]
    }


def test_a_large_integer_bound_names_the_float_it_rounds_to() -> None:
    """Chroma compares stored floats with 2**53 + 1 as with 2.0**53 (test_mirror has the proof)."""
    assert compile_filter(where={"n": {"$eq": 2**53 + 1}}).where == {
        "$and": [{"n": {"$eq": 2**53 + 1}}, {"n": {"$nin": [2.0**53]}}]
    }
    assert compile_filter(where={"n": {"$lt": 2**53 + 1}}).where == {
        "$or": [{"n": {"$lt": 2**53 + 1}}, {"n": {"$in": [2.0**53]}}]
    }
    assert compile_filter(where={"n": {"$eq": 2**53}}).where == {"n": {"$eq": 2**53}}
    assert compile_filter(where={"n": {"$lte": 2**63 - 1}}).where == {"n": {"$lte": 2**63 - 1}}


def test_a_list_of_fractions_grows_by_two_clauses_at_most() -> None:
    """Each value's integers were a clause of their own: 1,000 values, 2,000 clauses."""
    where = compile_filter(where={"n": {"$in": [i + 0.5 for i in range(1000)]}}).where
    assert where is not None
    assert len(where["$and"]) == 2
    assert where["$and"][1]["n"]["$nin"] == list(range(1001))


@pytest.mark.parametrize(
    ("where", "path"),
    [
        ({"a": {"$regex": "x"}}, "where.a.$regex"),
        ({"a": {"$gt": True}}, "where.a.$gt"),
        ({"a": {"$gt": "soon"}}, "where.a.$gt"),
        ({"a": {"$in": [1, "x"]}}, "where.a.$in"),
        ({"a": {"$eq": [1]}}, "where.a.$eq"),
        ({"a": {"$eq": None}}, "where.a.$eq"),
        ({"a": {}}, "where.a"),
        ({"$or": []}, "where.$or"),
        ({"$not": {"a": 1}}, "where.$not"),
        ({"_kb_doc": "x"}, "where._kb_doc"),
        ({"a": {"$eq": float("nan")}}, "where.a.$eq"),
        # Chroma refuses these as an invalid where clause: a 503 when they reached it
        ({"minutes": {"$lt": float("inf")}}, "where.minutes.$lt"),
        ({"minutes": {"$gte": float("-inf")}}, "where.minutes.$gte"),
        ({"minutes": {"$gt": float("nan")}}, "where.minutes.$gt"),
        ({"a": {"$gte": 2**63}}, "where.a.$gte"),
        ({"a": {"$eq": 2**63}}, "where.a.$eq"),
        ({"a": {"$in": [1, -(2**63) - 1]}}, "where.a.$in"),
        # Chroma refuses lists mixing these (the in-memory copy answered them: 200 or 422 by path)
        ({"a": {"$in": [12, 2.5]}}, "where.a.$in"),
        ({"a": {"$nin": [True, 1]}}, "where.a.$nin"),
    ],
)
def test_errors_name_the_path(where: dict, path: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        compile_filter(where=where)
    assert caught.value.details[0]["field"] == path
    assert caught.value.message.startswith(path)


def test_a_list_of_decimals_may_hold_whole_numbers_written_as_decimals() -> None:
    where = compile_filter(where={"a": {"$in": [1.0, 2.5]}}).where
    assert where is not None
    assert where["$and"][0] == {"a": {"$in": [1.0, 2.5]}}
    with pytest.raises(ValidationFailed, match="all be integers or all decimals") as caught:
        compile_filter(where={"a": {"$in": [1, 2.5]}})
    assert caught.value.details[0]["field"] == "where.a.$in"


def test_a_filters_list_counts_and_sends_each_value_once() -> None:
    """Duplicates in a list of several types were all forgiven against KB_MAX_FILTER_VALUES
    and all sent: ["a"] * 100,000 + [1] went to Chroma whole (review helper 78)."""
    where = compile_filter(filters={"k": ["a"] * 5000 + [1]}).where
    assert where == {"$or": [{"k": {"$in": ["a"]}}, {"k": {"$in": [1]}}]}
    with pytest.raises(ValidationFailed, match="at most 1000 values"):
        compile_filter(filters={"k": [f"v{i}" for i in range(1001)] + [1]})
    for bad in ([[], 1, "a"], [None, 207, -5.7e16], [{}, True]):  # a 500, unhashable (fuzz)
        with pytest.raises(ValidationFailed) as refused:
            compile_filter(filters={"k": bad})
        assert refused.value.details[0]["field"] == "filters.k"


def test_a_filters_list_of_several_types_is_any_of_each_as_its_type() -> None:
    """`filters` lists mean any of: of several types (a CSV column typed cell by cell, or a
    query string's two spellings) they were refused, "list items must all have one type";
    now one $in a type (review helper 75)."""
    where = compile_filter(filters={"zip": ["02134", 10001, "10001", 2.5]}).where
    assert where == {
        "$or": [
            {"zip": {"$in": ["02134", "10001"]}},
            {"zip": {"$in": [10001]}},
            exact_numbers("zip", "$in", [2.5]),  # integers beside 2.5 kept out, as alone
        ]
    }


def test_nesting_and_size_are_limited() -> None:
    deep: dict = {"a": 1}
    for _ in range(12):
        deep = {"$and": [deep, {"b": 2}]}
    with pytest.raises(ValidationFailed, match="nest"):
        compile_filter(where=deep)
    wide = {"$or": [{"k": i} for i in range(100)]}
    with pytest.raises(ValidationFailed, match="at most"):
        compile_filter(where=wide)


def test_text_filters_count_conditions_and_the_limits_hold_for_the_whole_request() -> None:
    """Each text condition is a scan of Chroma's texts: 20,000 of them took 15 s under a read
    key, uncounted; and filters, where and where_document each had a limit of their own."""
    limits = FilterLimits(conditions=4, values=10)
    words = {"$or": [{"$contains": f"w{i}"} for i in range(5)]}
    with pytest.raises(ValidationFailed, match="at most 4 conditions") as caught:
        compile_filter(where_document=words, limits=limits)
    assert caught.value.details[0]["field"] == "where_document.$or.4.$contains"
    spread = {"filters": {"a": 1, "b": 2}, "where": {"c": 3}, "where_document": {"$contains": "x"}}
    assert compile_filter(**spread, limits=limits).where_document == {"$contains": "x"}
    with pytest.raises(ValidationFailed, match="at most 4 conditions") as caught:
        compile_filter(**{**spread, "where": {"c": 3, "d": 4}}, limits=limits)
    assert caught.value.details[0]["field"] == "where_document.$contains"
    with pytest.raises(ValidationFailed, match="at most 10 values") as caught:
        compile_filter(
            filters={"a": list(range(6))}, where={"b": {"$in": list(range(5))}}, limits=limits
        )
    assert caught.value.details[0]["field"] == "where.b.$in"


def test_bounds_at_the_ends_of_the_64_bit_range_are_kept() -> None:
    where = {"$and": [{"a": {"$gte": -(2**63)}}, {"a": {"$lte": 2**63 - 1}}]}
    assert compile_filter(where=where).where == where


def test_values_in_lists_are_limited_in_all() -> None:
    limits = FilterLimits(values=10)
    assert compile_filter(where={"a": {"$in": list(range(10))}}, limits=limits).where
    split = {"$or": [{"a": {"$in": list(range(6))}}, {"b": {"$nin": list(range(5))}}]}
    with pytest.raises(ValidationFailed, match="at most 10 values") as caught:
        compile_filter(where=split, limits=limits)
    assert caught.value.details[0]["field"] == "where.$or.1.b.$nin"
    with pytest.raises(ValidationFailed) as caught:
        compile_filter(filters={"tag": [str(i) for i in range(11)]}, limits=limits)
    assert caught.value.details[0]["field"] == "filters.tag"


def test_the_default_limit_of_values_holds_far_below_chromas() -> None:
    """32,763 values were a 503 ("too many SQL variables") from Chroma."""
    with pytest.raises(ValidationFailed, match="at most 1000 values"):
        compile_filter(where={"id": {"$in": list(range(32_763))}})


def test_where_document_operators() -> None:
    compiled = compile_filter(where_document={"$or": [{"$contains": "a"}, {"$regex": "b+"}]})
    assert compiled.where_document == {"$or": [{"$contains": "a"}, {"$regex": "b+"}]}
    with pytest.raises(ValidationFailed, match="regular expression"):
        compile_filter(where_document={"$regex": "("})


@pytest.mark.parametrize("op", ["$contains", "$not_contains"])
def test_substring_filters_refuse_a_nul_character(op: str) -> None:
    """Chroma's substring test stops at a NUL (`$contains "\x00"` finds every text), so such a
    pattern is refused, naming where it is; a $regex matches a NUL as any character."""
    with pytest.raises(ValidationFailed) as caught:
        compile_filter(where_document={"$and": [{"$contains": "a"}, {op: "a\x00b"}]})
    (detail,) = caught.value.details
    assert detail["field"] == f"where_document.$and.1.{op}"
    assert "NUL" in detail["message"]
    regex = compile_filter(where_document={op.replace("contains", "regex"): "a\x00b"})
    assert regex.where_document == {op.replace("contains", "regex"): "a\x00b"}
