"""pytest fixtures over the factories in pathasst.testing (registered by tests/conftest.py).

The factory modules are imported inside the fixtures so that loading this plugin costs nothing
for tests that do not use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import pytest

if TYPE_CHECKING:
    from pathlib import Path

    from pathasst.testing.http_server import LocalHTTPServer
    from pathasst.testing.images import ImageFactory
    from pathasst.testing.jats import JatsFactory
    from pathasst.testing.pdfs import PdfFactory


@pytest.fixture
def image_factory(tmp_path: "Path") -> "ImageFactory":
    """Images in every Pillow mode, broken files, tissue tiles; ``.file(name, ...)`` writes under tmp_path."""
    from pathasst.testing.images import ImageFactory

    return ImageFactory(tmp_path / "images")


@pytest.fixture
def pdf_factory(tmp_path: "Path") -> "PdfFactory":
    """``pdf_factory(pages)`` writes a PDF under tmp_path and returns its ground truth."""
    from pathasst.testing.pdfs import PdfFactory

    return PdfFactory(tmp_path / "pdfs")


@pytest.fixture
def jats_factory(tmp_path: "Path") -> "JatsFactory":
    """``jats_factory(pmcid, ...)`` gives JATS XML; ``.package(...)`` writes an OA .tar.gz under tmp_path."""
    from pathasst.testing.jats import JatsFactory

    return JatsFactory(tmp_path / "oa")


@pytest.fixture
def http_server() -> "Iterator[LocalHTTPServer]":
    """A started loopback :class:`~pathasst.testing.http_server.LocalHTTPServer`, stopped afterwards."""
    from pathasst.testing.http_server import LocalHTTPServer

    with LocalHTTPServer() as server:
        yield server
