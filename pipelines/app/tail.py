"""``rillet tail``: what a downstream service does with the prediction topic (or, with
``--dead-letters``, the dead-letter topic).

It subscribes to the topic (its own subscription ``tail-<random>``, deleted on exit, unless
``--subscription`` names one), optionally filtered on the message attributes, keeps per
``transaction_id`` the highest revision (the contract, docs/specs/messages.md) and prints each
prediction that is new or an update. The contract's ``revision`` is a fence (a large number
that only grows, not a count): the ``rev`` column is its rank among the revisions of that
transaction this tail printed (1, 2, ...); ``--json`` prints the message as it is.

Dead letters print one per original message (deduplicated on ``original_message_id``, the
contract's rule) with their reason, stage, source and detail.

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
    "DEAD_LETTER_FILTER_KEYS",
    "FILTER_KEYS",
    "Columns",
    "Condition",
    "Counts",
    "Latest",
    "TailConfig",
    "filter_expression",
    "format_dead_letter",
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
# The dead letters' attributes (docs/specs/messages.md, "Dead letters").
DEAD_LETTER_FILTER_KEYS: dict[str, tuple[str, ...] | None] = {
    "reason": None,
    "stage": ("parse", "features", "CustomerWindows", "TerminalWindows", "predict"),
    "source": ("transactions", "labels"),
    "original_message_id": None,
}
MAX_FILTER_BYTES = 256  # Pub/Sub's limit on a subscription filter
_IDLE_PULL_S = 0.2  # at least this long between two empty pulls


def _filter_help(keys: Mapping[str, Any]) -> str:
    example = "risk_band=high" if "risk_band" in keys else "reason=not_json"
    return (
        "expected key=value or key!=value with key one of " + ", ".join(keys) + ", e.g. "
        f"--filter {example}"
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


def parse_filters(
    texts: Sequence[str], keys: Mapping[str, tuple[str, ...] | None] = FILTER_KEYS
) -> tuple[Condition, ...]:
    """``--filter`` options as conditions on the attributes ``keys`` (the predictions', or
    DEAD_LETTER_FILTER_KEYS); a UserError (usage) naming the allowed keys for a malformed one,
    an unknown key or a value the attribute never has."""
    conditions: list[Condition] = []
    for text in texts:
        negated = "!=" in text
        key, sep, value = text.partition("!=" if negated else "=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise UserError(f"--filter {text!r}: {_filter_help(keys)}")
        if key not in keys:
            raise UserError(f"--filter {text!r}: unknown attribute {key!r}; {_filter_help(keys)}")
        allowed = keys[key]
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
    """Per transaction_id, the highest revision seen and how many revisions of it were kept
    (the ``max_ids`` most recently updated transactions; older ones are forgotten, so a run of
    days stays bounded)."""

    def __init__(self, max_ids: int = 1_000_000) -> None:
        self.max_ids = max_ids
        self._revisions: OrderedDict[str, tuple[int, int]] = OrderedDict()

    def offer(self, transaction_id: str, revision: int) -> tuple[str, int | None]:
        """("new", None) for a transaction not seen; ("update", previous revision) for a
        higher revision (kept); ("superseded", kept revision) for a lower or equal one (a
        redelivery or a late, older correction: dropped)."""
        seen = self._revisions.get(transaction_id)
        if seen is not None and revision <= seen[0]:
            return "superseded", seen[0]
        self._revisions[transaction_id] = (revision, 1 if seen is None else seen[1] + 1)
        self._revisions.move_to_end(transaction_id)
        if len(self._revisions) > self.max_ids:
            self._revisions.popitem(last=False)
        return ("new", None) if seen is None else ("update", seen[0])

    def revision(self, transaction_id: str) -> int | None:
        seen = self._revisions.get(transaction_id)
        return None if seen is None else seen[0]

    def rank(self, transaction_id: str) -> int | None:
        """The kept revision's rank among the transaction's kept revisions (1: the first)."""
        seen = self._revisions.get(transaction_id)
        return None if seen is None else seen[1]


@dataclass
class Counts:
    received: int = 0
    printed: int = 0
    filtered_out: int = 0
    superseded: int = 0
    invalid: int = 0

    def summary(self, dead_letters: bool = False) -> str:
        line = (
            f"received {self.received}, printed {self.printed}, filtered out "
            f"{self.filtered_out}, "
            + (
                f"redelivered {self.superseded}"
                if dead_letters
                else f"superseded {self.superseded}"
            )
        )
        return line + (f", not predictions {self.invalid}" if self.invalid else "")


class Columns:
    """Left-aligned text columns: each as wide as its header or the widths given (the usual
    size of what it holds), widened when a longer value comes (the lines after it align)."""

    def __init__(self, widths: Mapping[str, int]) -> None:
        self.widths = {name: max(len(name), width) for name, width in widths.items()}

    def header(self) -> str:
        return self.line({name: name for name in self.widths})

    def line(
        self,
        values: Mapping[str, str],
        right: Sequence[str] = (),
        styles: Mapping[str, Callable[[str], str]] | None = None,
    ) -> str:
        """The values (by column) padded; columns named in ``right`` right-aligned, ``styles``
        applied to a padded cell (terminal colours take no width). The last column is not
        padded."""
        cells = []
        names = list(self.widths)
        for name in names:
            text = values.get(name, "")
            self.widths[name] = max(self.widths[name], len(text))
            if name == names[-1]:
                cell = text
            elif name in right:
                cell = text.rjust(self.widths[name])
            else:
                cell = text.ljust(self.widths[name])
            style = (styles or {}).get(name)
            cells.append(style(cell) if style else cell)
        return "  ".join(cells)


# Sizes of what the columns hold: an RFC 3339 second, the simulator's ids (a UUID widens the
# column), a version name (%Y%m%dT%H%M%S%fZ: 22 characters).
PREDICTION_WIDTHS = {
    "event time": 20,
    "transaction": 12,
    "score": 6,
    "band": 6,
    "model": 22,
    "rev": 3,
}
DEAD_LETTER_WIDTHS = {
    "dead-lettered at": 20,
    "reason": 24,
    "stage": 15,
    "source": 12,
    "message id": 16,
    "detail": 0,
}
_BAND_COLOURS = {"high": "red", "medium": "yellow", "low": "green"}
_DETAIL_CHARS = 120  # a dead letter's detail is cut here on the terminal (--json: all of it)


def format_line(
    body: Mapping[str, Any], status: str, rank: int | None, columns: Columns | None = None
) -> str:
    """One printed prediction: event time, transaction id, score, risk band, model version and
    ``rank``, the revision's rank among this transaction's printed ones; an update says which
    it replaces (and whether it is a correction)."""
    columns = columns or Columns(PREDICTION_WIDTHS)
    band = str(body.get("risk_band", "?"))
    score = body.get("score")
    line = columns.line(
        {
            "event time": str(body.get("event_time", "?")),
            "transaction": str(body.get("transaction_id")),
            "score": f"{score:.4f}" if isinstance(score, float) else str(score),
            "band": band,
            "model": str(body.get("model_version", "?")),
            "rev": "?" if rank is None else str(rank),
        },
        right=("score",),
        styles={"band": lambda cell: typer.style(cell, fg=_BAND_COLOURS.get(band))},
    )
    if status == "update" and rank is not None:
        kind = "correction" if body.get("correction") else "update"
        line += f"  {kind}, replaces revision {rank - 1}"
    return line


def format_dead_letter(message: Any, columns: Columns | None = None) -> str:
    """One printed dead letter: when it was published, reason, stage, source, the original
    message's id and the detail (cut at _DETAIL_CHARS)."""
    columns = columns or Columns(DEAD_LETTER_WIDTHS)
    attributes = dict(message.attributes)
    detail = " ".join(str(attributes.get("detail", "")).split())
    if len(detail) > _DETAIL_CHARS:
        detail = detail[: _DETAIL_CHARS - 1] + "…"
    return columns.line(
        {
            "dead-lettered at": _publish_time(message),
            "reason": str(attributes.get("reason", "?")),
            "stage": str(attributes.get("stage", "?")),
            "source": str(attributes.get("source", "?")),
            "message id": str(attributes.get("original_message_id", "-")),
            "detail": detail,
        }
    )


