"""The manual cannot drift from the code: every code block of README.md and docs/ runs here, offline.

A page's blocks run in order, like a notebook: Python blocks share one namespace, shell blocks run with bash, all in
one fresh folder where `recipes/`, `examples/` and `benchmarks/` of this checkout are linked (so a block may call
`python examples/...` as a reader in the repository would). A block that cannot run offline or in a test's time says
why in a marker on the line right above its fence, which this file reads:

    <!-- not-run: downloads bert-base-uncased from the Hub -->

Fences in a language that is not code to run (yaml, json, text, toml) are shown, not executed. Relative links of
README.md must resolve (mkdocs checks the site's own links when it builds with --strict, also tested here).
"""

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
PAGES = [REPOSITORY / "README.md", *sorted((REPOSITORY / "docs").rglob("*.md"))]
RUN = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash", "console": "bash"}
SHOWN = {"yaml", "yml", "json", "text", "txt", "toml", "markdown", "md", "ini", "jinja", "bibtex", ""}
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<lang>[\w+-]*)[^\n]*$")
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(?P<reason>.*?)\s*-->")
LINKED = ("recipes", "examples", "benchmarks")
UNTRAINED = ".*(not one of the trained|was not trained|never trained).*"


def code_blocks(text):
    """(language, code, reason it is not run or None, line number) for every fenced block of a Markdown text."""
    lines = text.splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, fence, language = opening["indent"], opening["fence"], opening["lang"].lower()
        previous = lines[index - 1] if index else ""
        marker = NOT_RUN.search(previous)
        body, index = [], index + 1
        while index < len(lines) and not lines[index].strip().startswith(fence):
            body.append(lines[index][len(indent) :] if lines[index].startswith(indent) else lines[index])
            index += 1
        blocks.append((language, "\n".join(body) + "\n", marker["reason"] if marker else None, index - len(body)))
        index += 1
    return blocks


def page_id(page):
    return str(page.relative_to(REPOSITORY))


def test_every_fence_language_is_known_and_every_marker_gives_a_reason():
    for page in PAGES:
        for language, _, reason, line in code_blocks(page.read_text(encoding="utf-8")):
            assert language in RUN or language in SHOWN, f"{page_id(page)}:{line}: unknown fence language {language!r}"
            assert reason is None or reason, f"{page_id(page)}:{line}: a not-run marker must say why"


@pytest.fixture
def reader_folder(tmp_path, monkeypatch):
    """A fresh working folder with the repository's scripts linked in, offline, where the page's files land."""
    for name in LINKED:
        if (REPOSITORY / name).exists():
            (tmp_path / name).symlink_to(REPOSITORY / name)
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
        monkeypatch.setenv(variable, "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_page_code_runs(page, reader_folder):
    blocks = [block for block in code_blocks(page.read_text(encoding="utf-8")) if block[0] in RUN]
    runnable = [block for block in blocks if block[2] is None]
    if not runnable:
        pytest.skip(f"{page_id(page)} has no block to run")
    namespace = {"__name__": "__main__"}
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for language, code, _, line in runnable:
        where = f"{page_id(page)}:{line}"
        if RUN[language] == "python":
            with warnings.catch_warnings():
                # A page that encodes at a size or depth its model never trained teaches the wrong thing.
                warnings.filterwarnings("error", message=UNTRAINED)
                exec(compile(code, where, "exec"), namespace)  # the page's own code, as a reader runs it
        else:
            finished = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", code], cwd=reader_folder, env=environment, capture_output=True,
                text=True, timeout=600,
            )
            assert finished.returncode == 0, f"{where} failed:\n{finished.stdout[-3000:]}\n{finished.stderr[-3000:]}"


def test_readme_links_resolve():
    text = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        assert (REPOSITORY / target.split("#")[0]).exists(), f"README.md links to {target}, which does not exist"


@pytest.mark.slow
def test_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[docs]') builds the site")
    finished = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=600,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").exists()
