"""``rillet plan``: a capacity estimate for Dataflow, Bigtable and Datastore at N events/s.

The estimate multiplies per-event costs by the input rate. The costs come from two sources, each
named in the output so that a reader can check and replace them:

* what one event costs the pipeline, measured on this machine (``make bench-e2e``: the full
  streaming pipeline on the DirectRunner, which runs it on about one core); and
* the published per-node guidance of each service (see the constants' comments).

It is a plan, not a promise: the DirectRunner's per-event cost includes the emulators' client
work in the same process and no parallelism across stages, so it overstates what one Dataflow
vCPU needs; Bigtable's guidance assumes 1 KB rows and a well-spread key space.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from pipelines.core.declarations import Definitions, Entity, load_definitions

__all__ = ["Assumptions", "plan"]

# bench-e2e, full pipeline (README "Measured here"): 1,374.8 events/s, half transactions and half
# labels, on the DirectRunner, which executes the steps one after another on one core.
MEASURED_EVENTS_PER_CORE_S = 1374.8
# https://cloud.google.com/bigtable/docs/performance: an SSD node serves up to 17,000 reads or
# 14,000 writes of 1 KB rows per second.
BIGTABLE_SSD_READS_PER_NODE_S = 17_000
BIGTABLE_SSD_WRITES_PER_NODE_S = 14_000
# https://cloud.google.com/datastore/docs/best-practices#ramping_up_traffic: start a new kind at
# no more than 500 writes/s and grow by at most 50% every 5 minutes ("500/50/5").
DATASTORE_START_WRITES_S = 500
# The feature stages are keyed by entity (README "Ordering"): Dataflow spreads the keys over its
# workers, but one key runs on one thread, one work item at a time, so the hottest entity's events
# must fit in one key's ceiling. make bench-scaleout (Dataflow's single-key work-item model, the
# product's own stages on the emulators, store round trips included): a hot terminal's work
# items, fitted as 18.1 ms per item + 0.318 ms per event, sustain 2,000.5 events/s in full items
# (100 events) at the emulator's 0.39 ms round trip; with Bigtable's and Datastore's few ms per
# round trip (6 ms assumed, four per terminal work item) instead, this many:
KEY_CEILING_EVENTS_PER_S = 1381.3
# ... and the hottest key of the reference workload's stages carries this share of its stage's
# events (make bench-scaleout on the whole handbook week, a customer; the default run keeps 1,500
# cards of two days, where the hottest customer has 0.26%).
HOTTEST_KEY_SHARE = 0.000627
# make bench-scaleout: every stateful step's work of one input event, run as Dataflow's
# single-key work items run it (one event per item, inference and sinks fused, the emulators'
# round trips included): one thread does this many input events/s. Dataflow overlaps many work
# items per SDK process, so this counts threads busy with work items, not vCPUs.
SINGLE_KEY_EVENTS_PER_THREAD_S = 65.1
# Google's advice for a Bigtable row (256 MB is the hard limit).
BIGTABLE_ROW_ADVISED_BYTES = 100_000_000


@dataclass(frozen=True)
class Assumptions:
    """The inputs of the estimate (defaults: the reference workload)."""

    label_fraction: float = 0.5  # every transaction gets one label: half the events are labels
    # Its id-index row, its customer's and its terminal's bucket rows and head rows (one mutation
    # each per work item).
    bigtable_rows_written_per_transaction: float = 5.0
    # Its id-index row (the slot), its terminal's bucket row and head row.
    bigtable_rows_written_per_label: float = 3.0
    # WindowCache serves most reads from memory; a cold or moved key reads its entities' rows.
    # The id index always; a cold or moved key's customer and terminal heads and rows at worst.
    bigtable_rows_read_per_transaction: float = 5.0
    bigtable_rows_read_per_label: float = 1.0  # the id index
    datastore_writes_per_transaction: float = 1.0  # one Prediction entity (corrections add few)
    target_utilisation: float = 0.6  # leave headroom for bursts and catch-up after outages
    vcpus_per_worker: int = 4  # n2-standard-4
    events_per_core_s: float = MEASURED_EVENTS_PER_CORE_S
    single_key_events_per_thread_s: float = SINGLE_KEY_EVENTS_PER_THREAD_S
    # One key's events run on one thread: a big merchant's terminal may carry far more than the
    # reference workload's hottest key (rillet plan --hot-share: your data's).
    hottest_key_share: float = HOTTEST_KEY_SHARE
    key_ceiling_events_per_s: float = KEY_CEILING_EVENTS_PER_S

    @classmethod
    def of(cls, definitions: Definitions, **values: Any) -> Assumptions:
        """The assumptions for a definitions file's job (``values`` override any): per
        transaction its id-index row and, per entity stage, a bucket row and a head row written
        (and read, at worst); per label its id-index slot and, per stage whose features read
        labels, a bucket row and a head row."""
        entities = _stages(definitions)
        labelled = [e for e in entities if _needs_labels(definitions, e)]
        derived: dict[str, Any] = {
            "bigtable_rows_written_per_transaction": 1.0 + 2 * len(entities),
            "bigtable_rows_written_per_label": 1.0 + 2 * len(labelled),
            "bigtable_rows_read_per_transaction": 1.0 + 2 * len(entities),
            "bigtable_rows_read_per_label": 1.0,
        }
        return cls(**(derived | values))


def _stages(definitions: Definitions) -> list[Entity]:
    """The entities with window features: one keyed stage each (entity_windows.stage_entities,
    without importing Beam into the command line)."""
    return [e for e in definitions.entities if definitions.window_features(e)]


def _needs_labels(definitions: Definitions, entity: Entity) -> bool:
    return any(f.needs_labels for f in definitions.window_features(entity))


def largest_bucket_row(
    definitions: Definitions, events_per_second: float, label_fraction: float
) -> int:
    """The largest bucket row any entity stage of ``definitions`` makes when one of its entities
    gets ``events_per_second`` (its labels land in its rows only if its features read labels);
    a stage's cells carry the window features of the stages before it."""
    from pipelines.core.window_cells import Layout
    from pipelines.stores.bigtable import bucket_row_bytes

    carried = 0
    largest = 0
    for entity in _stages(definitions):
        labels = events_per_second * label_fraction if _needs_labels(definitions, entity) else 0.0
        row = bucket_row_bytes(
            Layout.of(definitions, entity),
            events_per_second * (1 - label_fraction),
            labels,
            carried,
        )
        largest = max(largest, row)
        carried += len(definitions.window_features(entity))
    return largest


