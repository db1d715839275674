"""``python -m bench [all|find|retrieve|store|fleet] [options]``: run, print tables, save JSON.

``make bench`` runs ``all`` with the defaults: C-FIND over 1,000, 10,000 and
100,000 protocols, then C-GET/C-MOVE of 1,000, then C-STORE and REST upload
(2,000 protocols a measurement), then the fleet routes (100,000 protocols,
1,000,000 performed-protocol references). The first run generates the
library and loads Orthanc data folders (long, see bench/README.md); later
runs reuse them from ``bench/results/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from bench import (
    find_bench,
    fleet_bench,
    orthanc_setup,
    report,
    retrieve_bench,
    store_bench,
    store_report,
)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of counts: {text}") from None
    if not sizes or any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError("sizes must be positive")
    return sizes


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "which", nargs="?", default="all", choices=["all", "find", "retrieve", "store", "fleet"]
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=[1000, 10000, 100000],
        help="C-FIND library sizes (default 1000,10000,100000)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=10.0,
        help="seconds each query type runs on each SCP (default 10)",
    )
    parser.add_argument(
        "--max-queries", type=int, default=500, help="most runs of one query (default 500)"
    )
    parser.add_argument(
        "--queries",
        type=lambda text: [q.strip() for q in text.split(",") if q.strip()],
        default=None,
        help="C-FIND query types to run, comma-separated (default all: "
        + ", ".join(find_bench.queries("1.2").keys())
        + ")",
    )
    parser.add_argument(
        "--retrieve-count", type=int, default=1000, help="protocols per C-GET/C-MOVE (default 1000)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each retrieve per side (default 3)"
    )
    parser.add_argument(
        "--pending-interval",
        type=float,
        default=None,
        help="the plugin's PendingResponseInterval for C-GET/C-MOVE (default: its default, 1 s;"
        " 0 sends a pending response after every sub-operation, as Orthanc does)",
    )
    parser.add_argument(
        "--store-count",
        type=int,
        default=2000,
        help="protocols per C-STORE / REST upload measurement (default 2000)",
    )
    parser.add_argument(
        "--senders",
        type=_sizes,
        default=list(store_bench.SENDERS),
        help="concurrent C-STORE associations, comma-separated (default 1,2,4,8)",
    )
    parser.add_argument(
        "--rest-threads",
        type=_sizes,
        default=list(store_bench.REST_THREADS),
        help="REST upload client threads, comma-separated (default 1,2)",
    )
    parser.add_argument(
        "--rest-batch",
        type=int,
        default=20,
        help="files per multipart POST /dpp/protocols (default 20)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample Orthanc with py-spy during the one-sender C-STORE and print the summary",
    )
    parser.add_argument(
        "--protocols",
        type=int,
        default=100_000,
        help="protocols of the fleet library, approvals not counted (default 100000)",
    )
    parser.add_argument(
        "--references",
        type=int,
        default=1_000_000,
        help="Performed Procedure Protocol references across the fleet library (default 1000000)",
    )
    parser.add_argument(
        "--load-method",
        choices=orthanc_setup.LOAD_METHODS,
        default="normalized",
        help="how a new Orthanc data folder is loaded (default normalized, see orthanc_setup)",
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    orthanc_setup.DEFAULT_LOAD_METHOD = args.load_method
    started = time.monotonic()
    results: dict[str, Any] = {"arguments": {k: v for k, v in vars(args).items()}}
    printed: list[str] = []
    try:
        if args.which in ("all", "find"):
            found = find_bench.run(args.sizes, args.budget, args.max_queries, args.queries)
            results["find"] = found
            printed.append(find_bench.tables(found))
        if args.which in ("all", "retrieve"):
            retrieved = retrieve_bench.run(
                args.retrieve_count, args.repeats, args.budget * 12, args.pending_interval
            )
            results["retrieve"] = retrieved
            printed.append(retrieve_bench.tables(retrieved))
        if args.which in ("all", "store"):
            stored = store_bench.run(
                args.store_count, args.senders, args.rest_threads, args.rest_batch, args.profile
            )
            results["store"] = stored
            printed.append(store_report.tables(stored))
        if args.which in ("all", "fleet"):
            fleet = fleet_bench.run(args.protocols, args.references, args.budget, args.max_queries)
            results["fleet"] = fleet
            printed.append(fleet_bench.tables(fleet))
    finally:
        results["elapsed_s"] = time.monotonic() - started
        path = report.save(results)
    for text in printed:
        print(text)
    print(f"\nRaw figures: {path}  (whole run {results['elapsed_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
