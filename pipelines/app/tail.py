"""``rillet tail``: what a downstream service does with the prediction topic.

It subscribes to the topic (its own subscription ``tail-<random>``, deleted on exit, unless
``--subscription`` names one), optionally filtered on the message attributes, keeps per
``transaction_id`` the highest revision (the contract, docs/specs/messages.md) and prints each
prediction that is new or an update.

Filters: ``key=value`` / ``key!=value`` on the contract's attributes (:data:`FILTER_KEYS`).
Conditions on different keys must all hold; several ``=`` on one key are alternatives
(``risk_band=high risk_band=medium``: either band). They become the subscription's Pub/Sub
filter (:func:`filter_expression`), so Google Cloud drops the other messages before delivery;
the Pub/Sub emulator stores a filter but does not apply it, so the same conditions are also
checked here (:func:`matches`; harmless on Google Cloud, where nothing else arrives).

A filter sees each message alone: with ``risk_band=high``, a correction that moves a transaction
to ``medium`` is never delivered, and the ``high`` revision stays the last one printed.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import typer

from pipelines.app.errors import RUNTIME, UserError

__all__ = [
    "FILTER_KEYS",
    "Condition",
    "Counts",
    "Latest",
    "TailConfig",
    "filter_expression",
    "format_line",
    "matches",
    "parse_filters",
    "run_tail",
]

# Attribute -> its allowed values (None: any value without quotes, backslashes or control
# characters). transaction_id follows one transaction's corrections.
FILTER_KEYS: dict[str, tuple[str, ...] | None] = {
    "risk_band": ("low", "medium", "high"),
    "model_version": None,
    "correction": ("true", "false"),
    "schema_version": None,
    "transaction_id": None,
}
MAX_FILTER_BYTES = 256  # Pub/Sub's limit on a subscription filter
_IDLE_PULL_S = 0.2  # at least this long between two empty pulls
_FILTER_HELP = (
    "expected key=value or key!=value with key one of " + ", ".join(FILTER_KEYS) + ", e.g. "
    "--filter risk_band=high"
)


@dataclass(frozen=True)
class Condition:
    """``attributes.<key> = "<value>"`` (``!=`` when ``negated``)."""

    key: str
    value: str
    negated: bool = False

    def expression(self) -> str:
        return f'attributes.{self.key} {"!=" if self.negated else "="} "{self.value}"'

    def __str__(self) -> str:
        return f"{self.key}{'!=' if self.negated else '='}{self.value}"


def parse_filters(texts: Sequence[str]) -> tuple[Condition, ...]:
    """``--filter`` options as conditions; a UserError (usage) naming the allowed keys for a
    malformed one, an unknown key or a value the attribute never has."""
    conditions: list[Condition] = []
    for text in texts:
        negated = "!=" in text
        key, sep, value = text.partition("!=" if negated else "=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise UserError(f"--filter {text!r}: {_FILTER_HELP}")
        if key not in FILTER_KEYS:
            raise UserError(f"--filter {text!r}: unknown attribute {key!r}; {_FILTER_HELP}")
        allowed = FILTER_KEYS[key]
        if allowed is not None and value not in allowed:
            raise UserError(f"--filter {text!r}: {key} is one of {', '.join(allowed)}")
        if not value or any(c in value for c in '"\\') or not value.isprintable():
            raise UserError(
                f"--filter {text!r}: the value must be non-empty, printable, without quotes or "
                "backslashes"
            )
        condition = Condition(key, value, negated)
        if condition not in conditions:
            conditions.append(condition)
    expression = filter_expression(conditions)
    if len(expression.encode()) > MAX_FILTER_BYTES:
        raise UserError(
            f"--filter: the Pub/Sub filter would be {len(expression.encode())} bytes, more than "
            f"its limit of {MAX_FILTER_BYTES}",
            "use fewer --filter options",
        )
    return tuple(conditions)


def _groups(conditions: Sequence[Condition]) -> Iterator[list[Condition]]:
    """Conditions that must all hold, each a list of alternatives: the ``=`` of one key
    together, each ``!=`` alone."""
    equal: dict[str, list[Condition]] = {}
    for c in conditions:
        if c.negated:
            yield [c]
        else:
            equal.setdefault(c.key, []).append(c)
    yield from equal.values()


def filter_expression(conditions: Sequence[Condition]) -> str:
    """The Pub/Sub subscription filter of ``conditions`` ("" for none)."""
    parts = []
    for group in _groups(conditions):
        if len(group) == 1:
            parts.append(group[0].expression())
        else:
            parts.append("(" + " OR ".join(c.expression() for c in group) + ")")
    return " AND ".join(parts)


def matches(conditions: Sequence[Condition], attributes: Mapping[str, str]) -> bool:
    """Whether a message with ``attributes`` passes the filter (Pub/Sub's semantics: ``!=``
    holds for a message without the attribute, ``=`` does not)."""
    return all(
        any((attributes.get(c.key) == c.value) != c.negated for c in group)
        for group in _groups(conditions)
    )


class Latest:
    """Per transaction_id, the highest revision seen (the ``max_ids`` most recently updated
    transactions; older ones are forgotten, so a run of days stays bounded)."""

    def __init__(self, max_ids: int = 1_000_000) -> None:
        self.max_ids = max_ids
        self._revisions: OrderedDict[str, int] = OrderedDict()

    def offer(self, transaction_id: str, revision: int) -> tuple[str, int | None]:
        """("new", None) for a transaction not seen; ("update", previous revision) for a
        higher revision (kept); ("superseded", kept revision) for a lower or equal one (a
        redelivery or a late, older correction: dropped)."""
        seen = self._revisions.get(transaction_id)
        if seen is not None and revision <= seen:
            return "superseded", seen
        self._revisions[transaction_id] = revision
        self._revisions.move_to_end(transaction_id)
        if len(self._revisions) > self.max_ids:
            self._revisions.popitem(last=False)
        return ("new", None) if seen is None else ("update", seen)

    def revision(self, transaction_id: str) -> int | None:
        return self._revisions.get(transaction_id)


@dataclass
class Counts:
    received: int = 0
    printed: int = 0
    filtered_out: int = 0
    superseded: int = 0
    invalid: int = 0

    def summary(self) -> str:
        line = (
            f"received {self.received}, printed {self.printed}, filtered out "
            f"{self.filtered_out}, superseded {self.superseded}"
        )
        return line + (f", not predictions {self.invalid}" if self.invalid else "")


HEADER = f"{'event time':<20} {'transaction':<20} {'score':>6}  {'band':<6}  {'model':<12} rev"
_BAND_COLOURS = {"high": "red", "medium": "yellow", "low": "green"}


def format_line(body: Mapping[str, Any], status: str, previous: int | None) -> str:
    """One printed prediction: event time, transaction id, score, risk band, model version,
    revision; an update says which revision it replaces (and whether it is a correction)."""
    band = str(body.get("risk_band", "?"))
    score = body.get("score")
    line = (
        f"{body.get('event_time', '?')!s:<20} {body.get('transaction_id')!s:<20} "
        f"{score if not isinstance(score, float) else f'{score:.4f}'!s:>6}  "
        f"{typer.style(f'{band:<6}', fg=_BAND_COLOURS.get(band))}  "
        f"{body.get('model_version', '?')!s:<12} {body.get('revision')}"
    )
    if status == "update":
        kind = "correction" if body.get("correction") else "update"
        line += f"  {kind}, replaces revision {previous}"
    return line


@dataclass(frozen=True)
class TailConfig:
    project: str
    topic: str = "predictions"
    conditions: tuple[Condition, ...] = ()
    subscription: str | None = None
    limit: int = 0
    timeout_s: float = 0.0
    as_json: bool = False
    poll_s: float = 1.0


@dataclass
class _Subscription:
    path: str
    created: bool
    filter: str
    topic: str
    notes: list[str] = field(default_factory=list)


def _api_errors() -> Any:
    from google.api_core import exceptions

    return exceptions


def _open_subscription(subscriber: Any, config: TailConfig) -> _Subscription:
    """The subscription to read: the named one if it exists, else a new one with the filter."""
    exceptions = _api_errors()
    topic = f"projects/{config.project}/topics/{config.topic}"
    expression = filter_expression(config.conditions)
    name = config.subscription or f"tail-{uuid.uuid4().hex[:8]}"
    path = subscriber.subscription_path(config.project, name)
    if config.subscription:
        with suppress(exceptions.NotFound):
            existing = subscriber.get_subscription(request={"subscription": path})
            sub = _Subscription(path, False, existing.filter, existing.topic)
            if existing.topic != topic:
                sub.notes.append(f"its topic is {existing.topic}, not {topic}")
            if existing.filter != expression:
                sub.notes.append(
                    f"its own filter is {existing.filter or 'none'}; --filter is applied here"
                )
            return sub
    request: dict[str, Any] = {"name": path, "topic": topic, "ack_deadline_seconds": 60}
    if expression:
        request["filter"] = expression
    if not config.subscription:
        # A tail killed before it deletes its subscription leaves it to expire (1 day: the
        # shortest expiration Pub/Sub accepts).
        request["expiration_policy"] = {"ttl": {"seconds": 24 * 3600}}
    try:
        subscriber.create_subscription(request=request)
    except exceptions.NotFound as exc:
        raise UserError(
            f"topic {topic} does not exist",
            "check --topic and --project (locally, 'rillet local up' creates the topic "
            "'predictions')",
            RUNTIME,
        ) from exc
    except exceptions.AlreadyExists as exc:  # a random name taken, or a race on --subscription
        raise UserError(f"subscription {path} already exists", "run again", RUNTIME) from exc
    return _Subscription(path, True, expression, topic)


def _pull(subscriber: Any, path: str, max_messages: int, wait_s: float) -> list[Any]:
    """One pull: what arrives within about ``wait_s`` (empty at the deadline)."""
    exceptions = _api_errors()
    try:
        response = subscriber.pull(
            request={"subscription": path, "max_messages": max_messages},
            timeout=wait_s,
            retry=None,
        )
    except exceptions.DeadlineExceeded:
        return []
    return list(response.received_messages)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """A plain ``kill`` stops the tail as Ctrl-C does (summary, subscription deleted)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _subscriber() -> Any:
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import pubsub_v1

    try:
        return pubsub_v1.SubscriberClient()
    except DefaultCredentialsError as exc:
        raise UserError(
            "no Google Cloud credentials",
            "run 'gcloud auth application-default login', or use the local emulators "
            "(--project rillet-local after 'rillet local up')",
            RUNTIME,
        ) from exc


