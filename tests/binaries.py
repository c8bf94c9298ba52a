"""System tools some tests drive (Debian packages): found, or skipped with a reason, or failed under CI."""

from __future__ import annotations

import os
import shutil

import pytest


def require(binary: str, package: str) -> str:
    """Path of ``binary``; CI must have it (``.ci/run`` installs ``package``), a laptop may skip."""
    found = shutil.which(binary)
    if found:
        return found
    message = f"{binary} not found: install the Debian package '{package}' (apt-get install -y {package})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)
