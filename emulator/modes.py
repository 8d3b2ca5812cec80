"""Field modes (`/_emulator/modes`): how AKS, ARM and Graph behave in the field, each OFF by default.

The default emulator answers the way the product's tests were written against; a mode switches on a behaviour
the real services show under some conditions (sources in docs/emulator.md, "Field modes").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

URL_FORMS = ("default", "lowercase", "resourcegroup", "legacy_api_version")


@dataclass
class Modes:
    node_image_upgrade: bool = False  # a failing reset has already moved every node pool but the last
    aks_retries_failed_reset: int = 0  # AKS retries a failed reset this many times ...
    aks_retry_seconds: float = 60.0  # ... this long after each failure
    lro_location_only: bool = False  # 202 with `Location` only (no `Azure-AsyncOperation`)
    reset_sync_200: bool = False  # a reset answers 200 and is complete at once
    invalid_secret_async: bool = False  # an invalid secret fails the operation (error in `details`), not a 400
    operation_url_form: str = "default"  # the path form of operation-status URLs (see URL_FORMS)
    strict_api_versions: bool = False  # api-versions the provider does not register are refused
    graph_read_lag_seconds: float = 0.0  # Graph reads show passwords as they were before a write, this long
    graph_remove_lag: bool = False  # ... and removePassword does not find a password those reads do not show yet

    def update(self, spec: dict[str, Any]) -> None:
        """Apply `spec` (a subset of the fields), refusing unknown names and wrong types before changing anything."""
        known = {f.name: f for f in fields(self)}
        unknown = set(spec) - set(known)
        if unknown:
            raise ValueError(f"unknown modes: {sorted(unknown)}")
        checked: dict[str, Any] = {}
        for name, value in spec.items():
            kind = type(getattr(Modes(), name))
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value) is not kind:
                raise ValueError(f"mode {name} must be {kind.__name__}")
            if kind in (int, float) and value < 0:
                raise ValueError(f"mode {name} must not be negative")
            checked[name] = value
        if checked.get("operation_url_form", self.operation_url_form) not in URL_FORMS:
            raise ValueError(f"operation_url_form must be one of {URL_FORMS}")
        for name, value in checked.items():
            setattr(self, name, value)

    def public(self) -> dict[str, Any]:
        return asdict(self)
