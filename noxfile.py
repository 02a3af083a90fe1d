"""Sessions: `nox -s tests` (default), `lint`, `typecheck`, `demo`, `examples`,
`bench`, `docs`. Each installs what it needs into its own virtual environment."""

import glob
import os

import nox


nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

PYPROJECT = nox.project.load_toml("pyproject.toml")
# Each example takes `--smoke`: a few steps, enough to show it runs end to end.
# Scripts only: `_cli.py` beside them is the command line they share.
EXAMPLES = sorted(glob.glob("examples/[!_]*.py"))
TUTORIALS = sorted(glob.glob("docs/tutorials/[!_]*.py"))


def _install(session, *groups, extras=""):
    session.install("-e", f".{extras}")
    for group in groups:
        session.install(*nox.project.dependency_groups(PYPROJECT, group))


@nox.session
def tests(session):
    """The test suite (float64 gradient checks, cross-checks against cvxpylayers)."""
    _install(session, "test")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session):
    """ruff check + ruff format --check."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session):
    """pyright on the library."""
    _install(session, "lint")
    session.run("pyright", "unimplicit")


@nox.session
def demo(session):
    """The flagship demo: a DEQ classifier on scikit-learn's 8x8 digits."""
    _install(session, extras="[examples]")
    session.run("python", "examples/deq_digits.py", *session.posargs)


@nox.session
def examples(session):
    """Every example and tutorial in smoke mode (a few steps each)."""
    _install(session, extras="[examples]")
    env = {"MPLBACKEND": "Agg"}
    for path in EXAMPLES:
        session.run("python", path, "--smoke", env=env)
    # The tutorials too; their smoke-run figures go to a scratch folder, so that
    # the docs keep the figures of full runs.
    scratch = session.create_tmp()
    for path in TUTORIALS:
        session.run("python", path, "--smoke", "--out", scratch, env=env)


@nox.session
def bench(session):
    """Benchmarks against torchdeq, torchdiffeq, cvxpylayers, qpax, raw Diffrax."""
    _install(session, "bench", extras="[examples]")
    # Every benchmark script; `gpu_check.py` is for a machine with a GPU and is run
    # by hand there. `nox -s bench -- benchmarks/x.py` runs one.
    names = session.posargs or sorted(
        path
        for path in glob.glob("benchmarks/*.py")
        if os.path.basename(path) != "gpu_check.py"
    )
    for path in names:
        session.run("python", path, env={"PYTHONPATH": os.getcwd()})


@nox.session
def docs(session):
    """Build the documentation site with --strict."""
    _install(session, "docs", extras="[examples]")
    session.run("mkdocs", "build", "--strict")
