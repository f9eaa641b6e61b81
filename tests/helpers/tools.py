"""Finding external programs, and the skip-or-fail rule when one is missing.

On a developer machine a missing Debian package skips the tests that need it, with a reason
that says what to install. Under CI (CI=true) the same situation fails: .ci/run installs every
package, so a missing one is a broken pipeline, never a reason to go green with nothing run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Where Debian puts the programs; root's PATH usually has them, a user's may not have sbin.
_EXTRA_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/lib/postfix/sbin")

# Program → Debian package that provides it (for the skip / fail message).
PACKAGE_OF = {
    "postfix": "postfix",
    "postconf": "postfix",
    "postqueue": "postfix",
    "smtp-source": "postfix",
    "smtp-sink": "postfix",
    "swaks": "swaks",
    "openssl": "openssl",
    "fetchmail": "fetchmail",
    "getmail": "getmail6",
    "dovecot": "dovecot-pop3d",
    "doveadm": "dovecot-core",
    "mbsync": "isync",
    "offlineimap": "offlineimap3",
    "curl": "curl",
    "chromium": "chromium",
    "chromedriver": "chromium-driver",
}


def under_ci() -> bool:
    """True when running in CI, where missing tools are an error rather than a skip."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def find_program(name: str) -> Path | None:
    """Absolute path of `name` from PATH or the usual Debian directories, or None."""
    found = shutil.which(name)
    if found is not None:
        return Path(found)
    for directory in _EXTRA_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def missing_programs(*names: str) -> list[str]:
    """The subset of `names` that cannot be found."""
    return [name for name in names if find_program(name) is None]


def program(name: str) -> str:
    """Absolute path of `name` as a string; raises FileNotFoundError naming the package."""
    path = find_program(name)
    if path is None:
        package = PACKAGE_OF.get(name, name)
        raise FileNotFoundError(
            f"{name} not found; install the Debian package {package!r} "
            "(scripts/install-deps.sh does)"
        )
    return str(path)


def missing_reason(missing: list[str]) -> str:
    packages = sorted({PACKAGE_OF.get(name, name) for name in missing})
    return (
        f"missing programs {', '.join(missing)}: install Debian packages "
        f"{' '.join(packages)} (run scripts/install-deps.sh as root)"
    )


def require_tools(*names: str) -> dict[str, str]:
    """Inside a test or fixture: skip (or fail under CI) unless every program exists.

    Returns name → absolute path for convenience.
    """
    import pytest  # only the pytest-facing helper needs it

    missing = missing_programs(*names)
    if missing:
        reason = missing_reason(missing)
        if under_ci():
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    return {name: program(name) for name in names}


def require_root(purpose: str) -> None:
    """Skip (or fail under CI) unless running as root, which a private Postfix needs."""
    import pytest

    if os.geteuid() != 0:
        reason = f"{purpose} needs root (postfix start drops to the postfix user itself)"
        if under_ci():
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
