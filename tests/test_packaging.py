"""The two commands, CI and the Binder/conda files describe one environment."""

import os
import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make tour" in readme
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == "make test"


def test_makefile_installs_pinned_torch_before_anything_else():
    make = (ROOT / "Makefile").read_text()
    torch_at = make.index("pip install -q torch==2.13.0")
    assert torch_at < make.index("-r requirements.txt") < make.index("-r requirements-assets.txt")
    assert "--no-deps -r requirements-assets.txt" in make


def test_requirements_never_ask_for_an_unpinned_torch():
    for name in ["requirements.txt", "requirements-assets.txt"]:
        for line in (ROOT / name).read_text().splitlines():
            assert not re.match(r"^\s*torch\b", line), f"{name}: torch must only be installed pinned, first"


def test_assets_are_pinned_by_version_and_hash():
    lines = [ln for ln in (ROOT / "requirements-assets.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert len(lines) == 2
    for line in lines:
        assert "==" in line and re.search(r"--hash=sha256:[0-9a-f]{64}", line)


def test_environment_yml_describes_the_same_environment():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert pip[0] == "torch==2.13.0" and "-r requirements.txt" in pip


def test_binder_scripts_are_executable_bash():
    for name in ["postBuild", "start", ".ci/run"]:
        path = ROOT / name
        assert os.access(path, os.X_OK), name
        subprocess.run(["bash", "-n", str(path)], check=True)
    assert "labkit prepare" in (ROOT / "postBuild").read_text()
