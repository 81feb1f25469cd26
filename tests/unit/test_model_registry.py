"""The model registry on fake version directories: roles, history, generation, rollback, the
atomic pointer write, directories from before the registry, the checks before a role is given,
and the promotion policy (tables and properties)."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import multiprocessing
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.core.definitions import MODEL_INPUTS
from pipelines.stores.model_registry import (
    DEFAULT_POLICY,
    POINTER_FILE,
    ModelRegistry,
    Pointer,
    RegistryConflict,
    RegistryError,
    daily_metrics,
    decide_promotion,
)
from pipelines.transforms.inference import resolve_model
from tests.cards import card_fields, feature_spec, handbook_variant


def make_version(root: Path, version: str, **card: Any) -> Path:
    """A fake version: a saved_model/ with a file and a model card (of a model of the
    handbook's 15 features, unless ``card`` says otherwise)."""
    target = root / version
    (target / "saved_model").mkdir(parents=True)
    (target / "saved_model" / "saved_model.pb").write_bytes(b"fake")
    full = {
        "version": version,
        **card_fields(MODEL_INPUTS),
        "training_range": ["2018-04-01", "2018-04-07"],
        **card,
    }
    (target / "model_card.json").write_text(json.dumps(full))
    return target


@pytest.fixture
def models(tmp_path: Path) -> Path:
    for version in ("v1", "v2", "v3"):
        make_version(tmp_path, version)
    return tmp_path


def stored(root: Path) -> dict[str, Any]:
    return dict(json.loads((root / POINTER_FILE).read_text()))


# Directories from before the registry.


def test_without_registry_json_the_newest_version_is_the_champion(models: Path) -> None:
    registry = ModelRegistry(str(models))
    assert registry.versions() == ["v1", "v2", "v3"]
    pointer = registry.pointer()
    assert (pointer.champion, pointer.challenger, pointer.generation) == ("v3", None, 0)
    assert dict(pointer.policy) == DEFAULT_POLICY and pointer.history == ()
    assert not (models / POINTER_FILE).exists()
    assert resolve_model(str(models)).version == "v3"
    assert resolve_model(str(models), "latest").version == "v3"


def test_an_empty_directory_has_no_champion(tmp_path: Path) -> None:
    assert ModelRegistry(str(tmp_path)).pointer() == Pointer(None, None, 0, None)
    with pytest.raises(FileNotFoundError, match="train one with 'rillet train'"):
        resolve_model(str(tmp_path))


def test_one_resolver_for_the_names_of_a_version(models: Path) -> None:
    """champion, challenger and latest stand for a version wherever one is named (the job,
    evaluate, the models commands): ModelRegistry.resolve, which resolve_model uses."""
    registry = ModelRegistry(str(models))
    assert [registry.resolve(n) for n in ("champion", "latest", "v1")] == ["v3", "v3", "v1"]
    with pytest.raises(RegistryError, match=r"no challenger in .*rillet models challenge VERSION"):
        registry.resolve("challenger")
    registry.promote("v1", challenger="v2")
    assert [registry.resolve(n) for n in ("champion", "challenger", "latest")] == ["v1", "v2", "v3"]
    assert resolve_model(str(models), "challenger").version == "v2"
    with pytest.raises(RegistryError, match=r"unknown model version 'latest'.*holds no version"):
        ModelRegistry(str(models / "empty")).resolve("latest")


# Roles, history, generation.


def test_challenge_promote_rollback(models: Path) -> None:
    registry = ModelRegistry(str(models))
    p = registry.challenge("v2", by="me")
    assert (p.champion, p.challenger, p.generation) == ("v3", "v2", 1)
    assert stored(models)["champion"] == "v3"  # the implicit champion is written out
    p = registry.promote()
    assert (p.champion, p.challenger, p.generation) == ("v2", None, 2)
    assert resolve_model(str(models)).version == "v2"  # 'champion' follows the pointer
    assert resolve_model(str(models), "latest").version == "v3"
    p = registry.rollback()
    assert (p.champion, p.challenger, p.generation) == ("v3", "v2", 3)
    assert [h["action"] for h in p.history] == ["challenge", "promote", "rollback"]
    assert p.history[0]["by"] == "me" and "by" not in p.history[1]
    assert p.history[1]["previous"] == {"champion": "v3", "challenger": "v2"}
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()
    assert registry.pointer() == p  # what was read back is what was written


def test_promote_sets_the_new_challenger_in_the_same_write(models: Path) -> None:
    registry = ModelRegistry(str(models))
    p = registry.promote("v1", challenger="v2")
    assert (p.champion, p.challenger, p.generation) == ("v1", "v2", 1)
    assert resolve_model(str(models), "challenger").version == "v2"
    p = registry.promote()  # the challenger; no new challenger
    assert (p.champion, p.challenger) == ("v2", None)
    # Two rollbacks undo both promotions, in reverse order.
    assert (registry.rollback().champion, registry.pointer().challenger) == ("v1", "v2")
    assert (registry.rollback().champion, registry.pointer().challenger) == ("v3", None)


def test_register_roles(tmp_path: Path) -> None:
    registry = ModelRegistry(str(tmp_path))
    make_version(tmp_path, "v1")
    p = registry.register("v1")  # no role: an empty registry has no champion yet
    assert (p.champion, p.challenger) == (None, None)
    with pytest.raises(RegistryError, match="no champion in"):
        resolve_model(str(tmp_path))
    make_version(tmp_path, "v2")
    assert registry.register("v2", as_="champion").champion == "v2"
    make_version(tmp_path, "v3")
    p = registry.register("v3", as_="challenger")
    assert (p.champion, p.challenger, p.generation) == ("v2", "v3", 3)
    assert [h.get("version") for h in p.history] == ["v1", "v2", "v3"]
    with pytest.raises(RegistryError, match="already registered; versions are immutable"):
        registry.register("v3", as_="champion")
    with pytest.raises(RegistryError, match="expected 'champion', 'challenger' or none"):
        registry.register("v1", as_="boss")


def test_register_in_an_old_directory_keeps_the_old_champion(models: Path) -> None:
    """The trainer writes v4, then registers it: the champion stays the newest version before
    it, not v4 (which would otherwise be the implicit champion)."""
    make_version(models, "v4")
    p = ModelRegistry(str(models)).register("v4", as_="challenger")
    assert (p.champion, p.challenger) == ("v3", "v4")


def test_register_as_champion_can_be_rolled_back(models: Path) -> None:
    make_version(models, "v4")
    registry = ModelRegistry(str(models))
    assert registry.register("v4", as_="champion").champion == "v4"
    assert registry.rollback().champion == "v3"


def test_clearing_the_challenger(models: Path) -> None:
    registry = ModelRegistry(str(models))
    with pytest.raises(RegistryError, match="no challenger to clear"):
        registry.challenge(None)
    registry.challenge("v1")
    p = registry.challenge(None)
    assert p.challenger is None and p.history[-1]["action"] == "retire-challenger"


def test_role_errors(models: Path) -> None:
    registry = ModelRegistry(str(models))
    with pytest.raises(RegistryError, match="no challenger to promote"):
        registry.promote()
    with pytest.raises(RegistryError, match="'v3' is the champion already"):
        registry.promote("v3")
    with pytest.raises(RegistryError, match="a challenger must be another version"):
        registry.challenge("v3")
    with pytest.raises(RegistryError, match="cannot be champion and challenger"):
        registry.promote("v1", challenger="v1")
    with pytest.raises(RegistryError) as unknown:
        registry.promote("v9")
    assert str(unknown.value) == (
        f"unknown model version 'v9' in {models}: known versions are v1, v2, v3; list them with "
        "'rillet models list'"
    )
    with pytest.raises(RegistryError, match="expected a directory name"):
        registry.card("../v1")
    assert not (models / POINTER_FILE).exists()  # nothing was written


# Files and cards.


def test_incomplete_versions_are_refused(models: Path) -> None:
    make_version(models, "a4")
    for path in (models / "a4" / "saved_model").iterdir():
        path.unlink()
    make_version(models, "a5")
    (models / "a5" / "model_card.json").unlink()
    registry = ModelRegistry(str(models))
    with pytest.raises(RegistryError, match=r"'a4' .* is incomplete: no saved_model/; expected"):
        registry.challenge("a4")
    with pytest.raises(RegistryError, match=r"'a5' .* is incomplete: no model_card.json"):
        registry.card("a5")
    assert "a5" not in registry.versions()


def test_check_features_and_definitions(models: Path) -> None:
    registry = ModelRegistry(str(models))
    # (versions named a*: older than v1..v3, never the implicit champion)
    registry.check("v1")
    registry.check("v1", (*MODEL_INPUTS, "EXTRA"))  # the job may compute more than it uses
    with pytest.raises(RegistryError, match=r"TX_AMOUNT: declared, but the job does not compute"):
        registry.check("v1", MODEL_INPUTS[1:])

    # A model trained with a file that declares one more feature: not in the handbook's.
    def add_feature(data: dict[str, Any]) -> None:
        data["features"].append(
            {"name": "NEW_FEATURE", "entity": "customer", "op": "count", "window": "1h"}
        )

    wider = handbook_variant(add_feature)
    make_version(models, "a5", **card_fields(["TX_AMOUNT", "NEW_FEATURE"], wider))
    with pytest.raises(RegistryError, match=r"'a5' cannot be served .*: NEW_FEATURE: not declared"):
        registry.promote("a5")
    ModelRegistry(str(models), definitions=wider).check("a5")
    # Cards from before per-input fingerprints are refused, with what to do.
    make_version(models, "a6", feature_fingerprints=None, feature_definitions_version="0" * 12)
    with pytest.raises(RegistryError, match=r"no fingerprint per input .* retrain it"):
        registry.challenge("a6")


def _window(name: str, window: str) -> Any:
    def change(data: dict[str, Any]) -> None:
        feature_spec(data, name)["window"] = window

    return change


def test_a_model_is_checked_per_input(models: Path) -> None:
    """Adding a feature keeps a card valid; changing a used feature refuses it, naming the
    input and what differs; changing a feature it does not use does not."""
    subset = ["CUSTOMER_ID_NB_TX_1DAY_WINDOW", "TX_AMOUNT"]  # its own order, not the file's
    make_version(models, "a1", **card_fields(subset))

    def add(data: dict[str, Any]) -> None:
        data["features"].insert(
            3, {"name": "CARD_NB_TX_10MIN", "entity": "customer", "op": "count", "window": "10m"}
        )

    added = handbook_variant(add)
    for version in ("a1", "v1"):
        ModelRegistry(str(models), definitions=added).check(version)
    unused = handbook_variant(_window("CUSTOMER_ID_NB_TX_7DAY_WINDOW", "6d"))
    ModelRegistry(str(models), definitions=unused).check("a1")
    with pytest.raises(RegistryError, match=r"7DAY_WINDOW: declared differently \(window 7d -> 6d"):
        ModelRegistry(str(models), definitions=unused).check("v1")  # the full model uses it
    changed = handbook_variant(_window("CUSTOMER_ID_NB_TX_1DAY_WINDOW", "2d"))
    with pytest.raises(RegistryError) as refused:
        ModelRegistry(str(models), definitions=changed).check("a1")
    assert str(refused.value) == (
        "model version 'a1' cannot be served with the definitions 'handbook' (variant.yaml): "
        "CUSTOMER_ID_NB_TX_1DAY_WINDOW: declared differently (window 1d -> 2d)"
    )

    # A missing input is named, with every other problem of the same card.
    def drop_amount(data: dict[str, Any]) -> None:
        data["features"] = [f for f in data["features"] if f["name"] != "TX_AMOUNT"]
        feature_spec(data, "CUSTOMER_ID_NB_TX_1DAY_WINDOW")["window"] = "2d"

    with pytest.raises(RegistryError) as refused:
        ModelRegistry(str(models), definitions=handbook_variant(drop_amount)).check("a1")
    assert str(refused.value).endswith(
        ": CUSTOMER_ID_NB_TX_1DAY_WINDOW: declared differently (window 1d -> 2d); "
        "TX_AMOUNT: not declared in the definitions"
    )


def test_card(models: Path) -> None:
    card = ModelRegistry(str(models)).card("v2")
    assert card["version"] == "v2" and card["features"] == list(MODEL_INPUTS)
    (models / "v2" / "model_card.json").write_text("{not json")
    with pytest.raises(RegistryError, match="not a JSON model card"):
        ModelRegistry(str(models)).card("v2")


# The pointer file.


def test_the_pointer_is_replaced_atomically(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = ModelRegistry(str(models))
    registry.challenge("v1")
    before = (models / POINTER_FILE).read_text()
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        # The new content is complete in the temporary file before it takes the name.
        assert json.loads(Path(src).read_text())["challenger"] == "v2"
        assert (models / POINTER_FILE).read_text() == before
        replaced.append((src, dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    registry.challenge("v2")
    assert len(replaced) == 1 and replaced[0][1] == str(models / POINTER_FILE)
    assert sorted(p.name for p in models.iterdir()) == [POINTER_FILE, "v1", "v2", "v3"]

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        registry.challenge("v1")
    assert stored(models)["challenger"] == "v2"  # a failed write leaves the pointer whole
    assert sorted(p.name for p in models.iterdir()) == [POINTER_FILE, "v1", "v2", "v3"]


def test_a_concurrent_change_is_refused(models: Path) -> None:
    registry = ModelRegistry(str(models))
    registry.challenge("v1")
    stale = registry.pointer()
    ModelRegistry(str(models)).challenge("v2")  # another writer
    with pytest.raises(RegistryError, match=r"changed meanwhile \(generation 1 -> 2\)"):
        registry._write(stale, stale)


def test_the_written_pointer(models: Path) -> None:
    ModelRegistry(str(models)).challenge("v2", by="me")
    raw = stored(models)
    assert set(raw) == {"champion", "challenger", "generation", "updated_at", "policy", "history"}
    when = dt.datetime.fromisoformat(raw["updated_at"])
    assert when.utcoffset() == dt.timedelta(0)
    assert raw["history"][0]["action"] == "challenge"


def test_a_broken_pointer_is_a_clear_error(models: Path) -> None:
    (models / POINTER_FILE).write_text("[1, 2")
    with pytest.raises(RegistryError, match="not a registry pointer"):
        ModelRegistry(str(models)).pointer()


# Changes at the same time: a compare-and-swap of the pointer.


class Racing:
    """A registry's pointer object whose writers wait at the compare-and-swap until every one of
    them has read the pointer: the changes are computed from the same pointer."""

    def __init__(self, registry: ModelRegistry, barrier: threading.Barrier) -> None:
        self.inner = registry._pointer_object
        self.barrier = barrier
        registry._pointer_file = self

    def read(self) -> tuple[bytes | None, Any]:
        return self.inner.read()

    def write_if(self, data: bytes, token: Any) -> bool:
        self.barrier.wait(timeout=10)
        return bool(self.inner.write_if(data, token))


def race(*changes: Any) -> list[Any]:
    """Runs the changes in threads at once; each result is a Pointer or the exception."""
    results: list[Any] = [None] * len(changes)

    def run(i: int) -> None:
        try:
            results[i] = changes[i]()
        except RegistryError as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(changes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_two_promotions_at_once_one_wins_the_other_is_refused(models: Path) -> None:
    ModelRegistry(str(models)).challenge("v2")
    first, second = ModelRegistry(str(models)), ModelRegistry(str(models))
    barrier = threading.Barrier(2)
    Racing(first, barrier), Racing(second, barrier)
    results = race(first.promote, lambda: second.promote("v1"))
    won = [r for r in results if isinstance(r, Pointer)]
    lost = [r for r in results if isinstance(r, Exception)]
    assert len(won) == 1 and len(lost) == 1, results
    assert isinstance(lost[0], RegistryConflict)
    assert str(lost[0]).endswith(
        "changed meanwhile (generation 1 -> 2): another change was written first and this one "
        "was not; run the command again"
    )
    raw = stored(models)
    assert raw["generation"] == 2 and raw["champion"] == won[0].champion
    assert [h["action"] for h in raw["history"]] == ["challenge", "promote"]
    # Run again, the loser applies to the new pointer: both are in the history, in sequence.
    again = ModelRegistry(str(models)).promote("v1" if won[0].champion == "v2" else "v2")
    raw = stored(models)
    assert raw["generation"] == 3 == again.generation
    assert [h["action"] for h in raw["history"]] == ["challenge", "promote", "promote"]
    assert raw["history"][2]["previous"]["champion"] == won[0].champion


def _change_policy_repeatedly(model_dir: str, worker: int, start: Any, out: Any) -> None:
    """One process of the test below: 25 policy changes, each recorded as won or lost."""
    registry = ModelRegistry(model_dir)
    start.wait()
    for i in range(25):
        try:
            pointer = registry.set_policy(min_days=1 + (worker * 25 + i) % 9)
            out.put((worker, pointer.generation))
        except RegistryConflict:
            out.put((worker, None))


def test_processes_changing_the_pointer_at_once_lose_no_change(models: Path) -> None:
    """4 processes write 100 changes at once: every change is either written, under its own
    generation and in the history, or refused with RegistryConflict; none is lost."""
    context = multiprocessing.get_context("spawn")
    start, out = context.Barrier(4), context.Queue()
    workers = [
        context.Process(target=_change_policy_repeatedly, args=(str(models), w, start, out))
        for w in range(4)
    ]
    for w in workers:
        w.start()
    results = [out.get(timeout=120) for _ in range(100)]
    for w in workers:
        w.join(timeout=60)
    won = sorted(g for _, g in results if g is not None)
    assert won == list(range(1, len(won) + 1))  # one writer per generation
    raw = stored(models)
    assert raw["generation"] == len(won) == len(raw["history"])
    assert len(won) < 100, "no change was refused: the processes did not overlap"


class FakeStorage:
    """The blob API of ``google.cloud.storage.Client`` that the registry uses, over a dict;
    uploads checked against ``if_generation_match`` as Cloud Storage does (0: must not exist).
    The real Cloud Storage cannot be reached from the tests."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], tuple[bytes, int]] = {}
        self.preconditions: list[int | None] = []
        self.lock = threading.Lock()
        self.generations = itertools.count(1_700_000_000_000_001)
        self.answer_412_after_writing = False

    def bucket(self, name: str) -> Any:
        storage = self

        class Bucket:
            def blob(self, blob_name: str) -> FakeBlob:
                return FakeBlob(storage, (name, blob_name))

        return Bucket()


class FakeBlob:
    def __init__(self, storage: FakeStorage, key: tuple[str, str]) -> None:
        self.storage, self.key = storage, key
        self.generation: int | None = None

    def download_as_bytes(self) -> bytes:
        from google.api_core.exceptions import NotFound

        with self.storage.lock:
            if self.key not in self.storage.objects:
                raise NotFound(f"gs://{'/'.join(self.key)}")
            data, self.generation = self.storage.objects[self.key]
            return data

    def upload_from_string(
        self, data: bytes, content_type: str, if_generation_match: int | None = None
    ) -> None:
        from google.api_core.exceptions import PreconditionFailed

        assert content_type == "application/json"
        with self.storage.lock:
            self.storage.preconditions.append(if_generation_match)
            current = self.storage.objects.get(self.key, (b"", 0))[1]
            if if_generation_match is not None and if_generation_match != current:
                raise PreconditionFailed("conditionNotMet")
            self.storage.objects[self.key] = (data, next(self.storage.generations))
            if self.storage.answer_412_after_writing:  # a retry answered after the write
                raise PreconditionFailed("conditionNotMet")


@pytest.fixture
def no_versions_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The versions are listed through Beam's FileSystems (the fake covers only the pointer)."""
    monkeypatch.setattr(ModelRegistry, "versions", lambda self: ["v1"])


@pytest.mark.usefixtures("no_versions_listed")
def test_on_gcs_the_pointer_is_written_with_if_generation_match() -> None:
    storage = FakeStorage()
    registry = ModelRegistry("gs://bucket/models", storage_client=storage)
    assert registry.pointer().generation == 0
    registry.set_policy(min_days=2)
    first_object = storage.objects[("bucket", "models/registry.json")][1]
    registry.set_policy(metric="auc")
    assert storage.preconditions == [0, first_object]  # 0: the object must not exist yet
    pointer = ModelRegistry("gs://bucket/models/", storage_client=storage).pointer()
    assert pointer.generation == 2
    assert dict(pointer.policy)["metric"] == "auc" and dict(pointer.policy)["min_days"] == 2


@pytest.mark.usefixtures("no_versions_listed")
def test_on_gcs_two_changes_at_once_one_wins_the_other_is_refused() -> None:
    storage = FakeStorage()
    ModelRegistry("gs://bucket/models", storage_client=storage).set_policy(min_days=2)
    first = ModelRegistry("gs://bucket/models", storage_client=storage)
    second = ModelRegistry("gs://bucket/models", storage_client=storage)
    barrier = threading.Barrier(2)
    Racing(first, barrier), Racing(second, barrier)
    results = race(lambda: first.set_policy(mode="auto"), lambda: second.set_policy(metric="cp100"))
    assert sorted(type(r).__name__ for r in results) == ["Pointer", "RegistryConflict"]
    assert "gs://bucket/models/registry.json changed meanwhile (generation 1 -> 2)" in str(
        next(r for r in results if isinstance(r, RegistryConflict))
    )
    pointer = first.pointer()
    assert pointer.generation == 2 and len(pointer.history) == 2
    assert len(storage.preconditions) == 3  # the loser's upload was tried and refused by GCS


@pytest.mark.usefixtures("no_versions_listed")
def test_on_gcs_a_retried_upload_that_was_written_is_not_a_conflict() -> None:
    storage = FakeStorage()
    registry = ModelRegistry("gs://bucket/models", storage_client=storage)
    storage.answer_412_after_writing = True
    assert registry.set_policy(min_days=4).generation == 1
    assert registry.pointer().policy["min_days"] == 4


# The policy.


def test_set_policy(models: Path) -> None:
    registry = ModelRegistry(str(models))
    p = registry.set_policy(mode="auto", min_days=2, margin=0.02, metric="auc")
    assert dict(p.policy) == {"mode": "auto", "min_days": 2, "margin": 0.02, "metric": "auc"}
    assert p.generation == 1 and p.history[-1]["action"] == "policy"
    assert registry.set_policy(min_days=5).policy["metric"] == "auc"  # other fields kept
    for bad, match in (
        ({"mode": "sometimes"}, "expected 'manual' or 'auto'"),
        ({"metric": "f1"}, "expected one of ap, auc, cp100"),
        ({"min_days": 0}, "expected an integer >= 1"),
        ({"margin": float("nan")}, "expected a finite number"),
        ({"speed": 1}, "unknown policy field"),
    ):
        with pytest.raises(RegistryError, match=match):
            registry.set_policy(**bad)


AUTO = {"mode": "auto", "min_days": 3, "margin": 0.01, "metric": "ap"}


def rows(days: list[tuple[str, float | None, float | None]]) -> list[dict[str, Any]]:
    """(day, champion ap, challenger ap) -> evaluation rows of versions A and B."""
    out = []
    for day, a, b in days:
        for version, ap in (("A", a), ("B", b)):
            if ap is not None or version == "A":
                out.append({"day": day, "version": version, "ap": ap, "auc": 0.9, "n": 100})
    return out


DECISIONS = [
    # (policy changes, days (day, champion ap, challenger ap), promote?, reason contains)
    (
        {},
        [("2024-05-01", 0.5, 0.6), ("2024-05-02", 0.5, 0.6), ("2024-05-03", 0.5, 0.6)],
        True,
        "beat champion A on ap by >= 0.01 on the last 3 label days",
    ),
    (
        {"mode": "manual"},
        [("2024-05-01", 0.5, 0.6), ("2024-05-02", 0.5, 0.6), ("2024-05-03", 0.5, 0.6)],
        False,
        "the policy is manual",
    ),
    (
        {},
        [("2024-05-01", 0.5, 0.6), ("2024-05-02", 0.5, 0.6)],
        False,
        "2 label day(s) with ap for both A and B; the policy needs 3",
    ),
    (
        {},
        [("2024-05-01", 0.5, 0.6), ("2024-05-02", 0.5, 0.505), ("2024-05-03", 0.5, 0.6)],
        False,
        "did not beat champion A on ap by >= 0.01",
    ),
    # Only the last min_days days count: an old loss is forgotten.
    (
        {},
        [
            ("2024-04-30", 0.9, 0.1),
            ("2024-05-01", 0.5, 0.6),
            ("2024-05-02", 0.5, 0.6),
            ("2024-05-03", 0.5, 0.6),
        ],
        True,
        "2024-05-01 +0.1000",
    ),
    # A day without the challenger's metric is skipped; the days left are not consecutive.
    (
        {},
        [
            ("2024-05-01", 0.5, 0.6),
            ("2024-05-02", 0.5, None),
            ("2024-05-03", 0.5, 0.6),
            ("2024-05-04", 0.5, 0.6),
        ],
        False,
        "are not consecutive",
    ),
    # A margin of exactly the difference passes.
    ({"margin": 0.25, "min_days": 1}, [("2024-05-01", 0.5, 0.75)], True, "by >= 0.25"),
    ({"margin": -0.05, "min_days": 1}, [("2024-05-01", 0.5, 0.46)], True, "by >= -0.05"),
]


@pytest.mark.parametrize(("changes", "days", "promote", "reason"), DECISIONS)
def test_decide_promotion_table(
    changes: dict[str, Any],
    days: list[tuple[str, float | None, float | None]],
    promote: bool,
    reason: str,
) -> None:
    got, why = decide_promotion({**AUTO, **changes}, rows(days), champion="A", challenger="B")
    assert got is promote, why
    assert reason in why, why


def test_decide_promotion_without_a_challenger() -> None:
    assert decide_promotion(AUTO, [], champion="A", challenger=None) == (False, "no challenger")


def test_decide_promotion_ignores_other_versions_and_missing_metrics() -> None:
    days = [f"2024-05-0{i}" for i in range(1, 4)]
    data = rows([(d, 0.5, 0.6) for d in days])
    data += [{"day": d, "version": "C", "ap": 0.99} for d in days]  # a third version
    data += [{"day": "2024-05-04", "version": "A", "ap": 0.9}]  # the champion alone
    data += [{"day": "2024-05-04", "version": "B", "ap": float("nan")}]
    assert decide_promotion(AUTO, data, champion="A", challenger="B")[0]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1) | st.none()), min_size=0, max_size=10),
    st.integers(1, 4),
    st.floats(-0.2, 0.2),
)
def test_decide_promotion_property(
    pairs: list[tuple[float, float | None]], min_days: int, margin: float
) -> None:
    """Promoted exactly when the challenger won by the margin on each of the last min_days days
    both were scored, those days being consecutive; the rows' order does not matter."""
    start = dt.date(2024, 5, 1)
    days = [((start + dt.timedelta(i)).isoformat(), a, b) for i, (a, b) in enumerate(pairs)]
    policy = {**AUTO, "min_days": min_days, "margin": margin}
    data = rows(days)
    got, why = decide_promotion(policy, data, champion="A", challenger="B")
    assert decide_promotion(policy, data[::-1], champion="A", challenger="B") == (got, why)
    both = [(i, a, b) for i, (a, b) in enumerate(pairs) if b is not None]
    last = both[-min_days:]
    expected = (
        len(both) >= min_days
        and all(j - i == 1 for (i, _, _), (j, _, _) in itertools.pairwise(last))
        and all(b - a >= margin for _, a, b in last if b is not None)
    )
    assert got is expected, why


# Reading the online evaluation.


class _Query:
    def __init__(self, entities: list[dict[str, Any]]) -> None:
        self.entities = entities

    def fetch(self) -> list[dict[str, Any]]:
        return self.entities


class FakeDatastore:
    """What daily_metrics uses of a datastore.Client."""

    def __init__(self, entities: list[dict[str, Any]]) -> None:
        self.entities = entities
        self.kinds: list[str] = []

    def query(self, kind: str) -> _Query:
        self.kinds.append(kind)
        return _Query(self.entities)


def test_daily_metrics_reads_the_versions_rows_sorted() -> None:
    now = dt.datetime(2024, 5, 3, tzinfo=dt.UTC)
    entity = {"n": 10, "frauds": 1, "auc": 0.9, "ap": 0.5, "cp100": 0.1, "updated_at": now}
    client = FakeDatastore(
        [
            {"version": "B", "day": "2024-05-02", **entity},
            {"version": "A", "day": "2024-05-02", **entity},
            {"version": "C", "day": "2024-05-01", **entity},
            {"version": "A", "day": "2024-05-01", **entity, "auc": None},
        ]
    )
    got = daily_metrics(client, ["A", "B"])
    assert client.kinds == ["ModelEvaluation"]
    assert [(r["day"], r["version"]) for r in got] == [
        ("2024-05-01", "A"),
        ("2024-05-02", "A"),
        ("2024-05-02", "B"),
    ]
    assert got[0] == {
        "day": "2024-05-01",
        "version": "A",
        "n": 10,
        "frauds": 1,
        "auc": None,
        "ap": 0.5,
        "cp100": 0.1,
    }


def test_serving_features_are_the_union_of_the_champions_and_challengers_inputs(
    models: Path,
) -> None:
    make_version(models, "a1", **card_fields(["CUSTOMER_ID_NB_TX_1DAY_WINDOW", "TX_AMOUNT"]))
    make_version(models, "a2", **card_fields(["TERMINAL_ID_RISK_1DAY_WINDOW", "TX_AMOUNT"]))
    registry = ModelRegistry(str(models))
    registry.promote("a1")
    assert registry.serving_features() == ("TX_AMOUNT", "CUSTOMER_ID_NB_TX_1DAY_WINDOW")
    registry.challenge("a2")
    assert registry.serving_features() == (
        "TX_AMOUNT",
        "CUSTOMER_ID_NB_TX_1DAY_WINDOW",
        "TERMINAL_ID_RISK_1DAY_WINDOW",
    )
    registry.challenge("v1")
    assert registry.serving_features() == MODEL_INPUTS
