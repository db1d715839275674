"""The ingest benchmark's printed report: one line per measurement, the tables, the floor.

Kept apart from bench/store_bench.py, which measures, so that what the
figures mean (the ratios, the floor of one association, the profiles) reads
without the processes and servers that produce them. The side labels are
both the keys of the result saved in bench/results/*.json and the names the
tables print.
"""

from __future__ import annotations

from typing import Any

from bench.report import ratio, table

BARE = "bare SCP"
PLUGIN = "plugin"
NATIVE = "Orthanc POST /instances"
REST = "plugin POST /dpp/protocols"


def _describe_platform(platform: dict[str, Any] | None) -> str:
    """One line naming the stack a store measurement ran on (empty if unknown)."""
    if not platform:
        return ""
    released = platform.get("lock_released_in_calls")
    lock = {True: "released", False: "held"}.get(released, "unknown")
    return (
        f"Orthanc {platform.get('orthanc')}, Python plugin {platform.get('python_plugin')}, "
        f"Python {platform.get('python')} ({platform.get('stack')}); interpreter lock during "
        f"calls into Orthanc: {lock}"
    )


def one_line(figures: dict[str, Any]) -> str:
    """One measurement as the run prints it while it goes: counts, time, rate, first error."""
    text = f"{figures.get('stored', 0):,} stored, {figures.get('failed', 0)} failed"
    if figures.get("seconds"):
        text += f" in {figures['seconds']:.1f} s ({figures['per_s']:.0f}/s)"
    if figures.get("error"):
        text += f"; error: {figures['error']}"
    return text


def _ceiling(result: dict[str, Any]) -> str:
    """Where one association's time goes, and the most it could do without answering early.

    The plugin may answer a C-STORE only once Orthanc has stored it, so on
    one association (one request at a time) each instance costs at least
    the bare SCP's whole cycle, minus the decoding the plugin does not need
    to do as the bare SCP does, plus Orthanc's own store: the lesser of its
    time inside the plugin and Orthanc's whole ``POST /instances`` of one
    file over HTTP (the REST baseline of the same run), so that the floor
    does not count any slowness of the plugin's own.
    """
    sides = result.get("c_store", {}).get("1", {})
    bare, ours = sides.get(BARE, {}), sides.get(PLUGIN, {})
    native = result.get("rest", {}).get("1", {}).get(NATIVE, {})
    decode = result.get("bare_decode_ms")
    if bare.get("error") or ours.get("error"):
        return ""  # a stalled or failed measurement says nothing about the floor
    if not (bare.get("per_s") and ours.get("per_s") and "orthanc_store_ms" in ours and decode):
        return ""
    bare_ms, ours_ms = 1000 / bare["per_s"], 1000 / ours["per_s"]
    store_ms = ours["orthanc_store_ms"]
    text = (
        f"\nOne association, per instance: plugin {ours_ms:.1f} ms (its handler "
        f"{ours['handler_ms']:.1f} ms, of which Orthanc's own store {store_ms:.1f} ms); "
        f"bare SCP {bare_ms:.1f} ms (its decode {decode:.1f} ms)"
    )
    if native.get("per_s") and not native.get("error"):
        http_ms = 1000 / native["per_s"]
        text += f"; Orthanc's POST /instances of one file over HTTP {http_ms:.1f} ms"
        store_ms = min(store_ms, http_ms)
    floor_ms = bare_ms - decode + store_ms
    return text + (
        f".\nAnswering only after Orthanc has stored, one association needs at least "
        f"{bare_ms:.1f} - {decode:.1f} + {store_ms:.1f} = {floor_ms:.1f} ms per instance: "
        f"at most {1000 / floor_ms:.0f}/s, {ratio(1000 / floor_ms, bare['per_s']):.2f}x the bare "
        "SCP (target 0.8x).\n"
    )


def tables(result: dict[str, Any]) -> str:
    """The report ``python -m bench`` prints after every benchmark: a result of store_bench.run."""
    rows = []
    stores = result.get("c_store", {})
    alone = stores.get("1", {}).get(PLUGIN, {})
    single = None if alone.get("error") else alone.get("per_s")
    for n, sides in stores.items():
        bare, ours = sides.get(BARE, {}), sides.get(PLUGIN, {})
        rows.append(
            [
                int(n),
                bare.get("per_s"),
                ours.get("per_s"),
                ratio(ours.get("per_s"), bare.get("per_s")),
                None if ours.get("error") else ratio(ours.get("per_s"), single),
                ours.get("orthanc_holds"),
                ours.get("error") or bare.get("error") or "",
            ]
        )
    on = _describe_platform(result.get("platform"))
    out = f"\nStore measurements on {on}\n" if on else ""
    out += table(
        f"C-STORE, {result['count']:,} protocols per measurement "
        f"(mean {result['mean_size_kib']:.1f} KiB); target plugin >= 0.8x bare SCP (1 sender), "
        "and growing with senders (x 1 sender)",
        ["senders", f"{BARE} /s", f"{PLUGIN} /s", "x bare", "x 1 sender", "Orthanc holds", "error"],
        rows,
    )
    rows = []
    for threads, sides in result.get("rest", {}).items():
        native, ours = sides.get(NATIVE, {}), sides.get(REST, {})
        rows.append(
            [
                int(threads),
                native.get("per_s"),
                ours.get("per_s"),
                ratio(ours.get("per_s"), native.get("per_s")),
                ours.get("orthanc_holds"),
                ours.get("error") or native.get("error") or "",
            ]
        )
    if rows:
        out += table(
            f"REST upload, {result['count']:,} protocols per measurement, keep-alive clients; "
            f"POST /dpp/protocols {result['rest_batch']} files a request (multipart), "
            "Orthanc's POST /instances one; target >= 0.8x Orthanc",
            ["threads", "Orthanc /s", "plugin /s", "x Orthanc", "Orthanc holds", "error"],
            rows,
        )
    out += _ceiling(result)
    for key, what in (
        ("profile_c_store", "C-STORE handler, 1 sender"),
        ("profile_rest", "POST /dpp/protocols"),
    ):
        profile = result.get(key)
        if profile and profile.get("samples"):
            rows = [[name, share * 100] for name, share in profile["inclusive"]]
            out += table(
                f"Profile of the plugin's {what} ({profile['samples']:,} samples, py-spy)",
                ["function (on the stack)", "% of samples"],
                rows,
            )
    return out
