"""The model registry: which version of a model directory is served (champion), which is on trial
(challenger), and the history of every change, in one pointer file.

Layout (local path or ``gs://``; versions and cards read through Beam's FileSystems, the pointer
as below; docs/specs/registry.md)::

    <model_dir>/<version>/saved_model/        the TF2 SavedModel (written once, never modified)
    <model_dir>/<version>/model_card.json     its card: version, features, training range, ...
    <model_dir>/registry.json                 the pointer: champion, challenger, generation,
                                              updated_at, policy, history

Versions sort chronologically by name. Without ``registry.json`` the champion is the newest
version and there is no challenger (model directories from before the registry). The pointer is
replaced whole at every change, its ``generation`` bumped, by a compare-and-swap: written only if
the stored pointer is still the one the change was computed from (on GCS an upload with
``ifGenerationMatch`` of the object generation read; locally under an exclusive ``flock`` of the
model directory, a temporary file then ``os.replace``). Of two changes computed from the
same pointer, one is written and the other refused with RegistryConflict ("run the command
again").
"""

from __future__ import annotations

import datetime as dt
import fcntl
import itertools
import json
import math
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem

from pipelines.core.declarations import Definitions, load_definitions
from pipelines.core.model_inputs import features_to_compute, input_problems

__all__ = [
    "ACTIONS",
    "DEFAULT_POLICY",
    "EVALUATION_KIND",
    "METRICS",
    "MODEL_CARD",
    "POINTER_FILE",
    "SAVED_MODEL_DIR",
    "VERSION_NAMES",
    "ModelRegistry",
    "Pointer",
    "RegistryConflict",
    "RegistryError",
    "check_card",
    "daily_metrics",
    "decide_promotion",
    "serving_features",
    "validate_policy",
]

MODEL_CARD = "model_card.json"
SAVED_MODEL_DIR = "saved_model"
POINTER_FILE = "registry.json"
# The Datastore kind of the online evaluation (one entity per version and label day).
EVALUATION_KIND = "ModelEvaluation"
ACTIONS = ("register", "promote", "challenge", "rollback", "retire-challenger", "policy")
METRICS = ("ap", "auc", "cp100")
DEFAULT_POLICY: dict[str, Any] = {"mode": "manual", "min_days": 3, "margin": 0.01, "metric": "ap"}
_LIST_FIX = "list them with 'rillet models list'"
# Names that stand for a version wherever one is named (ModelRegistry.resolve).
VERSION_NAMES = ("champion", "challenger", "latest")


class RegistryError(ValueError):
    """A registry operation that cannot be done, as one line naming what was expected."""


class RegistryConflict(RegistryError):
    """A change that lost a race: the pointer was changed by another writer between the read
    this change was computed from and its write. Nothing was written; running it again applies
    it to the new pointer (or says why it no longer applies)."""