def plan(
    events_per_second: float,
    assumptions: Assumptions | None = None,
    definitions: Definitions | None = None,
) -> dict[str, Any]:
    """Workers, Bigtable nodes and the Datastore write rate for ``events_per_second``, for the
    job of ``definitions`` (default: the handbook's file; ``assumptions`` default:
    ``Assumptions.of(definitions)``)."""
    definitions = definitions if definitions is not None else load_definitions()
    if assumptions is None:
        assumptions = Assumptions.of(definitions)
    if events_per_second <= 0:
        raise ValueError("--events-per-second must be positive")
    a = assumptions
    transactions = events_per_second * (1 - a.label_fraction)
    labels = events_per_second * a.label_fraction
    cores = events_per_second / (a.events_per_core_s * a.target_utilisation)
    workers = max(1, math.ceil(cores / a.vcpus_per_worker))
    writes = (
        transactions * a.bigtable_rows_written_per_transaction
        + labels * a.bigtable_rows_written_per_label
    )
    reads = (
        transactions * a.bigtable_rows_read_per_transaction
        + labels * a.bigtable_rows_read_per_label
    )
    # Reads and writes share a node's capacity: add their fractions of one node.
    node_load = reads / BIGTABLE_SSD_READS_PER_NODE_S + writes / BIGTABLE_SSD_WRITES_PER_NODE_S
    nodes = max(1, math.ceil(node_load / a.target_utilisation))
    datastore = transactions * a.datastore_writes_per_transaction
    ramp_minutes = 0.0
    if datastore > DATASTORE_START_WRITES_S:
        ramp_minutes = 5 * math.ceil(math.log(datastore / DATASTORE_START_WRITES_S, 1.5))
    warnings = []
    hottest = events_per_second * a.hottest_key_share
    utilisation = hottest / a.key_ceiling_events_per_s
    key_limit = a.key_ceiling_events_per_s * a.target_utilisation / a.hottest_key_share
    if utilisation > a.target_utilisation:
        warnings.append(
            f"the hottest key would carry {hottest:,.0f} events/s, {utilisation:.0%} of one key's "
            f"ceiling ({a.key_ceiling_events_per_s:,.0f} events/s, make bench-scaleout), more "
            f"than the {a.target_utilisation:.0%} target: above ~{key_limit:,.0f} events/s more "
            "workers do not help that key (README 'Hot entities')"
        )
    # The hottest entity's events: transactions and, if its features read labels, their labels
    # (in the transaction's bucket): its largest bucket row, whichever stage it is in.
    row = largest_bucket_row(definitions, hottest, a.label_fraction)
    if row > BIGTABLE_ROW_ADVISED_BYTES:
        warnings.append(
            f"the hottest entity's bucket rows would reach {row / 1e6:,.0f} MB, over Bigtable's "
            f"advised {BIGTABLE_ROW_ADVISED_BYTES / 1e6:,.0f} MB (256 MB is the hard limit)"
        )
    return {
        "events_per_second": events_per_second,
        "warnings": warnings,
        "transactions_per_second": transactions,
        "dataflow": {
            "vcpus": round(cores, 2),
            "workers": workers,
            # Dataflow gives a stateful step one key per work item: the threads that must be
            # busy with work items at once (wall time, store waits included).
            "single_key_threads": math.ceil(
                events_per_second / (a.single_key_events_per_thread_s * a.target_utilisation)
            ),
        },
        "keyed_stages": {
            "hottest_key_events_per_second": round(hottest, 2),
            "max_events_per_second": round(key_limit, 1),
        },
        "hot_entity": {
            "share": a.hottest_key_share,
            "events_per_second": round(hottest, 2),
            "key_ceiling_events_per_s": a.key_ceiling_events_per_s,
            "key_utilisation": round(utilisation, 4),
            "largest_row_bytes": row,
            "row_advised_bytes": BIGTABLE_ROW_ADVISED_BYTES,
        },
        "bigtable": {
            "rows_written_per_second": writes,
            "rows_read_per_second_worst_case": reads,
            "ssd_nodes": nodes,
        },
        "datastore": {
            "writes_per_second": datastore,
            "ramp_up_minutes_from_500": ramp_minutes,
        },
        "definitions": definitions.name,
        "assumptions": asdict(a),
        "sources": {
            "events_per_core_s": "make bench-e2e on this machine (DirectRunner, one core)",
            "hottest_key_share": "make bench-scaleout (handbook preset), or --hot-share",
            "key_ceiling_events_per_s": "make bench-scaleout (single-key work items, emulators)",
            "largest_row_bytes": "the encoded cells of the largest entity bucket row (15 minutes)",
            "bigtable": "https://cloud.google.com/bigtable/docs/performance",
            "datastore": "https://cloud.google.com/datastore/docs/best-practices#ramping_up_traffic",
        },
    }
