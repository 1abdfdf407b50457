"""The one version of LFM Stream: the installed distribution's (``pyproject.toml``), for every ``--version``."""

from __future__ import annotations

import argparse
from importlib import metadata

DISTRIBUTION = "lfm-stream"


def version() -> str:
    """The installed ``lfm-stream`` version, or ``0+unknown`` when run from a source tree that is not installed."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"


def add_version_flag(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` a ``--version`` flag printing ``<prog> <version>`` (e.g. ``lfm-learner 0.1.0``)."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}",
                        help="print the version and exit")
