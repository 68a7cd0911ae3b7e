"""The wire contract: pydantic models for every request and response body."""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonDict, JsonValue

RESERVED_PREFIX = "_kb_"
CHUNK_ID_RE = re.compile(r"#chunk\d+$")
INT64 = 2**63
MAX_KEY_CHARS = 128
MAX_ID_CHARS = 512
MIN_SCORE, MAX_SCORE = -1.0, 1.0  # the thresholds a query (and a backup's header) may hold
# Chroma (1.5.9) writes a record's metadata entries (each list item one, kb's internal
# fields and date twins included) in one SQLite statement: a record of more than 5,461
# failed its compaction, and every later write and read of the collection failed with it.
# A document's own values are capped well below: its date twins can double them.
CHROMA_METADATA_ENTRIES = 5461
MAX_METADATA_VALUES = 2048
# and at most this many bytes (as UTF-8 JSON): every chunk carries its document's metadata,
# so a 1 MB value on a text of 108 chunks took 434 MB of disk, from one request of 1 MB
MAX_METADATA_BYTES = 64 * 1024
# Text spelt as a JSON number (4, -0.5, 1e-3); groups: fraction, exponent.
JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")

SearchMode = Literal["dense", "keyword", "hybrid"]
Fusion = Literal["rrf", "score"]
SCALARS: list[JsonValue] = [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]
LIST_OF_SCALARS: JsonValue = {"type": "array", "items": {"anyOf": SCALARS}}
MetadataValueSchema: JsonDict = {"anyOf": [*SCALARS, LIST_OF_SCALARS]}


