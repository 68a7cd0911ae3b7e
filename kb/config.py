"""Settings shared by the service and the CLI: every knob is a KB_* environment variable."""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kb.cgroup import own_cpu_limit
from kb.errors import field_errors

PACKAGED_MODEL = "all-MiniLM-L6-v2"
# collections kb makes beside a store's: its change log on a server (kb.changes), and kb
# restore --replace's new and replaced ones (kb.staging); a store's own name may not end so
LOG_SUFFIX, NEW_SUFFIX, OLD_SUFFIX = "kb-log", "kb-new", "kb-old"
KB_SUFFIXES = tuple(f"-{suffix}" for suffix in (LOG_SUFFIX, NEW_SUFFIX, OLD_SUFFIX))
ENV_PREFIX = "KB_"  # of every setting's variable, read in any case
API_KEY_VARIABLE = f"{ENV_PREFIX}API_KEY"  # the CLI's --api-key for --url commands, not a setting
CLIENT_VARIABLES = frozenset({API_KEY_VARIABLE})  # KB_* variables read outside Settings
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def cpu_count() -> int:
    """Cores this process may use: the affinity mask (not the machine's total), capped by a
    cgroup CPU quota (a container's --cpus)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return min(cores, own_cpu_limit() or cores)


def _origin(entry: str) -> str:
    if entry == "*":
        return entry
    parts = urlsplit(entry)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in {"http", "https"} or not parts.hostname or port == -1 or (
        parts.path or parts.query or parts.fragment or parts.username or parts.password
    ):  # fmt: skip
        raise ValueError(
            f"{entry!r} is not an origin: scheme://host[:port] (http or https, no path), or '*'"
        )
    default = {"http": 80, "https": 443}[parts.scheme]
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in {None, default} else "")


# a host name as a Host header's name part: dotted labels of letters, digits, - and _
HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")


def _host(entry: str) -> str:
    """A KB_ALLOWED_HOSTS entry as the guard compares names (lower case, no trailing dot); an
    address needs no entry (every address is answered). One with a scheme, a port or a path
    would never match a request's name (the guard compares names alone) and is refused."""
    name = entry.lower().rstrip(".")
    if name == "*" or HOST_NAME.fullmatch(name):
        return name
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(name.strip("[]")))  # answered anyway
    raise ValueError(
        f"{entry!r} is not a host name: give the name alone (kb.example), without a scheme, "
        "port or path, or '*'"
    )