def run_tail(
    config: TailConfig,
    echo: Callable[[str], None] = typer.echo,
    note: Callable[[str], None] = lambda line: typer.echo(line, err=True),
) -> Counts:
    """Reads the prediction topic until ``limit`` predictions are printed, ``timeout_s``
    seconds pass without a matching message (0: never) or Ctrl-C / SIGTERM. ``echo`` prints
    the predictions (stdout), ``note`` the subscription and the summary (stderr). Everything
    pulled and processed is acknowledged; the subscription is deleted if this run created it."""
    exceptions = _api_errors()
    subscriber = _subscriber()
    counts = Counts()
    try:
        try:
            sub = _open_subscription(subscriber, config)
        except exceptions.PermissionDenied as exc:
            raise UserError(
                f"no permission on Pub/Sub in project {config.project}: {exc.message}",
                "check --project and your credentials (roles/pubsub.subscriber and "
                "roles/pubsub.editor to create the subscription)",
                RUNTIME,
            ) from exc
        except exceptions.GoogleAPICallError as exc:
            raise UserError(
                f"Pub/Sub of project {config.project} refused the subscription: {exc}",
                exit_code=RUNTIME,
            ) from exc
        try:
            _describe(sub, config, note)
            if not config.as_json:
                echo(HEADER)
            with _sigterm_as_interrupt():
                _loop(subscriber, sub.path, config, counts, echo, note)
        except KeyboardInterrupt:
            pass
        finally:
            if sub.created:
                with suppress(exceptions.GoogleAPICallError):
                    subscriber.delete_subscription(request={"subscription": sub.path})
        note(
            f"tail: {counts.summary()}"
            + (f" (subscription {sub.path.rsplit('/', 1)[-1]} deleted)" if sub.created else "")
        )
    finally:
        subscriber.close()
    return counts


