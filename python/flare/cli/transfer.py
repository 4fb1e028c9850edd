"""``flare download`` and ``flare retrieve``: pull a file from a running cell, with a progress bar.

Both join the cell network as a short-lived child cell of ``--parent`` and pull from ``--from``; the bar is redrawn
in place on a terminal, or logged as lines otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from flare.cellnet import Cell
from flare.errors import FlareError
from flare.streaming import FileDownloader, FileRetriever, ProgressLog, TerminalProgress

log = logging.getLogger("flare.cli")


def add_commands(commands: argparse._SubParsersAction) -> None:
    download = commands.add_parser("download", help="pull a file registered under a reference id")
    download.add_argument("ref_id", help="reference id the owner registered the file under")
    download.add_argument("--name", help="local file name (default: a fresh unique name)")
    download.set_defaults(run=run_download)

    retrieve = commands.add_parser("retrieve", help="fetch a named file from a cell's FileRetriever source directory")
    retrieve.add_argument("file_name", help="file name relative to the owner's source directory")
    retrieve.add_argument("--topic", help="the retriever's topic (default retrieve_file)")
    retrieve.set_defaults(run=run_retrieve)

    for sub in (download, retrieve):
        sub.add_argument("--parent", required=True, help="URL of the cell to join, e.g. tcp://server:8002")
        sub.add_argument("--from", dest="owner", default="server", help="FQCN of the owner (default server)")
        sub.add_argument("--out", default=".", help="directory for the file (default: the current one)")
        sub.add_argument("--fqcn", default=f"cli-{os.getpid()}", help="name of this command's cell")
        sub.add_argument("--timeout", type=float, default=60.0, help="seconds to join, and per request (default 60)")


def _progress(label: str):
    return TerminalProgress(label) if sys.stderr.isatty() else ProgressLog(label, log, quiet_below=0.0)


def _joined(args: argparse.Namespace) -> Cell:
    cell = Cell(args.fqcn, parent_url=args.parent).start()
    if not cell.wait_for_peer(args.owner, args.timeout):
        cell.close()
        raise FlareError(f"{args.owner} is not reachable through {args.parent} within {args.timeout}s")
    return cell


def _run(args: argparse.Namespace, pull) -> int:
    try:
        cell = _joined(args)
        try:
            path = pull(cell)
        finally:
            cell.close()
    except (FlareError, OSError, ValueError) as e:
        print(f"flare {args.command}: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def run_download(args: argparse.Namespace) -> int:
    return _run(args, lambda cell: FileDownloader.download_file(
        args.owner, args.ref_id, args.timeout, cell, args.out, file_name=args.name,
        progress_cb=_progress(args.ref_id[:13]), progress_interval=0.5,
    ))


def run_retrieve(args: argparse.Namespace) -> int:
    return _run(args, lambda cell: FileRetriever(cell, topic=args.topic, dest_dir=args.out).retrieve_file(
        args.owner, args.file_name, args.timeout, progress_cb=_progress(args.file_name), progress_interval=0.5,
    ))