def number_problem(value: Any) -> str | None:
    """Why Chroma cannot hold or compare this number (metadata, filter values, typed text),
    or None: integers must fit in 64 bits and decimals be finite."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not -INT64 <= value < INT64:
        return "integer out of the 64-bit range"
    if isinstance(value, float) and not math.isfinite(value):
        return "numbers must be finite"
    return None


METADATA_VALUES = "values must be a string, number, boolean or a list of them"


def _check_scalar(key: str, value: Any) -> None:
    if isinstance(value, bool | str | int | float):
        if (problem := number_problem(value)) is not None:
            raise ValueError(f"metadata '{key}': {problem}")
        return
    if value is None:  # the nesting hint below would be beside the point
        raise ValueError(f"metadata '{key}': {METADATA_VALUES} (got null; leave the key out)")
    kind = "object" if isinstance(value, dict) else type(value).__name__
    raise ValueError(
        f"metadata '{key}': {METADATA_VALUES} "
        f"(got {kind}; nested objects are not supported, flatten them into keys)"
    )


def number_or_text(text: str) -> str | int | float:
    """Text spelt as a JSON number, as the number; anything else as the text it is.

    For CSV cells and query-string values. Python's int() and float() would also take
    "02134" (a zip code losing its zero), "1_000", " 7", "NaN" and "Inf" (an author called
    Nan, then refused as not finite); an integer beyond 64 bits or a float that overflows
    stays text too, since metadata cannot hold it.
    """
    match = JSON_NUMBER.fullmatch(text)
    if match is None:
        return text
    integral = match.group(1) is None and match.group(2) is None
    if integral and len(text.lstrip("-")) > 19:
        return text  # beyond 64 bits (and int() refuses more than 4,300 digits)
    number = int(text) if integral else float(text)
    return number if number_problem(number) is None else text


def scalar_or_text(text: str) -> str | int | float | bool:
    """Text as JSON would type it when written bare: true/false, a number spelt as JSON spells
    it (number_or_text), else the text. For unquoted CSV cells and query-string values."""
    if text in ("true", "false"):
        return text == "true"
    return number_or_text(text)


def check_metadata_key(key: Any) -> None:
    if not isinstance(key, str) or not key.strip():
        raise ValueError("metadata keys must be non-empty strings")
    if len(key) > MAX_KEY_CHARS:
        raise ValueError(f"metadata key '{key[:20]}...' is longer than {MAX_KEY_CHARS} characters")
    if key.startswith((RESERVED_PREFIX, "#", "$", "chroma:")):
        raise ValueError(
            f"metadata key '{key}' is reserved (keys may not start with "
            f"'{RESERVED_PREFIX}', '#', '$' or 'chroma:')"
        )


def check_metadata_value(key: str, value: Any) -> None:
    if isinstance(value, list):
        for item in value:
            _check_scalar(key, item)
            if isinstance(item, list):
                raise ValueError(f"metadata '{key}': lists may not contain lists")
        if (problem := list_kinds_problem(value)) is not None:
            raise ValueError(f"metadata '{key}': {problem}")
        return
    _check_scalar(key, value)


def list_kinds_problem(items: list[Any]) -> str | None:
    """Why Chroma refuses this list (in metadata, or as a filter's $in / $nin), or None: its
    items must have one type as Chroma tells them apart, so [1, 2.5] must be [1.0, 2.5] and
    [True, 1] is refused too."""
    kinds = {"bool" if isinstance(item, bool) else type(item).__name__ for item in items}
    if kinds == {"int", "float"}:
        return "list items must all be integers or all decimals (write 1.0 for 1 beside decimals)"
    if len(kinds) > 1:
        return "list items must all have one type"
    return None


def metadata_entries(metadata: dict[str, Any] | None) -> int:
    """How many entries Chroma writes for this metadata: one a value, one a list item."""
    return sum(len(v) if isinstance(v, list) else 1 for v in (metadata or {}).values())


def metadata_bytes(metadata: dict[str, Any] | None) -> int:
    """The metadata's size as UTF-8 JSON (0 for none)."""
    return len(json.dumps(metadata, ensure_ascii=False).encode()) if metadata else 0


def metadata_size_problem(
    metadata: dict[str, Any] | None, stored: dict[str, Any] | None = None
) -> str | None:
    """Why a document cannot hold this metadata: more values than MAX_METADATA_VALUES, or
    more bytes than MAX_METADATA_BYTES; None if it can. A document `stored` with more
    (before the caps) may keep them, not grow."""
    size = metadata_entries(metadata)
    if size > max(MAX_METADATA_VALUES, metadata_entries(stored)):
        return (
            f"metadata holds {size:,} values (each list item counts); "
            f"a document may hold at most {MAX_METADATA_VALUES:,}"
        )
    if not metadata:
        return None
    size = metadata_bytes(metadata)
    if size > MAX_METADATA_BYTES and size > metadata_bytes(stored):
        return (
            f"metadata takes {size:,} bytes as JSON; a document's may take at most "
            f"{MAX_METADATA_BYTES:,} (each of its chunks carries a copy)"
        )
    return None


def _validate_metadata(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("metadata must be an object of key -> value")
    for key, item in value.items():
        check_metadata_key(key)
        check_metadata_value(key, item)
    if (problem := metadata_size_problem(value)) is not None:
        raise ValueError(problem)
    return value


def _validate_patch(value: Any) -> Any:
    """A metadata patch may also hold null, which removes that key (JSON merge patch)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("metadata must be an object of key -> value")
    _validate_metadata({k: v for k, v in value.items() if v is not None})
    for key in value:
        check_metadata_key(key)
    return value


Metadata = Annotated[
    dict[str, Any],
    BeforeValidator(_validate_metadata),
    WithJsonSchema({"type": "object", "additionalProperties": MetadataValueSchema}),
]
MetadataPatch = Annotated[
    dict[str, Any],
    BeforeValidator(_validate_patch),
    WithJsonSchema(
        {
            "type": "object",
            "additionalProperties": {"anyOf": [MetadataValueSchema, {"type": "null"}]},
        }
    ),
]


def _validate_id(value: Any) -> Any:
    if not isinstance(value, str):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        hint = f' (write "{value}")' if number else ""
        raise ValueError(f"id must be a string{hint}")
    if len(value) > MAX_ID_CHARS:
        raise ValueError(f"id may be at most {MAX_ID_CHARS} characters (got {len(value):,})")
    if not value or value != value.strip():
        raise ValueError("id must be non-empty, without leading or trailing spaces")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("id may not contain control characters")
    if CHUNK_ID_RE.search(value):
        raise ValueError("id may not end with '#chunk<N>' (reserved for chunks)")
    return value


def check_stored_id(value: Any) -> None:
    """ValueError unless `value` is an id a stored document can have (`_validate_id`, the
    rules since kb's first version; not `_validate_new_id`'s newer ones): kb.backup checks a
    backup's document ids by it."""
    _validate_id(value)


ID_SCHEMA = WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS})
ID_LENGTH = Field(max_length=MAX_ID_CHARS)
DocId = Annotated[str, BeforeValidator(_validate_id), ID_SCHEMA, ID_LENGTH]
BREAKS = frozenset({"Cc", "Zl", "Zp"})  # C0 and C1 controls, line and paragraph separators