def default_cache() -> Path:
    """Where derived model files live: outside the repository, shared by checkouts."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kb" / "onnx"


class Settings(BaseSettings):
    """Configuration for one kb process; read from KB_* variables, overridable in code."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    # Store
    chroma_path: Path = Field(
        Path("chroma_db"),
        description="Directory of the embedded store (unused with KB_CHROMA_URL).",
    )
    chroma_url: str | None = Field(
        None, description="A Chroma server (http://host:port) to use instead of the directory."
    )
    chroma_timeout: float = Field(
        30.0,
        gt=0,
        le=86_400,
        description="With KB_CHROMA_URL: seconds to wait for the server's answer to a read "
        "(and at most 10 of them to connect) before the request fails (504).",
    )
    chroma_write_timeout: float = Field(
        300.0,
        gt=0,
        le=86_400,
        description="With KB_CHROMA_URL: seconds to wait for the server's answer to a write; "
        "a write that timed out may still be applied (504).",
    )
    collection: str = Field("knowledge_base", description="Chroma collection name.")
    lock_dir: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()),
        description="With KB_CHROMA_URL: where this host's kb processes take the write lock "
        "of a server collection (one file per server address and collection).",
    )

    # Embedding
    model: str = Field(
        PACKAGED_MODEL,
        description="'all-MiniLM-L6-v2' (the packaged model) or a local sentence-transformers dir.",
    )
    backend: Literal["onnx", "onnx-int8", "openvino-bf16", "torch", "auto"] = Field(
        "onnx",
        description="Encoder: ONNX Runtime (fp32 or int8 weights), OpenVINO in bfloat16 "
        "(CPUs with AMX or AVX512-BF16), or torch; auto = openvino-bf16 where it pays "
        "(the openvino package and a CPU with AMX), else onnx.",
    )
    onnx_cache: Path = Field(
        default_factory=default_cache, description="Where the ONNX export of the model is kept."
    )
    encoder_threads: int = Field(
        0,
        ge=0,
        description="ONNX Runtime threads of a run of one text (and of every run with "
        "KB_ENCODER_LANES=1); 0 = one per core.",
    )
    encoder_lanes: int = Field(
        0,
        ge=0,
        description="ONNX: a call's batches run side by side on this many one-thread lanes, "
        "which lose less than one session of several threads when the store's writes take a "
        "core; 0 = as many as KB_ENCODER_THREADS (one per core when that is 0 too), "
        "1 = one session of KB_ENCODER_THREADS threads.",
    )
    encoder_spin_session: bool = Field(
        True,
        description="ONNX: a run of one text (a lone query) takes a second session on "
        "KB_ENCODER_THREADS threads that spin up to 50 us between operators (1-2 ms less a "
        "lone query on 2 cores, 96 MiB more RSS); false = it runs on one lane.",
    )
    device: str = Field("cpu", description="Torch device (KB_BACKEND=torch).")
    embed_batch_size: int = Field(64, ge=1, le=4096)
    embed_batch_tokens: int = Field(
        1024,
        ge=64,
        description="ONNX: most padded tokens per encoder batch, so long texts go in smaller "
        "batches whose work stays in the CPU caches (see the README's Batching).",
    )
    encoder_process_min_texts: int = Field(
        256,
        ge=0,
        description="kb serve: adds with at least this many texts to embed are embedded by an "
        "encoder process (ONNX backends), which keeps encoding while Chroma writes; it starts "
        "once such adds have brought 800 characters per text of this setting (200k at 256). "
        "kb load: an input file of fewer bytes than that embeds in-process. "
        "0 = always in-process.",
    )
    encoder_process_idle_s: float = Field(
        120.0,
        gt=0,
        description="kb serve: the encoder process stops after this many seconds without a "
        "large add (and starts again by the same rule).",
    )
    malloc_arenas: int = Field(
        2,
        ge=0,
        description="kb serve: the most glibc malloc arenas its threads share "
        "(MALLOC_ARENA_MAX); 0 = glibc's default, 8 per core, which holds more memory.",
    )
    chunking: bool = Field(
        True, description="Split long texts into chunks; off = the model truncates them."
    )
    chunk_tokens: int | None = Field(
        None, ge=16, description="Tokens per chunk; default: the model's window minus 2."
    )
    chunk_overlap: int = Field(32, ge=0, description="Tokens shared by neighbouring chunks.")

    # Search
    min_score: float = Field(
        0.40, ge=-1.0, le=1.0, description="Default similarity threshold (minimum cosine score)."
    )
    top_k: int = Field(5, ge=1, le=1000, description="Default number of matches per query.")
    search_mode: Literal["dense", "keyword", "hybrid"] = "hybrid"
    fusion: Literal["rrf", "score"] = "score"
    duplicate_score: float = Field(
        0.95, ge=-1.0, le=1.0, description="Cosine score from which documents are near-duplicates."
    )
    hybrid_depth: int = Field(100, ge=1, le=1000, description="Candidates per side to fuse.")
    query_cache: int = Field(
        1024,
        ge=0,
        le=1_000_000,
        description="Query texts whose vectors kb serve keeps (least recently used out, about "
        "1.8 KiB each: the vector and a digest of the text; 0: none): a search asked again, "
        "with other filters, threshold or top_k, skips the encoder.",
    )
    hnsw_ef_search: int = Field(
        200,
        ge=10,
        le=10_000,
        description="Candidates Chroma's HNSW search explores (until kb's own index is built, "
        "and for text filters): recall against latency (Chroma's default is 100).",
    )
    ann_min_rows: int = Field(
        20_000,
        ge=0,
        description="Chunks from which kb builds its in-memory IVF index; smaller stores are "
        "searched exactly.",
    )
    ann_nprobe: int = Field(
        128,
        ge=1,
        le=65_536,
        description="IVF lists an unfiltered search scans (of ~4 sqrt(chunks)): recall against "
        "latency (bench/recall.py measures both).",
    )

    # Limits
    max_request_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_answer_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Largest /query answer, counted as its texts, passages, metadata and "
        "queries take it in JSON (422 above, before the rest is read or written).",
    )
    max_documents_per_request: int = Field(10_000, ge=1)
    max_queries_per_request: int = Field(64, ge=1)
    max_text_chars: int = Field(200_000, ge=1)
    max_query_chars: int = Field(
        10_000,
        ge=1,
        description="Characters per query text (the model reads its first 256 word pieces, "
        "keyword search its first 64 distinct terms).",
    )
    max_top_k: int = Field(100, ge=1, le=1000, description="Largest top_k a query may ask.")
    max_filter_depth: int = Field(8, ge=1, le=64, description="Nesting levels of a filter.")
    max_filter_conditions: int = Field(64, ge=1, le=4096, description="Conditions per filter.")
    max_filter_values: int = Field(
        1000, ge=1, le=10_000, description="Values in a filter's $in/$nin lists, in all."
    )

    # Security
    api_keys: SecretStr | None = Field(
        None, description="Comma-separated 'read:KEY' / 'write:KEY' entries; unset = open API."
    )
    cors_origins: str = Field(
        "", description="Origins allowed to call the API from a browser ('*' or a comma list)."
    )
    allowed_hosts: str = Field(
        "",
        description="Host names a keyless service answers besides IP addresses and localhost "
        "('*' or a comma list): the guard against DNS rebinding.",
    )

    # Serving
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    threads: int = Field(0, ge=0, le=256, description="Threads per worker; 0 = 8 per core.")
    workers: int = Field(1, ge=1, le=64, description="Worker processes (KB_CHROMA_URL only).")
    idle_timeout: int = Field(
        120,
        ge=1,
        le=86_400,
        description="Seconds a connection may stay silent, in the middle of a request or "
        "between requests, before the server closes it (a stalled client holds a thread).",
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL.")
    log_format: Literal["json", "text"] = Field("json", description="Log lines as JSON or text.")

    def server_threads(self) -> int:
        """Threads per worker: requests mostly wait on the encoder or the store, so a few per
        core keep the cores busy and let concurrent queries share encoder runs."""
        return self.threads or min(32, 8 * cpu_count())

    def cors(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    def hosts(self) -> list[str]:
        return [name for name in self.allowed_hosts.split(",") if name]

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: str) -> str:
        return ",".join(_host(entry.strip()) for entry in value.split(",") if entry.strip())

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, value: SecretStr | None) -> SecretStr | None:
        """Checked with every other setting, so a bad value stops every kb command (it was
        checked only where a service starts: `kb export` ran with it)."""
        from kb.auth import KeyRing  # kb.auth reads Settings
        from kb.errors import ConfigError

        try:
            KeyRing.parse(value.get_secret_value() if value else None)
        except ConfigError as exc:
            message = exc.message.removeprefix("KB_API_KEYS ").removeprefix("is ")
            raise ValueError(message) from None  # shown as "KB_API_KEYS: <message>"
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        """Each origin as browsers send it (scheme://host[:port], lower case, no default
        port), so that a configured origin matches: 'https://app.example/' or 'app.example'
        never would, and the API stayed closed to the page without a word."""
        return ",".join(_origin(entry.strip()) for entry in value.split(",") if entry.strip())

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> Settings:
        if self.top_k > self.max_top_k:
            raise ValueError(f"KB_TOP_K ({self.top_k}) exceeds KB_MAX_TOP_K ({self.max_top_k})")
        return self

    @field_validator("backend")
    @classmethod
    def _concrete_backend(cls, value: str) -> str:
        """`auto` becomes the backend it picks here, so every reader (the encoder process,
        /health, the bench's records) sees what runs."""
        if value != "auto":
            return value
        from kb.encoders.openvino_session import bf16_pays

        return "openvino-bf16" if bf16_pays() else "onnx"

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        # Checked here: an unknown name otherwise passed, and failed in logging.setLevel once
        # kb serve had started (a traceback after the banner).
        level = {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(
            value.strip().upper(), value.strip().upper()
        )
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)} (in any case)")
        return level

    @field_validator("onnx_cache", "chroma_path", "lock_dir", mode="before")
    @classmethod
    def _local_folder(cls, value: object) -> object:
        # Path("") is ".": an empty KB_CHROMA_PATH made the working directory the store
        # (chroma.sqlite3 and .kb.lock beside whatever was there), an empty KB_ONNX_CACHE put
        # a 90 MB export there; and "~/x" was a literal "./~/x" (KB_MODEL expands ~).
        if isinstance(value, str | Path):
            if not str(value).strip():
                raise ValueError("must not be empty (unset it for the default)")
            return Path(value).expanduser()
        return value

    @field_validator("chroma_url")
    @classmethod
    def _chroma_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():  # `KB_CHROMA_URL=$URL`, URL unset: it used the embedded store
            raise ValueError("must not be empty (unset it for the embedded store, KB_CHROMA_PATH)")
        if not re.fullmatch(r"https?://[^/:\s]+(:\d{1,5})?/?", value):
            raise ValueError("KB_CHROMA_URL must look like http://host:port")
        return value.rstrip("/")

    @field_validator("collection")
    @classmethod
    def _collection_name(cls, value: str) -> str:
        # Chroma's rule (3-512 chars of [a-zA-Z0-9._-], alphanumeric at both ends), less the
        # room for kb's '-kb-log' helper collection.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{1,503}[A-Za-z0-9]", value):
            raise ValueError(
                "collection names need 3-505 characters of letters, digits, '.', '_' or '-', "
                "starting and ending with a letter or digit"
            )
        if value.endswith(KB_SUFFIXES):  # kb's own beside a collection (change log, restore)
            raise ValueError(f"collection names ending in {', '.join(KB_SUFFIXES)} are kb's")
        return value