@dataclass(frozen=True)
class Pointer:
    """The content of ``registry.json`` (or what a directory without one implies)."""

    champion: str | None
    challenger: str | None
    generation: int
    updated_at: str | None
    history: tuple[dict[str, Any], ...] = ()
    policy: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_POLICY))

    def to_json(self) -> dict[str, Any]:
        return {
            "champion": self.champion,
            "challenger": self.challenger,
            "generation": self.generation,
            "updated_at": self.updated_at,
            "policy": dict(self.policy),
            "history": [dict(h) for h in self.history],
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Pointer:
        return cls(
            champion=raw.get("champion"),
            challenger=raw.get("challenger"),
            generation=int(raw.get("generation", 0)),
            updated_at=raw.get("updated_at"),
            history=tuple(dict(h) for h in raw.get("history", [])),
            policy={**DEFAULT_POLICY, **raw.get("policy", {})},
        )


def _now() -> str:
    return dt.datetime.now(tz=dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def validate_policy(policy: Mapping[str, Any]) -> dict[str, Any]:
    """The policy with its defaults, or a RegistryError naming the bad field."""
    out = {**DEFAULT_POLICY, **policy}
    unknown = set(out) - set(DEFAULT_POLICY)
    if unknown:
        raise RegistryError(
            f"unknown policy field(s) {', '.join(sorted(unknown))}; expected mode, min_days, "
            "margin, metric"
        )
    if out["mode"] not in ("manual", "auto"):
        raise RegistryError(f"policy mode {out['mode']!r}: expected 'manual' or 'auto'")
    if out["metric"] not in METRICS:
        raise RegistryError(
            f"policy metric {out['metric']!r}: expected one of {', '.join(METRICS)}"
        )
    if not isinstance(out["min_days"], int) or out["min_days"] < 1:
        raise RegistryError(f"policy min_days {out['min_days']!r}: expected an integer >= 1")
    margin = out["margin"]
    if not isinstance(margin, int | float) or not math.isfinite(margin):
        raise RegistryError(f"policy margin {margin!r}: expected a finite number")
    out["margin"] = float(margin)
    return out


class _PointerObject(Protocol):
    """Where ``registry.json`` is stored: read with a token naming what was read, and written
    only if the stored object is still that one (a compare-and-swap)."""

    def read(self) -> tuple[bytes | None, Any]:
        """The stored bytes (None: no pointer yet) and their token."""
        ...

    def write_if(self, data: bytes, token: Any) -> bool:
        """Writes ``data`` if the stored object is still the one read with ``token``; False if
        another writer changed it meanwhile."""
        ...


class _LocalPointerFile:
    """``registry.json`` on a local disk. Every writer takes an exclusive ``flock`` of the model
    directory (released by the kernel if the process dies; the directory, unlike the file, is
    never replaced), re-reads the pointer, compares it with what it read before, then writes a
    temporary file and ``os.replace``s it (readers, who take no lock, see the old or the new file
    whole)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def read(self) -> tuple[bytes | None, Any]:
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None, None
        return data, data  # the token is the content: the file is small, and inodes are reused

    @contextmanager
    def _locked(self) -> Iterator[None]:
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def write_if(self, data: bytes, token: Any) -> bool:
        with self._locked():
            if self.read()[0] != token:
                return False
            tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
            try:
                with open(tmp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return True


class _GcsPointerObject:
    """``registry.json`` as a Cloud Storage object, through the storage client's blob API: read
    with its object generation, written with ``if_generation_match`` of it (0 when there was no
    object: it must still not exist). One object write: readers see the old or the new object.

    Args:
      path: ``gs://bucket/.../registry.json``.
      client: a ``google.cloud.storage.Client``; None: Beam's (the credentials Beam's
        FileSystems use), made at the first use.
    """

    def __init__(self, path: str, client: Any = None) -> None:
        self.bucket, _, self.name = path[len("gs://") :].partition("/")
        self._client = client

    def _blob(self) -> Any:
        if self._client is None:
            from apache_beam.io.gcp.gcsio import create_storage_client
            from apache_beam.options.pipeline_options import PipelineOptions

            self._client = create_storage_client(PipelineOptions())
        return self._client.bucket(self.bucket).blob(self.name)

    def read(self) -> tuple[bytes | None, Any]:
        from google.api_core.exceptions import NotFound

        blob = self._blob()
        try:
            data = blob.download_as_bytes()  # sets blob.generation from the response
        except NotFound:
            return None, 0
        return data, int(blob.generation)

    def write_if(self, data: bytes, token: Any) -> bool:
        from google.api_core.exceptions import PreconditionFailed

        try:
            self._blob().upload_from_string(
                data, content_type="application/json", if_generation_match=token
            )
        except PreconditionFailed:
            # The client retries a conditional upload after a transient error: the 412 may
            # answer the retry of an upload that was written. If the object holds these very
            # bytes (updated_at, the history entry), the change is stored: ours, or one
            # identical to it in the same second.
            return self.read()[0] == data
        return True


def _pointer_object(path: str, storage_client: Any) -> _PointerObject:
    if path.startswith("gs://"):
        return _GcsPointerObject(path, storage_client)
    if isinstance(FileSystems.get_filesystem(path), LocalFileSystem):
        return _LocalPointerFile(path)
    raise RegistryError(f"{path}: the model registry is kept on a local disk or in gs://")


class ModelRegistry:
    """The versions of a model directory and its pointer (see the module docstring).

    Example Usage::

        registry = ModelRegistry("gs://bucket/models")
        registry.register("20240501T000000000000Z", as_="challenger")
        registry.promote()  # the challenger becomes the champion
        registry.rollback()  # and back

    Args:
      model_dir: the model directory (local path or ``gs://``).
      storage_client: on ``gs://``, the ``google.cloud.storage.Client`` the pointer is read and
        written with (default: Beam's, made at the first use).
      definitions: the definitions a version must be servable with to get a role (``check``);
        default: the handbook's file (``load_definitions()``), read at the first check.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        storage_client: Any = None,
        definitions: Definitions | None = None,
    ) -> None:
        self.model_dir = str(model_dir).rstrip("/") or "/"
        self._storage_client = storage_client
        self._pointer_file: _PointerObject | None = None
        self._definitions = definitions

    @property
    def definitions(self) -> Definitions:
        if self._definitions is None:
            self._definitions = load_definitions()
        return self._definitions

    def _path(self, *parts: str) -> str:
        return FileSystems.join(self.model_dir, *parts)

    @property
    def pointer_path(self) -> str:
        return self._path(POINTER_FILE)

    @property
    def _pointer_object(self) -> _PointerObject:
        if self._pointer_file is None:
            self._pointer_file = _pointer_object(self.pointer_path, self._storage_client)
        return self._pointer_file

    # Reading.

    def versions(self) -> list[str]:
        """The versions with a model card, oldest first (names sort chronologically)."""
        match = FileSystems.match([self._path("*", MODEL_CARD)])[0]
        return sorted(m.path.rstrip("/").split("/")[-2] for m in match.metadata_list)

    def _unknown(self, version: str) -> RegistryError:
        known = self.versions()
        return RegistryError(
            f"unknown model version {version!r} in {self.model_dir}: "
            + (f"known versions are {', '.join(known)}" if known else "it holds no version")
            + f"; {_LIST_FIX}"
        )

    def resolve(self, name: str) -> str:
        """The version ``name`` stands for: "champion" and "challenger" as the pointer names
        them, "latest" the newest version, any other name itself (checked by ``validate``
        when it is used). A RegistryError when the role is empty or there is no version."""
        if name not in VERSION_NAMES:
            return name
        if name == "latest":
            versions = self.versions()
            if not versions:
                raise self._unknown(name)
            return versions[-1]
        picked: str | None = getattr(self.pointer(), name)
        if picked is None:
            raise RegistryError(
                f"no {name} in {self.model_dir}'s registry; set one with "
                f"'rillet models {'promote' if name == 'champion' else 'challenge'} VERSION'"
            )
        return picked

    def _has_files(self, *parts: str) -> bool:
        return bool(FileSystems.match([self._path(*parts, "**")], [1])[0].metadata_list)

    def validate(self, version: str) -> None:
        """A RegistryError unless ``<version>/`` holds a model card and a non-empty SavedModel."""
        if not version or "/" in version or version in (".", "..", POINTER_FILE):
            raise RegistryError(f"model version {version!r}: expected a directory name")
        if not self._has_files(version):
            raise self._unknown(version)
        missing = [
            what
            for what, ok in (
                (f"{SAVED_MODEL_DIR}/", self._has_files(version, SAVED_MODEL_DIR)),
                (MODEL_CARD, FileSystems.exists(self._path(version, MODEL_CARD))),
            )
            if not ok
        ]
        if missing:
            raise RegistryError(
                f"model version {version!r} in {self.model_dir} is incomplete: no "
                f"{' and no '.join(missing)}; expected {version}/{SAVED_MODEL_DIR}/ and "
                f"{version}/{MODEL_CARD} (as 'rillet train' writes them)"
            )

    def card(self, version: str) -> dict[str, Any]:
        """The model card of ``version`` (its files checked first)."""
        self.validate(version)
        path = self._path(version, MODEL_CARD)
        try:
            with FileSystems.open(path) as handle:
                card = json.loads(handle.read().decode())
        except ValueError as exc:
            raise RegistryError(f"{path}: not a JSON model card ({exc})") from exc
        if not isinstance(card, dict):
            raise RegistryError(f"{path}: expected a JSON object, got {type(card).__name__}")
        return card

    def _stored_pointer(self) -> Pointer | None:
        return self._read_pointer()[0]

    def _read_pointer(self) -> tuple[Pointer | None, Any]:
        """The stored pointer (None: no registry.json) and the token to write it back with."""
        data, token = self._pointer_object.read()
        if data is None:
            return None, token
        try:
            return Pointer.from_json(json.loads(data.decode())), token
        except (ValueError, TypeError, AttributeError) as exc:
            raise RegistryError(
                f"{self.pointer_path}: not a registry pointer ({exc}); restore it from its "
                "history or delete it to serve the newest version"
            ) from exc

    def pointer(self) -> Pointer:
        """The pointer; without ``registry.json``: the newest version as champion, generation 0."""
        stored = self._stored_pointer()
        if stored is not None:
            return stored
        return self._implicit()

    def _implicit(self, excluding: str | None = None) -> Pointer:
        versions = [v for v in self.versions() if v != excluding]
        return Pointer(versions[-1] if versions else None, None, 0, None)

    def check(self, version: str, computed: Sequence[str] | None = None) -> None:
        """A RegistryError unless ``version`` can be served with the registry's definitions:
        every input of its card declared with the fingerprint it was trained on (and, given
        ``computed``, among the features the job computes)."""
        check_card(version, self.card(version), self.definitions, computed)

    def serving_features(self) -> tuple[str, ...]:
        """The features a job serving the pointer's champion and challenger must compute
        (``serving_features``); each checked first."""
        pointer = self.pointer()
        versions = [v for v in (pointer.champion, pointer.challenger) if v]
        cards = [self.card(v) for v in versions]
        for version, card in zip(versions, cards, strict=True):
            check_card(version, card, self.definitions)
        return serving_features(self.definitions, cards)

    # Changing the pointer.

    def _write(self, before: Pointer, after: Pointer) -> Pointer:
        """Writes ``after`` (generation bumped) if the stored pointer is still ``before``'s
        generation, by a compare-and-swap (see the module docstring); RegistryConflict if
        another writer went first."""
        stored, token = self._read_pointer()
        generation = stored.generation if stored else 0
        new = Pointer(
            after.champion,
            after.challenger,
            before.generation + 1,
            _now(),
            after.history,
            after.policy,
        )
        data = (json.dumps(new.to_json(), indent=2) + "\n").encode()
        if generation != before.generation or not self._pointer_object.write_if(data, token):
            now = self._stored_pointer()
            raise RegistryConflict(
                f"{self.pointer_path} changed meanwhile (generation {before.generation} -> "
                f"{now.generation if now else 0}): another change was written first and this one "
                "was not; run the command again"
            )
        return new

    def _change(
        self,
        before: Pointer,
        action: str,
        champion: str | None,
        challenger: str | None,
        by: str | None,
        **extra: Any,
    ) -> Pointer:
        entry: dict[str, Any] = {
            "at": _now(),
            "action": action,
            "champion": champion,
            "challenger": challenger,
            "previous": {"champion": before.champion, "challenger": before.challenger},
            **extra,
        }
        if by:
            entry["by"] = by
        after = Pointer(
            champion, challenger, before.generation, None, (*before.history, entry), before.policy
        )
        return self._write(before, after)

    def register(self, version: str, as_: str | None = None, by: str | None = None) -> Pointer:
        """Records a version already written under the model directory (what the trainer
        writes), optionally as the champion or the challenger. A version is registered once;
        its files are never changed."""
        if as_ not in ("champion", "challenger", None):
            raise RegistryError(f"register as {as_!r}: expected 'champion', 'challenger' or none")
        self.check(version)
        before = self._stored_pointer() or self._implicit(excluding=version)
        if any(
            h.get("action") == "register" and h.get("version") == version for h in before.history
        ):
            raise RegistryError(
                f"model version {version!r} is already registered; versions are immutable: "
                "train a new version, or use 'rillet models promote|challenge' to change its role"
            )
        champion, challenger = before.champion, before.challenger
        if as_ == "champion":
            champion = version
            challenger = None if challenger == version else challenger
        elif as_ == "challenger":
            if version == champion:
                raise RegistryError(f"model version {version!r} is the champion already")
            challenger = version
        return self._change(before, "register", champion, challenger, by, version=version)

    def promote(
        self, version: str | None = None, challenger: str | None = None, by: str | None = None
    ) -> Pointer:
        """Makes ``version`` (default: the challenger) the champion and ``challenger`` the new
        challenger (None: no challenger), in one write. The old champion stays in the history
        (see rollback)."""
        before = self.pointer()
        if version is None:
            if before.challenger is None:
                raise RegistryError(
                    f"no challenger to promote in {self.model_dir}; name a version "
                    "('rillet models promote VERSION') or set one with 'rillet models challenge'"
                )
            version = before.challenger
        if version == before.champion:
            raise RegistryError(f"model version {version!r} is the champion already")
        if challenger == version:
            raise RegistryError(f"model version {version!r} cannot be champion and challenger")
        self.check(version)
        if challenger is not None:
            self.check(challenger)
        return self._change(before, "promote", version, challenger, by)

    def challenge(self, version: str | None, by: str | None = None) -> Pointer:
        """Sets the challenger (None: retires it)."""
        before = self.pointer()
        if version is None:
            if before.challenger is None:
                raise RegistryError(f"no challenger to clear in {self.model_dir}")
            return self._change(before, "retire-challenger", before.champion, None, by)
        if version == before.champion:
            raise RegistryError(
                f"model version {version!r} is the champion; a challenger must be another version"
            )
        self.check(version)
        return self._change(before, "challenge", before.champion, version, by)

    def _undoable(self, history: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The champion changes not yet rolled back, oldest first."""
        stack: list[Mapping[str, Any]] = []
        for entry in history:
            previous = entry.get("previous") or {}
            if entry.get("action") == "rollback":
                if stack:
                    stack.pop()
            elif (
                entry.get("action") in ("promote", "register")
                and previous.get("champion") is not None
                and entry.get("champion") != previous.get("champion")
            ):
                stack.append(entry)
        return stack

    def rollback(self, by: str | None = None) -> Pointer:
        """Restores the champion and challenger from before the last promotion not yet rolled
        back."""
        before = self.pointer()
        stack = self._undoable(before.history)
        if not stack:
            raise RegistryError(
                f"nothing to roll back in {self.model_dir}: no promotion replaced a champion"
            )
        previous = stack[-1]["previous"]
        champion, challenger = previous["champion"], previous.get("challenger")
        self.check(champion)
        return self._change(before, "rollback", champion, challenger, by)

    def set_policy(self, by: str | None = None, **changes: Any) -> Pointer:
        """Changes fields of the promotion policy (mode, min_days, margin, metric)."""
        before = self.pointer()
        policy = validate_policy({**before.policy, **changes})
        after = Pointer(
            before.champion,
            before.challenger,
            before.generation,
            None,
            (
                *before.history,
                {
                    "at": _now(),
                    "action": "policy",
                    "champion": before.champion,
                    "challenger": before.challenger,
                    "policy": policy,
                    **({"by": by} if by else {}),
                },
            ),
            policy,
        )
        return self._write(before, after)


def check_card(
    version: str,
    card: dict[str, Any],
    definitions: Definitions | None = None,
    computed: Sequence[str] | None = None,
) -> None:
    """A RegistryError unless ``definitions`` (default: the handbook's file) can serve the
    version of ``card``: each of its inputs declared with the fingerprint the card records
    (pipelines/core/model_inputs.py) and, given ``computed`` (what the job computes), among
    those. The message names every input that fails and why."""
    definitions = definitions if definitions is not None else load_definitions()
    problems = input_problems(card, definitions, computed)
    if problems:
        where = f"{definitions.name!r}" + (f" ({definitions.source})" if definitions.source else "")
        raise RegistryError(
            f"model version {version!r} cannot be served with the definitions {where}: "
            + "; ".join(problems)
        )


def serving_features(
    definitions: Definitions, cards: Iterable[Mapping[str, Any]]
) -> tuple[str, ...]:
    """The features a job must compute for the models of ``cards`` (checked first): the union
    of their inputs and what derived ones among them read, in the definitions' order."""
    return features_to_compute(definitions, [card["features"] for card in cards])


def decide_promotion(
    policy: Mapping[str, Any],
    daily_metrics: Sequence[Mapping[str, Any]],
    *,
    champion: str | None,
    challenger: str | None,
) -> tuple[bool, str]:
    """Whether the policy promotes the challenger, and why (one line).

    ``daily_metrics``: rows {day (YYYY-MM-DD), version, auc, ap, cp100, n}, one per version and
    label day. Promote when the mode is auto and the challenger's metric beat the champion's by
    at least ``margin`` on each of the last ``min_days`` label days where both have the metric,
    and those days are consecutive."""
    policy = validate_policy(policy)
    metric, min_days, margin = policy["metric"], policy["min_days"], policy["margin"]
    if challenger is None:
        return False, "no challenger"
    if champion is None:
        return False, "no champion to compare the challenger with"
    by_day: dict[str, dict[str, float]] = {}
    for row in daily_metrics:
        value = row.get(metric)
        if row.get("version") in (champion, challenger) and value is not None:
            if isinstance(value, float) and math.isnan(value):
                continue
            by_day.setdefault(str(row["day"]), {})[str(row["version"])] = float(value)
    days = sorted(d for d, v in by_day.items() if champion in v and challenger in v)
    if len(days) < min_days:
        why = (
            f"{len(days)} label day(s) with {metric} for both {champion} and {challenger}; "
            f"the policy needs {min_days}"
        )
        return False, why
    last = days[-min_days:]
    dates = [dt.date.fromisoformat(d) for d in last]
    gaps = [b for a, b in itertools.pairwise(dates) if (b - a).days != 1]
    if gaps:
        return False, (
            f"the last {min_days} label days with both versions' {metric} are not consecutive "
            f"({', '.join(last)})"
        )
    deltas = [by_day[d][challenger] - by_day[d][champion] for d in last]
    detail = ", ".join(f"{d} {x:+.4f}" for d, x in zip(last, deltas, strict=True))
    beat = all(x >= margin for x in deltas)
    if not beat:
        return False, (
            f"challenger {challenger} did not beat champion {champion} on {metric} by "
            f">= {margin:g} on each of the last {min_days} label days ({detail})"
        )
    if policy["mode"] != "auto":
        return False, (
            f"challenger {challenger} beat champion {champion} on {metric} by >= {margin:g} on "
            f"the last {min_days} label days ({detail}), but the policy is manual: promote with "
            "'rillet models promote'"
        )
    return True, (
        f"challenger {challenger} beat champion {champion} on {metric} by >= {margin:g} on "
        f"the last {min_days} label days ({detail})"
    )


_EVALUATION_FIELDS = ("day", "version", "n", "frauds", "auc", "ap", "cp100")


def daily_metrics(
    client: Any, versions: Iterable[str], kind: str = EVALUATION_KIND
) -> list[dict[str, Any]]:
    """The online evaluation rows of ``versions`` from Datastore (``kind``, the client's
    namespace), sorted by day then version: {day, version, n, frauds, auc, ap, cp100}.

    ``client`` is a ``google.cloud.datastore.Client`` (or anything with its ``query(kind=)``
    returning an object with ``fetch()``)."""
    wanted = set(versions)
    rows = []
    for entity in client.query(kind=kind).fetch():
        if entity.get("version") not in wanted:
            continue
        rows.append({name: entity.get(name) for name in _EVALUATION_FIELDS})
    return sorted(rows, key=lambda r: (str(r["day"]), str(r["version"])))