def _validate_new_id(value: Any) -> Any:
    """An id a write gives a new document: besides `_validate_id`, no C1 control or Unicode
    line break (U+0085, U+2028, U+2029 end a line for Unicode-aware readers of `kb
    duplicates`' one-group-a-line output, and logs escape them), and not "." or "..", which
    clients resolve as path steps (GET /documents/.. answered the search page; review helper
    82). Ids an older kb stored with them can still be read, updated and deleted."""
    _validate_id(value)
    if not value.isascii() and any(unicodedata.category(ch) in BREAKS for ch in value):
        raise ValueError("id may not contain control characters or line separators")
    if value in (".", ".."):  # `/documents/..` is `/` to every HTTP client and browser
        raise ValueError(f"id may not be '{value}': a URL path cannot name it")
    return value


NewDocId = Annotated[str, BeforeValidator(_validate_new_id), ID_SCHEMA, ID_LENGTH]


INVISIBLE = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})  # Unicode categories no reader sees


def _visible(text: str) -> bool:
    """Whether a reader would see any of the text: a text of only zero-width spaces, marks
    and the like would be stored and found as a near-duplicate of every other such text.
    Stops at the first visible character, so ordinary text costs one lookup."""
    return any(unicodedata.category(char) not in INVISIBLE for char in text)


def _validate_text(value: Any, info: ValidationInfo) -> Any:
    if not isinstance(value, str):
        raise ValueError("text must be a string")
    if not value.strip():
        raise ValueError("text must not be empty")
    if not _visible(value):
        raise ValueError(
            "text must hold a visible character, not only spaces and invisible ones "
            "(zero-width spaces, byte-order marks, control characters)"
        )
    settings = (info.context or {}).get("settings")
    if settings is not None and len(value) > settings.max_text_chars:
        raise ValueError(
            f"text has {len(value)} characters; at most {settings.max_text_chars} "
            "(KB_MAX_TEXT_CHARS)"
        )
    return value


Text = Annotated[
    str,
    BeforeValidator(_validate_text),
    WithJsonSchema({"type": "string", "minLength": 1, "pattern": r"\S"}),
]


OnDuplicate = Literal["allow", "skip", "reject", "ignore"]


def _at_most(value: Any, info: ValidationInfo, setting: str, what: str) -> Any:
    """A request's list of at most the setting's items, counted before they are validated:
    counted after, a body of a million bad items (a 5 MB list of numbers) was a million
    errors, 4 s and 1.2 GB of the service's memory to find them (review helper 80)."""
    settings = (info.context or {}).get("settings")
    limit = getattr(settings, setting, None) if settings is not None else None
    if limit and isinstance(value, list) and len(value) > limit:
        raise ValueError(f"at most {limit:,} {what} per request (KB_{setting.upper()})")
    return value


UNKNOWN_SHOWN = 10  # unknown fields of one object named one by one; more are one error