def is_kb_variable(name: str) -> bool:
    """Whether the settings would read `name`: KB_ in any case, as pydantic-settings reads."""
    return name.upper().startswith(ENV_PREFIX)


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each KB_* variable no setting reads, naming the nearest setting when one
    is close: a misspelt variable (KB_ENCODER_LANE) is otherwise ignored without a word."""
    known = {f"{ENV_PREFIX}{name}".upper() for name in Settings.model_fields} | CLIENT_VARIABLES
    warnings = []
    for name in sorted(os.environ if environ is None else environ):
        upper = name.upper()
        if is_kb_variable(name) and upper not in known:
            near = difflib.get_close_matches(upper, known, n=1, cutoff=0.8)
            hint = f" (did you mean {near[0]}?)" if near else ""
            warnings.append(f"{name} is not a kb setting and is ignored{hint}")
    return warnings


def settings_problems(error: ValidationError) -> list[str]:
    """One 'KB_FIELD: message' line per problem of an invalid Settings, for a person; the
    value given is left out (it may be a key). A check of several settings (model-level)
    names them in its message."""
    return [
        f"{ENV_PREFIX}{e['field'].split('.')[0].upper()}: {e['message']}"
        if e["field"]
        else e["message"]
        for e in field_errors(error, root="")
    ]
