"""
The documentation's examples are files that tests run, and its command
lines are ones twistd accepts.

- Every Python example of the pages lives in ``docs/examples/`` and is
  shown with ``literalinclude`` (the README's are verbatim copies, checked);
  each example file is shown by a page and
  run by ``tests/e2e/test_docs_e2e.py``. The one inline Python block left,
  ``ProxyFactory``'s signature in embedding.rst, is checked against the code
  by ``tests/test_trips.py`` (``EmbeddingDocTests``).
- Every ``twistd ... twistproxy ...`` line of the pages, the README and the
  examples is parsed by :class:`twistproxy.options.Options`, in a directory
  holding the files it names.
- README.rst renders without a docutils warning (PyPI shows it as the
  long description), and its development command is the one ``.ci/run``
  runs and ``docs/install.rst`` shows.

docs/web.rst belongs to the web UI's work and is left out of the first check.
"""

from __future__ import annotations

import inspect
import io
import re
import shlex
import shutil
from pathlib import Path

import docutils.core
import docutils.utils
import docutils.writers.null
import pytest
from twisted.python import usage

from twistproxy.connection import Client, Server
from twistproxy.flowfile import dump_flows
from twistproxy.http import HTTPFlow, Request, Response
from twistproxy.options import Options

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
EXAMPLES = DOCS / "examples"
NOT_OURS = {"web.rst"}  # the web UI helpers' page


def pages() -> list[Path]:
    """The documentation's pages (``docs/*.rst``, the API pages aside)."""
    return sorted(DOCS.glob("*.rst"))


def code_blocks(text: str, language: str) -> list[str]:
    """The bodies of the ``.. code-block:: LANGUAGE`` blocks of *text*, dedented."""
    blocks = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != f".. code-block:: {language}":
            continue
        indent = len(line) - len(line.lstrip())
        body: list[str] = []
        for following in lines[i + 1:]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            body.append(following)
        blocks.append(inspect.cleandoc("\n".join(body)))
    return blocks


def test_python_examples_are_files() -> None:
    """
    No page holds Python inline (but the checked signature); every
    ``literalinclude`` names a file that exists.
    """
    for page in pages():
        text = page.read_text(encoding="utf-8")
        for name in re.findall(r"\.\. literalinclude:: (\S+)", text):
            assert (DOCS / name).is_file(), f"{page.name}: {name}"
        if page.name in NOT_OURS:
            continue
        blocks = code_blocks(text, "python")
        if page.name == "embedding.rst":
            assert len(blocks) == 1 and blocks[0].startswith("ProxyFactory("), blocks
        else:
            assert blocks == [], page.name


def readme_examples() -> list[str]:
    """The examples the README shows: each of its Python blocks is one, verbatim."""
    shown = []
    files = {path.read_text(encoding="utf-8").strip(): path.name
             for path in EXAMPLES.glob("*.py")}
    for block in code_blocks((REPO / "README.rst").read_text(encoding="utf-8"), "python"):
        assert block.strip() in files, f"README.rst: a Python block that is no example:\n{block}"
        shown.append(files[block.strip()])
    return shown


def test_readme_python_is_examples() -> None:
    """
    README.rst cannot include files (PyPI and GitHub show it as it is), so
    each of its Python blocks is a copy of an example file, checked here.
    """
    assert readme_examples()


def rst_problems(text: str) -> str:
    """
    What docutils reports, at warning level or above, when it reads *text*
    as reStructuredText (PyPI's long description): empty when nothing.
    """
    report = io.StringIO()
    try:
        docutils.core.publish_string(
            text, writer=docutils.writers.null.Writer(),
            settings_overrides={"halt_level": 2, "report_level": 2, "warning_stream": report},
        )
    except docutils.utils.SystemMessage as e:
        return f"{report.getvalue()}{e}"
    return report.getvalue()


def test_readme_renders() -> None:
    """
    README.rst is reStructuredText docutils reads without a warning, so
    PyPI and GitHub show it as written.
    """
    assert rst_problems((REPO / "README.rst").read_text(encoding="utf-8")) == ""