class Model(BaseModel):
    """Base for request bodies: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _few_unknown_fields(cls, data: Any) -> Any:
        """An object of many unknown fields is one error naming a few: one each (pydantic's
        extra="forbid"), a 15 MiB body of 1.3 million made 1.3 million details, a reply of
        109 MB and 2.4 GB of the service's memory (review helper 80)."""
        if isinstance(data, dict) and len(data) > UNKNOWN_SHOWN:
            known = _known_fields(cls)
            _few_unknown([key for key in data if key not in known])
        return data


def _few_unknown_in(items: list[Any], model: type[BaseModel]) -> None:
    """More than UNKNOWN_SHOWN unknown fields over a list's objects are one error: ten in
    each of 10,000 documents were 100,000 errors, 3.1 s and 108 MB for a 0.92 MB body, each
    object staying under the one-object count (review helper 86)."""
    known = _known_fields(model)
    unknown = [
        f"{i}.{key}"
        for i, item in enumerate(items)
        if isinstance(item, dict) and len(item) > len(known & item.keys())
        for key in item
        if key not in known
    ]
    _few_unknown(unknown)


def _few_unknown(unknown: list[str]) -> None:
    """One error for more than UNKNOWN_SHOWN unknown fields (their names or paths, in order),
    naming the first ones; fewer are pydantic's to report, one each."""
    if len(unknown) > UNKNOWN_SHOWN:
        shown = ", ".join(f"'{_clipped(name)}'" for name in unknown[:UNKNOWN_SHOWN])
        raise ValueError(
            f"{len(unknown):,} unknown fields: {shown} and {len(unknown) - UNKNOWN_SHOWN:,} more"
        )


def _clipped(text: str, most: int = 64) -> str:
    return text if len(text) <= most else f"{text[:most]}..."


def _known_fields(model: type[BaseModel]) -> set[str]:
    names = set(model.model_fields)
    return names | {f.alias for f in model.model_fields.values() if f.alias}


# ---------------------------------------------------------------- documents


class DocumentIn(Model):
    id: NewDocId | None = None
    text: Text
    metadata: Metadata | None = None


class AddRequest(Model):
    """One document (`text`, `id`, `metadata`) or many (`documents`)."""

    documents: list[DocumentIn] | None = Field(None, min_length=1)
    id: NewDocId | None = None
    text: Text | None = None
    metadata: Metadata | None = None
    upsert: bool = Field(False, description="Replace documents whose id exists instead of 409.")
    on_duplicate: OnDuplicate = Field(
        "allow",
        description="New documents nearly identical to a stored one (KB_DUPLICATE_SCORE): "
        "write them anyway and report them (allow), leave them out (skip), refuse the request "
        "(reject), or do not look for them (ignore: a bulk load's fastest path).",
    )
    on_conflict: Literal["error", "skip", "upsert"] | None = Field(
        None,
        description="For ids that exist: 409 (error, the default), keep the stored document "
        '(skip), or replace it when its content changed (upsert; same as "upsert": true).',
    )

    @model_validator(mode="after")
    def _one_form(self) -> AddRequest:
        single = self.text is not None or self.id is not None or self.metadata is not None
        if self.documents is not None and single:
            raise ValueError("send either 'documents' or a single document's fields, not both")
        if self.documents is None and self.text is None:
            raise ValueError("'text' (one document) or 'documents' (a list) is required")
        if self.upsert and self.on_conflict not in (None, "upsert"):
            raise ValueError("'upsert': true contradicts 'on_conflict'")
        if "upsert" in self.model_fields_set and not self.upsert and self.on_conflict == "upsert":
            raise ValueError("'upsert': false contradicts 'on_conflict': 'upsert'")
        return self

    @field_validator("documents", mode="before")
    @classmethod
    def _documents_limit(cls, value: Any, info: ValidationInfo) -> Any:
        value = _at_most(value, info, "max_documents_per_request", "documents")
        if isinstance(value, list):
            _few_unknown_in(value, DocumentIn)
        return value

    def conflict_mode(self) -> str:
        return "upsert" if self.upsert else self.on_conflict or "error"

    def items(self) -> list[DocumentIn]:
        if self.documents is not None:
            return self.documents
        assert self.text is not None
        return [DocumentIn(id=self.id, text=self.text, metadata=self.metadata)]


