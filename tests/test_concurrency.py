"""Eight threads mix adds, updates, deletes and queries against one running service.

Every answer must be a success or the 4xx the thread's own model of its documents predicts;
queries must see the thread's acknowledged writes at once (keyword index and mirror
included); and the final contents must equal a serial replay of the acknowledged operations.
Each thread owns some ids (so its replay is exact) and all threads upsert a few shared ids
(whose final text must come from an upsert that no other acknowledged upsert followed).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.live import Service, call

THREADS = 8
OWN_IDS = 6
SHARED_IDS = 3
SECONDS = 12.0


@dataclass
class Upsert:
    doc_id: str
    text: str
    started: float
    ended: float


@dataclass
class Worker:
    n: int
    base: str
    model: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    upserts: list[Upsert] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    done: int = 0

    def check(self, what: str, status: int, answer: Any, expected: int | tuple[int, ...]) -> bool:
        """Whether the operation succeeded (and so changed something); a status other than
        the one(s) the model predicts is a problem."""
        wanted = (expected,) if isinstance(expected, int) else expected
        if status not in wanted:
            self.problems.append(f"t{self.n} {what}: {status} (wanted {expected}) {answer}")
        return status in wanted and status < 300

    def step(self, rng: random.Random, seq: int) -> None:
        doc_id = f"t{self.n}-{rng.randrange(OWN_IDS)}"
        token = f"tok{self.n}x{seq}"
        meta = {"owner": self.n, "seq": seq, "token": token}
        text = f"Note {token} from thread {self.n} about topic {rng.randrange(5)}."
        exists = doc_id in self.model
        op = rng.choice(["add", "add", "update", "patch", "delete", "delete_where", "query"] * 2)
        if op == "add":
            status, answer = call(self.base, "/add", {"id": doc_id, "text": text, "metadata": meta})
            if self.check("add", status, answer, 409 if exists else 201):
                self.model[doc_id] = (text, meta)
        elif op == "update":
            body = {"id": doc_id, "text": text, "metadata": meta, "replace_metadata": True}
            status, answer = call(self.base, "/update", body)
            if self.check("update", status, answer, 200 if exists else 404):
                self.model[doc_id] = (text, meta)
        elif op == "patch":
            body = {"metadata": {"seq": seq}}
            status, answer = call(self.base, f"/documents/{doc_id}", body, method="PATCH")
            if self.check("patch", status, answer, 200 if exists else 404):
                old_text, old_meta = self.model[doc_id]
                self.model[doc_id] = (old_text, {**old_meta, "seq": seq})
        elif op == "delete":
            status, answer = call(self.base, "/delete", {"ids": [doc_id]})
            if self.check("delete", status, answer, 200 if exists else 404):
                del self.model[doc_id]
        elif op == "delete_where":
            where = {"$and": [{"owner": self.n}, {"seq": {"$lt": seq - 20}}]}
            status, answer = call(self.base, "/delete", {"where": where})
            if self.check("delete by filter", status, answer, 200):
                gone = {k for k, (_, m) in self.model.items() if m["seq"] < seq - 20}
                if set(answer["ids"]) != gone:
                    self.problems.append(f"t{self.n} delete by filter: {answer['ids']} != {gone}")
                for key in gone:
                    del self.model[key]
        else:
            self.query(rng)
        if rng.random() < 0.3:
            self.upsert_shared(rng, seq)
        self.done += 1

    def query(self, rng: random.Random) -> None:
        """A thread's own acknowledged documents are found at once, by keyword and filter."""
        if not self.model:
            return
        doc_id = rng.choice(sorted(self.model))
        token = self.model[doc_id][1]["token"]
        for mode, extra in (("keyword", {}), ("dense", {"where": {"token": token}})):
            body = {"query": f"{token} note", "mode": mode, "min_score": -1, **extra}
            status, answer = call(self.base, "/query", body)
            if self.check(f"query {mode}", status, answer, 200):
                ids = [m["id"] for m in answer["matches"]]
                if doc_id not in ids:
                    self.problems.append(f"t{self.n} {mode} query for {token}: {ids}")

    def upsert_shared(self, rng: random.Random, seq: int) -> None:
        doc_id = f"shared-{rng.randrange(SHARED_IDS)}"
        text = f"Shared note written by thread {self.n} as step {seq}."
        started = time.monotonic()
        status, answer = call(self.base, "/add", {"id": doc_id, "text": text, "upsert": True})
        # 201 when it created the document, 200 when another thread's upsert had
        if self.check("shared upsert", status, answer, (200, 201)):
            self.upserts.append(Upsert(doc_id, text, started, time.monotonic()))

    def run(self, until: float) -> None:
        rng = random.Random(self.n)
        seq = 0
        try:
            while time.monotonic() < until:
                self.step(rng, seq)
                seq += 1
        except Exception as exc:  # a transport failure is a problem like any other
            self.problems.append(f"t{self.n}: {type(exc).__name__}: {exc}")


def stored(base: str) -> dict[str, tuple[str, dict[str, Any] | None]]:
    found, offset = {}, 0
    while True:
        status, page = call(base, f"/documents?limit=1000&offset={offset}")
        assert status == 200
        found |= {d["id"]: (d["text"], d["metadata"]) for d in page["documents"]}
        offset += len(page["documents"])
        if offset >= page["total"]:
            return found


def possible_finals(upserts: list[Upsert]) -> dict[str, set[str]]:
    """Per shared id, the texts that may be last: upserts no other upsert began after."""
    finals: dict[str, set[str]] = {}
    for up in upserts:
        later = [o for o in upserts if o.doc_id == up.doc_id and o.started > up.ended]
        if not later:
            finals.setdefault(up.doc_id, set()).add(up.text)
    return finals


def test_mixed_concurrent_operations_end_as_a_serial_replay(service: Service) -> None:
    base = service.start().base
    workers = [Worker(n, base) for n in range(THREADS)]
    until = time.monotonic() + SECONDS
    threads = [threading.Thread(target=w.run, args=(until,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    problems = [p for w in workers for p in w.problems]
    assert not problems, "\n".join(problems[:20])
    steps = sum(w.done for w in workers)
    print(f"{steps} steps, {sum(len(w.upserts) for w in workers)} shared upserts")
    assert steps > 100  # the threads really did overlap for a while

    expected = {k: v for w in workers for k, v in w.model.items()}
    actual = stored(base)
    own = {k: v for k, v in actual.items() if not k.startswith("shared-")}
    assert own == expected
    finals = possible_finals([u for w in workers for u in w.upserts])
    for doc_id, texts in finals.items():
        assert actual[doc_id][0] in texts, (doc_id, actual[doc_id][0], texts)
    # the copies agree with Chroma at the end too: every document is found by its token
    for doc_id, (_, meta) in expected.items():
        body = {"query": meta["token"], "mode": "keyword", "min_score": -1, "top_k": 3}
        assert doc_id in [m["id"] for m in call(base, "/query", body)[1]["matches"]]
