"""What every training benchmark's result file starts with: the command that produced it and the machine.

Every benchmark imports this module before its other sibling modules: it puts recipes/ on `sys.path` (the development
data helpers in `demo_data`, and the recipes some suites train with), once, for all of them. A script's own folder,
benchmarks/, is on `sys.path` when it runs; mrl_text comes from the install (or `PYTHONPATH=.`).
"""

import os
import platform
import shlex
import sys
from pathlib import Path

import torch

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
if str(RECIPES) not in sys.path:
    sys.path.append(str(RECIPES))  # appended: it never shadows an installed package


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
    return [
        f"# {title}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']}",
        "",
        report["setup"],
        "",
    ]
