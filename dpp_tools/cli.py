"""``python -m dpp_tools``: a sample protocol library, loading it, and a DPP client.

The defaults match ``./orthanc.json`` (what ``make run`` starts): the DPP
listener ``ORTHANC_DPP`` on 127.0.0.1:11112, the REST API on
http://127.0.0.1:8043, and the calling AE title ``DPPSCU``, which that file
declares on 127.0.0.1 (port 11113, where ``receive`` listens) so that every
command works against it as written in README.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from pydicom import Dataset

from dpp_tools import client, query, samples, upload
from dpp_tools.client import AssociationError, Peer, RetrieveResult
from dpp_tools.status import Category, category, describe

HOST = "127.0.0.1"
PORT = 11112
CALLED_AET = "ORTHANC_DPP"
CALLING_AET = "DPPSCU"
RECEIVE_PORT = 11113
URL = "http://127.0.0.1:8043"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_ASSOCIATION = 3
EXIT_PARTIAL = 4

EXIT_CODES = """\
exit codes:
  0  success
  1  failed: the peer answered a failure or cancel status (named in the message);
     store, load, get, move: nothing succeeded; a folder or file cannot be written
  2  usage error: bad option, key, UID or file; nothing was sent
  3  no association: cannot connect, association rejected or aborted, SOP class
     not accepted, association lost; load: server unreachable; receive: cannot listen
  4  partly done: some files or sub-operations failed, others succeeded
