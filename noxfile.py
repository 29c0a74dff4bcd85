"""Development sessions: tests, lint, typecheck, docs, demo, bench.

Each session installs what it needs itself; extra arguments after ``--`` go
to the tool (``nox -s tests -- -k ratelimit``).
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = False

PYTHON = "3"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the whole test suite against the real Redis and PostgreSQL."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def minimal(session: nox.Session) -> None:
    """Prove ``import freightscale`` works with only the core dependencies."""
    session.install(".")
    session.run(
        "python",
        "-c",
        "import freightscale, freightscale.settings, freightscale.stores; "
        "print('import ok', freightscale.__version__)",
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check + ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "src", "tests", "bench", "examples", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "bench", "examples", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[test]", "mypy>=1.10", "types-cachetools")
    session.run("mypy", "--strict", "src/freightscale", *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the docs with mkdocs --strict (the settings reference is generated)."""
    session.install("-e", ".[docs]")
    session.run("python", "docs/gen_settings.py")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Run the FreightOps example server on the embedded default (no services needed)."""
    session.install("-e", ".[example]")
    session.run("python", "-m", "examples.freightops", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Run the benchmarks in bench/ (needs wrk: apt-get install wrk)."""
    session.install("-e", ".[bench]")
    session.run("python", "bench/run.py", *session.posargs)
