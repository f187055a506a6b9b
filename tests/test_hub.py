"""The classroom hub: the configs agree with labkit.classroom.hub's limits, and the kernels' memory check says what to do.

No hub is started here (too slow for CI); benchmarks/hub_load.py starts one."""

import json
import os
from pathlib import Path

import pytest
import yaml

from labkit import __version__
from labkit.classroom import hub as classroom
from labkit.core import memory, settings
from labkit.lm import slm

ROOT = Path(__file__).resolve().parents[1]
HUB = ROOT / "hub"


@pytest.fixture(scope="module")
def z2jh() -> dict:
    return yaml.safe_load((HUB / "z2jh-config.yaml").read_text())


def _local_config(tmp_path, monkeypatch, **env):
    """hub/jupyterhub_config.py as JupyterHub loads it (a traitlets Config), its state in tmp_path."""
    from traitlets.config import Config

    for key in ("LABKIT_HUB_PASSWORD", "LABKIT_HUB_ADMIN_PASSWORD", "LABKIT_HUB_API_TOKEN", "LABKIT_HUB_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LABKIT_HUB_DIR", str(tmp_path))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    c = Config()
    path = HUB / "jupyterhub_config.py"
    exec(compile(path.read_text(), str(path), "exec"), {"get_config": lambda: c, "__file__": str(path)})
    return c


def test_a_learners_first_start_copies_both_editions_and_keeps_their_own(tmp_path, monkeypatch):
    c = _local_config(tmp_path, monkeypatch, LABKIT_CACHE=str(tmp_path / "cache"))
    home = tmp_path / "home"
    spawner = type("Spawner", (), {"home_dir": str(home)})()
    c.Spawner.pre_spawn_hook(spawner)
    for edition in ("notebooks", "notebooks_zh"):
        assert {p.name for p in (home / edition).glob("*.ipynb")} == {p.name for p in (ROOT / edition).glob("*.ipynb")}
    mine = home / "notebooks" / "02_quantization.ipynb"
    mine.write_text("{}")  # the learner's own work
    c.Spawner.pre_spawn_hook(spawner)
    assert mine.read_text() == "{}"


def test_sizes_parse_as_jupyterhub_reads_them():
    assert settings.parse_bytes("2G") == 2 * 1024 ** 3
    assert settings.parse_bytes("512M") == 512 * 1024 ** 2
    assert settings.parse_bytes("1.5G") == int(1.5 * 1024 ** 3)
    assert settings.parse_bytes(str(2 * 1024 ** 3)) == 2 * 1024 ** 3  # MEM_LIMIT as JupyterHub sets it
    with pytest.raises(ValueError, match="e.g. '2G'"):
        settings.parse_bytes("2 gigs")


def test_memory_limit_holds_the_largest_measured_notebook_and_the_server():
    peak = max(memory.measured()["fast"].values())
    need = peak + classroom.SERVER_ALLOWANCE
    limit = settings.parse_bytes(classroom.MEM_LIMIT)
    assert need <= limit < need + 0.25 * 1024 ** 3 + 1, "set MEM_LIMIT from labkit/notebook_memory.json"


def test_limits_are_consistent():
    assert settings.parse_bytes(classroom.MEM_GUARANTEE) <= settings.parse_bytes(classroom.MEM_LIMIT)
    assert 0 < classroom.CPU_GUARANTEE <= classroom.CPU_LIMIT
    assert 0 < classroom.WARN_AT < 1


def test_z2jh_config_uses_the_kits_limits(z2jh):
    single = z2jh["singleuser"]
    assert settings.parse_bytes(single["memory"]["limit"]) == settings.parse_bytes(classroom.MEM_LIMIT)
    assert settings.parse_bytes(single["memory"]["guarantee"]) == settings.parse_bytes(classroom.MEM_GUARANTEE)
    assert float(single["cpu"]["limit"]) == classroom.CPU_LIMIT
    assert float(single["cpu"]["guarantee"]) == classroom.CPU_GUARANTEE
    assert z2jh["cull"]["enabled"] is True and z2jh["cull"]["timeout"] == classroom.CULL_IDLE_SECONDS
    args = z2jh["hub"]["config"]["KubeSpawner"]["args"]
    assert f"--MappingKernelManager.cull_idle_timeout={classroom.KERNEL_CULL_IDLE_SECONDS}" in args
    assert single["extraEnv"]["OMP_NUM_THREADS"] == str(int(classroom.CPU_LIMIT))


