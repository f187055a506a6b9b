"""JupyterHub for a classroom on one machine: `make hub` (http://127.0.0.1:8000).

Every learner gets a server with JupyterLab, a home of their own under hub/state/users/<name> with a fresh copy of
notebooks/ (and notebooks_zh/, the Chinese edition), and kernels that read the prepared baseline read-only and warn before they run out of memory.
All learners run as the user who started the hub (SimpleLocalProcessSpawner): no isolation between them, which
suits a trusted class on one machine, not a public server. For a cluster, see hub/z2jh-config.yaml.

Environment (all optional):
    LABKIT_HUB_PASSWORD        the class password (8 characters or more), any user name; unset: any password
    LABKIT_HUB_ADMIN_PASSWORD  the instructor's password (32 characters or more), for the user "instructor"
    LABKIT_HUB_API_TOKEN       an admin API token for scripts (benchmarks/hub_load.py sets one)
    LABKIT_HUB_PORT            the public port (default 8000); the proxy's API and the hub use the next two
    LABKIT_HUB_DIR             where the hub keeps its database and the learners' homes (default hub/state)
    LABKIT_CACHE               the prepared cache (default ~/.cache/labkit), as `python -m labkit prepare` made it
    LABKIT_FAST, LABKIT_DATA   passed to every learner's kernels, as the cache was prepared with them
"""

import os
import shutil
import sys
from pathlib import Path

from labkit.classroom import hub as classroom  # the limits (one source of truth) and the kernels' memory check
from labkit.core import cache

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STATE = Path(os.environ.get("LABKIT_HUB_DIR") or HERE / "state").resolve()
PORT = int(os.environ.get("LABKIT_HUB_PORT", "8000"))
BIN = Path(sys.executable).parent  # the virtual environment that runs the hub runs every learner too
CACHE = cache.cache_dir().resolve()  # labkit's own reading of LABKIT_CACHE: a blank or relative one is refused
STATE.mkdir(parents=True, exist_ok=True)

c = get_config()  # noqa: F821 (JupyterHub provides it)

# --- network: loopback only --------------------------------------------------------------------------------
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = PORT
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = PORT + 2
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{PORT + 1}"
c.ConfigurableHTTPProxy.command = [str(HERE / "node_modules" / ".bin" / "configurable-http-proxy")]  # make hub
c.ConfigurableHTTPProxy.pid_file = str(STATE / "jupyterhub-proxy.pid")
c.Spawner.ip = "127.0.0.1"
c.JupyterHub.db_url = f"sqlite:///{STATE / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(STATE / "jupyterhub_cookie_secret")

# --- who may log in ----------------------------------------------------------------------------------------
# Names become folder names: keep them plain.
c.Authenticator.username_pattern = r"^[a-z0-9][a-z0-9._-]{0,31}$"
c.Authenticator.allow_all = True
if os.environ.get("LABKIT_HUB_PASSWORD"):
    # one class password, any name; an instructor may log in as admin with a password of their own
    c.JupyterHub.authenticator_class = "shared-password"
    c.SharedPasswordAuthenticator.user_password = os.environ["LABKIT_HUB_PASSWORD"]
    if os.environ.get("LABKIT_HUB_ADMIN_PASSWORD"):
        c.SharedPasswordAuthenticator.admin_password = os.environ["LABKIT_HUB_ADMIN_PASSWORD"]
        c.Authenticator.admin_users = {"instructor"}
else:
    # a workshop on this machine: any name, any password (the hub listens on 127.0.0.1 only)
    c.JupyterHub.authenticator_class = "dummy"

# --- each learner's server ---------------------------------------------------------------------------------
c.JupyterHub.spawner_class = "simple"  # SimpleLocalProcessSpawner: everyone runs as this user
c.SimpleLocalProcessSpawner.home_dir_template = str(STATE / "users" / "{username}")
c.Spawner.cmd = [str(BIN / "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab/tree/notebooks"
c.Spawner.start_timeout = 300  # a busy machine starting a whole class at once
c.Spawner.http_timeout = 120
c.Spawner.args = [
    # A kernel whose tab was closed (no browser connected) and idle this long is shut down, so notebooks a
    # learner left behind do not hold their memory; a kernel with its notebook still open is kept.
    f"--MappingKernelManager.cull_idle_timeout={classroom.KERNEL_CULL_IDLE_SECONDS}",
    "--MappingKernelManager.cull_interval=120",
]
if os.geteuid() == 0:
    c.Spawner.args.append("--allow-root")  # Jupyter refuses to run as root unless told (containers, CI)

# JupyterHub hands these to the server as MEM_LIMIT and CPU_LIMIT. This spawner enforces neither: the kernels'
# memory check (labkit.classroom.hub) warns the learner instead, and CPU_LIMIT sets how many threads torch uses.
c.Spawner.mem_limit = classroom.MEM_LIMIT
c.Spawner.cpu_limit = classroom.CPU_LIMIT

c.Spawner.environment = {
    # the prepared baseline, shared and read-only: kernels never write or retrain there (labkit.core.model)
    "LABKIT_CACHE": str(CACHE),
    "LABKIT_CACHE_READONLY": "1",
    "LABKIT_FAST": os.environ.get("LABKIT_FAST", "0"),
    "HF_HUB_OFFLINE": "1",
    # hub/jupyter/kernels: the kit's kernels, started with --ext=labkit.classroom.hub (the memory check before each cell)
    "JUPYTER_PATH": str(HERE / "jupyter"),
    # One core's worth of threads per learner, so that a class does not oversubscribe the machine; threads that
    # wait sleep instead of spinning (see the Makefile's OMP_WAIT_POLICY note).
    "OMP_NUM_THREADS": str(max(1, int(classroom.CPU_LIMIT))),
    "OMP_WAIT_POLICY": "PASSIVE",
    **{k: os.environ[k] for k in ("LABKIT_DATA", "LABKIT_TEXT_COLUMN", "LABKIT_LABEL_COLUMN") if k in os.environ},
}


EDITIONS = ("notebooks", "notebooks_zh")  # the learner edition and its Chinese edition


def copy_notebooks(spawner) -> None:
    """A learner's first start: a copy of each learner edition (notebooks/, notebooks_zh/) in their home; later
    starts keep theirs (an edition a learner does not have yet, e.g. after an update, is copied then)."""
    home = Path(spawner.home_dir)
    for edition in EDITIONS:
        if not (home / edition).exists():
            shutil.copytree(ROOT / edition, home / edition,
                            ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))


c.Spawner.pre_spawn_hook = copy_notebooks

# --- services: the idle culler, and an admin token for scripts -------------------------------------------
c.JupyterHub.services = [
    {"name": "idle-culler",  # a learner's server idle this long is stopped; their home stays
     "command": [sys.executable, "-m", "jupyterhub_idle_culler", f"--timeout={classroom.CULL_IDLE_SECONDS}"]},
]
c.JupyterHub.load_roles = [
    {"name": "idle-culler", "services": ["idle-culler"],
     "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"]},
]
if os.environ.get("LABKIT_HUB_API_TOKEN"):
    c.JupyterHub.services.append({"name": "labkit-admin", "api_token": os.environ["LABKIT_HUB_API_TOKEN"]})
    c.JupyterHub.load_roles.append({"name": "labkit-admin", "services": ["labkit-admin"],
                                    "scopes": ["admin:users", "admin:servers", "access:servers"]})