"""


class UsageError(Exception):
    """Bad input found after parsing (a key, a file); nothing was sent."""


# --------------------------------------------------------------------------
# Argument types


def _ae_title(text: str) -> str:
    if not 0 < len(text) <= 16 or not text.strip() or "\\" in text or not text.isprintable():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an AE title (1-16 printable ASCII characters, no backslash)"
        )
    if not text.isascii():
        raise argparse.ArgumentTypeError(f"{text!r} is not an AE title (ASCII only)")
    return text


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return value


def _positive(kind: Callable[[str], Any], low: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a number of at least {low}")
        return value

    return parse


def _uid(text: str) -> str:
    if not client.is_uid(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a UID (digits and dots, at most 64 characters)"
        )
    return text


# --------------------------------------------------------------------------
# Parser


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; ``python -m dpp_tools COMMAND --help`` shows each command."""
    parser = argparse.ArgumentParser(
        prog="python -m dpp_tools",
        description="Sample DPP library, loading it into Orthanc, and a DPP client "
        "(PS3.4 Annex HH) for any DPP archive.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    network = argparse.ArgumentParser(add_help=False)
    archive = network.add_argument_group("the DPP archive (defaults: ./orthanc.json)")
    archive.add_argument("--host", default=HOST, help=f"its address (default {HOST})")
    archive.add_argument("--port", type=_port, default=PORT, help=f"its port (default {PORT})")
    archive.add_argument(
        "--called-aet",
        type=_ae_title,
        default=CALLED_AET,
        help=f"its AE title (default {CALLED_AET})",
    )
    archive.add_argument(
        "--aet",
        type=_ae_title,
        default=CALLING_AET,
        help=f"our calling AE title (default {CALLING_AET})",
    )
    archive.add_argument(
        "--timeout",
        type=_positive(float, 0.1),
        default=30.0,
        help="seconds to wait for each answer (default 30)",
    )
    archive.add_argument("-v", "--verbose", action="store_true", help="log every DICOM message")

    def command(
        name: str, help_text: str, *parents: argparse.ArgumentParser
    ) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=list(parents),
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = command(
        "samples", "write a sample library of CT and XA protocols and approvals (Part 10 files)"
    )
    p.add_argument("folder", type=Path, metavar="DIR", help="where to write (created if missing)")
    p.add_argument(
        "--count", type=_positive(int, 1), default=30, help="how many files (default 30)"
    )
    p.add_argument(
        "--seed", type=_positive(int, 0), default=0, help="same seed, same files (default 0)"
    )

    p = command("load", "upload files to Orthanc with POST /dpp/protocols, one answer per file")
    p.add_argument(
        "paths", type=Path, nargs="+", metavar="PATH", help="files, or folders (every file in them)"
    )
    p.add_argument("--url", default=URL, help=f"Orthanc's REST API (default {URL})")
    p.add_argument("--user", help="HTTP user, when Orthanc requires authentication")
    p.add_argument("--password", help="HTTP password of --user")
    p.add_argument(
        "--timeout",
        type=_positive(float, 0.1),
        default=60.0,
        help="seconds per request (default 60)",
    )

    command("echo", "C-ECHO: is the archive there, and does it let us associate?", network)

    p = command("store", "C-STORE files (protocols, approvals) to the archive", network)
    p.add_argument(
        "paths", type=Path, nargs="+", metavar="PATH", help="files, or folders (every file in them)"
    )

    p = command(
        "find", "C-FIND on the DPP information model; a table of the matching protocols", network
    )
    keys = p.add_argument_group("matching keys (PS3.4 Table HH.6-1; wild cards * and ? in text)")
    keys.add_argument("--name", help="Protocol Name (0018,1030), e.g. '*Head*' (case-sensitive)")
    keys.add_argument("--modality", help="Equipment Modality (0008,0221), e.g. CT")
    keys.add_argument("--manufacturer", help="Model Specification Sequence > Manufacturer")
    keys.add_argument("--model", help="Model Specification Sequence > Manufacturer's Model Name")
    keys.add_argument(
        "--code", help="Potential Scheduled Protocol Code Sequence > Code Value, e.g. RPID16"
    )
    keys.add_argument("--scheme", help="... > Coding Scheme Designator of --code, e.g. RADLEX")
    keys.add_argument(
        "--procedure-code", help="Potential Requested Procedure Code Sequence > Code Value"
    )
    keys.add_argument(
        "--uid", type=_uid, action="append", default=[], help="SOP Instance UID (repeatable)"
    )
    keys.add_argument(
        "keys",
        nargs="*",
        metavar="KEY=VALUE",
        help="any attribute: Keyword=value, Sequence.Keyword=value; Keyword alone: return it",
    )
    output = p.add_mutually_exclusive_group()
    output.add_argument(
        "--json", action="store_true", help="the answers as JSON objects (keyword: value)"
    )
    output.add_argument(
        "--dicom-json", action="store_true", help="the answers in DICOM JSON (PS3.18 F.2)"
    )
    output.add_argument(
        "--uids", action="store_true", help="only SOP Instance UIDs, one a line (for get/move)"
    )

    p = command("get", "C-GET protocols by SOP Instance UID into a folder, as <UID>.dcm", network)
    p.add_argument("uids", type=_uid, nargs="+", metavar="UID")
    p.add_argument(
        "--out", type=Path, default=Path("."), metavar="DIR", help="folder (default: current)"
    )

    p = command(
        "move", "C-MOVE protocols by SOP Instance UID to a modality the archive knows", network
    )
    p.add_argument("uids", type=_uid, nargs="+", metavar="UID")
    p.add_argument(
        "--to", type=_ae_title, required=True, metavar="AET", help="Move Destination AE title"
    )

    p = command(
        "receive", "a C-MOVE destination: store DPP instances sent to us as <UID>.dcm in a folder"
    )
    p.add_argument("folder", type=Path, metavar="DIR")
    p.add_argument(
        "--aet", type=_ae_title, default=CALLING_AET, help=f"our AE title (default {CALLING_AET})"
    )
    p.add_argument(
        "--port",
        type=_port,
        default=RECEIVE_PORT,
        help=f"port to listen on (default {RECEIVE_PORT})",
    )
    p.add_argument("--bind", default=HOST, help=f"address to listen on (default {HOST})")
    p.add_argument("--count", type=_positive(int, 1), help="stop after this many instances")
    p.add_argument("--timeout", type=_positive(float, 0.1), help="stop after this many seconds")
    p.add_argument("-v", "--verbose", action="store_true", help="log every DICOM message")
    return parser


# --------------------------------------------------------------------------
# Commands


def _files(paths: Sequence[Path]) -> list[Path]:
    """Files named, and every file under folders named, in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise UsageError(f"{path}: no such file or folder")
    if not found:
        raise UsageError("no files in " + ", ".join(str(p) for p in paths))
    return found


def _peer(args: argparse.Namespace) -> Peer:
    return Peer(args.host, args.port, args.called_aet, args.aet, args.timeout)


def _outcome(done: int, failed: int) -> int:
    if failed == 0:
        return EXIT_OK
    return EXIT_PARTIAL if done else EXIT_FAILED


def run_samples(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    written = samples.write_library(args.folder, args.count, args.seed)
    kinds = [path.stem.split("-")[1] for path in written]
    counts = ", ".join(
        f"{kinds.count(k)} {label}"
        for k, label in (("ct", "CT"), ("xa", "XA"), ("approval", "approvals"))
    )
    print(f"wrote {len(written)} files into {args.folder}: {counts}", file=out)
    return EXIT_OK


def run_load(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    files = _files(args.paths)
    stored = failed = 0
    for path in files:
        try:
            answer = upload.upload(
                args.url, path, user=args.user, password=args.password, timeout=args.timeout
            )
        except upload.ServerUnreachable as exc:
            print(f"error: {exc}", file=err)
            return EXIT_NO_ASSOCIATION
        if answer.stored:
            stored += 1
            print(f"{path}: {answer.status} {answer.sop_instance_uid}", file=out)
        else:
            failed += 1
            print(f"{path}: FAILED, HTTP {answer.http_status}: {answer.error}", file=out)
    print(f"{stored} of {len(files)} files stored, {failed} failed, at {args.url}", file=out)
    return _outcome(stored, failed)


def run_echo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    peer = _peer(args)
    status = client.echo(peer)
    print(f"C-ECHO {peer}: {describe(status, 'C-ECHO')}", file=out)
    return EXIT_OK if category(int(status.Status), "C-ECHO") is Category.SUCCESS else EXIT_FAILED


def run_store(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    peer = _peer(args)
    try:
        headers = [client.read_header(path) for path in _files(args.paths)]
        results = client.store(peer, headers)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    done = failed = 0
    for result in results:
        if result.status is None:
            failed += 1
            print(f"{result.path}: FAILED, not sent: {result.error}", file=out)
            continue
        kind = category(int(result.status.Status), "C-STORE")
        ok = kind in (Category.SUCCESS, Category.WARNING)
        done += ok
        failed += not ok
        word = "stored" if ok else "FAILED"
        said = describe(result.status, "C-STORE")
        print(f"{result.path}: {word} {result.sop_instance_uid}: {said}", file=out)
    print(f"{done} of {len(results)} files stored on {peer}, {failed} failed", file=out)
    return _outcome(done, failed)


def find_keys(args: argparse.Namespace) -> query.FindKeys:
    """The matching keys of ``dpp find``'s parsed options (the identifier is built from them)."""
    return query.FindKeys(
        name=args.name,
        modality=args.modality,
        manufacturer=args.manufacturer,
        model=args.model,
        code=args.code,
        scheme=args.scheme,
        procedure_code=args.procedure_code,
        uids=args.uid,
        extra=args.keys,
    )


def run_find(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    peer = _peer(args)
    keys = find_keys(args)
    try:
        identifier = query.build_identifier(keys)
    except query.BadKey as exc:
        raise UsageError(str(exc)) from exc
    pending, final = client.find(peer, identifier)
    answers: list[Dataset] = [answer for _, answer in pending if answer is not None]
    if args.json or args.dicom_json:
        print(query.to_json(answers, dicom=args.dicom_json), file=out)
    elif args.uids:
        for answer in answers:
            print(answer.get("SOPInstanceUID", ""), file=out)
    else:
        print(query.table(answers), file=out)
    if any(int(status.Status) == 0xFF01 for status, _ in pending):
        print(f"note: {peer} did not honour some optional keys (0xFF01)", file=err)
    kind = category(int(final.Status), "C-FIND")
    summary = f"{len(answers)} matches from {peer}; C-FIND {describe(final, 'C-FIND')}"
    if kind in (Category.SUCCESS, Category.WARNING):
        print(summary, file=err)
        return EXIT_OK
    print(f"error: {summary}", file=err)
    return EXIT_FAILED


def _retrieve_outcome(
    service: str, result: RetrieveResult, done: int, err: TextIO, what: str
) -> int:
    for uid in result.failed_uids:
        print(f"not retrieved: {uid}", file=err)
    kind = category(int(result.final.Status), service)
    text = f"{what}; {service} {describe(result.final, service)}"
    if kind is Category.SUCCESS:
        print(text, file=err)
        return EXIT_OK
    print(f"error: {text}", file=err)
    if kind is Category.WARNING or done:
        return EXIT_PARTIAL
    return EXIT_FAILED


def run_get(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    peer = _peer(args)
    result = client.get(peer, args.uids, args.out)
    for path in result.written:
        print(path, file=out)
    what = f"{len(result.written)} of {len(args.uids)} received from {peer} into {args.out}"
    return _retrieve_outcome("C-GET", result, len(result.written), err, what)


def run_move(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    peer = _peer(args)
    result = client.move(peer, args.uids, args.to)
    final = result.final
    completed = int(final.get("NumberOfCompletedSuboperations", 0) or 0)
    failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
    warned = int(final.get("NumberOfWarningSuboperations", 0) or 0)
    what = f"{peer} sent {completed} to {args.to} ({failed} failed, {warned} with warnings)"
    print(what, file=out)
    return _retrieve_outcome(
        "C-MOVE", result, completed, err, f"{completed} of {len(args.uids)} moved"
    )


def run_receive(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    def on_file(path: Path, calling_aet: str) -> None:
        print(f"{path} from {calling_aet}", file=out, flush=True)

    try:
        receiver = client.Receiver(
            args.folder, aet=args.aet, bind=args.bind, port=args.port, on_file=on_file
        )
    except OSError as exc:
        print(f"error: cannot listen on {args.bind}:{args.port}: {exc.strerror or exc}", file=err)
        return EXIT_NO_ASSOCIATION
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    print(
        f"{args.aet} listening on {args.bind}:{args.port}, writing into {args.folder}"
        " (Ctrl-C stops)",
        file=err,
        flush=True,
    )
    try:
        receiver.wait(args.count, args.timeout, stop)
    finally:
        receiver.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"received {receiver.received} instances into {args.folder}", file=err)
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO, TextIO], int]] = {
    "samples": run_samples,
    "load": run_load,
    "echo": run_echo,
    "store": run_store,
    "find": run_find,
    "get": run_get,
    "move": run_move,
    "receive": run_receive,
}


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run one command; the exit code (see ``EXIT_CODES``)."""
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    if getattr(args, "verbose", False):
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    else:  # our messages say what pynetdicom would log as errors
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    try:
        return COMMANDS[args.command](args, out, err)
    except UsageError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    except AssociationError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_NO_ASSOCIATION
    except OSError as exc:  # a folder that cannot be written, a file that cannot be read
        print(f"error: {exc}", file=err)
        return EXIT_FAILED
