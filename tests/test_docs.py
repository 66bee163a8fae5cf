"""
The documentation site builds (``sphinx-build -W``: a warning fails it)
without a network, and what it generates from the code is all there: a page
for every public module, every hook of ``IAddon``, every option of
``twistd twistproxy``.

The build runs once for the module (it takes half a minute of CPU), in a
child process, with the proxy variables pointing at a closed port on
127.0.0.1: an inventory or page fetched from the network would fail it.
"""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_imports import package_modules
from twistproxy.hooks import IAddon
from twistproxy.options import Options

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
BUILD_TIMEOUT = 600  # seconds; the build takes about 30 s of CPU


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built with ``-W`` into a temporary directory."""
    out = tmp_path_factory.mktemp("html")
    env = dict(os.environ)
    nowhere = f"http://127.0.0.1:{_closed_port()}"
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        env[name] = nowhere
    env.pop("no_proxy", None)
    env.pop("NO_PROXY", None)
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         str(DOCS), str(out)],
        capture_output=True, text=True, env=env, timeout=BUILD_TIMEOUT, cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "", result.stderr
    return out


def public_modules() -> list[str]:
    """Every module of twistproxy whose dotted name has no part starting with ``_``."""
    return [
        name for name in package_modules()
        if name != "twistproxy"
        and not any(part.startswith("_") for part in name.split("."))
    ]


def test_every_public_module_has_a_page(html: Path) -> None:
    """
    Each public module has its API page, listed in the API index, and the
    page documents the module (its anchor is there).
    """
    index = (html / "api" / "index.html").read_text(encoding="utf-8")
    for name in public_modules():
        page = html / "api" / f"{name}.html"
        assert page.is_file(), name
        assert f'id="module-{name}"' in page.read_text(encoding="utf-8"), name
        assert f'href="{name}.html"' in index, name


def test_every_exported_name_is_documented(html: Path) -> None:
    """
    Each name a public module lists in ``__all__`` is described on its page,
    re-exported ones (``twistproxy.hooks.HOOKS``, defined in a private
    module) included.
    """
    for name in public_modules():
        module = importlib.import_module(name)
        page = (html / "api" / f"{name}.html").read_text(encoding="utf-8")
        for exported in getattr(module, "__all__", ()):
            assert f'id="{name}.{exported}"' in page, f"{name}.{exported}"


def test_no_page_shows_an_error(html: Path) -> None:
    """
    No page holds an error the build did not count as a warning: docutils'
    system messages, or furo's box for a ``.. contents::`` directive.
    """
    for page in sorted(html.rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        assert "system-message" not in text, page
        assert "Adding a table of contents" not in text, page


def test_hooks_come_from_iaddon(html: Path) -> None:
    """
    The hooks page describes every hook of ``IAddon`` with the text of its
    docstring, so the two cannot drift apart; the API page documents
    ``IAddon`` itself.
    """
    api = (html / "api" / "twistproxy.hooks.html").read_text(encoding="utf-8")
    assert 'id="twistproxy.hooks.IAddon"' in api
    assert 'id="twistproxy.hooks.IAddon.stream_bodies"' in api
    page = (html / "hooks.html").read_text(encoding="utf-8")
    for name in IAddon.names():
        if name == "stream_bodies":
            continue
        assert f'id="twistproxy.hooks.IAddon.{name}"' in page, name


def test_cli_reference_lists_every_option(html: Path) -> None:
    """
    The command-line page, generated from ``Options``, has an entry for every
    long option ``twistd twistproxy`` accepts.
    """
    page = (html / "cli.html").read_text(encoding="utf-8")
    options = Options()
    for name in options.longOpt:
        name = name.rstrip("=")
        assert f'id="cmdoption-twistproxy-{name}"' in page, name


def test_links_out_through_the_vendored_inventories(html: Path) -> None:
    """
    References to Twisted and Python names link to their sites, resolved
    from the inventories in docs/_inv (nothing was fetched).
    """
    def page(name: str) -> str:
        return (html / "api" / f"twistproxy.{name}.html").read_text(encoding="utf-8")

    twisted = "https://docs.twisted.org/en/stable/api/"
    assert f"{twisted}twisted.internet.defer.Deferred.html" in page("hooks")
    assert f"{twisted}twisted.application.service.Service.html" in page("service")
    assert "https://docs.python.org/3.11/" in page("flowfile")
