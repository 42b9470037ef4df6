"""What every benchmark's result file starts with: the command that produced it and the machine (one helper for all).

Every benchmark imports this module before its other sibling modules: it puts recipes/ on `sys.path` (the development
data helpers in `demo_data`, and the recipes some suites train with), once, for all of them. A script's own folder,
benchmarks/, is on `sys.path` when it runs; mrl_text comes from the install (or `PYTHONPATH=.`).
"""

import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

from mrl_text.file_utils import write_atomic

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
if str(RECIPES) not in sys.path:
    sys.path.append(str(RECIPES))  # appended: it never shadows an installed package


def command_line(argv=None):
    """`python benchmarks/<script>.py <arguments>` as the user typed it (`argv` when called from Python)."""
    arguments = argv if argv is not None else sys.argv[1:]
    return "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *arguments])


def cpu_name():
    """The CPU's model name (/proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(load=False):
    """The accelerator (or the CPU, its core and torch-thread counts) and the torch version; `load`: also the load
    average at the call (a shared machine's load makes single timings noisy: say how busy it was)."""
    if torch.cuda.is_available():
        text = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    else:
        threads = torch.get_num_threads()
        text = f"CPU ({cpu_name()}, {os.cpu_count()} cores, {threads} torch threads), torch {torch.__version__}"
    if load and hasattr(os, "getloadavg"):
        text += f", load average {os.getloadavg()[0]:.1f} at start"
    return text


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


def _json_value(value):
    """numpy scalars and arrays (and anything else with `.tolist()`) as plain Python values for `json.dumps`."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON serializable: put a number, string, list or dict "
                    f"in the report instead")


def results_paths(stem):
    """`(stem.json, stem.md)`: `stem` names the pair without a suffix (a given `.json` or `.md` suffix is dropped)."""
    stem = Path(stem)
    if stem.suffix in (".json", ".md"):
        stem = stem.with_suffix("")
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md")


def write_results(stem, report, markdown_lines):
    """Write a benchmark's pair of result files, the one way every benchmark writes them: `<stem>.json` (`report`,
    indented by 2, ending in a newline) and `<stem>.md` (`markdown_lines` joined by newlines, ending in one).

    Both texts are made before either file is touched and each file is replaced through a temp file and a rename, so
    a report that cannot be serialized or a crash mid-write leaves the previous pair as it was. Returns the markdown.
    """
    json_path, markdown_path = results_paths(stem)
    json_text = json.dumps(report, indent=2, default=_json_value) + "\n"
    markdown = "\n".join(markdown_lines).rstrip("\n") + "\n"
    write_atomic(json_path, json_text)
    write_atomic(markdown_path, markdown)
    return markdown
