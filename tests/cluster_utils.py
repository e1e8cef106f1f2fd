"""Real processes for the cluster tests: a Ray head, Ray worker nodes, an MLflow server.

Everything binds to 127.0.0.1. Each process runs in its own process group and is stopped by
that group's pid (never `ray stop`, which would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A process group we started; ``stop()`` kills the whole group."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None):
        self.args = args
        self.log = log
        self._fh = open(log, "ab")
        self.popen = subprocess.Popen(
            args, stdout=self._fh, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **(env or {})},
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.kill(signal.SIGTERM)
            try:  # a few seconds to exit cleanly: these nodes are throwaway, and 20 s cost 25 s per test
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.kill(signal.SIGKILL)  # whatever the group still holds (raylets, workers)
        try:
            self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        self._fh.close()


RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # token authentication, as on a real cluster: every node and driver of the test presents
    # the same token (a fresh one per test session; nothing read from or written to ~/.ray)
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN": secrets.token_hex(32),
    # notice a dead node within seconds, not the default half minute
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def start_head(tmp: Path, num_cpus: int) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc([str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                 f"--port={port}", f"--num-cpus={num_cpus}", "--num-gpus=0",
                 "--include-dashboard=false", "--disable-usage-stats"],
                tmp / "ray-head.log", RAY_ENV)
    return proc, f"127.0.0.1:{port}"


def start_worker(tmp: Path, address: str, num_cpus: int, name: str = "worker") -> Proc:
    return Proc([str(BIN / "ray"), "start", "--block", f"--address={address}",
                 "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", "--num-gpus=0",
                 "--disable-usage-stats"], tmp / f"ray-{name}.log", RAY_ENV)


def alive_nodes(address: str) -> list[dict]:
    code = ("import json, ray; ray.init(address=%r, log_to_driver=False); "
            "print(json.dumps([{'id': n['NodeID'], 'cpu': n['Resources'].get('CPU', 0)} "
            "for n in ray.nodes() if n['Alive']]))" % address)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **RAY_ENV})
    lines = [l for l in out.stdout.splitlines() if l.startswith("[")]
    return json.loads(lines[-1]) if lines else []


def wait_for_nodes(address: str, count: int, timeout: float = 120) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        nodes = alive_nodes(address)
        if len(nodes) >= count:
            return nodes
        time.sleep(2)
    raise TimeoutError(f"Ray cluster at {address} did not reach {count} nodes")


def start_mlflow_server(tmp: Path) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}",
                 "--artifacts-destination", (tmp / "server-artifacts").as_uri(),
                 "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
                # without MLflow 3's GenAI job runners (7 processes importing MLflow): starts ~3x faster
                tmp / "mlflow-server.log", {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=5) as r:
                if r.status == 200:
                    return proc, uri
        except OSError:
            time.sleep(1)
    proc.stop()
    raise TimeoutError(f"mlflow server did not come up; see {tmp / 'mlflow-server.log'}")


def harness(args: list[str], tmp: Path, name: str) -> Proc:
    return Proc([str(BIN / "harness"), *args], tmp / f"{name}.log", RAY_ENV)
