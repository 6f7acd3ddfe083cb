"""The layer contracts in pyproject.toml bite: an import against them fails ``lint-imports``.

A copy of the importable packages is linted as it is (every contract kept), and with
one wrong import or module added (the contracts it breaks, by name; the others kept).
Without the second half, a contract that no longer matched any module would pass for ever.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
# Contract names, in pyproject order; by name, not type: one type may hold several contracts.
CONTRACTS = [contract["name"] for contract in
             tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]]


def _contract(starting: str) -> str:
    """The one contract whose name starts with ``starting``."""
    [name] = [name for name in CONTRACTS if name.startswith(starting)]
    return name


SHARED_LAYERS = _contract("Shared layers point one way")
NO_FRAMEWORKS = _contract("Outside the web layer shared knows no HTTP framework")
RELAY_NO_METRICS = _contract("The relay reaches no metrics client")


def test_contract_names_are_unique() -> None:
    # lint-imports reports by name: two contracts of one name would read as one verdict.
    assert len(set(CONTRACTS)) == len(CONTRACTS), CONTRACTS


def _copy_of_the_packages(tmp: Path) -> Path:
    for package in ("shared", "functions", "local"):
        shutil.copytree(ROOT / package, tmp / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp / "pyproject.toml")
    return tmp


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}  # the copy, not the installed tree
    return subprocess.run(
        [sys.executable, str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: import-linter is a dev dependency")
    return _copy_of_the_packages(tmp_path)


def test_the_packages_as_they_are_keep_every_contract(tree: Path) -> None:
    done = _lint_imports(tree)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _verdicts(done.stdout) == dict.fromkeys(CONTRACTS, "KEPT"), done.stdout
    assert str(tree) in _imported_from(tree)  # the copy was linted, not the installed tree


def test_a_domain_module_importing_the_web_layer_breaks_the_layer_contracts(tree: Path) -> None:
    bookings = tree / "shared" / "ticketing" / "bookings.py"
    bookings.write_text(bookings.read_text() + "\nfrom shared.web import metrics_route  # noqa: E402\n")
    done = _lint_imports(tree)
    assert done.returncode != 0, done.stdout
    broken = {SHARED_LAYERS, NO_FRAMEWORKS, RELAY_NO_METRICS}  # the relay imports bookings; the scrape route
    assert _verdicts(done.stdout) == {name: "BROKEN" if name in broken else "KEPT" for name in CONTRACTS}, done.stdout
    assert re.search(r"shared\.ticketing\.bookings -> shared\.web\.metrics_route \(l\.\d+\)", done.stdout), done.stdout


def test_a_module_in_no_layer_of_shared_breaks_the_layer_contract(tree: Path) -> None:
    # A flat shared/x.py would be in no layer, so nothing would stop it importing anything.
    (tree / "shared" / "waitlist.py").write_text("import fastapi\n\nfrom shared.web import deps\n")
    done = _lint_imports(tree)
    assert done.returncode != 0, done.stdout
    assert _verdicts(done.stdout) == {
        name: "BROKEN" if name == SHARED_LAYERS else "KEPT" for name in CONTRACTS}, done.stdout
    assert re.search(r"^\s*- shared\.waitlist$", done.stdout, re.MULTILINE), done.stdout


def test_a_metrics_import_on_the_relays_path_breaks_its_contract(tree: Path) -> None:
    # The relay imports holds (its tidy); the hold confirmation's counting once sat there.
    holds = tree / "shared" / "ticketing" / "holds.py"
    holds.write_text(holds.read_text() + "\nfrom shared.platform import metrics  # noqa: E402\n")
    done = _lint_imports(tree)
    assert done.returncode != 0, done.stdout
    assert _verdicts(done.stdout) == {
        name: "BROKEN" if name == RELAY_NO_METRICS else "KEPT" for name in CONTRACTS}, done.stdout
    assert "shared.ticketing.holds -> shared.platform.metrics" in done.stdout, done.stdout


def _verdicts(report: str) -> dict[str, str]:
    """Contract name -> KEPT or BROKEN, from lint-imports' summary lines."""
    return {name: verdict for name in CONTRACTS
            for verdict in re.findall(rf"^{re.escape(name)}\s*(KEPT|BROKEN)$", report, re.MULTILINE)}


def _imported_from(tree: Path) -> str:
    """Where ``shared`` is imported from with the environment ``_lint_imports`` gives."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [sys.executable, "-c", "import shared; print(shared.__file__)"], cwd=tree, env=env,
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
