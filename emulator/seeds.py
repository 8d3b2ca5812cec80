"""Estate documents: the demo estate and a generator for scale tests and benchmarks (see docs/emulator.md)."""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from pathlib import Path
from typing import Any

from emulator.keyvault import PRODUCT_VAULT_ROLE

# The product's custom roles, as infra/ grants them with certificate handling on (the default role plus the opt-in
# certificate role): the estates give the product exactly these actions.
ROTATOR_ARM_ACTIONS: tuple[str, ...] = tuple(
    action
    for name in ("rotator-role-actions.json", "rotator-cert-role-actions.json")
    for action in json.loads((Path(__file__).resolve().parent.parent / "infra" / "app" / name).read_text())
)

TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
PRODUCT_APP_ID = "5f0c1d2e-3b4a-4c5d-8e6f-7a8b9c0d1e2f"
VAULT = "rotator-kv"
# The same for every generated estate, so settings taken from the ready file survive `reset(other_estate)`.
PRODUCT_SECRET = "emulator-product~" + hashlib.sha256(b"aks-credential-rotator emulator").hexdigest()[:23]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def base(rng: random.Random, subscriptions: list[dict[str, Any]]) -> dict[str, Any]:
    """Tenant, product identity and the documented least-privilege grants on every subscription."""
    return {
        "tenant_id": TENANT_ID,
        "random_seed": rng.randrange(1 << 30),
        "product": {"app_id": PRODUCT_APP_ID, "secret": PRODUCT_SECRET},
        "subscriptions": subscriptions,
        "vaults": [{"name": VAULT}],
        "role_assignments": [
            {"principal": PRODUCT_APP_ID, "scope": f"/subscriptions/{s['id']}", "actions": list(ROTATOR_ARM_ACTIONS)}
            for s in subscriptions
        ],
        # AuditLog.Read.All is optional (docs/permissions.md): it lets retire see sign-in evidence.
        "graph_app_roles": {PRODUCT_APP_ID: ["Application.ReadWrite.OwnedBy", "AuditLog.Read.All"]},
        "vault_roles": [{"principal": PRODUCT_APP_ID, "vault": VAULT, "role": PRODUCT_VAULT_ROLE}],
        "applications": [],
        "clusters": [],
    }


def _sp_app(rng: random.Random, name: str, days: float, on_sp: bool = False) -> dict[str, Any]:
    key_id = _uuid(rng)
    password = {"key_id": key_id, "display_name": "rbac", "expires_in_days": days}
    app: dict[str, Any] = {"app_id": _uuid(rng), "object_id": _uuid(rng), "display_name": name}
    if on_sp:
        app["service_principal"] = {"object_id": _uuid(rng), "password_credentials": [password]}
    else:
        app["password_credentials"] = [password]
    return app


def demo(seed: int = 1) -> dict[str, Any]:
    """The small estate `make demo` runs against."""
    rng = random.Random(seed)
    subs = [
        {"id": _uuid(rng), "display_name": "prod-platform"},
        {"id": _uuid(rng), "display_name": "prod-data"},
        {"id": _uuid(rng), "display_name": "dev-sandbox"},
    ]
    doc = base(rng, subs)
    specs: list[tuple[str, dict[str, Any], float, bool, dict[str, str]]] = [
        ("aks-payments", subs[0], 3.0, False, {}),
        ("aks-checkout", subs[0], 20.0, True, {}),
        ("aks-analytics", subs[1], 300.0, False, {}),
    ]
    for name, sub, days, on_sp, tags in specs:
        app = _sp_app(rng, f"{name}-sp", days, on_sp)
        doc["applications"].append(app)
        doc["clusters"].append(
            {
                "subscription_id": sub["id"],
                "resource_group": f"rg-{name}",
                "name": name,
                "client_id": app["app_id"],
                "node_count": 3,
                "tags": tags,
            }
        )
    doc["clusters"].append(
        {"subscription_id": subs[1]["id"], "resource_group": "rg-aks-ml", "name": "aks-ml", "client_id": "msi"}
    )
    legacy_server = _sp_app(rng, "aks-legacy-aad-server", 45.0)
    legacy_sp = _sp_app(rng, "aks-legacy-sp", 200.0)
    doc["applications"] += [legacy_server, legacy_sp]
    doc["clusters"].append(
        {
            "subscription_id": subs[2]["id"],
            "resource_group": "rg-aks-legacy",
            "name": "aks-legacy",
            "client_id": legacy_sp["app_id"],
            "cert_expires_in_days": 40,
            "aad_profile": {
                "managed": False,
                "serverAppID": legacy_server["app_id"],
                "clientAppID": _uuid(rng),
                "tenantID": TENANT_ID,
            },
        }
    )
    return doc


def generate(clusters: int, subscriptions: int, seed: int = 1, shared_every: int = 10) -> dict[str, Any]:
    """A large estate: secrets expiring across 1-400 days, ~10% MSI, ~2% legacy AAD, some shared apps."""
    rng = random.Random(seed)
    subs = [{"id": _uuid(rng), "display_name": f"sub-{i:03d}"} for i in range(max(1, subscriptions))]
    doc = base(rng, subs)
    last_app: dict[str, Any] | None = None
    for i in range(clusters):
        sub = subs[i % len(subs)]
        name = f"aks-{i:05d}"
        cluster: dict[str, Any] = {
            "subscription_id": sub["id"],
            "resource_group": f"rg-{i // 50:04d}",
            "name": name,
            "node_count": 1 + i % 5,
        }
        roll = rng.random()
        if roll < 0.10:
            cluster["client_id"] = "msi"
        else:
            if last_app is not None and i % shared_every == 0:
                app = last_app
            else:
                app = _sp_app(rng, f"{name}-sp", rng.uniform(1, 400), on_sp=rng.random() < 0.15)
                doc["applications"].append(app)
            last_app = app
            cluster["client_id"] = app["app_id"]
            if roll > 0.98:
                server = _sp_app(rng, f"{name}-aad-server", rng.uniform(1, 400))
                doc["applications"].append(server)
                cluster["aad_profile"] = {"managed": False, "serverAppID": server["app_id"], "tenantID": TENANT_ID}
        doc["clusters"].append(cluster)
    return doc


def load(path: str | Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(Path(path).read_text())
    return doc