class Duplicate(BaseModel):
    id: str = Field(description="The new document.")
    existing: str = Field(description="The stored document it nearly duplicates.")
    score: float = Field(
        description="The lowest cosine similarity of their chunks, compared one by one."
    )


class AddResponse(BaseModel):
    ids: list[str] = Field(description="Ids of every document in the request, in order.")
    added: int = Field(description="New documents written.")
    updated: int = Field(0, description="Existing documents replaced (upsert, content changed).")
    skipped: int = Field(0, description="Documents not written: existing ids, skipped duplicates.")
    skipped_changed: int = Field(
        0,
        description="Of the skipped: existing ids whose stored text or metadata differ from "
        'what was sent (on_conflict "skip"); "upsert" would replace them.',
    )
    duplicates: list[Duplicate] = Field(
        default_factory=list, description="New documents nearly identical to stored ones."
    )


class Document(BaseModel):
    id: str
    text: str
    metadata: dict[str, Any] | None = Field(
        None, json_schema_extra={"additionalProperties": MetadataValueSchema}
    )
    chunks: int = Field(1, description="How many chunks the document is stored as.")


class DocumentList(BaseModel):
    documents: list[Document]
    total: int = Field(description="Documents matching the filters, ignoring limit and offset.")
    limit: int
    offset: int


class UpdateFields(Model):
    text: Text | None = None
    metadata: MetadataPatch | None = None
    replace_metadata: bool = Field(
        False, description="Replace the metadata instead of merging; null values remove keys."
    )

    @model_validator(mode="after")
    def _something(self) -> UpdateFields:
        if self.text is None and self.metadata is None:
            raise ValueError("nothing to update: give 'text' and/or 'metadata'")
        if self.replace_metadata and self.metadata is None:  # kept the metadata, silently
            raise ValueError("'replace_metadata' needs the 'metadata' to replace it with")
        return self


class UpdateRequest(UpdateFields):
    id: DocId


class DeleteRequest(Model):
    ids: list[DocId] | None = Field(None, min_length=1)
    where: dict[str, Any] | None = None
    filters: dict[str, Any] | None = None

    @field_validator("ids", mode="before")
    @classmethod
    def _ids_limit(cls, value: Any, info: ValidationInfo) -> Any:
        return _at_most(value, info, "max_documents_per_request", "ids")

    @model_validator(mode="after")
    def _target(self) -> DeleteRequest:
        by_filter = self.where is not None or self.filters is not None
        if self.ids is None and not by_filter:
            raise ValueError("give 'ids' or 'where'/'filters': there is no delete of everything")
        if self.ids is not None and by_filter:
            raise ValueError("give either 'ids' or 'where'/'filters', not both")
        if by_filter and not (self.where or self.filters):
            raise ValueError("an empty filter would delete everything; kb refuses that")
        return self


class DeleteResponse(BaseModel):
    deleted: int
    ids: list[str]


# ---------------------------------------------------------------- search


def _check_query(text: str, info: ValidationInfo) -> str:
    """A query text is not blank and, in a request, at most KB_MAX_QUERY_CHARS long: a 12 MB
    query took 39 s and grew the service by half a gigabyte, and the model reads 256 word
    pieces of it. Checked per item, so an error names the item (`queries.1`)."""
    settings = (info.context or {}).get("settings")
    if not text.strip():
        raise ValueError("a query must not be empty")
    if not _visible(text):  # a search for nothing answered no_confident_match (review helper 99)
        raise ValueError(
            "a query must hold a visible character, not only spaces and invisible ones "
            "(zero-width spaces, byte-order marks, control characters)"
        )
    if settings is not None and len(text) > settings.max_query_chars:
        raise ValueError(
            f"a query has {len(text)} characters; at most {settings.max_query_chars} "
            "(KB_MAX_QUERY_CHARS)"
        )
    return text