def _describe(sub: _Subscription, config: TailConfig, note: Callable[[str], None]) -> None:
    stop = []
    if config.limit:
        stop.append(f"after {config.limit} predictions")
    if config.timeout_s:
        stop.append(f"after {config.timeout_s:g} s without one")
    stop.append("on Ctrl-C")
    note(
        f"tail: {sub.topic} via {'new ' if sub.created else ''}subscription {sub.path}"
        f" (filter: {sub.filter or 'none'}); stops {', '.join(stop)}"
    )
    for line in sub.notes:
        note(f"tail: note: subscription {sub.path.rsplit('/', 1)[-1]}: {line}")


def _loop(
    subscriber: Any,
    path: str,
    config: TailConfig,
    counts: Counts,
    echo: Callable[[str], None],
    note: Callable[[str], None],
) -> None:
    exceptions = _api_errors()
    latest = Latest()
    last_match = time.monotonic()
    failures = 0
    while True:
        if config.timeout_s and time.monotonic() - last_match >= config.timeout_s:
            return
        wanted = 100 if not config.limit else min(100, config.limit - counts.printed)
        started = time.monotonic()
        try:
            received = _pull(subscriber, path, wanted, config.poll_s)
            if not received:  # the emulator answers an empty pull at once: no busy loop
                time.sleep(max(0.0, _IDLE_PULL_S - (time.monotonic() - started)))
        except (
            exceptions.ServiceUnavailable,
            exceptions.InternalServerError,
            exceptions.Aborted,
            exceptions.Unknown,
        ) as exc:
            failures += 1
            if failures >= 10:
                raise UserError(
                    f"Pub/Sub does not answer ({type(exc).__name__}: {exc.message})",
                    "check the emulators ('rillet local status') or your network",
                    RUNTIME,
                ) from exc
            time.sleep(1.0)
            continue
        except exceptions.NotFound as exc:
            raise UserError(f"subscription {path} was deleted", exit_code=RUNTIME) from exc
        failures = 0
        # At most limit - printed messages arrive: each prints at most once.
        for received_message in received:
            if _handle(received_message.message, config, latest, counts, echo, note):
                last_match = time.monotonic()
        if received:
            subscriber.acknowledge(
                request={"subscription": path, "ack_ids": [m.ack_id for m in received]}
            )
        if config.limit and counts.printed >= config.limit:
            return


def _handle(
    message: Any,
    config: TailConfig,
    latest: Latest,
    counts: Counts,
    echo: Callable[[str], None],
    note: Callable[[str], None],
) -> bool:
    """Counts and maybe prints one message; True if it passed the filter."""
    counts.received += 1
    attributes = dict(message.attributes)
    if not matches(config.conditions, attributes):
        counts.filtered_out += 1
        return False
    try:
        body = json.loads(message.data)
        tx_id = str(body["transaction_id"])
        revision = int(body.get("revision", attributes.get("revision", "")))
    except (ValueError, KeyError, TypeError, RecursionError):
        counts.invalid += 1
        note(f"tail: skipped message {message.message_id}: not a prediction message")
        return True
    status, previous = latest.offer(tx_id, revision)
    if status == "superseded":
        counts.superseded += 1
        return True
    counts.printed += 1
    echo(message.data.decode() if config.as_json else format_line(body, status, previous))
    return True
