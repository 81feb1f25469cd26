"""The definitions file: event streams, entities and features, declared as data.

A definitions file (YAML, documented field by field in docs/specs/definitions.md) declares

  events     the transaction stream: its fields and their types, the id and event-time fields;
  labels     the label stream: its fields, the label field and the delay after which a label is
             known;
  entities   what windows are aggregated per, each with one or more key fields (a composite
             key such as card x merchant category);
  features   in the order of a model's input vector: row features (a field's value, or 1/0 by a
             predicate), window aggregations (entity, operation, field, window, delay, filter)
             and derived inputs (ratio or difference of two declared features).

``load_definitions`` reads and checks a file and returns ``Definitions``; every error names its
place in the file (``features[4].window: '3x' is not a duration ...``). Nothing here imports
Beam: training, backfill, the stream and the CLI all read the same objects.

Window semantics (as docs/specs/reference-workload.md section 2, for any entity): a window
feature with window w and delay d of a transaction at time t aggregates the entity's events with
time in (t - d - w, t - d] that satisfy its filter; with no delay, of the events at exactly t only
those up to the transaction itself in tie order (shorter id first, then by text).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipelines.core.predicates import TIME_PARTS, Predicate, PredicateError

__all__ = [
    "DEFAULT_DEFINITIONS",
    "OPERATIONS",
    "WORKLOADS",
    "Definitions",
    "DefinitionsError",
    "DerivedFeature",
    "Entity",
    "EventStream",
    "Field",
    "LabelStream",
    "RowFeature",
    "WindowFeature",
    "format_duration",
    "load_definitions",
    "parse_definitions",
    "parse_duration",
]

# The handbook's 15 features (the reference workload): the default of every command.
WORKLOADS = Path(__file__).resolve().parents[1] / "workloads"
DEFAULT_DEFINITIONS = WORKLOADS / "handbook.yaml"

FieldType = Literal["id", "string", "number", "integer", "time", "label"]
FIELD_TYPES: tuple[str, ...] = ("id", "string", "number", "integer", "time", "label")

Operation = Literal[
    "count", "sum", "mean", "min", "max", "std", "distinct", "last", "since_previous", "label_rate"
]
# Operation -> what its ``field`` must be: None (no field), "number" or "any".
OPERATIONS: dict[str, str | None] = {
    "count": None,
    "sum": "number",
    "mean": "number",
    "min": "number",
    "max": "number",
    "std": "number",
    "distinct": "any",
    "last": "number",
    "since_previous": None,
    "label_rate": None,
}

_NAME_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,99}\Z")
_DURATION_RE = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_UNIT_US = {
    "ms": 1_000,
    "s": 1_000_000,
    "m": 60_000_000,
    "h": 3_600_000_000,
    "d": 86_400_000_000,
    "w": 7 * 86_400_000_000,
}
# Windows and delays reach at most this far back: a year and a day covers yearly seasonality,
# and keeps every (entity, time) key of the batch engine inside int64.
MAX_REACH_US = 366 * 86_400_000_000
MAX_SCALE = 9


class DefinitionsError(ValueError):
    """A definitions file that cannot be used; ``errors`` lists every problem found, each as
    "<place in the file>: <what is wrong>"."""

    def __init__(self, source: str, errors: Sequence[str]) -> None:
        self.source = source
        self.errors = list(errors)
        lines = "\n  ".join(self.errors)
        super().__init__(f"{source}: {len(self.errors)} problem(s)\n  {lines}")


def parse_duration(text: Any) -> int:
    """A duration such as ``90s``, ``10m``, ``3h``, ``7d``, ``2w`` or ``1h30m`` in microseconds;
    ``0s`` is zero. Raises ValueError with the expected form."""
    if isinstance(text, str):
        compact = text.strip().replace(" ", "")
        parts = _DURATION_RE.findall(compact)
        if parts and "".join(n + u for n, u in parts) == compact:
            return sum(int(n) * _UNIT_US[u] for n, u in parts)
    raise ValueError(
        f"{text!r} is not a duration: expected a number and a unit, "
        "ms, s, m, h, d or w (e.g. 90s, 10m, 3h, 7d, 1h30m)"
    )


def format_duration(us: int) -> str:
    """The shortest spelling of a duration (``parse_duration`` reads it back)."""
    if us == 0:
        return "0s"
    out = []
    for unit in ("d", "h", "m", "s", "ms"):
        n, us = divmod(us, _UNIT_US[unit])
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)


@dataclass(frozen=True)
class Field:
    """One field of an event stream.

    ``column`` is its column in a dataset (Parquet) when that differs from the field's name;
    ``scale`` the decimal places a number is kept to exactly (sums run over integers of
    10**-scale, as the amounts' micro-units); ``minimum``/``maximum`` bound numbers,
    ``values`` enumerates the texts a string may take (any, up to ``max_length``, without)."""

    name: str
    type: FieldType
    column: str = ""
    scale: int = 6
    minimum: float | None = None
    maximum: float | None = None
    values: tuple[str, ...] = ()
    max_length: int = 64

    @property
    def dataset_column(self) -> str:
        return self.column or self.name

    @property
    def numeric(self) -> bool:
        return self.type in ("number", "integer", "label")

    @property
    def predicate_type(self) -> str:
        """How a predicate compares it: as a number or as text (times are not comparable)."""
        return "number" if self.numeric else "string"


@dataclass(frozen=True)
class EventStream:
    """The transaction stream: its topic, fields, id field and event-time field."""

    topic: str
    id_field: str
    time_field: str
    fields: tuple[Field, ...]
    version: int = 1

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)


@dataclass(frozen=True)
class LabelStream(EventStream):
    """The label stream: one label per transaction id, known ``delay_us`` after the
    transaction (its time field holds the transaction's time). ``label_field`` is 0 or 1."""

    label_field: str = "is_fraud"
    delay_us: int = 0


@dataclass(frozen=True)
class Entity:
    """What window features are aggregated per; one or more key fields (composite keys).

    An entity instance's id is its key values joined by ``#`` (``%`` and ``#`` inside a value
    escaped), so a one-field key's id is the value itself (today's row keys)."""

    name: str
    keys: tuple[str, ...]

    def id_of(self, values: Mapping[str, Any]) -> str:
        return "#".join(_escape(str(values[k])) for k in self.keys)

    def row_key(self, entity_id: str) -> bytes:
        return f"{self.name}#{entity_id}".encode()


def _escape(value: str) -> str:
    return value.replace("%", "%25").replace("#", "%23")


@dataclass(frozen=True)
class RowFeature:
    """A feature of the transaction alone: a numeric field's value (``value``), or 1.0 when the
    predicate ``when`` holds and 0.0 otherwise."""

    name: str
    value: str | None = None
    when: Predicate | None = None


@dataclass(frozen=True)
class WindowFeature:
    """An aggregation of an entity's events in (t - delay - window, t - delay] that satisfy
    ``where`` (docs/specs/definitions.md, "Operations", for each ``op``)."""

    name: str
    entity: Entity
    op: Operation
    window_us: int
    delay_us: int = 0
    field: str | None = None
    where: Predicate | None = None

    @property
    def needs_labels(self) -> bool:
        return self.op == "label_rate"

    @property
    def reach_us(self) -> int:
        return self.window_us + self.delay_us


@dataclass(frozen=True)
class DerivedFeature:
    """A ratio (0 when the denominator is 0) or a difference of two declared features."""

    name: str
    op: Literal["ratio", "difference"]
    inputs: tuple[str, str]


Feature = RowFeature | WindowFeature | DerivedFeature


@dataclass(frozen=True)
class Definitions:
    """A checked definitions file (``load_definitions``)."""

    name: str
    events: EventStream
    labels: LabelStream | None
    entities: tuple[Entity, ...]
    features: tuple[Feature, ...]
    source: str = field(default="", compare=False)

    @property
    def names(self) -> tuple[str, ...]:
        """The features' names in the file's order: the default model input vector."""
        return tuple(f.name for f in self.features)

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def entity(self, name: str) -> Entity:
        for e in self.entities:
            if e.name == name:
                return e
        raise KeyError(name)

    def window_features(self, entity: Entity | None = None) -> tuple[WindowFeature, ...]:
        return tuple(
            f
            for f in self.features
            if isinstance(f, WindowFeature) and (entity is None or f.entity == entity)
        )

    def lookback_us(self, entity: Entity) -> int:
        """How far back in event time the entity's windows reach (what its store keeps)."""
        return max((f.reach_us for f in self.window_features(entity)), default=0)

    def influence_span_us(self, entity: Entity, labels: bool = False) -> tuple[int, int]:
        """Which later transactions an event of this entity at time t counts for: those at a
        time in [t + lo, t + hi) (``labels``: through the label-reading features only)."""
        spans = [
            (f.delay_us, f.reach_us)
            for f in self.window_features(entity)
            if f.needs_labels or not labels
        ]
        if not spans:
            return (0, 0)
        return (min(lo for lo, _ in spans), max(hi for _, hi in spans))

    def fields_of(self, entity: Entity) -> tuple[str, ...]:
        """The event fields the entity's windows read (operation fields and filters)."""
        names: set[str] = set()
        for f in self.window_features(entity):
            if f.field:
                names.add(f.field)
            if f.where is not None:
                names |= f.where.fields - set(TIME_PARTS)
        return tuple(n for n in self.events.names if n in names)

    def closure(self, names: Sequence[str]) -> tuple[str, ...]:
        """These features and every feature a derived one among them reads, in file order."""
        wanted = set(names)
        for f in reversed(self.features):
            if f.name in wanted and isinstance(f, DerivedFeature):
                wanted |= set(f.inputs)
        unknown = wanted - set(self.names)
        if unknown:
            raise KeyError(", ".join(sorted(unknown)))
        return tuple(n for n in self.names if n in wanted)

    def declaration(self, name: str) -> dict[str, Any]:
        """What a feature's values depend on, as plain data: its own declaration with the
        entity's keys, the fields' types and scales, and (label rates) the label stream."""
        f = self.feature(name)
        if isinstance(f, RowFeature):
            out: dict[str, Any] = {"kind": "row", "value": f.value}
            out["when"] = f.when.source if f.when else None
            if f.value:
                out["field"] = _field_data(self.events.field(f.value))
            return out
        if isinstance(f, DerivedFeature):
            return {
                "kind": "derived",
                "op": f.op,
                "inputs": [self.declaration(i) for i in f.inputs],
            }
        out = {
            "kind": "window",
            "entity": list(f.entity.keys),
            "op": f.op,
            "window_us": f.window_us,
            "delay_us": f.delay_us,
            "field": _field_data(self.events.field(f.field)) if f.field else None,
            "where": f.where.source if f.where else None,
        }
        if f.needs_labels and self.labels is not None:
            out["label"] = _field_data(self.labels.field(self.labels.label_field))
        return out

    def fingerprint(self, name: str) -> str:
        """A feature's fingerprint (12 hex characters of sha256 over ``declaration``): a model
        card records one per input, and a model is refused only when one of its inputs is
        missing or fingerprinted differently."""
        text = json.dumps(self.declaration(name), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def fingerprints(self, names: Sequence[str] | None = None) -> dict[str, str]:
        return {n: self.fingerprint(n) for n in (self.names if names is None else names)}


def _field_data(f: Field) -> dict[str, Any]:
    return {"name": f.name, "type": f.type, "scale": f.scale if f.type == "number" else None}


# -- loading -------------------------------------------------------------------------------------


def load_definitions(path: str | Path | None = None) -> Definitions:
    """Reads and checks a definitions file (the handbook's by default)."""
    import yaml

    source = Path(path) if path is not None else DEFAULT_DEFINITIONS
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as error:
        raise DefinitionsError(str(source), [f"cannot read it ({error.strerror})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f"line {where.line + 1}" if where is not None else "the file"
        problem = getattr(error, "problem", None) or str(error)
        raise DefinitionsError(str(source), [f"{line}: not YAML ({problem})"]) from None
    return parse_definitions(data, str(source))


def parse_definitions(data: Any, source: str = "<definitions>") -> Definitions:
    """Checks a definitions file's content (as read from YAML) and builds ``Definitions``."""
    reader = _Reader()
    result = reader.definitions(data)
    if reader.errors or result is None:
        raise DefinitionsError(source, reader.errors)
    return Definitions(
        result.name, result.events, result.labels, result.entities, result.features, source
    )


class _Reader:
    """Builds the declarations and collects every error with its place in the file."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    def mapping(self, value: Any, where: str, allowed: Sequence[str]) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.error(where, f"expected a mapping with {', '.join(allowed)}")
            return None
        unknown = sorted(str(k) for k in value if k not in allowed)
        if unknown:
            self.error(
                where, f"unknown key(s) {', '.join(unknown)} (expected: {', '.join(allowed)})"
            )
        return value

    def name(self, value: Any, where: str) -> str | None:
        if not isinstance(value, str) or not _NAME_RE.match(value):
            self.error(where, f"{value!r} is not a name (letters, digits and _, 1-100)")
            return None
        return value

    def definitions(self, data: Any) -> Definitions | None:
        top = self.mapping(data, "file", ("name", "events", "labels", "entities", "features"))
        if top is None:
            return None
        name = self.name(top.get("name", "definitions"), "name") or "definitions"
        events = self.stream(top.get("events"), "events", labels=False)
        labels = None
        if top.get("labels") is not None:
            labelled = self.stream(top.get("labels"), "labels", labels=True)
            labels = labelled if isinstance(labelled, LabelStream) else None
        entities = self.entities(top.get("entities"), events)
        if events is None:
            return None
        features = self.features(top.get("features"), events, labels, entities)
        return Definitions(name, events, labels, tuple(entities.values()), features)

    # -- streams -------------------------------------------------------------------------------

    def stream(self, value: Any, where: str, labels: bool) -> EventStream | None:
        keys = ["topic", "id", "time", "fields", "version"]
        if labels:
            keys += ["label", "delay"]
        spec = self.mapping(value, where, keys)
        if spec is None:
            return None
        fields = self.fields(spec.get("fields"), f"{where}.fields")
        names = {f.name: f for f in fields}
        topic = spec.get("topic", where)
        if not isinstance(topic, str) or not re.match(
            r"\A[A-Za-z][-A-Za-z0-9._~%+]{2,254}\Z", topic
        ):
            self.error(f"{where}.topic", f"{topic!r} is not a Pub/Sub topic name")
        version = spec.get("version", 1)
        if type(version) is not int or version < 1:
            self.error(f"{where}.version", f"{version!r} is not a schema version (1, 2, ...)")
        roles = [("id", "id"), ("time", "time")] + ([("label", "label")] if labels else [])
        chosen: dict[str, str] = {}
        for role, kind in roles:
            chosen[role] = spec.get(role, "")
            f = names.get(chosen[role])
            if f is None:
                self.error(f"{where}.{role}", f"{chosen[role]!r} is not one of its fields")
            elif f.type != kind:
                self.error(f"{where}.{role}", f"{f.name} is a {f.type} field, expected {kind}")
        if not labels:
            return EventStream(str(topic), chosen["id"], chosen["time"], fields, version)
        delay = self.duration(spec.get("delay", "0s"), f"{where}.delay", allow_zero=True)
        return LabelStream(
            str(topic),
            chosen["id"],
            chosen["time"],
            fields,
            version,
            label_field=chosen["label"],
            delay_us=delay or 0,
        )

    def fields(self, value: Any, where: str) -> tuple[Field, ...]:
        if not isinstance(value, dict) or not value:
            self.error(where, "expected a mapping of field name -> {type: ...}")
            return ()
        out = []
        allowed = ("type", "column", "scale", "min", "max", "values", "max_length")
        for name, spec in value.items():
            at = f"{where}.{name}"
            if self.name(name, at) is None or name == "schema_version":
                if name == "schema_version":
                    self.error(at, "schema_version is implied (the stream's version)")
                continue
            if isinstance(spec, str):
                spec = {"type": spec}
            spec = self.mapping(spec, at, allowed)
            if spec is None:
                continue
            kind = spec.get("type")
            if kind not in FIELD_TYPES:
                self.error(f"{at}.type", f"{kind!r}: expected one of {', '.join(FIELD_TYPES)}")
                continue
            scale = spec.get("scale", 6)
            if type(scale) is not int or not 0 <= scale <= MAX_SCALE:
                self.error(f"{at}.scale", f"{scale!r}: expected decimal places 0-{MAX_SCALE}")
                scale = 6
            if "scale" in spec and kind != "number":
                self.error(f"{at}.scale", "only numbers have a scale")
            bounds = []
            for key in ("min", "max"):
                bound = spec.get(key)
                if bound is not None and (
                    isinstance(bound, bool)
                    or not isinstance(bound, int | float)
                    or not math.isfinite(bound)
                ):
                    self.error(f"{at}.{key}", f"{bound!r} is not a number")
                    bound = None
                if bound is not None and kind not in ("number", "integer"):
                    self.error(f"{at}.{key}", f"a {kind} field has no {key}")
                bounds.append(None if bound is None else float(bound))
            values = spec.get("values", [])
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                self.error(f"{at}.values", "expected a list of texts")
                values = []
            if values and kind != "string":
                self.error(f"{at}.values", "only string fields enumerate their values")
            max_length = spec.get("max_length", 64)
            if type(max_length) is not int or not 1 <= max_length <= 1024:
                self.error(f"{at}.max_length", f"{max_length!r}: expected 1-1024")
                max_length = 64
            column = spec.get("column", "")
            if not isinstance(column, str):
                self.error(f"{at}.column", f"{column!r} is not a column name")
                column = ""
            out.append(
                Field(name, kind, column, scale, bounds[0], bounds[1], tuple(values), max_length)
            )
        return tuple(out)

    # -- entities ------------------------------------------------------------------------------

    def entities(self, value: Any, events: EventStream | None) -> dict[str, Entity]:
        if not isinstance(value, dict):
            if value is not None:
                self.error("entities", "expected a mapping of entity name -> {keys: [...]}")
            return {}
        out = {}
        for name, spec in value.items():
            at = f"entities.{name}"
            if self.name(name, at) is None:
                continue
            spec = self.mapping(spec, at, ("keys",))
            if spec is None:
                continue
            keys = spec.get("keys")
            if isinstance(keys, str):
                keys = [keys]
            if not isinstance(keys, list) or not keys or len(set(map(str, keys))) != len(keys):
                self.error(f"{at}.keys", "expected a list of distinct event fields")
                continue
            for key in keys:
                if events is None:
                    break
                if key not in events.names:
                    self.error(f"{at}.keys", f"{key!r} is not a field of the events")
                elif events.field(key).type not in ("id", "string", "integer"):
                    self.error(f"{at}.keys", f"{key} is a {events.field(key).type} field")
            out[name] = Entity(name, tuple(keys))
        return out

    # -- features ------------------------------------------------------------------------------

    def features(
        self,
        value: Any,
        events: EventStream,
        labels: LabelStream | None,
        entities: dict[str, Entity],
    ) -> tuple[Feature, ...]:
        if not isinstance(value, list) or not value:
            self.error("features", "expected a list of features")
            return ()
        out: list[Feature] = []
        seen: set[str] = set()
        for i, spec in enumerate(value):
            at = f"features[{i}]"
            name = spec.get("name") if isinstance(spec, dict) else None
            if isinstance(name, str):
                at = f"features[{i}] ({name})"
            feature = self.feature(spec, at, events, labels, entities, seen)
            if feature is None:
                continue
            if feature.name in seen:
                self.error(at, f"{feature.name} is declared twice")
                continue
            seen.add(feature.name)
            out.append(feature)
        return tuple(out)

    def feature(
        self,
        spec: Any,
        at: str,
        events: EventStream,
        labels: LabelStream | None,
        entities: dict[str, Entity],
        earlier: set[str],
    ) -> Feature | None:
        if not isinstance(spec, dict):
            self.error(at, "expected a mapping with a name")
            return None
        name = self.name(spec.get("name"), f"{at}.name")
        if name is None:
            return None
        if "ratio" in spec or "difference" in spec:
            return self.derived(spec, at, name, earlier)
        if "entity" in spec or "op" in spec:
            return self.window(spec, at, name, events, labels, entities)
        return self.row(spec, at, name, events)

    def row(self, spec: dict[str, Any], at: str, name: str, events: EventStream) -> Feature | None:
        if self.mapping(spec, at, ("name", "value", "when")) is None:
            return None
        if ("value" in spec) == ("when" in spec):
            self.error(at, "a row feature has either value: <numeric field> or when: <predicate>")
            return None
        if "value" in spec:
            value = spec["value"]
            if value not in events.names or not events.field(value).numeric:
                self.error(f"{at}.value", f"{value!r} is not a numeric field of the events")
                return None
            return RowFeature(name, value=value)
        when = self.predicate(spec["when"], f"{at}.when", events)
        return None if when is None else RowFeature(name, when=when)

    def derived(
        self, spec: dict[str, Any], at: str, name: str, earlier: set[str]
    ) -> Feature | None:
        if self.mapping(spec, at, ("name", "ratio", "difference")) is None:
            return None
        if "ratio" in spec and "difference" in spec:
            self.error(at, "a derived input is either a ratio or a difference")
            return None
        op: Literal["ratio", "difference"] = "ratio" if "ratio" in spec else "difference"
        inputs = spec[op]
        if not isinstance(inputs, list) or len(inputs) != 2:
            self.error(f"{at}.{op}", "expected two feature names: [numerator, denominator]")
            return None
        for n in inputs:
            if n not in earlier:
                self.error(f"{at}.{op}", f"{n!r} is not a feature declared above it")
                return None
        return DerivedFeature(name, op, (inputs[0], inputs[1]))

    def window(
        self,
        spec: dict[str, Any],
        at: str,
        name: str,
        events: EventStream,
        labels: LabelStream | None,
        entities: dict[str, Entity],
    ) -> Feature | None:
        keys = ("name", "entity", "op", "field", "window", "delay", "where")
        if self.mapping(spec, at, keys) is None:
            return None
        ok = True
        entity = entities.get(spec.get("entity"))  # type: ignore[arg-type]
        if entity is None:
            known = ", ".join(entities) or "none declared"
            self.error(f"{at}.entity", f"{spec.get('entity')!r} is not an entity ({known})")
            ok = False
        op = spec.get("op")
        if op not in OPERATIONS:
            self.error(f"{at}.op", f"{op!r}: expected one of {', '.join(OPERATIONS)}")
            return None
        wants = OPERATIONS[op]
        field_name = spec.get("field")
        if wants is None and field_name is not None:
            self.error(f"{at}.field", f"{op} takes no field")
            ok = False
        if wants is not None:
            if field_name not in events.names:
                self.error(f"{at}.field", f"{op} needs a field of the events, got {field_name!r}")
                ok = False
            elif events.field(field_name).type == "time":
                self.error(f"{at}.field", f"{field_name} is the time field")
                ok = False
            elif wants == "number" and not events.field(field_name).numeric:
                self.error(f"{at}.field", f"{op} needs a numeric field; {field_name} is text")
                ok = False
        window = self.duration(spec.get("window"), f"{at}.window", allow_zero=False)
        delay = self.duration(spec.get("delay", "0s"), f"{at}.delay", allow_zero=True)
        if window is not None and delay is not None and window + delay > MAX_REACH_US:
            self.error(at, "window + delay reaches back more than 366 days")
            ok = False
        where = None
        if spec.get("where") is not None:
            where = self.predicate(spec["where"], f"{at}.where", events)
            ok = ok and where is not None
            if where is not None and op == "label_rate" and labels is not None:
                # A label is filtered by its own fields, its transaction by the same names.
                lacking = sorted(where.fields - set(TIME_PARTS) - set(labels.names))
                if lacking:
                    self.error(f"{at}.where", f"the labels stream lacks {', '.join(lacking)}")
                    ok = False
        if op == "label_rate":
            if labels is None:
                self.error(f"{at}.op", "label_rate needs a labels stream")
                ok = False
            else:
                if delay is not None and delay < labels.delay_us:
                    self.error(
                        f"{at}.delay",
                        f"a label rate must look behind the label delay "
                        f"({format_duration(labels.delay_us)}): a label is not known sooner",
                    )
                    ok = False
                if entity is not None:
                    missing = [k for k in entity.keys if k not in labels.names]
                    if missing:
                        self.error(
                            f"{at}.entity",
                            f"the labels stream lacks {', '.join(missing)}, "
                            f"needed to route labels to {entity.name}",
                        )
                        ok = False
        if not ok or entity is None or window is None or delay is None:
            return None
        return WindowFeature(name, entity, op, window, delay, field_name, where)

    def duration(self, value: Any, where: str, allow_zero: bool) -> int | None:
        try:
            us = parse_duration(value)
        except ValueError as error:
            self.error(where, str(error))
            return None
        if us == 0 and not allow_zero:
            self.error(where, "a window must be longer than 0s")
            return None
        return us

    def predicate(self, text: Any, where: str, stream: EventStream) -> Predicate | None:
        types = {f.name: f.predicate_type for f in stream.fields if f.type != "time"}
        try:
            return Predicate(text, types)
        except PredicateError as error:
            self.error(where, str(error))
            return None


def describe(definitions: Definitions) -> Iterator[str]:
    """One line per feature, for `rillet features` and the docs."""
    for f in definitions.features:
        if isinstance(f, RowFeature):
            yield f"{f.name}: row, {f.value if f.value else 'when ' + f.when.source}"  # type: ignore[union-attr]
        elif isinstance(f, DerivedFeature):
            yield f"{f.name}: {f.op} of {f.inputs[0]} and {f.inputs[1]}"
        else:
            parts = [f.op + (f"({f.field})" if f.field else ""), f"per {f.entity.name}"]
            parts.append(f"window {format_duration(f.window_us)}")
            if f.delay_us:
                parts.append(f"delay {format_duration(f.delay_us)}")
            if f.where is not None:
                parts.append(f"where {f.where.source}")
            yield f"{f.name}: " + ", ".join(parts)