QueryText = Annotated[str, AfterValidator(_check_query)]


class QueryRequest(Model):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    query: QueryText | None = Field(None, description="One natural-language query.")
    queries: list[QueryText] | None = Field(None, min_length=1, description="A batch of queries.")
    top_k: int | None = Field(
        None, ge=1, le=1000, description="Matches per query (default 5; at most KB_MAX_TOP_K)."
    )
    filters: dict[str, Any] | None = Field(
        None, description="Simple filters: key -> value (equality) or list (any of)."
    )
    where: dict[str, Any] | None = Field(None, description="Chroma-style metadata filter.")
    where_document: dict[str, Any] | None = Field(None, description="Filter on the text.")
    min_score: float | None = Field(
        None, ge=MIN_SCORE, le=MAX_SCORE, description="Minimum cosine score."
    )
    explain: bool = Field(False, description="Also return the candidates below the threshold.")
    mode: SearchMode | None = Field(None, description="dense, keyword (BM25) or hybrid.")
    diversify: bool = Field(False, description="Re-rank with maximal marginal relevance.")
    mmr_lambda: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        alias="lambda",
        description="Diversify: 1 = relevance only, 0 = diversity only.",
    )
    fusion: Fusion | None = Field(None, description="Hybrid: rrf (rank) or score (min-max).")

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, value: int | None, info: ValidationInfo) -> int | None:
        settings = (info.context or {}).get("settings")
        if value is not None and settings is not None and value > settings.max_top_k:
            raise ValueError(f"top_k may be at most {settings.max_top_k} (KB_MAX_TOP_K)")
        return value

    @field_validator("queries", mode="before")
    @classmethod
    def _queries_count(cls, value: Any, info: ValidationInfo) -> Any:
        return _at_most(value, info, "max_queries_per_request", "queries")

    @model_validator(mode="after")
    def _one_form(self) -> QueryRequest:
        if (self.query is None) == (self.queries is None):
            raise ValueError("give exactly one of 'query' (a string) or 'queries' (a list)")
        # options that would change nothing are refused, not ignored
        if "mmr_lambda" in self.model_fields_set and not self.diversify:
            raise ValueError("'lambda' applies only with 'diversify': true")
        if self.fusion is not None and self.mode not in (None, "hybrid"):
            raise ValueError(f"'fusion' applies only to hybrid search, not mode '{self.mode}'")
        return self

    def texts(self) -> list[str]:
        return [self.query] if self.query is not None else list(self.queries or [])


ThresholdSource = Literal["request", "calibrated", "configured"]
QueryStatus = Literal["ok", "no_confident_match", "no_keyword_match", "no_candidates"]


class Match(BaseModel):
    id: str
    score: float = Field(description="Cosine similarity in [-1, 1]; higher is closer.")
    text: str
    metadata: dict[str, Any] | None = Field(
        None, json_schema_extra={"additionalProperties": MetadataValueSchema}
    )
    passage: str | None = Field(
        None, description="For a document stored in chunks: the chunk that matched."
    )
    keyword_score: float | None = Field(None, description="BM25 score (keyword and hybrid).")
    fused_score: float | None = Field(None, description="Hybrid: the fusion score that ranks.")


class Threshold(BaseModel):
    min_score: float
    source: ThresholdSource


