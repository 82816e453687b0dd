"""How the commands print: tables, JSON, and progress on a terminal."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Optional

logger = logging.getLogger(__name__)


def when(moment: Optional[datetime]) -> str:
    """A time in the local time zone, to the second."""
    if moment is None:
        return "-"
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def first_line(text: Optional[str], width: int) -> str:
    lines = (text or "").strip().splitlines()
    line = lines[0] if lines else "-"
    return line if len(line) <= width else line[: width - 3] + "..."


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(header) for header in headers]
    for row in rows:
        widths = [
            max(width, len(cell)) for width, cell in zip(widths, row, strict=True)
        ]
    lines = [
        "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        ).rstrip()
        for row in [headers, *rows]
    ]
    return "\n".join(lines)


def to_json(value: Any) -> str:
    def plain(item: Any) -> Any:
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            return dataclasses.asdict(item)
        if isinstance(item, datetime):
            return item.isoformat()
        raise TypeError(f"cannot show a {type(item).__name__} as JSON")

    return json.dumps(value, default=plain)


def on_terminal() -> bool:
    """Progress bars only on a terminal: a pipe or file gets plain lines."""
    return sys.stdout.isatty() and os.environ.get("TERM") != "dumb"


def progress_bar(**options: Any) -> Any:
    """A tqdm bar on stdout that leaves no trace once closed."""
    from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

    # A terminal that reports no size (some pseudo-terminals) counts as
    # 80x24: tqdm would squeeze the bar to nothing, or hide it.
    size = shutil.get_terminal_size()
    return tqdm(
        file=sys.stdout, leave=False, ncols=size.columns, nrows=size.lines, **options
    )


@contextmanager
def spinner(description: str) -> Iterator[None]:
    """An indeterminate progress line while a single long call runs."""
    if not on_terminal():
        yield
        return
    frames = "|/-\\"
    bar = progress_bar(desc=description, bar_format="{desc} {elapsed}")
    done = threading.Event()

    def spin() -> None:
        turn = 0
        while not done.wait(0.1):
            turn += 1
            bar.set_description_str(f"{description} {frames[turn % len(frames)]}")

    spinning = threading.Thread(target=spin, name="threadjobs-spinner", daemon=True)
    spinning.start()
    try:
        yield
    finally:
        done.set()
        spinning.join()
        bar.close()
