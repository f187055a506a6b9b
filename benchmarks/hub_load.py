"""A class on one hub: N learners each run notebook 02 down to its bit-width panel, then ask for new slider points.

    LABKIT_FAST=1 .venv/bin/python benchmarks/hub_load.py                # N = 1, 4, 8, 16 learners
    LABKIT_FAST=1 .venv/bin/python benchmarks/hub_load.py --users 1,2 --points 3

It starts `make hub`'s JupyterHub itself (hub/jupyterhub_config.py, on a free loopback port, its state in a
temporary folder), creates the learners through the hub's REST API with an admin token, starts their servers, and
in each server opens notebook 02 (Jupyter's REST API) and runs its cells over the kernel's websocket, as JupyterLab
does. When every learner's panel is built, all of them at once ask for new points through `bits_point(...)`, the
function the panel's slider calls (the notebook's own, cached by labkit.lab.points); each new point is timed from
the request to the kernel's reply. Per N it prints p50 and p90 seconds per new point, the peak of the learners'
kernels' resident memory summed (psutil, sampled every second over the hub's child processes), failures, memory
warnings (labkit.classroom.hub's check) and kernels that died. At the end it stops the hub and checks that no process it
started is left. Needs the prepared baseline (as `make hub`) and the hub's installs (`make hub` makes them).

Bounded: at most 32 learners, 21 points each, every request with a timeout, each N with a time budget; loopback only.

The latest results, with their machine and date: benchmarks/RESULTS.md#a-class-on-one-hub.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NOTEBOOK = ROOT / "solutions" / "02_quantization.ipynb"  # the solved edition: a learner who did the exercises
MAX_USERS = 32
# New slider positions (the panel starts at 8 bits, asymmetric, per channel, which it has already computed).
POINTS = [(b, "asymmetric", g) for g in ("channel", "group", "tensor") for b in range(7, 0, -1)]
GIB = 1024 ** 3


def _free_port() -> int:
    """A loopback port with the next two free too (the hub uses port, port + 1, port + 2)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65000 and all(_port_free(port + i) for i in (1, 2)):
            return port
    raise RuntimeError("no three free consecutive loopback ports")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def panel_cells(path: Path) -> list[str]:
    """The code of every code cell from the top down to the first that builds a live panel (`widgets.live(`)."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    code = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        code.append("".join(cell["source"]))
        if "widgets.live(" in code[-1]:
            return code
    raise ValueError(f"{path} has no cell that calls widgets.live(")


class Hub:
    """`make hub`'s JupyterHub in a subprocess, on loopback, driven through its REST API with an admin token."""

    def __init__(self, state: Path, timeout: float):
        import requests

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_hex(32)
        self.timeout = timeout
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {self.token}"
        env = dict(os.environ, LABKIT_HUB_PORT=str(self.port), LABKIT_HUB_DIR=str(state),
                   LABKIT_HUB_API_TOKEN=self.token)
        for key in ("LABKIT_HUB_PASSWORD", "LABKIT_HUB_ADMIN_PASSWORD"):
            env.pop(key, None)  # any name, any password: the learners are created here, on loopback
        self.log = state / "jupyterhub.log"
        self.proc = subprocess.Popen([str(BIN / "jupyterhub"), "-f", str(ROOT / "hub" / "jupyterhub_config.py")],
                                     cwd=state, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.seen: set[int] = set()  # every process under the hub, to check none is left at the end
        self._wait(lambda: self.api("GET", "/hub/api/").ok, 120, "the hub to answer")

    def api(self, method: str, path: str, **kw):
        """One request to the hub or, under /user/<name>/, to a learner's server (through the proxy)."""
        return self.http.request(method, self.url + path, timeout=self.timeout, **kw)

    def _wait(self, ready, seconds: float, what: str) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the hub exited while waiting for {what}; see its log:\n{self.tail()}")
            try:
                if ready():
                    return
            except Exception:  # not up yet: connection refused, a reply not yet complete
                pass
            time.sleep(0.5)
        raise TimeoutError(f"waited {seconds:.0f} s for {what}")

    def start_server(self, user: str) -> None:
        """Start a learner's server and wait until the hub says it is ready."""
        self.api("POST", f"/hub/api/users/{user}/server").raise_for_status()
        self._wait(lambda: self.api("GET", f"/hub/api/users/{user}").json()["servers"].get("", {}).get("ready"),
                   self.timeout, f"{user}'s server")

    def stop_user(self, user: str) -> None:
        """Stop a learner's server (and kernels), then delete the learner."""
        self.api("DELETE", f"/hub/api/users/{user}/server")
        self._wait(lambda: not self.api("GET", f"/hub/api/users/{user}").json()["servers"], self.timeout,
                   f"{user}'s server to stop")
        self.api("DELETE", f"/hub/api/users/{user}").raise_for_status()

    def processes(self) -> list:
        """The hub's processes now (proxy, services, servers, kernels), remembered for the final check."""
        import psutil

        try:
            procs = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        self.seen.update(p.pid for p in procs)
        return procs

    def stop(self) -> list[str]:
        """Stop the hub (it stops the proxy, its services and every server); what is left of its processes."""
        import psutil

        self.processes()
        self.seen.add(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # as Ctrl-C: the hub cleans up what it started
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        time.sleep(1)
        left = []
        for pid in sorted(self.seen):
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{pid} {' '.join(p.cmdline())[:100]}")
                    p.kill()  # one we started (a child of our hub), by its id
            except psutil.NoSuchProcess:
                pass
        return left

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class Kernel:
    """A notebook's kernel in a learner's server, run over the websocket as JupyterLab runs it."""

    def __init__(self, hub: Hub, user: str, notebook: str):
        import websocket

        r = hub.api("POST", f"/user/{user}/api/sessions",
                    json={"path": notebook, "type": "notebook", "name": Path(notebook).name,
                          "kernel": {"name": "python3"}})
        r.raise_for_status()
        self.id = r.json()["kernel"]["id"]
        self.session = uuid.uuid4().hex
        self.timeout = hub.timeout
        ws_url = hub.url.replace("http://", "ws://") + f"/user/{user}/api/kernels/{self.id}/channels"
        self.ws = websocket.create_connection(f"{ws_url}?session_id={self.session}", timeout=hub.timeout,
                                              header=[f"Authorization: token {hub.token}"])
        self.died = False
        self.warnings = 0

    def run(self, code: str) -> tuple[float, str | None]:
        """Seconds from sending `code` to its reply and the kernel going idle; the error, if any."""
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "session": self.session,
                       "username": "hub_load", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}))
        start = time.perf_counter()
        end = time.monotonic() + self.timeout
        reply, idle, error = None, False, None
        while reply is None or not idle:
            if time.monotonic() > end:
                return time.perf_counter() - start, f"no reply in {self.timeout:.0f} s"
            msg = json.loads(self.ws.recv())
            content = msg.get("content", {})
            if msg["msg_type"] == "status" and content.get("execution_state") in ("dead", "restarting"):
                self.died = True
                return time.perf_counter() - start, "the kernel died"
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "execute_reply":
                reply = content
                if content.get("status") != "ok":
                    error = f"{content.get('ename')}: {content.get('evalue')}"
            elif msg["msg_type"] == "status" and content.get("execution_state") == "idle":
                idle = True
            elif msg["msg_type"] == "stream" and content.get("name") == "stderr" and "Memory:" in content["text"]:
                self.warnings += 1
        return time.perf_counter() - start, error

    def close(self) -> None:
        self.ws.close()


