"""HTML evaluation report with PNG figures.

``write_report(out_dir, data)`` writes ``out_dir/index.html`` and the figures it links (relative
paths, so the directory can be copied or served as is). Every piece of text is escaped. The
optional parts of a run (served scores, feature consistency, replay timing) render as a sentence
saying they were not part of the run when absent.

matplotlib is imported lazily with the Agg backend: the report runs headless, and importing the
module costs nothing to callers that never write a report.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.evaluation import LABEL, Protocol, day_of, evaluate_scores

__all__ = ["SCORED_ONCE", "ReportData", "scored_once_sentence", "write_report"]

SCORED_ONCE = (
    "The test week was scored once, with the model chosen on validation weeks that end before "
    "the test week."
)
"""The statement every report makes about model selection (spec §3)."""

_SCORE = "score"
_COLORS = {"offline": "#1f77b4", "served": "#ff7f0e"}
# Served scores usually equal the offline ones: dash them so both curves stay visible.
_STYLES = {"offline": "-", "served": "--"}


@dataclass
class ReportData:
    """Everything a report shows. ``served``, ``consistency`` and ``timing`` are optional.

    - offline: the test set (TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TX_FRAUD, score).
    - served: the same rows with the score the streaming pipeline served.
    - metrics: {"offline": evaluate_scores(...), "served": {...} (optional), "n_test",
      "n_served", "max_abs_score_diff"}.
    - consistency: one row per model input: feature, compared, mismatches, max_abs_diff.
    - timing: one row per served prediction: publish_time_us, processing_time_us.
    - notes: free text lines (what was run, commands).
    """

    title: str
    protocol: Protocol
    model_card: dict[str, Any]
    offline: pd.DataFrame
    metrics: dict[str, Any]
    served: pd.DataFrame | None = None
    consistency: pd.DataFrame | None = None
    timing: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)


def scored_once_sentence(protocol: Protocol) -> str:
    """SCORED_ONCE with the protocol's dates."""
    test_first, test_last = protocol.test_range
    folds = "; ".join(
        f"train {train[0]}..{train[1]}, validate {valid[0]}..{valid[1]}"
        for train, valid in protocol.validation_folds()
    )
    return (
        f"{SCORED_ONCE} Test week: {test_first}..{test_last}. Validation folds: {folds}. "
        "No test-week result was used to choose the architecture, hyper-parameters or thresholds."
    )


# -- formatting helpers ------------------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    """Numbers compactly (4 significant decimals for floats), the rest as text."""
    if value is None:
        return "n/a"
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        number = float(value)
        if math.isnan(number):
            return "NaN"
        # Tiny values (e.g. score differences) keep their magnitude instead of printing 0.0000.
        return f"{number:.4f}" if abs(number) >= 1e-4 or number == 0 else f"{number:.3g}"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    return str(value)


def _cell(value: Any, depth: int = 0) -> str:
    """Escaped HTML for a table cell: scalars as text, nested dicts and lists of dicts (model
    card: validation folds, selection candidates) as nested tables down to two levels."""
    if depth < 2 and isinstance(value, dict) and value:
        return _table(["field", "value"], value.items(), depth=depth + 1)
    if (
        depth < 2
        and isinstance(value, list | tuple)
        and value
        and all(isinstance(item, dict) for item in value)
    ):
        columns = list(dict.fromkeys(key for item in value for key in item))
        rows = [[item.get(column) for column in columns] for item in value]
        return _table(columns, rows, depth=depth + 1)
    return _esc(_fmt(value))


