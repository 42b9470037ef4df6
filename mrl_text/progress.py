"""When long operations (encoding, probe fits, index building) draw progress bars."""

import sys


def progress_enabled(show_progress_bar=None):
    """Whether to draw progress bars: the caller's `show_progress_bar` when given, else only where someone watches.

    `None` means on in a terminal or a notebook, off when stderr goes to a file or a pipe (logs, CI, batch jobs),
    and off whenever Hugging Face progress bars are disabled (`transformers.utils.logging.disable_progress_bar()`
    or `HF_HUB_DISABLE_PROGRESS_BARS=1`). sentence-transformers ties its default to the logging level instead,
    which hides bars from most interactive users; a long `fit` with no sign of life is the worse failure.
    """
    if show_progress_bar is not None:
        return bool(show_progress_bar)
    from transformers.utils import logging

    if not logging.is_progress_bar_enabled():
        return False
    stream = sys.stderr
    in_notebook = type(stream).__module__.startswith("ipykernel")  # its stderr is no tty, yet shows bars
    return stream is not None and (in_notebook or bool(getattr(stream, "isatty", lambda: False)()))


__all__ = ["progress_enabled"]