def learner(hub: Hub, user: str, cells: list[str], points: list, ready: threading.Barrier, out: dict) -> None:
    """One learner: start the server, run the notebook down to its panel, wait for the class, then ask for points."""
    out.update(user=user, times=[], errors=[], died=False, warnings=0)
    kernel = None
    try:
        t0 = time.perf_counter()
        hub.start_server(user)
        out["server_s"] = time.perf_counter() - t0
        kernel = Kernel(hub, user, f"notebooks/{NOTEBOOK.name}")
        t0 = time.perf_counter()
        for code in cells:
            _, error = kernel.run(code)
            if error:
                raise RuntimeError(f"notebook cell failed: {error}")
        out["setup_s"] = time.perf_counter() - t0
    except Exception as err:
        out["errors"].append(f"setup: {err}")
        ready.abort()  # the others stop waiting: this round's points would not be a class's
    try:
        ready.wait()
        for bits, scheme, granularity in points:
            seconds, error = kernel.run(f"_ = bits_point({bits}, {scheme!r}, {granularity!r})")
            if error:
                out["errors"].append(f"point {bits} {scheme} {granularity}: {error}")
            else:
                out["times"].append(seconds)
            if kernel.died:
                break
    except threading.BrokenBarrierError:
        pass  # a learner's setup failed, or the round ran out of time: no points this round
    except Exception as err:  # the websocket closed or timed out
        out["errors"].append(f"points: {type(err).__name__}: {err}")
    finally:
        if kernel is not None:
            out.update(died=kernel.died, warnings=kernel.warnings)
            kernel.close()


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ranked = sorted(values)
    return ranked[max(0, -(-len(ranked) * q // 100) - 1)]


def run_round(hub: Hub, n: int, cells: list[str], points: list, budget: float) -> dict:
    """N learners at once; their timings, failures and the peak of their kernels' resident memory."""
    users = [f"load{n}-{i}" for i in range(n)]
    hub.api("POST", "/hub/api/users", json={"usernames": users}).raise_for_status()
    results = [{} for _ in users]
    ready = threading.Barrier(n, timeout=budget)
    threads = [threading.Thread(target=learner, args=(hub, u, cells, points, ready, r), daemon=True)
               for u, r in zip(users, results)]
    peak = {"kernels": 0, "all": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            kernels = everything = 0
            for p in hub.processes():
                try:
                    rss = p.memory_info().rss
                    line = " ".join(p.cmdline())
                except Exception:  # ended between listing and reading
                    continue
                if "jupyterhub-singleuser" in line or "ipykernel" in line:
                    everything += rss
                    kernels += rss if "ipykernel" in line else 0
            peak["kernels"], peak["all"] = max(peak["kernels"], kernels), max(peak["all"], everything)
            done.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    sampler.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, budget - (time.perf_counter() - start)))
    timed_out = any(t.is_alive() for t in threads)
    done.set()
    sampler.join()
    for u in users:
        try:
            hub.stop_user(u)
        except Exception as err:
            print(f"  could not stop {u}: {err}", file=sys.stderr)
    times = [s for r in results for s in r.get("times", [])]
    errors = [e for r in results for e in r.get("errors", [])] + (["round over its time budget"] if timed_out else [])
    setups = [r["setup_s"] for r in results if "setup_s" in r]
    return {"n": n, "points": len(times), "p50": _percentile(times, 50) if times else float("nan"),
            "p90": _percentile(times, 90) if times else float("nan"),
            "setup_max": max(setups) if setups else float("nan"),
            "kernels_gib": peak["kernels"] / GIB, "all_gib": peak["all"] / GIB, "failures": len(errors),
            "errors": errors, "died": sum(r.get("died", False) for r in results),
            "warnings": sum(r.get("warnings", 0) for r in results), "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    """Run each N in turn on one hub; print a markdown table; fail when a process is left behind."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", default="1,4,8,16", help="comma-separated learner counts, one round each")
    p.add_argument("--points", type=int, default=5, help=f"new slider points per learner (1..{len(POINTS)})")
    p.add_argument("--timeout", type=float, default=600, help="seconds for any one request or cell")
    p.add_argument("--budget", type=float, default=1800, help="seconds for each round")
    args = p.parse_args(argv)
    ns = [int(x) for x in args.users.split(",") if x.strip()]
    if not ns or min(ns) < 1 or max(ns) > MAX_USERS:
        p.error(f"--users: counts from 1 to {MAX_USERS}, e.g. 1,4,8,16")
    if not 1 <= args.points <= len(POINTS):
        p.error(f"--points: 1 to {len(POINTS)}")
    if not (ROOT / "hub" / "node_modules" / ".bin" / "configurable-http-proxy").exists() or \
            not (BIN / "jupyterhub").exists():
        sys.exit("The hub is not installed: run `make hub` once (it installs JupyterHub and its proxy), then stop it.")
    os.environ.setdefault("LABKIT_FAST", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    check = subprocess.run([sys.executable, "-m", "labkit.classroom.hub", "check"], capture_output=True, text=True)
    if check.returncode:
        sys.exit(check.stderr.strip())
    cells = panel_cells(NOTEBOOK)
    points = POINTS[:args.points]
    state = Path(tempfile.mkdtemp(prefix="labkit-hub-load-"))
    rows, left = [], []
    hub = None
    try:
        hub = Hub(state, args.timeout)
        for n in ns:
            print(f"{n} learner(s)...", file=sys.stderr, flush=True)
            rows.append(run_round(hub, n, cells, points, args.budget))
            for e in rows[-1]["errors"][:5]:
                print(f"  {e}", file=sys.stderr)
    finally:
        if hub is not None:
            left = hub.stop()
            if any(r["failures"] for r in rows):
                print(f"hub log (last lines):\n{hub.tail()}", file=sys.stderr)
        shutil.rmtree(state, ignore_errors=True)
    mode = "fast" if os.environ["LABKIT_FAST"] != "0" else "full"
    print(f"\n{NOTEBOOK.stem} on one hub, {mode} mode, {os.cpu_count()} CPUs, {args.points} new points per learner, "
          f"all learners at once; seconds from request to reply\n")
    print("| learners | new points | p50 s/point | p90 s/point | slowest setup s | kernels' RSS peak, sum | "
          "servers + kernels peak | failures | memory warnings | kernels died |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['n']} | {r['points']} | {r['p50']:.2f} | {r['p90']:.2f} | {r['setup_max']:.0f} | "
              f"{r['kernels_gib']:.2f} GiB | {r['all_gib']:.2f} GiB | {r['failures']} | {r['warnings']} | "
              f"{r['died']} |")
    print(f"\nprocesses left behind: {len(left)}" + "".join(f"\n  {x}" for x in left))
    return 1 if left else 0


if __name__ == "__main__":
    raise SystemExit(main())
