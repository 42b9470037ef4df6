"""What every training benchmark's result file starts with: the command that produced it and the machine."""

import os
import platform
import shlex
import sys
from pathlib import Path

import torch


def command_line(argv=None):
    """`python benchmarks/<script>.py <arguments>` as the user typed it (`argv` when called from Python)."""
    arguments = argv if argv is not None else sys.argv[1:]
    return "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *arguments])


def machine():
    """The accelerator (or the CPU and its thread count) and the torch version."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return f"CPU ({cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads), torch {torch.__version__}"


def header(title, report):
    """Markdown lines: title, command, machine, setup sentence."""
    return [f"# {title}", "", f"Command: `{report['command']}`", "", f"Machine: {report['machine']}", "", report["setup"], ""]
