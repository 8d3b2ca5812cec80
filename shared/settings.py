"""Every app setting in one typed, validated object.

Azure Functions app settings arrive as environment variables; `Settings.from_env()` reads them once and fails
with an error that names the offending setting. Endpoint overrides let the very same code talk to Azure or to
the local emulator.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

_NCRONTAB = re.compile(r"^\S+( \S+){5}$")
_WINDOW = re.compile(
    r"^(?P<days>(Mon|Tue|Wed|Thu|Fri|Sat|Sun)(,(Mon|Tue|Wed|Thu|Fri|Sat|Sun))*) "
    r"(?P<start>[01]\d|2[0-3]):(?P<smin>[0-5]\d)-(?P<end>[01]\d|2[0-4]):(?P<emin>[0-5]\d)$"
)
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_VAULT_NAME = re.compile(r"[a-z][a-z0-9-]{1,22}[a-z0-9]")
_API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


def _echo(value: str, limit: int = 40) -> str:
    """A short, printable echo of a bad setting value (never the whole of a huge or hostile value)."""
    value = "".join(ch if ch.isprintable() else "?" for ch in value)
    return value if len(value) <= limit else value[: limit - 1] + "…"


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names it."""


class Settings(BaseModel):
    """App settings. Field aliases are the environment variable names (the README table lists them)."""

    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="ignore")

    # Identity of the product itself.
    tenant_id: str = Field(alias="AZURE_TENANT_ID")
    client_id: str = Field(alias="AZURE_CLIENT_ID")
    client_secret: SecretStr | None = Field(default=None, alias="AZURE_CLIENT_SECRET")

    # Endpoints (overridable so the same code talks to the emulator or a sovereign cloud).
    authority_host: str = Field(default="https://login.microsoftonline.com", alias="AZURE_AUTHORITY_HOST")
    arm_endpoint: str = Field(default="https://management.azure.com", alias="ARM_ENDPOINT")
    arm_audience: str = Field(default="https://management.azure.com", alias="ARM_AUDIENCE")
    graph_endpoint: str = Field(default="https://graph.microsoft.com", alias="GRAPH_ENDPOINT")
    graph_audience: str = Field(default="https://graph.microsoft.com", alias="GRAPH_AUDIENCE")
    # ARM api-versions, pinned: an SDK upgrade never changes what is sent, and a sovereign cloud may lag behind.
    aks_api_version: str = Field(default="2026-08-01", alias="AKS_API_VERSION")
    resource_graph_api_version: str = Field(default="2021-03-01", alias="RESOURCE_GRAPH_API_VERSION")
    subscriptions_api_version: str = Field(default="2022-12-01", alias="SUBSCRIPTIONS_API_VERSION")
    authorization_api_version: str = Field(default="2022-04-01", alias="AUTHORIZATION_API_VERSION")
    ca_bundle: str | None = Field(default=None, alias="AZURE_CA_BUNDLE")
    key_vault_url: str = Field(alias="KEY_VAULT_URL")

    # Storage: a connection string (Azurite, local) or an account name (identity-based, Azure).
    storage_connection_string: SecretStr | None = Field(default=None, alias="AzureWebJobsStorage")
    storage_account_name: str | None = Field(default=None, alias="AzureWebJobsStorage__accountName")
    rotation_queue: str = Field(default="rotations", alias="ROTATION_QUEUE")
    state_table: str = Field(default="rotations", alias="STATE_TABLE")
    audit_table: str = Field(default="rotationaudit", alias="AUDIT_TABLE")
    lock_container: str = Field(default="rotation-locks", alias="LOCK_CONTAINER")

    # Discovery policy.
    rotation_schedule: str = Field(default="0 0 6 * * *", alias="ROTATION_SCHEDULE")
    threshold_days: PositiveInt = Field(default=30, alias="THRESHOLD_DAYS")
    urgent_days: Annotated[int, Field(ge=0)] = Field(default=3, alias="URGENT_DAYS")
    subscription_allowlist: tuple[str, ...] = Field(default=(), alias="SUBSCRIPTION_ALLOWLIST")
    opt_out_tag: str = Field(default="aks-rotator-opt-out", alias="OPT_OUT_TAG")
    cert_opt_in_tag: str = Field(default="aks-rotator-rotate-certs", alias="CERT_OPT_IN_TAG")
    rotate_certificates: bool = Field(default=False, alias="ROTATE_CERTIFICATES")
    cert_window_days: PositiveInt = Field(default=60, alias="CERT_WINDOW_DAYS")
    max_rotations_per_run: PositiveInt = Field(default=50, alias="MAX_ROTATIONS_PER_RUN")
    discovery_concurrency: PositiveInt = Field(default=16, alias="DISCOVERY_CONCURRENCY")
    scan_shard_subscriptions: PositiveInt = Field(default=1000, alias="SCAN_SHARD_SUBSCRIPTIONS")

    # Rotation policy.
    secret_lifetime_days: Annotated[int, Field(ge=1, le=730)] = Field(default=180, alias="SECRET_LIFETIME_DAYS")
    proof_successes: PositiveInt = Field(default=5, alias="PROOF_SUCCESSES")
    proof_spacing_seconds: NonNegativeFloat = Field(default=5.0, alias="PROOF_SPACING_SECONDS")
    proof_timeout_seconds: PositiveInt = Field(default=3600, alias="PROOF_TIMEOUT_SECONDS")
    requeue_delay_seconds: Annotated[int, Field(ge=0, le=604800)] = Field(default=60, alias="REQUEUE_DELAY_SECONDS")
    lro_poll_seconds: Annotated[int, Field(ge=0, le=604800)] = Field(default=120, alias="LRO_POLL_SECONDS")
    retire_grace_seconds: Annotated[int, Field(ge=0, le=604800)] = Field(default=86400, alias="RETIRE_GRACE_SECONDS")
    # Microsoft Graph may not show a password it just created: "a successful write ... does not guarantee that an
    # immediate read will reflect that change" (Microsoft Entra, "Designing for eventual consistency"); no SLA.
    graph_settle_seconds: Annotated[int, Field(ge=0, le=86400)] = Field(default=600, alias="GRAPH_SETTLE_SECONDS")
    foreign_signin_quiet_days: Annotated[int, Field(ge=0, le=365)] = Field(default=1, alias="FOREIGN_SIGNIN_QUIET_DAYS")
    maintenance_window: str | None = Field(default=None, alias="MAINTENANCE_WINDOW")
    lease_seconds: Annotated[int, Field(ge=15, le=60)] = Field(default=60, alias="LEASE_SECONDS")
    vault_allowlist: tuple[str, ...] = Field(default=(), alias="VAULT_ALLOWLIST")

    # Operations.
    appinsights_connection_string: SecretStr | None = Field(default=None, alias="APPLICATIONINSIGHTS_CONNECTION_STRING")
    log_level: str = Field(default="INFO", alias="LOG_LEVEL")

    @field_validator("subscription_allowlist", "vault_allowlist", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(item.strip().lower() for item in value.split(",") if item.strip())
        return value

    @field_validator("tenant_id", "client_id")
    @classmethod
    def _guid(cls, value: str) -> str:
        if not _GUID.fullmatch(value):
            raise ValueError("must be a GUID")
        return value.lower()

    @field_validator("subscription_allowlist")
    @classmethod
    def _guid_list(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not _GUID.fullmatch(item):
                raise ValueError(f"{_echo(item)!r} is not a subscription id (GUID)")
        return value

    @field_validator("vault_allowlist")
    @classmethod
    def _vault_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not _VAULT_NAME.fullmatch(item):
                raise ValueError(f"{_echo(item)!r} is not a Key Vault name (3-24 letters, digits, hyphens)")
        return value

    @field_validator(
        "aks_api_version", "resource_graph_api_version", "subscriptions_api_version", "authorization_api_version"
    )
    @classmethod
    def _api_version(cls, value: str) -> str:
        if not _API_VERSION.fullmatch(value.strip()):
            raise ValueError("must be an ARM api-version such as 2024-05-01 or 2024-05-02-preview")
        return value.strip()

    @field_validator(
        "authority_host", "arm_endpoint", "arm_audience", "graph_endpoint", "graph_audience", "key_vault_url"
    )
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("must be an https:// URL")
        return value.rstrip("/")

    @field_validator("ca_bundle")
    @classmethod
    def _file(cls, value: str | None) -> str | None:
        if value and not os.path.isfile(value):
            raise ValueError(f"file {_echo(value, 120)!r} does not exist")
        return value or None

    @field_validator("rotation_schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        if not value.startswith("%") and not _NCRONTAB.match(value.strip()):
            raise ValueError("must be a six-field NCRONTAB expression, e.g. '0 0 6 * * *'")
        return value.strip()

    @field_validator("maintenance_window")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        if value and not _WINDOW.match(value.strip()):
            raise ValueError("must look like 'Sat,Sun 01:00-05:00' (UTC)")
        return value.strip() if value else None

    @field_validator("rotation_queue", "state_table", "audit_table", "lock_container")
    @classmethod
    def _storage_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be 3-63 lowercase letters, digits or hyphens")
        return value

    @field_validator("state_table", "audit_table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        if not value.isalnum():
            raise ValueError("table names are letters and digits only")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return level

    @model_validator(mode="after")
    def _storage(self) -> Settings:
        if self.storage_connection_string is None and self.storage_account_name is None:
            raise ValueError(
                "storage is not configured: set AzureWebJobsStorage (connection string) "
                "or AzureWebJobsStorage__accountName (identity-based)"
            )
        if self.urgent_days >= self.threshold_days:
            raise ValueError("URGENT_DAYS must be smaller than THRESHOLD_DAYS")
        return self

    @property
    def poison_queue(self) -> str:
        """The Functions host moves a message here after maxDequeueCount failed deliveries."""
        return f"{self.rotation_queue}-poison"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Load and validate; raise SettingsError naming every bad setting (by its app-setting name)."""
        source = dict(os.environ if env is None else env)
        try:
            return cls.model_validate({k: v for k, v in source.items() if k in _ALIASES and v != ""})
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                name = ".".join(str(part) for part in err["loc"]) or "settings"
                problems.append(f"{name}: {err['msg']}")
            raise SettingsError("invalid app settings: " + "; ".join(problems)) from None


_ALIASES = frozenset(field.alias for field in Settings.model_fields.values() if field.alias)


def setting_names() -> list[str]:
    """Every app-setting name the product reads (used to check infra/ sets exactly these)."""
    return sorted(_ALIASES)
