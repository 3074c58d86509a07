"""The layer order of the packages (.importlinter): `lint-imports` passes, and the contract names every top-level
package of the repo, so a new package cannot stay outside it."""
import configparser
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ROOT / ".importlinter"


def contract() -> configparser.ConfigParser:
    cp = configparser.ConfigParser()
    cp.read(CONTRACT, encoding="utf-8")
    return cp


def top_level_packages() -> set[str]:
    return {p.parent.name for p in ROOT.glob("*/__init__.py")}


def test_lint_imports_passes():
    lint = Path(sys.executable).parent / "lint-imports"
    p = subprocess.run([str(lint), "--config", str(CONTRACT), "--no-cache"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "0 broken" in p.stdout


def test_the_contract_names_every_top_level_package():
    cp = contract()
    roots = set(cp["importlinter"]["root_packages"].split())
    layers = cp["importlinter:contract:layers"]
    assert layers["type"] == "layers"
    named = {m.strip() for line in layers["layers"].split("\n") for m in line.split("|") if m.strip()}
    packages = top_level_packages()
    assert packages, "no top-level packages found"
    assert packages <= roots, f"packages missing from root_packages in .importlinter: {sorted(packages - roots)}"
    assert packages <= named, f"packages missing from the layers in .importlinter: {sorted(packages - named)}"
    assert named <= packages and roots <= packages, f"the contract names packages that do not exist: " \
        f"{sorted((named | roots) - packages)}"


def test_nothing_points_outside_the_repository():
    """The facts the code relies on live in docs/ with their upstream sources, never in a folder users lack."""
    out = subprocess.run(["git", "grep", "-n", "-I", "-E", r"shared/reference|\.\./shared/", "--", ".",
                          ":!results", ":!logs", ":!tests/test_layers.py"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1 and not out.stdout, out.stdout