def test_malformed_rst_is_reported() -> None:
    """
    The README check fails on what would spoil the page: a title underline
    too short, a link to a target that does not exist, an unknown directive.
    """
    assert "Title underline too short" in rst_problems("Setting up\n=====\n\ntext\n")
    assert "Unknown target name" in rst_problems("See `Options`_.\n")
    assert "Unknown directive type" in rst_problems(".. literalinclude:: x.py\n")
    assert rst_problems("Title\n=====\n\nSee `Title`_.\n") == ""


def test_development_command_in_step() -> None:
    """
    ``.ci/run`` runs exactly the development command of README.rst's
    "Setting up", and docs/install.rst shows the same one.
    """
    run = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    command = [line for line in run.splitlines() if line.strip() and not line.startswith("#")][-1]
    assert "python -m pytest" in command, command
    assert command in code_blocks((REPO / "README.rst").read_text(encoding="utf-8"), "sh")
    assert command in code_blocks((DOCS / "install.rst").read_text(encoding="utf-8"), "sh")


def test_every_example_is_shown_and_run() -> None:
    """
    Each file of docs/examples is included by a page (or copied into the
    README) and named (in quotes)
    by a test that runs it: tests/e2e/test_docs_e2e.py, or the one whose
    configuration it is (haproxy.cfg: tests/e2e/test_scaleout_e2e.py).
    """
    included = {
        Path(name).name
        for page in pages()
        for name in re.findall(r"\.\. literalinclude:: (\S+)", page.read_text(encoding="utf-8"))
    } | set(readme_examples())
    runners = "".join(
        path.read_text(encoding="utf-8") for path in sorted((REPO / "tests").rglob("test_*.py"))
    )
    for example in sorted(EXAMPLES.iterdir()):
        assert example.name in included, f"{example.name} is shown by no page"
        assert f'"{example.name}"' in runners, f"{example.name} is run by no test"


def command_lines() -> list[tuple[str, str]]:
    """
    Every ``twistd`` command line that starts ``twistproxy`` in the pages,
    the README and the shell examples (continued lines joined), with where
    it was found.
    """
    sources = [*pages(), REPO / "README.rst", *EXAMPLES.glob("*.sh")]
    found = []
    for source in sources:
        text = source.read_text(encoding="utf-8").replace("\\\n", " ")
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line.startswith("twistd ") and " twistproxy" in line and "``" not in line:
                found.append((f"{source.name}:{number}", line))
    return found


def flow_file(path: Path) -> None:
    """Write a flow file of one recorded exchange at *path*."""
    flow = HTTPFlow(Client(), Server(address=("example.com", 80)))
    flow.request = Request.make("GET", "http://example.com/hello")
    flow.response = Response.make(200, "hi\n")
    with open(path, "wb") as out:
        dump_flows([flow], out)


@pytest.mark.parametrize(("where", "line"), command_lines())
def test_documented_command_line_parses(
    where: str, line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The options after ``twistproxy`` are accepted by ``twistd twistproxy``
    (their files exist in the directory they run in, and the placeholder
    directories ``/path/...`` and ``/shared/...`` are the test's).
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for recording in ("flows.jsonl", "session.jsonl"):
        flow_file(tmp_path / recording)
    for example in EXAMPLES.glob("*.py"):
        shutil.copy(example, tmp_path / example.name)
    shutil.copy(EXAMPLES / "stamp.py", tmp_path / "myaddons.py")
    (tmp_path / "path" / "dir").mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    words = shlex.split(line.split("#", 1)[0] if " #" in line else line)
    args = words[words.index("twistproxy") + 1:]
    args = [word for word in args if word != "..."]
    # The placeholders for the reader's own directories become the test's.
    args = [re.sub(r"(^|\|)/(shared|path)/", rf"\g<1>{tmp_path}/\2/", word) for word in args]
    try:
        Options().parseOptions(args)
    except usage.UsageError as e:
        pytest.fail(f"{where}: {line}: {e}")