def _publish_time(message: Any) -> str:
    """The message's publish time as RFC 3339 to the second ("?" when it has none)."""
    when = getattr(message, "publish_time", None)
    if when is None or not hasattr(when, "strftime"):
        return "?"
    return str(when.strftime("%Y-%m-%dT%H:%M:%SZ"))


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
    dead_letters: bool = False  # the topic carries dead letters, not predictions


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
            columns = Columns(DEAD_LETTER_WIDTHS if config.dead_letters else PREDICTION_WIDTHS)
            if not config.as_json:
                echo(columns.header())
            with _sigterm_as_interrupt():
                _loop(subscriber, sub.path, config, counts, echo, note, columns)
        except KeyboardInterrupt:
            pass
        finally:
            if sub.created:
                with suppress(exceptions.GoogleAPICallError):
                    subscriber.delete_subscription(request={"subscription": sub.path})
        note(
            f"tail: {counts.summary(config.dead_letters)}"
            + (f" (subscription {sub.path.rsplit('/', 1)[-1]} deleted)" if sub.created else "")
        )
    finally:
        subscriber.close()
    return counts


def _describe(sub: _Subscription, config: TailConfig, note: Callable[[str], None]) -> None:
    stop = []
    what = "dead letters" if config.dead_letters else "predictions"
    if config.limit:
        stop.append(f"after {config.limit} {what}")
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
    columns: Columns | None = None,
) -> None:
    exceptions = _api_errors()
    latest = Latest()
    handle = _handle_dead_letter if config.dead_letters else _handle
    columns = columns or Columns(DEAD_LETTER_WIDTHS if config.dead_letters else PREDICTION_WIDTHS)
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
            if handle(received_message.message, config, latest, counts, echo, note, columns):
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
    columns: Columns,
) -> bool:
    """Counts and maybe prints one prediction; True if it passed the filter."""
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
        hint = " (dead letters? 'rillet tail --dead-letters')" if "reason" in attributes else ""
        note(f"tail: skipped message {message.message_id}: not a prediction message{hint}")
        return True
    status, _ = latest.offer(tx_id, revision)
    if status == "superseded":
        counts.superseded += 1
        return True
    counts.printed += 1
    echo(
        message.data.decode()
        if config.as_json
        else format_line(body, status, latest.rank(tx_id), columns)
    )
    return True


def _handle_dead_letter(
    message: Any,
    config: TailConfig,
    latest: Latest,
    counts: Counts,
    echo: Callable[[str], None],
    note: Callable[[str], None],
    columns: Columns,
) -> bool:
    """Counts and maybe prints one dead letter (once per original message id: delivery is at
    least once); True if it passed the filter."""
    counts.received += 1
    attributes = dict(message.attributes)
    if not matches(config.conditions, attributes):
        counts.filtered_out += 1
        return False
    original = attributes.get("original_message_id")
    if original and latest.offer(original, 0)[0] == "superseded":
        counts.superseded += 1
        return True
    counts.printed += 1
    if config.as_json:
        data = bytes(message.data).decode("utf-8", errors="replace")
        echo(
            json.dumps(
                {"publish_time": _publish_time(message), "attributes": attributes, "data": data}
            )
        )
    else:
        echo(format_dead_letter(message, columns))
    return True
