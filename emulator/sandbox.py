"""Start and stop the local Azure (emulator + Azurite) for tests, the demo and benchmarks.

Both run as child processes in their own process groups and are always stopped by `close()` (context manager
exit, also on Ctrl-C). `EmulatorControl` drives the emulator's `/_emulator` surface.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from emulator.azurite import Azurite
from emulator.children import die_with_parent

ROOT = Path(__file__).resolve().parent.parent


def _stop_group(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass


def settings_env(ready: dict[str, Any], storage_connection_string: str, **overrides: str) -> dict[str, str]:
    """App settings (environment) that point the product at the emulator and a storage account."""
    env = {
        "AZURE_TENANT_ID": ready["tenant_id"],
        "AZURE_CLIENT_ID": ready["client_id"],
        "AZURE_CLIENT_SECRET": ready["client_secret"],
        "AZURE_AUTHORITY_HOST": ready["endpoint"],
        "ARM_ENDPOINT": ready["endpoint"],
        "GRAPH_ENDPOINT": ready["endpoint"],
        "AZURE_CA_BUNDLE": ready["ca_file"],
        "KEY_VAULT_URL": ready["key_vault_url"],
        "AzureWebJobsStorage": storage_connection_string,
    }
    env.update(overrides)
    return env


class EmulatorControl:
    """Client for the emulator's control surface (`/_emulator/...`)."""

    def __init__(self, ready: dict[str, Any]) -> None:
        self.ready = ready
        self.endpoint: str = ready["endpoint"]
        self.ca_file: str = ready["ca_file"]
        self._http = httpx.Client(base_url=self.endpoint, verify=self.ssl_context(), timeout=30.0)

    def ssl_context(self) -> ssl.SSLContext:
        """Trusts the emulator's test CA (for plain httpx calls in tests)."""
        return ssl.create_default_context(cafile=self.ca_file)

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = self._http.request(method, f"/_emulator/{path}", json=body)
        response.raise_for_status()
        return response.json() if response.content else None

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "state")
        return result

    def reset(self, estate: dict[str, Any] | None = None) -> None:
        self._call("POST", "reset", estate)

    def advance(self, seconds: float) -> float:
        return float(self._call("POST", "clock", {"advance_seconds": seconds})["timestamp"])

    def add_faults(self, *rules: dict[str, Any]) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("POST", "faults", {"rules": list(rules)})["rules"]
        return result

    def clear_faults(self) -> None:
        self._call("DELETE", "faults")

    def faults(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "faults")["rules"]
        return result

    def requests(self) -> dict[str, int]:
        result: dict[str, int] = self._call("GET", "requests")
        return result

    def api_versions(self) -> dict[str, dict[str, int]]:
        """The api-version each request carried, per route (`GET /_emulator/api-versions`)."""
        result: dict[str, dict[str, int]] = self._call("GET", "api-versions")
        return result

    def clear_requests(self) -> None:
        self._call("DELETE", "requests")

    def world(self, event: str, **body: Any) -> dict[str, Any]:
        """A world event (`POST /_emulator/world/{event}`): see docs/emulator.md, "World events"."""
        result: dict[str, Any] = self._call("POST", f"world/{event}", body)
        return result

    def set_modes(self, **modes: Any) -> dict[str, Any]:
        """Switch field modes on (`POST /_emulator/modes`); `reset` switches them all off again."""
        result: dict[str, Any] = self._call("POST", "modes", modes)
        return result

    def canaries(self) -> list[str]:
        result: list[str] = self._call("GET", "canaries")["secrets"]
        return result


class EmulatorProcess:
    """`python -m emulator serve` in a child process; waits for its ready file."""

    def __init__(self, *serve_args: str, startup_timeout: float = 30.0) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="aks-rotator-sandbox-"))
        ready_file = self._dir / "ready.json"
        self._log = (self._dir / "emulator.log").open("wb")
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "emulator", "serve", "--port", "0"),
                *("--ready-file", str(ready_file), "--state-dir", str(self._dir), *serve_args),
            ],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + startup_timeout
        try:
            while not ready_file.exists():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self._dir / "emulator.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"the emulator did not start:\n{log}")
                time.sleep(0.05)  # polling a child's ready file; not test synchronisation
        except BaseException:
            self.close()
            raise
        self.ready: dict[str, Any] = json.loads(ready_file.read_text())
        self.control = EmulatorControl(self.ready)

    def close(self) -> None:
        if hasattr(self, "control"):
            self.control.close()
        _stop_group(self.proc)
        self._log.close()


class LocalAzure:
    """Azurite + emulator, and the app settings that point the product at them."""

    def __init__(self, *serve_args: str) -> None:
        self.azurite = Azurite()
        try:
            self.emulator = EmulatorProcess(*serve_args)
        except BaseException:
            self.azurite.stop()
            raise

    @property
    def control(self) -> EmulatorControl:
        return self.emulator.control

    def settings_env(self, **overrides: str) -> dict[str, str]:
        return settings_env(self.emulator.ready, self.azurite.connection_string, **overrides)

    def close(self) -> None:
        try:
            self.emulator.close()
        finally:
            self.azurite.stop()

    def __enter__(self) -> LocalAzure:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
