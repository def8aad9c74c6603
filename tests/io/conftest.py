"""Fixtures for the reader tests: the real head CT fetched at set-up."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def invesalius_ct():
    """The real head CT of Debian's invesalius-examples as a medmm Volume (read once)."""
    from medmm.demo.realdata import INVESALIUS_ENV, invesalius_ct_path, load_invesalius_ct

    path = invesalius_ct_path(REPO)
    if not path.is_file():
        pytest.skip(
            f"real head CT not found at {path}: `make invesalius-ct` (run by make test) fetches it with "
            f"`apt-get download invesalius-examples`; set {INVESALIUS_ENV} to use a copy elsewhere"
        )
    return load_invesalius_ct(path)
