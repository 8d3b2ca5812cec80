"""Estates for simulations: small, explicit, built from the emulator's seed format (emulator/seeds.py)."""

from __future__ import annotations

import random
import uuid
from typing import Any

from emulator import seeds


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def estate(
    clusters: list[dict[str, Any]],
    *,
    seed: int = 7,
    lro_seconds: float = 600,
    per_node_seconds: float = 60,
    subscriptions: int = 1,
) -> dict[str, Any]:
    """An estate of SP clusters. Each entry: `name`, `days` (expiry of its one password), optional `app` (a name:
    clusters with the same `app` share one application), `on_sp`, `tags`, `subscription` (index), `node_count`;
    `msi: true` makes a managed-identity cluster (no application, nothing to rotate)."""
    rng = random.Random(seed)
    subs = [{"id": _uuid(rng), "display_name": f"sub-{i}"} for i in range(subscriptions)]
    doc = seeds.base(rng, subs)
    doc["lro"] = {"base_seconds": lro_seconds, "per_node_seconds": per_node_seconds}
    apps: dict[str, dict[str, Any]] = {}
    for spec in clusters:
        sub = subs[spec.get("subscription", 0)]
        if spec.get("msi"):
            doc["clusters"].append(
                {
                    "subscription_id": sub["id"],
                    "resource_group": f"rg-{spec['name']}",
                    "name": spec["name"],
                    "client_id": "msi",
                    "node_count": spec.get("node_count", 3),
                    "tags": spec.get("tags", {}),
                }
            )
            continue
        app_name = spec.get("app", spec["name"] + "-sp")
        app = apps.get(app_name)
        if app is None:
            password = {"key_id": _uuid(rng), "display_name": "rbac", "expires_in_days": spec.get("days", 200)}
            app = {"app_id": _uuid(rng), "object_id": _uuid(rng), "display_name": app_name}
            if spec.get("on_sp"):
                app["service_principal"] = {"object_id": _uuid(rng), "password_credentials": [password]}
            else:
                app["password_credentials"] = [password]
            apps[app_name] = app
            doc["applications"].append(app)
        doc["clusters"].append(
            {
                "subscription_id": sub["id"],
                "resource_group": spec.get("resource_group", f"rg-{spec['name']}"),
                "name": spec["name"],
                "client_id": app["app_id"],
                "node_count": spec.get("node_count", 3),
                "tags": spec.get("tags", {}),
            }
        )
    return doc


def app_of(doc: dict[str, Any], cluster: str) -> dict[str, Any]:
    client = next(c["client_id"] for c in doc["clusters"] if c["name"] == cluster)
    return next(a for a in doc["applications"] if a["app_id"] == client)


def hide_subscription(doc: dict[str, Any], index: int) -> dict[str, Any]:
    """The product cannot see subscription `index` (no role assignment there: outside its scope or allowlist)."""
    sub = doc["subscriptions"][index]["id"]
    doc["role_assignments"] = [r for r in doc["role_assignments"] if not r["scope"].startswith(f"/subscriptions/{sub}")]
    return doc


def without_signin_report(doc: dict[str, Any]) -> dict[str, Any]:
    """The product lacks the optional AuditLog.Read.All: Graph's sign-in report answers 403."""
    roles = doc["graph_app_roles"]
    roles.update({app: [r for r in granted if r != "AuditLog.Read.All"] for app, granted in roles.items()})
    return doc