def _table(
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    row_class: Callable[[Sequence[Any]], str] | None = None,
    depth: int = 0,
) -> str:
    head = "".join(f"<th>{_esc(name)}</th>" for name in header)
    body = []
    for row in rows:
        css = row_class(row) if row_class else ""
        attr = f' class="{_esc(css)}"' if css else ""
        cells = "".join(f"<td>{_cell(cell, depth)}</td>" for cell in row)
        body.append(f"<tr{attr}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _absent(what: str) -> str:
    return f'<p class="absent">{_esc(what)} were not part of this run.</p>'


# -- figures -------------------------------------------------------------------------------


def _scored(data: ReportData) -> dict[str, pd.DataFrame]:
    frames = {"offline": data.offline}
    if data.served is not None and len(data.served):
        frames["served"] = data.served
    return frames


Blocks = dict[str, dict[str, Any] | None]


def _metric_blocks(data: ReportData) -> Blocks:
    """Metrics per score set ("offline", "served"); None when not available.

    The caller's blocks win. A key present with an empty value means the caller withheld the
    metrics (e.g. not every test transaction was served): they are not recomputed from a partial
    frame. A missing key with a frame present is computed from the frame.
    """
    frames = _scored(data)
    blocks: Blocks = {}
    for name in ("offline", "served"):
        block = data.metrics.get(name)
        frame = frames.get(name)
        if name not in data.metrics and frame is not None:
            try:
                block = evaluate_scores(frame, _SCORE)
            except ValueError:
                block = None
        if not isinstance(block, dict) or not block:
            blocks[name] = None
            continue
        block = dict(block)
        if frame is not None:
            # Callers may pass only auc/ap/cp100; the sizes come from the frame.
            block.setdefault("n", len(frame))
            block.setdefault("frauds", int(frame[LABEL].sum()))
        blocks[name] = block
    return blocks


def _save(fig: Any, out_dir: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return name


def _fig_curves(data: ReportData, blocks: Blocks, out_dir: Path) -> list[str]:
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    roc, roc_ax = plt.subplots(figsize=(5.5, 4.5))
    pr, pr_ax = plt.subplots(figsize=(5.5, 4.5))
    for name, frame in _scored(data).items():
        block = blocks.get(name)
        labels = frame[LABEL].to_numpy().astype(int)
        if block is None or labels.min() == labels.max():
            continue  # no metrics (withheld or single-class): no curve
        scores = frame[_SCORE].to_numpy().astype(float)
        fpr, tpr, _ = roc_curve(labels, scores)
        precision, recall, _ = precision_recall_curve(labels, scores)
        color = _COLORS[name]
        auc = block.get("auc", float("nan"))
        ap = block.get("ap", float("nan"))
        style = _STYLES[name]
        roc_ax.plot(fpr, tpr, color=color, linestyle=style, label=f"{name} (AUC {auc:.4f})")
        # The step drawing matches average precision's definition (no interpolation).
        pr_ax.step(
            recall,
            precision,
            where="post",
            color=color,
            linestyle=style,
            label=f"{name} (AP {ap:.4f})",
        )
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    roc_ax.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC curve")
    base_rate = float(data.offline[LABEL].mean()) if len(data.offline) else 0.0
    pr_ax.axhline(base_rate, color="grey", linestyle=":", linewidth=1, label="fraud rate")
    pr_ax.set(xlabel="Recall", ylabel="Precision", title="Precision-recall curve")
    pr_ax.set_ylim(0, 1.02)
    for ax in (roc_ax, pr_ax):
        ax.legend(loc="best", fontsize="small")
        ax.grid(alpha=0.3)
    return [_save(roc, out_dir, "roc.png"), _save(pr, out_dir, "pr.png")]


def _fig_card_precision(data: ReportData, blocks: Blocks, out_dir: Path) -> str:
    import matplotlib.pyplot as plt

    series: dict[str, list[float]] = {}
    for name, block in blocks.items():
        if block and block.get("cp100_per_day"):
            series[name] = list(block["cp100_per_day"])
    fig, ax = plt.subplots(figsize=(7, 4))
    n_days = max((len(values) for values in series.values()), default=0)
    days = sorted(day_of(data.offline).unique()) if len(data.offline) else []
    labels = days if len(days) == n_days else [f"day {i}" for i in range(n_days)]
    width = 0.8 / max(len(series), 1)
    for j, (name, values) in enumerate(series.items()):
        positions = np.arange(len(values)) + (j - (len(series) - 1) / 2) * width
        ax.bar(positions, values, width=width, color=_COLORS[name], label=name)
    ax.set_xticks(np.arange(n_days), labels, rotation=30, ha="right")
    ax.set(ylabel="Card Precision@100", title="Card Precision@100 per test day")
    if series:
        ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out_dir, "card_precision.png")


def _fig_scores(data: ReportData, out_dir: Path) -> str:
    import matplotlib.pyplot as plt

    frames = _scored(data)
    fig, axes = plt.subplots(1, len(frames), figsize=(5.5 * len(frames), 4), squeeze=False)
    bins = np.linspace(0.0, 1.0, 51)
    for ax, (name, frame) in zip(axes[0], frames.items(), strict=True):
        scores = frame[_SCORE].to_numpy().astype(float)
        # Scores outside [0, 1] (e.g. another model's logits) still get a histogram.
        edges = bins if scores.size and scores.min() >= 0 and scores.max() <= 1 else 50
        fraud = frame[LABEL].to_numpy() == 1
        ax.hist(scores[~fraud], bins=edges, alpha=0.6, label="genuine", color="#2ca02c")
        ax.hist(scores[fraud], bins=edges, alpha=0.6, label="fraud", color="#d62728")
        ax.set_yscale("log")
        ax.set(xlabel="score", ylabel="transactions (log)", title=f"Scores by class ({name})")
        ax.legend(fontsize="small")
    return _save(fig, out_dir, "scores.png")


def _latency_ms(timing: pd.DataFrame) -> np.ndarray:
    delta = timing["processing_time_us"].to_numpy(np.int64) - timing["publish_time_us"].to_numpy(
        np.int64
    )
    latency: np.ndarray = delta / 1000.0
    return latency


def _fig_latency(timing: pd.DataFrame, out_dir: Path) -> tuple[str, dict[str, float]]:
    import matplotlib.pyplot as plt

    latency = _latency_ms(timing)
    quantiles = {f"p{q}": float(np.percentile(latency, q)) for q in (50, 95, 99)}
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(latency, bins=60, color="#1f77b4", alpha=0.8)
    styles = {"p50": "-", "p95": "--", "p99": ":"}
    for name, value in quantiles.items():
        ax.axvline(value, color="black", linestyle=styles[name], label=f"{name} {value:.1f} ms")
    ax.set(
        xlabel="latency: processing - publish time (ms)",
        ylabel="predictions",
        title="End-to-end latency",
    )
    ax.legend(fontsize="small")
    return _save(fig, out_dir, "latency.png"), quantiles


def _fig_throughput(timing: pd.DataFrame, out_dir: Path) -> tuple[str, dict[str, float]]:
    import matplotlib.pyplot as plt

    processed = timing["processing_time_us"].to_numpy(np.int64)
    seconds = (processed - processed.min()) / 1e6
    span = float(seconds.max())
    # The pipeline stamps a whole inference batch (up to 500) with one processing time, so
    # one-second bins alternate between 0 and a full batch: aim for ~60 bins of >= 5 s.
    width = max(5.0, math.ceil(span / 60))
    edges = np.arange(0.0, span + width, width)
    if len(edges) < 2:
        edges = np.array([0.0, width])
    counts, _ = np.histogram(seconds, bins=edges)
    rate = counts / width
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.step(edges[:-1], rate, where="post", color="#1f77b4")
    ax.set(
        xlabel="processing time since first prediction (s)",
        ylabel="predictions per second",
        title=f"Throughput ({width:g} s bins)",
    )
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    stats = {
        # A replay shorter than a second counts as one second.
        "mean_per_s": len(processed) / max(span, 1.0),
        "peak_per_s": float(rate.max()) if rate.size else 0.0,
        "span_s": span,
    }
    return _save(fig, out_dir, "throughput.png"), stats


# -- sections ------------------------------------------------------------------------------


def _img(name: str, alt: str) -> str:
    return f'<figure><img src="{_esc(name)}" alt="{_esc(alt)}"></figure>'


def _metrics_section(data: ReportData, blocks: Blocks) -> str:
    names = [name for name, block in blocks.items() if block]
    rows = []
    for key, label in (
        ("auc", "ROC AUC"),
        ("ap", "Average precision"),
        ("cp100", "Card Precision@100 (mean over days)"),
        ("n", "Transactions"),
        ("frauds", "Frauds"),
    ):
        rows.append([label, *[(blocks[name] or {}).get(key) for name in names]])
    parts = [_table(["metric", *names], rows)]
    # Run-level values: the documented ones first, then whatever else the caller recorded.
    first = ["n_test", "n_test_frauds", "n_served", "max_abs_score_diff"]
    keys = [key for key in first if key in data.metrics]
    keys += [key for key in data.metrics if key not in keys and key not in blocks]
    if keys:
        parts.append(_table(["run", "value"], [(key, data.metrics[key]) for key in keys]))
    if blocks.get("served") is None:
        if data.served is None or not len(data.served):
            parts.append(_absent("Served (streaming pipeline) scores"))
        else:
            served, total = len(data.served), data.metrics.get("n_test", len(data.offline))
            parts.append(
                f'<p class="absent">{_esc(f"Served metrics were not computed: {served:,} of")}'
                f" {_esc(f'{total:,} test transactions have a served score.')}</p>"
            )
    return "".join(parts)


def _consistency_section(consistency: pd.DataFrame | None) -> str:
    if consistency is None:
        return _absent("Feature consistency checks (offline vs streaming features)")
    columns = ["feature", "compared", "mismatches", "max_abs_diff"]
    rows = consistency[columns].itertuples(index=False, name=None)

    def mark(row: Sequence[Any]) -> str:
        return "mismatch" if row[2] and row[2] > 0 else ""

    total = int(consistency["mismatches"].sum()) if len(consistency) else 0
    summary = (
        "All compared feature values agree."
        if total == 0
        else f"{total:,} feature values differ (highlighted rows)."
    )
    return f"<p>{_esc(summary)}</p>" + _table(columns, rows, mark)


def _model_card_section(card: dict[str, Any]) -> str:
    if not card:
        return "<p>No model card was supplied.</p>"
    rows = []
    for key, value in card.items():
        if key == "features" and isinstance(value, list | tuple):
            value = f"{len(value)}: " + ", ".join(str(item) for item in value)
        rows.append([key, value])
    return _table(["field", "value"], rows)


def _protocol_section(protocol: Protocol) -> str:
    rows: list[list[Any]] = [
        ["training", *protocol.train_range],
        ["delay (unused)", *(protocol.delay_range or ("n/a", "n/a"))],
        ["test", *protocol.test_range],
    ]
    for k, (train, valid) in enumerate(protocol.validation_folds(), start=1):
        rows.append([f"validation fold {k}: train", *train])
        rows.append([f"validation fold {k}: validate", *valid])
    return _table(["block", "first day", "last day"], rows)


_CSS = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
tr.mismatch td { background: #fdd; }
p.scored-once { font-weight: bold; background: #eef6ff; padding: 0.6em; border-left: 4px solid
  #1f77b4; }
p.absent { color: #777; font-style: italic; }
figure { display: inline-block; margin: 0.5em; }
img { max-width: 100%; }
li { white-space: pre-wrap; }
"""


def write_report(out_dir: Path, data: ReportData) -> Path:
    """Writes ``out_dir/index.html`` and its PNG figures; returns the HTML path."""
    import matplotlib

    matplotlib.use("Agg")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks = _metric_blocks(data)
    roc_png, pr_png = _fig_curves(data, blocks, out_dir)
    sections: list[str] = [
        f"<h1>{_esc(data.title)}</h1>",
        f'<p class="scored-once">{_esc(scored_once_sentence(data.protocol))}</p>',
        "<h2>Metrics on the test set</h2>",
        _metrics_section(data, blocks),
        _img(roc_png, "ROC curve"),
        _img(pr_png, "Precision-recall curve"),
        _img(_fig_card_precision(data, blocks, out_dir), "Card Precision@100 per test day"),
        _img(_fig_scores(data, out_dir), "Score distributions by class"),
        "<h2>Feature consistency</h2>",
        _consistency_section(data.consistency),
        "<h2>Serving latency and throughput</h2>",
    ]
    # Predictions without both timestamps cannot be placed on either plot.
    timing = data.timing.dropna() if data.timing is not None else None
    if timing is not None and len(timing):
        latency_png, quantiles = _fig_latency(timing, out_dir)
        throughput_png, stats = _fig_throughput(timing, out_dir)
        rows = [[f"latency {name} (ms)", value] for name, value in quantiles.items()]
        rows += [
            ["predictions", len(timing)],
            ["mean throughput (per s)", stats["mean_per_s"]],
            ["peak throughput (per s)", stats["peak_per_s"]],
            ["replay span (s)", stats["span_s"]],
        ]
        sections += [
            _table(["measure", "value"], rows),
            _img(latency_png, "Latency histogram"),
            _img(throughput_png, "Throughput over time"),
        ]
    else:
        sections.append(_absent("Replay timing measurements"))
    sections += [
        "<h2>Model card</h2>",
        _model_card_section(data.model_card),
        "<h2>Evaluation protocol</h2>",
        _protocol_section(data.protocol),
        "<h2>Notes</h2>",
    ]
    if data.notes:
        items = "".join(f"<li>{_esc(note)}</li>" for note in data.notes)
        sections.append(f"<ul>{items}</ul>")
    else:
        sections.append("<p>No notes.</p>")
    return write_page(out_dir, data.title, _CSS, sections)


def write_page(out_dir: Path, title: str, css: str, sections: Sequence[str]) -> Path:
    """Writes ``out_dir/index.html``: a page of ``sections`` (HTML) under ``title``; returns it.
    Shared by the reports (this one, pipelines/app/run_report.py)."""
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_esc(title)}</title>\n<style>{css}</style>\n</head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
