"""Rotation benchmark: function execution seconds per rotation, the product vs a blocking baseline.

    python -m bench.rotate --json [--lro-seconds 20 --replication-seconds 5 --rotations 2]

Starts Azurite and the emulator (`emulator.sandbox.LocalAzure`), seeds the demo estate with an AKS operation that
takes D seconds (`lro.base_seconds`, no per-node time) and a new secret that Entra refuses intermittently for R
seconds (`replication_seconds`), then rotates the due clusters twice, each on a fresh estate:

* **product** — `shared.rotation.submit` + `drain`: every wait (replication, the LRO) is a delayed queue message,
  so the billed time is the sum of `handle_message` durations (`DrainReport.invocation_seconds`).
* **baseline** — the naive sequential script: addPassword, Key Vault set, poll Entra until the secret works,
  reset the cluster, poll the LRO until it ends, tag, removePassword, in one invocation that blocks throughout.

Prints JSON: `{lro_seconds, replication_seconds, rotations, product{execution_seconds_per_rotation,
wall_seconds, invocations}, baseline{...}, "product.execution_seconds_per_rotation": ...,
"baseline.execution_seconds_per_rotation": ...}`. Target: the product's figure stays <= 5 s whatever D is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from emulator import seeds
from emulator.sandbox import LocalAzure
from shared import rotation
from shared.aks import AksClient
from shared.azure import ARM_AUDIENCE, product_credential, secret_credential
from shared.graph import GraphOps
from shared.messages import CredentialKind, new_rotation_message
from shared.settings import Settings
from shared.store import RotationStore
from shared.vault import VaultStore, secret_name_for

DUE = ("aks-payments", "aks-checkout")


def _estate(lro_seconds: float, replication_seconds: float) -> dict[str, Any]:
    doc = seeds.demo()
    doc["lro"] = {"base_seconds": lro_seconds, "per_node_seconds": 0}
    doc["replication_seconds"] = replication_seconds
    return doc


def _settings(local: LocalAzure, tag: str) -> Settings:
    suffix = f"{tag}{uuid.uuid4().hex[:8]}"
    env = local.settings_env(
        ROTATION_QUEUE=f"bench-{suffix}",
        STATE_TABLE=f"state{suffix}",
        AUDIT_TABLE=f"audit{suffix}",
        LOCK_CONTAINER=f"locks-{suffix}",
        PROOF_SUCCESSES="3",
        PROOF_SPACING_SECONDS="0.2",
        REQUEUE_DELAY_SECONDS="1",
        LRO_POLL_SECONDS="2",
        RETIRE_GRACE_SECONDS="0",
        LOG_LEVEL="WARNING",
    )
    return Settings.from_env(env)


def _due(state: dict[str, Any], names: tuple[str, ...]) -> list[tuple[str, str, datetime]]:
    """(cluster id, app id, held password expiry) per due cluster."""
    out = []
    for name in names:
        cluster = next(c for c in state["clusters"] if c["id"].rsplit("/", 1)[-1] == name)
        app = next(a for a in state["applications"] if a["appId"] == cluster["clientId"])
        passwords = app["passwordCredentials"] + app["servicePrincipal"]["passwordCredentials"]
        held = next(p for p in passwords if p["keyId"] == cluster["heldKeyId"])
        out.append((cluster["id"], cluster["clientId"], datetime.fromisoformat(held["end"].replace("Z", "+00:00"))))
    return out


async def _product(settings: Settings, due: list[tuple[str, str, datetime]], timeout: float) -> dict[str, Any]:
    messages = [
        new_rotation_message(cluster_id=c, kind=CredentialKind.SP_SECRET, reason="urgent", app_id=a, observed_expiry=e)
        for c, a, e in due
    ]
    started = time.monotonic()
    executed = 0.0
    invocations = 0
    async with rotation.Deps.open(settings) as deps:
        for message in messages:
            await rotation.submit(settings, message, store=deps.store, queues=deps.queues)
        while time.monotonic() - started < timeout:
            report = await rotation.drain(settings, deps=deps, retry_delay_seconds=1)
            executed += report.invocation_seconds
            invocations += report.handled + report.errors
            records = [await deps.store.get(m.rotation_id) for m in messages]
            if all(r is not None and r.terminal for r in records):
                break
            await asyncio.sleep(0.25)  # idle between polls of the queue (not billed: no invocation runs)
    async with RotationStore(settings) as store:
        states = [(await store.get(m.rotation_id)) for m in messages]
    return {
        "execution_seconds_per_rotation": round(executed / len(messages), 3),
        "wall_seconds": round(time.monotonic() - started, 3),
        "invocations": invocations,
        "states": [s.state if s else None for s in states],
    }


async def _baseline_one(settings: Settings, cluster_id: str, app_id: str) -> str:
    """The naive script: one invocation that blocks on replication and on the LRO."""
    credential = product_credential(settings)
    try:
        async with (
            GraphOps(settings, credential) as graph,
            AksClient(settings, credential) as aks,
            VaultStore(settings, credential) as vault,
        ):
            creds = (await graph.lookup_apps([app_id]))[app_id]
            if creds.application_passwords and creds.application_object_id:
                holder, object_id, old = "application", creds.application_object_id, creds.application_passwords
            else:
                holder, object_id = "servicePrincipal", creds.service_principal_object_id or ""
                old = creds.service_principal_passwords
            new = await graph.add_password(
                holder,  # type: ignore[arg-type]
                object_id,
                "baseline",
                datetime.now(UTC) + timedelta(days=180),
            )
            value = new.secret.get_secret_value()
            name = secret_name_for(cluster_id)
            stored = await vault.store(name, value, new.end, {"key-id": new.key_id, "state": "pending"})
            streak = 0
            while streak < settings.proof_successes:  # block until Entra accepts it N times in a row
                cred = secret_credential(settings, app_id, value, retry_total=0)
                try:
                    async with cred:
                        await cred.get_token(ARM_AUDIENCE + "/.default")
                    streak += 1
                except Exception:
                    streak = 0
                await asyncio.sleep(settings.proof_spacing_seconds)
            url = await aks.begin_reset_service_principal(cluster_id, app_id, value)
            while (status := await aks.operation_status(url)).status == "InProgress":  # block on the LRO
                await asyncio.sleep(1)
            if status.status != "Succeeded":
                return status.status
            await vault.set_tags(name, stored.version, state="current")
            for password in old:
                await graph.remove_password(holder, object_id, password.key_id)  # type: ignore[arg-type]
            return "succeeded"
    finally:
        await credential.close()


async def _baseline(settings: Settings, due: list[tuple[str, str, datetime]]) -> dict[str, Any]:
    started = time.monotonic()
    executed = 0.0
    states = []
    for cluster_id, app_id, _ in due:
        t0 = time.perf_counter()
        states.append(await _baseline_one(settings, cluster_id, app_id))
        executed += time.perf_counter() - t0
    return {
        "execution_seconds_per_rotation": round(executed / len(due), 3),
        "wall_seconds": round(time.monotonic() - started, 3),
        "invocations": len(due),
        "states": states,
    }


def run(lro_seconds: float, replication_seconds: float, rotations: int, timeout: float) -> dict[str, Any]:
    names = DUE[: max(1, min(rotations, len(DUE)))]
    with LocalAzure() as local:
        local.control.reset(_estate(lro_seconds, replication_seconds))
        product = asyncio.run(_product(_settings(local, "p"), _due(local.control.state(), names), timeout))
        local.control.reset(_estate(lro_seconds, replication_seconds))
        baseline = asyncio.run(_baseline(_settings(local, "b"), _due(local.control.state(), names)))
    return {
        "lro_seconds": lro_seconds,
        "replication_seconds": replication_seconds,
        "rotations": len(names),
        "product": product,
        "baseline": baseline,
        "product.execution_seconds_per_rotation": product["execution_seconds_per_rotation"],
        "baseline.execution_seconds_per_rotation": baseline["execution_seconds_per_rotation"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rotate", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON (the default output is a short summary)")
    parser.add_argument("--lro-seconds", type=float, default=20.0, help="AKS operation duration D (emulator time)")
    parser.add_argument("--replication-seconds", type=float, default=5.0, help="Entra replication delay R")
    parser.add_argument("--rotations", type=int, default=2, help="how many due clusters to rotate (1-2)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up on the product after this long")
    args = parser.parse_args(argv)
    result = run(args.lro_seconds, args.replication_seconds, args.rotations, args.timeout)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(
            f"LRO {args.lro_seconds:.0f} s, replication {args.replication_seconds:.0f} s: "
            f"product {result['product.execution_seconds_per_rotation']:.2f} s/rotation, "
            f"baseline {result['baseline.execution_seconds_per_rotation']:.2f} s/rotation"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
