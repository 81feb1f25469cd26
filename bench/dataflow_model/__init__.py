"""A model of Dataflow streaming's execution, to run a pipeline's own DoFns the way Dataflow would
(test and bench code, not a runner for users). Nothing in it knows rillet: it takes a Beam graph.

    graph.py        the graph's part in scope, taken from a built (never run) pipeline, fused
                    into stages at every shuffle (a stateful ParDo, a GroupByKey)
    bundle.py       one thread's DoFn instances of a stage, driven by Beam's DoFnRunner with the
                    SDK harness's user state context; state and timers as bytes
    worker.py       W worker processes x T threads
    faults.py       the clients' writes logged and failed, zombies held (in the workers)
    coordinator.py  the runner: per-key queues, work items, leases, commits, retries, moves
    messages.py     what they exchange

What it models of Dataflow streaming:
  - A stateful step's work item holds one key (or, in the multi-key mode, many keys of one
    worker); a key's work items run one at a time, in order, the retry of a failed one first.
  - Many work items at once: T threads per SDK process (one DoFn instance per thread and step),
    W processes with their own module globals, caches and clients.
  - The DoFn lifecycle a runner uses: setup once per instance, start_bundle, process, on_timer,
    finish_bundle per work item, teardown when the instance is discarded (after a failure).
  - Beam state (ReadModifyWrite, Bag, Combining, Set) and timers (processing time by the wall
    clock, event time by a harness watermark) committed together with the work item's outputs,
    only if it succeeds and still holds its lease; Bigtable, Datastore and Pub/Sub writes are
    side effects that stay whatever happens next.
  - Fusion: stateless steps run in their producer's work item up to the next shuffle (a Flatten
    unzipped into each producer), so a sink's failure retries the stateful step before it.
  - Failures after each kind of side effect and refused commits, each retried (the same work
    item, sometimes on another worker); keys moved between workers and back; zombies: an
    attempt whose key moved goes on running and writing after the key's newer attempts
    committed, and its commit is refused.

What it does not model: Pub/Sub's own delivery (inputs are fed in the harness's order, each
input work item committed as one; Dataflow's deduplication by message id is not applied, so a
redelivered message reaches the pipeline again), splitting, autoscaling, windows and triggers
(a GroupByKey emits each work item's values per window at once, as Reshuffle's trigger does),
side inputs, OrderedListState, watermark holds of processing-time timers, state and shuffle
size limits, checkpoint and commit latency, and the SDK harness's bundle-level state cache.
"""