def test_z2jh_mounts_the_prepared_cache_read_only(z2jh):
    single = z2jh["singleuser"]
    env = single["extraEnv"]
    mount = next(m for m in single["storage"]["extraVolumeMounts"] if m["mountPath"] == env["LABKIT_CACHE"])
    volume = next(v for v in single["storage"]["extraVolumes"] if v["name"] == mount["name"])
    assert mount["readOnly"] is True and volume["persistentVolumeClaim"]["readOnly"] is True
    assert env["LABKIT_CACHE_READONLY"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    # the kernels with the memory check, from the repository that repo2docker put in /srv/repo
    assert env["JUPYTER_PATH"] == "/srv/repo/hub/jupyter" and (HUB / "jupyter" / "kernels").is_dir()
    copy = " ".join(single["lifecycleHooks"]["postStart"]["exec"]["command"])
    assert "/srv/repo/$d" in copy and "notebooks notebooks_zh" in copy  # both editions
    # the image is built from this repository's Binder files, tagged with this version
    assert all((ROOT / name).exists() for name in ("environment.yml", "postBuild", "start"))

    assert single["image"]["tag"] == __version__


def test_local_hub_config_is_loopback_only_and_uses_the_kits_limits(tmp_path, monkeypatch):
    c = _local_config(tmp_path, monkeypatch, LABKIT_CACHE=str(tmp_path / "cache"))
    assert c.JupyterHub.ip == c.JupyterHub.hub_ip == c.Spawner.ip == "127.0.0.1"
    assert c.ConfigurableHTTPProxy.api_url.startswith("http://127.0.0.1:")
    assert c.Spawner.mem_limit == classroom.MEM_LIMIT and c.Spawner.cpu_limit == classroom.CPU_LIMIT
    env = c.Spawner.environment
    assert env["LABKIT_CACHE"] == str((tmp_path / "cache").resolve()) and env["LABKIT_CACHE_READONLY"] == "1"
    assert env["JUPYTER_PATH"] == str(HUB / "jupyter")
    assert c.JupyterHub.spawner_class == "simple" and c.JupyterHub.authenticator_class == "dummy"
    assert c.SimpleLocalProcessSpawner.home_dir_template.startswith(str(tmp_path))
    assert f"--MappingKernelManager.cull_idle_timeout={classroom.KERNEL_CULL_IDLE_SECONDS}" in c.Spawner.args
    culler = next(s for s in c.JupyterHub.services if s["name"] == "idle-culler")
    assert f"--timeout={classroom.CULL_IDLE_SECONDS}" in culler["command"]


def test_local_hub_password_and_admin_token_come_from_the_environment(tmp_path, monkeypatch):
    c = _local_config(tmp_path, monkeypatch, LABKIT_HUB_PASSWORD="class-pass", LABKIT_HUB_API_TOKEN="t" * 32)
    assert c.JupyterHub.authenticator_class == "shared-password"
    assert c.SharedPasswordAuthenticator.user_password == "class-pass"
    admin = next(s for s in c.JupyterHub.services if s["name"] == "labkit-admin")
    assert admin["api_token"] == "t" * 32


def test_the_hubs_kernels_load_the_memory_check():
    for spec in (HUB / "jupyter" / "kernels").glob("*/kernel.json"):
        argv = json.loads(spec.read_text())["argv"]
        assert argv[0] == "python" and "--ext=labkit.classroom.hub" in argv, spec  # "python": the server's own Python
    names = {p.parent.name for p in (HUB / "jupyter" / "kernels").glob("*/kernel.json")}
    assert {"python3", "labkit"} <= names  # the notebooks' kernel, and the kit's


def test_makefile_hub_checks_the_cache_before_starting(tmp_path):
    make = (ROOT / "Makefile").read_text()
    target = make[make.index("\nhub:"):]
    assert target.index("-m labkit.classroom.hub check") < target.index("jupyterhub -f hub/jupyterhub_config.py")
    assert "npm ci --prefix hub" in make
    lock = json.loads((HUB / "package-lock.json").read_text())
    pinned = json.loads((HUB / "package.json").read_text())["dependencies"]["configurable-http-proxy"]
    assert lock["packages"]["node_modules/configurable-http-proxy"]["version"] == pinned


def _use(kernel_gib: float, total_gib: float, kernels: int, limit: str = "2G") -> classroom.Usage:
    return classroom.Usage(int(kernel_gib * classroom.GIB), int(total_gib * classroom.GIB), kernels,
                           settings.parse_bytes(limit))


def test_memory_message_is_quiet_below_the_warning_share():
    assert classroom.message(_use(0.5, 1.0, 1)) is None
    assert classroom.message(_use(1.0, 1.6, 1, limit="0")) is None  # no limit, nothing to say


def test_memory_message_names_the_numbers_and_what_to_close():
    text = classroom.message(_use(1.2, 1.7, 3), "02_quantization")
    assert "this kernel uses 1.20 GiB" in text and "3 running kernels" in text and "1.70 GiB of your 2.00 GiB" in text
    assert "Kernel > Shut Down Kernel" in text and "before running notebook 02_quantization" in text
    assert "Kernel died" not in text
    alone = classroom.message(_use(1.9, 2.1, 1))
    assert "Restart Kernel" in alone and "Shut Down" not in alone and "Kernel died" in alone


def test_usage_reads_mem_limit_and_resident_memory(monkeypatch):
    monkeypatch.delenv("MEM_LIMIT", raising=False)
    assert classroom.usage() is None
    monkeypatch.setenv("MEM_LIMIT", str(2 * 1024 ** 3))
    use = classroom.usage()
    assert use.limit_bytes == 2 * 1024 ** 3 and 0 < use.kernel_bytes <= use.total_bytes and use.kernels >= 1


def test_the_watch_warns_once_then_again_only_when_memory_grows(monkeypatch, capsys):
    readings = iter([_use(0.5, 1.0, 1), _use(1.0, 1.7, 2), _use(1.0, 1.75, 2), _use(1.1, 1.95, 2),
                     _use(0.4, 0.8, 1), _use(1.0, 1.7, 2)])
    monkeypatch.setattr(classroom, "usage", lambda: next(readings))
    monkeypatch.setenv("JPY_SESSION_NAME", "notebooks/03_pruning.ipynb")
    watch = classroom._Watch()
    said = []
    for _ in range(6):
        watch()
        said.append(capsys.readouterr().err)
    assert [bool(s) for s in said] == [False, True, False, True, False, True]
    assert "notebook 03_pruning" in said[1]


def test_the_extension_registers_only_under_a_limit(monkeypatch):
    class Events:
        def __init__(self):
            self.hooks = []

        def register(self, name, fn):
            self.hooks.append(name)

    class Shell:
        events = None

    monkeypatch.delenv("MEM_LIMIT", raising=False)
    ip = Shell()
    ip.events = Events()
    classroom.load_ipython_extension(ip)
    assert ip.events.hooks == []
    monkeypatch.setenv("MEM_LIMIT", "2G")
    classroom.load_ipython_extension(ip)
    assert ip.events.hooks == ["pre_run_cell"]


def test_a_hub_kernel_over_its_limit_says_so(monkeypatch):
    """A real kernel from hub/jupyter/kernels with a tiny MEM_LIMIT prints the message before its first cell."""
    from jupyter_client.manager import start_new_kernel

    monkeypatch.setenv("JUPYTER_PATH", str(HUB / "jupyter"))
    env = dict(os.environ, MEM_LIMIT="10M", JPY_SESSION_NAME="notebooks/02_quantization.ipynb")
    km, kc = start_new_kernel(kernel_name="python3", env=env, startup_timeout=120)
    try:
        assert km.kernel_spec.resource_dir == str(HUB / "jupyter" / "kernels" / "python3")
        err = []
        kc.execute_interactive("x = 1", timeout=60, output_hook=lambda m: err.append(m["content"].get("text", "")))
        text = "".join(err)
        assert "of your 0.01 GiB limit" in text and "notebook 02_quantization" in text, text
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_check_says_whether_the_small_language_model_is_decoded(monkeypatch, tmp_path):
    monkeypatch.setattr(slm, "decoded_path", lambda: None)
    assert "not decoded" in classroom._slm_line() and "python -m labkit prepare" in classroom._slm_line()
    monkeypatch.setattr(slm, "decoded_path", lambda: tmp_path)
    assert f"decoded small language model {tmp_path}" in classroom._slm_line()


def test_check_refuses_a_cache_that_was_not_prepared(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("LABKIT_CACHE_READONLY", "1")
    with pytest.raises(ValueError, match="python -m labkit prepare"):
        classroom.check_cache()
    assert list(tmp_path.iterdir()) == []  # nothing trained, nothing written
    assert classroom.main(["nonsense"]) == 2