class QueryResult(BaseModel):
    query: str
    status: QueryStatus
    message: str
    matches: list[Match]
    threshold: Threshold
    candidates: int = Field(
        description="Documents the search ranked: the top_k nearest in dense mode, up to "
        "max(top_k, KB_HYBRID_DEPTH) a side in keyword and hybrid mode. With diversify the "
        "counts are the same reading's, though MMR picks from the best 4 x top_k."
    )
    rejected: int = Field(description="Candidates dropped for scoring below the threshold.")
    best_rejected_score: float | None = Field(
        description="The best score among the rejected candidates (how close the best came)."
    )
    near_misses: list[Match] | None = Field(
        None,
        description='With "explain": the top_k best-scored rejected candidates, best first.',
    )
    truncated: bool = Field(
        False,
        description="Whether the search read only the start of the query: the model reads "
        "its first 254 word pieces (the packaged model's; the window less [CLS] and [SEP]), "
        "keyword and hybrid search its first 64 distinct words that are not stop words. The "
        "rest is ignored; `message` then ends saying where the reading stopped.",
    )


class BatchQueryResult(BaseModel):
    results: list[QueryResult]


# ---------------------------------------------------------------- system


class ModelInfo(BaseModel):
    name: str
    backend: str = Field(
        description="The encoder running the model: onnx, onnx-int8, openvino-bf16 or torch."
    )
    dim: int
    fingerprint: str


class StoreInfo(BaseModel):
    mode: Literal["embedded", "server"]
    location: str | None = Field(
        description="The store's folder or Chroma URL; null to a caller without a key when "
        "keys are required"
    )
    collection: str


class Health(BaseModel):
    status: Literal["ok"]
    ready: bool = Field(
        description="Whether the in-memory search copies are loaded (loaded in the background "
        "after a start). Until then every request is answered, searches more slowly."
    )
    version: str
    documents: int
    model: ModelInfo
    store: StoreInfo


class Limits(BaseModel):
    """The request and answer limits of the service (its KB_MAX_* settings but
    KB_MAX_TOP_K, Info's max_top_k): `kb load --url` cuts its batches and checks its
    documents by them."""

    max_request_bytes: int = Field(ge=1, description="Largest request body, in bytes.")
    # optional: a service before it does not say it, and a client reading /info (kb load
    # --url) then dropped every limit it did say (review helper 106)
    max_answer_bytes: int | None = Field(
        None,
        ge=1,
        description="Largest /query answer: its texts, passages, metadata, ids and queries as "
        "JSON, in bytes (422 answer_too_large above).",
    )
    max_documents_per_request: int = Field(ge=1, description="Most documents one /add takes.")
    max_text_chars: int = Field(ge=1, description="Longest document text, in characters.")
    max_query_chars: int = Field(ge=1, description="Longest query text, in characters.")
    max_queries_per_request: int = Field(ge=1, description="Most queries one /query takes.")
    max_filter_depth: int = Field(ge=1, description="Nesting levels a filter may have.")
    max_filter_conditions: int = Field(ge=1, description="Conditions a request's filters hold.")
    max_filter_values: int = Field(
        ge=1, description="List values a request's filters hold, in all."
    )


class Info(BaseModel):
    """What a client (the search page, kb load --url) needs to know about this service and
    its key."""

    auth_required: bool = Field(description="Whether routes other than /health need a key.")
    role: Literal["read", "write"] | None = Field(
        description="What the presented key may do (write when no keys are configured)."
    )
    threshold: Threshold = Field(description="The default similarity threshold.")
    top_k: int = Field(description="Default matches per query.")
    max_top_k: int
    search_mode: SearchMode = Field(description="Default search mode.")
    limits: Limits


class FieldStats(BaseModel):
    documents: int = Field(description="Documents that have this key.")
    distinct: int
    values: dict[str, int] = Field(description="Most common values with their counts.")
    min: int | float | str | None = None  # int first: 2**63 - 1 came back as 9.2e18
    max: int | float | str | None = None


class Stats(BaseModel):
    documents: int
    chunks: int
    metadata: dict[str, FieldStats]


class ErrorDetail(BaseModel):
    field: str = Field(description="The field as the caller wrote it: documents.3.text, limit")
    message: str
    type: str


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail]


class ErrorBody(BaseModel):
    error: ErrorInfo
