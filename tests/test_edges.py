"""Hardened edges: every entry point against random and adversarial input, through the real code paths.

One emulator and one Azurite serve the whole module; every test gets its own queue and tables. The four entry
points are the queue trigger (`rotation.handle_message`), the Key Vault events trigger (`events.handle_event`, the
queue message's bytes and the CLI's text), the HTTP body (`api.request_rotation`) and the app settings
(`Settings.from_env`). For each, hypothesis throws wrong types, huge strings, unicode and NUL, injection-looking
ids, other tenants' and other subscriptions' ids, replays and stale versions at it, and every example checks:

* zero state-changing calls at the emulator (Graph, ARM, Key Vault), as the emulator counts them;
* rejected input is recorded with a reason (the `rejected` audit partition, and the poison queue for queue
  messages that do not parse) and logged at warning as `input.rejected`;
* no log record and no recorded row holds more than 200 consecutive characters of the input, a registered canary
  secret, or an unregistered canary inside a shape the redactor knows (`"client_secret": "..."` and friends);
* nothing escapes but the documented outcomes (StepOutcome, EventOutcome, ApiResponse, SettingsError).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.keyvault.secrets._shared import http_challenge_cache
from azure.storage.queue import QueueClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator import seeds
from emulator.azurite import Azurite
from emulator.sandbox import EmulatorControl, EmulatorProcess, settings_env
from shared import api, events, rotation
from shared.azure import product_credential
from shared.logs import JsonFormatter, SecretRedactor, register_secret
from shared.messages import MAX_MESSAGE_BYTES, new_rotation_message, parse_message
from shared.settings import Settings, SettingsError, setting_names
from shared.store import Rejection, RotationStore
from shared.vault import StoredVersion, VaultStore, secret_name_for

T = TypeVar("T")

# Registered with the redactor: must never appear anywhere, whatever position it has in the input.
CANARY = "canary-Zx9~" + secrets.token_hex(8)
# Never registered: only ever placed inside shapes the redactor recognises without being told.
HIDDEN = "canary-Qy7~" + secrets.token_hex(8)

FAST = {
    "PROOF_SUCCESSES": "2",
    "PROOF_SPACING_SECONDS": "0",
    "REQUEUE_DELAY_SECONDS": "0",
    "LRO_POLL_SECONDS": "0",
    "RETIRE_GRACE_SECONDS": "0",
}
ARM_CLUSTER = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerService/managedClusters/{name}"
KV_TOPIC = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{vault}"
EXCERPT = 200
PROPERTY = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ----------------------------------------------------------------------------------------------------------------
# One emulator + Azurite for the module
# ----------------------------------------------------------------------------------------------------------------


def storage_env(control: EmulatorControl, azurite: Azurite, subs: list[str], **overrides: str) -> dict[str, str]:
    """App settings for the emulator and Azurite, with storage names no other test uses."""
    suffix = uuid.uuid4().hex[:12]
    values = {
        "ROTATION_QUEUE": f"edge-{suffix}",
        "STATE_TABLE": f"edgestate{suffix}",
        "AUDIT_TABLE": f"edgeaudit{suffix}",
        "LOCK_CONTAINER": f"edge-locks-{suffix}",
        "SUBSCRIPTION_ALLOWLIST": f"{subs[0]},{subs[1]}",
        **FAST,
        **overrides,
    }
    return settings_env(control.ready, azurite.connection_string, **values)


@dataclass
class Estate:
    control: EmulatorControl
    azurite: Azurite
    subs: list[str]  # demo subscriptions; the first two are in SUBSCRIPTION_ALLOWLIST, the third is not
    clusters: dict[str, str]  # name -> resource id
    apps: dict[str, str]  # cluster name -> its service principal's app id
    secret: str  # Key Vault secret of aks-analytics (allowed subscription)
    current: StoredVersion
    previous: StoredVersion
    outside_secret: str  # Key Vault secret of aks-legacy (subscription outside the allow-list)
    outside_current: StoredVersion

    def env(self, **overrides: str) -> dict[str, str]:
        return storage_env(self.control, self.azurite, self.subs, **overrides)

    def settings(self, **overrides: str) -> Settings:
        return Settings.from_env(self.env(**overrides))

    def mutations(self) -> int:
        return self.control.requests().get("mutations", 0)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def _seed(settings: Settings, cluster_id: str, app_id: str, *states: str) -> list[StoredVersion]:
    """Versions of a cluster's secret as the product writes them (tags), oldest first."""
    credential = product_credential(settings)
    stored = []
    try:
        async with VaultStore(settings, credential) as vault:
            for i, state in enumerate(states):
                stored.append(
                    await vault.store(
                        secret_name_for(cluster_id),
                        f"seeded-{CANARY}-{i}",
                        datetime.now(UTC) + timedelta(days=20 + 100 * i),
                        {"cluster-id": cluster_id, "app-id": app_id, "state": state, "rotation-id": "0" * 32},
                    )
                )
    finally:
        await credential.close()
    return stored


@pytest.fixture(scope="module")
def edge(emulator_process: EmulatorProcess, azurite: Azurite) -> Estate:
    register_secret(CANARY)  # here, not at import: other test modules clear the process-wide registry
    control = emulator_process.control
    demo = seeds.demo()
    control.reset(demo)
    http_challenge_cache.clear()
    subs = [s["id"] for s in demo["subscriptions"]]
    clusters = {
        c["name"]: ARM_CLUSTER.format(sub=c["subscription_id"], rg=c["resource_group"], name=c["name"])
        for c in demo["clusters"]
    }
    apps = {c["name"]: c["client_id"] for c in demo["clusters"] if c["client_id"] != "msi"}
    assert clusters["aks-analytics"].split("/")[2] == subs[1] and clusters["aks-legacy"].split("/")[2] == subs[2]
    seeding = Settings.from_env(storage_env(control, azurite, subs))
    previous, current = run(_seed(seeding, clusters["aks-analytics"], apps["aks-analytics"], "previous", "current"))
    (outside,) = run(_seed(seeding, clusters["aks-legacy"], apps["aks-legacy"], "current"))
    return Estate(
        control,
        azurite,
        subs,
        clusters,
        apps,
        secret_name_for(clusters["aks-analytics"]),
        current,
        previous,
        secret_name_for(clusters["aks-legacy"]),
        outside,
    )


# ----------------------------------------------------------------------------------------------------------------
# What every example checks
# ----------------------------------------------------------------------------------------------------------------


class Capture(logging.Handler):
    """Every record as production emits it: through the SecretRedactor configure_logging installs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(SecretRedactor())
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []
        self._json = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self._json.format(record))

    def texts(self) -> list[str]:
        """Rendered messages, every extra field, and the JSON lines."""
        out = list(self.lines)
        for record in self.records:
            out.append(record.getMessage())
            out.extend(str(v) for k, v in record.__dict__.items() if k not in _PLAIN_ATTRS)
        return out

    def rejected(self) -> list[logging.LogRecord]:
        return [r for r in self.records if r.levelno == logging.WARNING and getattr(r, "event", "") == "input.rejected"]


_PLAIN_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "_aks_rotator_redacted",
}


@contextmanager
def captured() -> Iterator[Capture]:
    handler = Capture()
    root, ours = logging.getLogger(), logging.getLogger("shared")
    level = ours.level
    root.addHandler(handler)
    ours.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        ours.setLevel(level)


def as_text(raw: str | bytes | dict[str, Any]) -> str:
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="replace")
    if isinstance(raw, dict):
        return json.dumps(raw, ensure_ascii=False, default=str)
    return raw


def assert_no_echo(raw: str | bytes | dict[str, Any], texts: list[str], validated: tuple[str, ...] = ()) -> None:
    """No text holds a canary, nor more than EXCERPT consecutive characters of the input.

    `validated`: values that passed validation and may be logged as such (an accepted message's cluster id can be
    274 characters long); they are blanked out before the length check.
    """
    source = as_text(raw)
    # An unregistered secret is only protected inside a shape the redactor knows (hypothesis may also produce it
    # bare, e.g. from constants it mines; then it is just text).
    shaped = source.count(HIDDEN) == sum(source.count(shape) for shape in (*MEMBER_SHAPES, *VALUE_SHAPES))
    for text in texts:
        assert CANARY not in text, "a registered secret was echoed"
        assert not shaped or HIDDEN not in text, "a secret in a well-known shape was echoed"
        for value in validated:
            text = text.replace(value, "<validated>")
        for i in range(len(text) - EXCERPT):
            assert text[i : i + EXCERPT + 1] not in source, f"more than 200 characters of the input echoed in {text!r}"


async def _rejections(settings: Settings) -> list[Rejection]:
    async with RotationStore(settings) as store:
        await store.ensure()
        return await store.rejections()


def new_rejections(settings: Settings, before: set[str]) -> list[Rejection]:
    return [r for r in run(_rejections(settings)) if r.row_key not in before]


def rejection_keys(settings: Settings) -> set[str]:
    return {r.row_key for r in run(_rejections(settings))}


def queue_length(settings: Settings, name: str) -> int:
    """Messages in a queue (0 when the queue was never created)."""
    assert settings.storage_connection_string is not None
    client = QueueClient.from_connection_string(settings.storage_connection_string.get_secret_value(), name)
    try:
        return client.get_queue_properties().approximate_message_count or 0
    except ResourceNotFoundError:
        return 0
    finally:
        client.close()


def assert_recorded(rows: list[Rejection], source: str, logs: Capture) -> None:
    assert len(rows) == 1, rows
    (row,) = rows
    assert row.source == source and row.reason.strip() and len(row.excerpt) <= EXCERPT
    warnings = logs.rejected()
    assert warnings, "no input.rejected warning"
    assert row.correlation_id and any(getattr(w, "correlation_id", None) == row.correlation_id for w in warnings)


# ----------------------------------------------------------------------------------------------------------------
# Adversarial material
# ----------------------------------------------------------------------------------------------------------------

INJECTIONS = [
    "' or 1 eq 1",
    "' or ''='",
    "x' or PartitionKey ne '",
    "../../etc/passwd",
    "..%2F..%2Fsecrets",
    "%2Fsubscriptions%2F",
    "$filter=PartitionKey ne ''",
    "?$filter=startswith(name,'a')&$top=1000",
    "| where 1==1 | project *",
    "resources | where type =~ 'microsoft.containerservice/managedclusters' | limit 1000",
    "'; DROP TABLE rotations;--",
    "\x00",
    "a\x00b",
    '\r\n{"level":"ERROR","event":"rotation.failed","alert":true}',
    "\u202eevil",
    "${jndi:ldap://x/a}",
    "<script>alert(1)</script>",
    "\ufeff",
    "\U0001d518\U0001d52b\U0001d526 \U0001f600 \u0645\u0631\u062d\u0628\u0627",
    "\\u0000",
    "%00",
]
# Secrets in shapes the redactor knows without registration (values inside JSON text stay literal).
MEMBER_SHAPES = [
    f'"client_secret": "{HIDDEN}"',
    f'"secretText": "{HIDDEN}"',
    f'"password": "{HIDDEN}"',
    f'"value": "{HIDDEN}"',
]
VALUE_SHAPES = [
    f"client_secret={HIDDEN}",
    f"Authorization: Bearer {HIDDEN}",
    f"DefaultEndpointsProtocol=https;AccountName=a;AccountKey={HIDDEN};",
    f"https://a.blob.core.windows.net/c?sv=2024&sig={HIDDEN}",
]
HUGE = "A" * (MAX_MESSAGE_BYTES + 100)

texts = st.text(max_size=40)
atoms = st.one_of(
    st.sampled_from(INJECTIONS),
    st.sampled_from(VALUE_SHAPES),
    st.just(CANARY),
    texts,
    st.builds(lambda a, b: a + CANARY + b, texts, texts),
    st.builds(lambda n: "x" * n + CANARY, st.integers(0, 3 * MAX_MESSAGE_BYTES)),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**30, max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    atoms,
)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(texts, c, max_size=3), max_leaves=6)


def other_tenant_ids() -> st.SearchStrategy[str]:
    """Syntactically valid managedCluster ids in subscriptions that are not in the estate."""
    return st.builds(
        lambda sub, rg, name: ARM_CLUSTER.format(sub=sub, rg=rg, name=name),
        st.uuids().map(str),
        st.from_regex(r"[a-zA-Z0-9_.()-]{0,20}[a-zA-Z0-9]", fullmatch=True),
        st.from_regex(r"[a-zA-Z0-9][-_a-zA-Z0-9]{0,20}", fullmatch=True),
    )


def tampered_ids(base: str) -> st.SearchStrategy[str]:
    """A real id with an injection-looking piece spliced in, percent-encoded, or trailing."""
    head, _, name = base.rpartition("/")
    return st.one_of(
        st.sampled_from(INJECTIONS).map(lambda x: base + x),
        st.sampled_from(INJECTIONS).map(lambda x: f"{head}/{x}"),
        st.sampled_from(INJECTIONS).map(lambda x: base.replace("/resourceGroups/", f"/resourceGroups/{x}")),
        st.just(base.replace("/", "%2F")),
        st.just(base + "/"),
        st.just(base + "\n"),
        st.just(" " + base),
        st.just(base.replace("managedClusters", "managedClusters/..")),
        st.just(f"{head}/../../{name}"),
        st.just(base.replace("/subscriptions/", "/subscriptions/' or 1 eq 1 or '")),
        st.just("https://management.azure.com" + base),
        st.just(base + "?api-version=2024-01-01&$filter=1 eq 1"),
    )


def with_mutations(template: dict[str, Any], fields: list[str], ids: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """The template with a few fields replaced by hostile values, deleted, or unknown fields added."""
    names = st.sampled_from([*fields, "extra", "client_secret", "$filter", "__proto__", CANARY[:30]])
    change = st.tuples(names, st.one_of(values, ids, st.just(KeyError)))

    def apply(changes: list[tuple[str, Any]]) -> dict[str, Any]:
        doc = dict(template)
        for name, value in changes:
            if value is KeyError:
                doc.pop(name, None)
            else:
                doc[name] = value
        return doc

    return st.lists(change, min_size=1, max_size=3).map(apply)


def json_text(doc: Any, shape: str | None) -> str:
    """JSON text of `doc`, with a redactor-known member spliced into an object when asked."""
    text = json.dumps(doc, ensure_ascii=False)
    if shape is not None and isinstance(doc, dict):
        text = "{" + shape + ("," + text[1:] if len(text) > 2 else "}")
    return text


def documents(base: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    """JSON text of a hostile document, sometimes with a redactor-known member, sometimes oversized."""
    return st.one_of(
        st.builds(json_text, base, st.none() | st.sampled_from(MEMBER_SHAPES)),
        st.builds(lambda doc: json_text(doc, None)[:-1] + f', "pad": "{HUGE}{CANARY}"}}', base.filter(_is_object)),
        st.builds(lambda doc: json.dumps(doc, ensure_ascii=True), values),
    )


def _is_object(doc: Any) -> bool:
    return isinstance(doc, dict) and len(doc) > 0


garbage_text = st.one_of(
    st.text(max_size=300),
    st.builds(lambda a, b: a + CANARY + b, st.text(max_size=100), st.text(max_size=100)),
    st.builds(
        lambda a, s, b: f"{a} {s} {b}", st.text(max_size=50), st.sampled_from(MEMBER_SHAPES + VALUE_SHAPES), texts
    ),
    st.sampled_from(["", " ", "null", "[]", "[{}]", "0", '"x"', "{", "{}", '{"a":1,"a":2}', '{"a": NaN}']),
    st.just("[" * 5000 + "]" * 5000),
    st.just('{"a": ' + "9" * 5000 + "}"),
    st.just(HUGE + CANARY),
)


# ----------------------------------------------------------------------------------------------------------------
# Queue messages
# ----------------------------------------------------------------------------------------------------------------

MESSAGE_FIELDS = [
    "schema_version",
    "rotation_id",
    "cluster_id",
    "kind",
    "app_id",
    "observed_expiry",
    "reason",
    "correlation_id",
    "step",
    "attempt",
    "not_before",
]


def queue_bodies(edge: Estate) -> st.SearchStrategy[str]:
    """Hostile queue messages. Syntactically valid ones never name a real cluster together with its real app
    (that is a legitimate rotation, not hostile input); none was submitted."""
    analytics = edge.clusters["aks-analytics"]
    targets = st.one_of(
        other_tenant_ids(),
        st.builds(
            lambda rg, name: ARM_CLUSTER.format(sub=edge.subs[0], rg=rg, name=name),
            st.sampled_from(["rg-aks-payments", "rg-nope"]),
            st.sampled_from(["aks-nope", "aks-payments-x"]),
        ),
        st.just(analytics),  # a real cluster, but with a random app id (another tenant's application)
    )

    def template(cluster_id: str, app_id: str, kind: str, expiry: datetime) -> dict[str, Any]:
        message = new_rotation_message(
            cluster_id=cluster_id,
            kind=kind,
            reason="due",
            app_id=app_id if kind == "sp_secret" else None,
            observed_expiry=expiry,
            correlation_id="edge-test",
        )
        return json.loads(message.to_json())  # type: ignore[no-any-return]

    templates = st.builds(
        template,
        targets,
        st.uuids().map(str),
        st.sampled_from(["sp_secret", "cluster_certificate"]),
        st.datetimes(datetime(2020, 1, 1), datetime(2040, 1, 1), timezones=st.just(UTC)),
    )
    mutated = templates.flatmap(
        lambda doc: with_mutations(doc, MESSAGE_FIELDS, tampered_ids(doc["cluster_id"]) | other_tenant_ids())
    )
    return st.one_of(
        templates.map(json.dumps),  # valid messages for clusters/apps that are not ours
        documents(mutated),
        garbage_text,
    )


def test_queue_messages_change_nothing_and_rejections_are_recorded(edge: Estate) -> None:
    cfg = edge.settings()
    edge.control.clear_requests()

    @PROPERTY
    @given(body=queue_bodies(edge))
    def check(body: str) -> None:
        before = rejection_keys(cfg)
        poisoned = queue_length(cfg, cfg.poison_queue)
        with captured() as logs:
            outcome = run(rotation.handle_message(cfg, body))
        assert edge.mutations() == 0
        rows = new_rejections(cfg, before)
        # Nothing was submitted, so no message may act (issue 14 item 2); one that does not parse, or names a
        # cluster outside the allow-list, is parked on the poison queue too.
        assert outcome.action == "rejected", outcome
        assert_recorded(rows, "queue", logs)
        unsubmitted = [r for r in rows if r.reason == "rotation_id: no such rotation was submitted"]
        assert queue_length(cfg, cfg.poison_queue) == poisoned + (0 if unsubmitted else 1)
        validated = (parse_message(body).cluster_id,) if unsubmitted else ()
        assert_no_echo(body, logs.texts() + [t for r in rows for t in (r.reason, r.excerpt)], validated)

    check()
    assert queue_length(cfg, cfg.rotation_queue) <= 1  # at most a "not yet due" re-queue of a failed-anyway run


# ----------------------------------------------------------------------------------------------------------------
# Key Vault events
# ----------------------------------------------------------------------------------------------------------------


def event_doc(
    cloud: bool,
    event_type: str,
    topic: str,
    vault: str,
    name: str,
    version: str,
    exp: Any,
    event_id: str,
) -> dict[str, Any]:
    data = {
        "Id": f"https://{vault}.vault.azure.net/secrets/{name}/{version}",
        "VaultName": vault,
        "ObjectType": "Secret",
        "ObjectName": name,
        "Version": version,
        "NBF": None,
        "EXP": exp,
    }
    if cloud:
        data = {k[0].lower() + k[1:] if k not in ("NBF", "EXP") else k.lower(): v for k, v in data.items()}
        return {
            "specversion": "1.0",
            "id": event_id,
            "source": topic,
            "subject": name,
            "type": event_type,
            "data": data,
        }
    return {
        "id": event_id,
        "topic": topic,
        "subject": name,
        "eventType": event_type,
        "eventTime": "2026-11-24T01:08:33Z",
        "data": data,
        "dataVersion": "1",
        "metadataVersion": "1",
    }


def event_inputs(edge: Estate) -> st.SearchStrategy[Any]:
    """Events as the queue trigger and the CLI hand them over (text, bytes)."""
    vault = seeds.VAULT
    ours = KV_TOPIC.format(sub=edge.subs[0], rg="rg-rotator", vault=vault)
    secrets_ = st.sampled_from(
        [
            (edge.secret, edge.current.version),  # replayed again and again: queues at most once
            (edge.secret, edge.previous.version),  # an older version: out of order, ignored
            (edge.outside_secret, edge.outside_current.version),  # a cluster outside the allow-list
            (edge.secret, uuid.uuid4().hex),  # a version that does not exist
            ("aks-sp-someone-else-0123456789ab", uuid.uuid4().hex),
        ]
    )
    topics = st.one_of(
        st.just(ours),
        st.builds(lambda s: KV_TOPIC.format(sub=s, rg="rg-other", vault=vault), st.uuids().map(str)),  # other tenant
        st.builds(lambda s: KV_TOPIC.format(sub=s, rg="rg", vault="other-kv"), st.uuids().map(str)),
    )

    def build(cloud: bool, kind: str, topic: str, secret: tuple[str, str], exp: Any, eid: str) -> dict[str, Any]:
        name, version = secret
        vault_name = topic.rsplit("/", 1)[-1]
        return event_doc(cloud, kind, topic, vault_name, name, version, exp, eid)

    templates = st.builds(
        build,
        st.booleans(),
        st.sampled_from([events.NEAR_EXPIRY, events.EXPIRED, "Microsoft.KeyVault.SecretNewVersionCreated"]),
        topics,
        secrets_,
        st.one_of(st.just("1795478400"), st.integers(0, 253402300799), st.none()),
        st.one_of(st.uuids().map(str), st.just("replayed-event-0001")),
    )
    top = ["id", "topic", "source", "eventType", "type", "subject", "data", "specversion"]
    mutated = templates.flatmap(
        lambda doc: st.one_of(
            with_mutations(doc, top, tampered_ids(doc.get("topic") or doc["source"])),
            with_mutations(doc["data"], list(doc["data"]), st.sampled_from(INJECTIONS)).map(
                lambda data, doc=doc: {**doc, "data": data}
            ),
        )
    )
    dicts = st.one_of(templates, mutated, mutated.map(lambda doc: {**doc, "extra": {"client_secret": HIDDEN}}))
    return st.one_of(
        dicts,
        dicts.map(lambda doc: [doc]),  # webhook arrays, as text
        documents(mutated),
        documents(mutated).map(lambda text: text.encode("utf-8")),
        garbage_text,
        st.binary(max_size=200),
    ).map(lambda doc: json.dumps(doc, default=str) if isinstance(doc, list | dict) else doc)


def test_key_vault_events_change_nothing_and_queue_at_most_once(edge: Estate) -> None:
    cfg = edge.settings()
    edge.control.clear_requests()
    outcomes: list[str] = []
    estate_ids = tuple(edge.clusters.values())  # what our own tags say, logged when an event is acted on

    @PROPERTY
    @given(raw=event_inputs(edge))
    def check(raw: Any) -> None:
        before = rejection_keys(cfg)
        with captured() as logs:
            outcome = run(events.handle_event(cfg, raw))
        outcomes.append(outcome.action)
        assert edge.mutations() == 0
        rows = new_rejections(cfg, before)
        assert outcome.action in {"rejected", "ignored", "queued", "duplicate", "already_active"}, outcome
        if outcome.action == "rejected":
            assert_recorded(rows, "eventgrid", logs)
        else:
            assert not rows
        assert_no_echo(raw, logs.texts() + [t for r in rows for t in (r.reason, r.excerpt)], estate_ids)

    check()
    assert outcomes.count("queued") <= 1 and queue_length(cfg, cfg.rotation_queue) == outcomes.count("queued")
    assert "rejected" in outcomes and "ignored" in outcomes


# ----------------------------------------------------------------------------------------------------------------
# HTTP bodies
# ----------------------------------------------------------------------------------------------------------------


def http_bodies(edge: Estate) -> st.SearchStrategy[bytes]:
    real = [edge.clusters[n] for n in ("aks-analytics", "aks-legacy", "aks-ml")]
    not_there = st.builds(
        lambda sub, name: ARM_CLUSTER.format(sub=sub, rg="rg-aks-payments", name=name),
        st.sampled_from(edge.subs[:2]),
        st.sampled_from(["aks-nope", "aks-payments-2", "AKS-PAYMENTS-X"]),
    )
    ids = st.one_of(
        other_tenant_ids(),
        not_there,
        st.sampled_from(real),
        st.sampled_from(real).flatmap(tampered_ids),
        st.sampled_from(real).map(str.upper),
    )
    # Well-formed requests: the real allowed cluster (queued once, then a no-op), a managed-identity cluster (409),
    # clusters that do not exist in allowed subscriptions (404), other tenants and a real cluster outside the
    # allow-list (400).
    well_formed = st.builds(
        lambda cid, extra: {"cluster_id": cid, **extra},
        st.one_of(st.sampled_from(real), not_there, other_tenant_ids()),
        st.sampled_from([{}, {}, {CANARY: 1}, {"client_secret": HIDDEN}]),  # echoed field names are redacted
    )
    templates = st.builds(
        lambda cid, kind, reason: {"cluster_id": cid, "kind": kind, "reason": reason},
        ids,
        st.sampled_from(["sp_secret", "cluster_certificate", "aad_server_secret"]),
        st.sampled_from(["on_demand", "due"]),
    )
    mutated = templates.flatmap(lambda doc: with_mutations(doc, ["cluster_id", "kind", "reason"], ids))
    text = st.one_of(well_formed.map(json.dumps), templates.map(json.dumps), documents(mutated), garbage_text)
    return st.one_of(text.map(lambda t: t.encode("utf-8")), st.binary(max_size=300), st.just(HUGE.encode() + b"\xff"))


def test_http_bodies_change_nothing_and_get_a_clear_4xx(edge: Estate) -> None:
    cfg = edge.settings()
    edge.control.clear_requests()
    accepted: list[str] = []

    @PROPERTY
    @given(body=http_bodies(edge))
    def check(body: bytes) -> None:
        before = rejection_keys(cfg)
        with captured() as logs:
            response = run(api.request_rotation(cfg, body))
        assert edge.mutations() == 0
        rows = new_rejections(cfg, before)
        validated: tuple[str, ...] = ()
        if response.status in (200, 202):
            # Only ever the one real, allowed cluster with a secret: queued once, a no-op after that.
            assert response.body["cluster_id"].lower() == edge.clusters["aks-analytics"].lower()
            accepted.append(response.body["status"])
            assert not rows
            validated = (response.body["cluster_id"], json.loads(body)["cluster_id"])
        else:
            assert response.status in (400, 404, 409), response
            assert response.body["error"] and len(response.body["error"]) <= 240
            assert_recorded(rows, "http", logs)
            assert rows[0].correlation_id == response.body["correlationId"]
        assert_no_echo(body, logs.texts() + [t for r in rows for t in (r.reason, r.excerpt)], validated)

    check()
    assert accepted.count("queued") <= 1 and queue_length(cfg, cfg.rotation_queue) == accepted.count("queued")


# ----------------------------------------------------------------------------------------------------------------
# App settings
# ----------------------------------------------------------------------------------------------------------------

SETTING_NAMES = setting_names()
SECRET_SETTINGS = ("AZURE_CLIENT_SECRET", "AzureWebJobsStorage", "APPLICATIONINSIGHTS_CONNECTION_STRING")


def setting_values() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=80),
        st.sampled_from(INJECTIONS),
        st.sampled_from(["0", "-1", "1e9", "9" * 400, "true", "NaN", "inf", "https://", "http://x", "Mon 25:00-26:00"]),
        st.builds(lambda n: "x" * n + CANARY, st.integers(0, 20_000)),
        st.just(HUGE),
        st.builds(lambda a, b: f"{a},{b}", st.uuids().map(str), st.sampled_from([*INJECTIONS, CANARY])),
    )


def test_settings_reject_hostile_values_without_echoing_them(edge: Estate) -> None:
    base = edge.env(
        AZURE_CLIENT_SECRET=f"{CANARY}-client",
        APPLICATIONINSIGHTS_CONNECTION_STRING=f"InstrumentationKey={HIDDEN}",
    )
    edge.control.clear_requests()

    @settings(PROPERTY, max_examples=150)
    @given(
        changes=st.dictionaries(
            st.sampled_from(SETTING_NAMES) | st.text(max_size=20), setting_values(), min_size=1, max_size=4
        )
    )
    def check(changes: dict[str, str]) -> None:
        env = {**base, **changes}
        with captured() as logs:
            try:
                loaded = Settings.from_env(env)
            except SettingsError as exc:
                shown, error = [str(exc)], True
            else:
                shown, error = [repr(loaded), str(loaded), loaded.model_dump_json()], False
        assert not logs.records
        # Secret settings are never shown, whatever they hold (unless the same text is also a plain setting).
        plain = [v for k, v in env.items() if k not in SECRET_SETTINGS]
        for name in SECRET_SETTINGS:
            value = env.get(name, "")
            if len(value) >= 20 and not any(value in other for other in plain):
                assert all(value not in text for text in shown), name
        # A refused value is named, and echoed at most as a short excerpt.
        for text in shown if error else []:
            assert len(text) <= 4000
            for value in changes.values():
                for i in range(len(text) - EXCERPT):
                    assert text[i : i + EXCERPT + 1] not in value

    check()
    assert edge.mutations() == 0


# ----------------------------------------------------------------------------------------------------------------
# Explicit examples
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["real cluster, subscription not allowed", "another tenant's subscription"])
def test_http_request_for_a_subscription_outside_the_allow_list_is_400(edge: Estate, which: str) -> None:
    cfg = edge.settings()
    cluster_id = (
        edge.clusters["aks-legacy"]
        if which.startswith("real")
        else ARM_CLUSTER.format(sub=uuid.uuid4(), rg="rg-aks-legacy", name="aks-legacy")
    )
    edge.control.clear_requests()
    body = json.dumps({"cluster_id": cluster_id}).encode()
    with captured() as logs:
        response = run(api.request_rotation(cfg, body))
    assert response.status == 400 and response.body["field"] == "cluster_id"
    assert "SUBSCRIPTION_ALLOWLIST" in response.body["error"]
    rows = new_rejections(cfg, set())
    assert_recorded(rows, "http", logs)
    assert "SUBSCRIPTION_ALLOWLIST" in rows[0].reason and rows[0].correlation_id == response.body["correlationId"]
    assert edge.control.requests().get("arm.get", 0) == 0  # refused before any Azure call
    assert edge.mutations() == 0 and queue_length(cfg, cfg.rotation_queue) == 0


def test_http_rejection_never_records_a_secret_used_as_a_field_name(edge: Estate) -> None:
    cfg = edge.settings()
    body = json.dumps({"cluster_id": edge.clusters["aks-analytics"], CANARY: HIDDEN}).encode()
    with captured() as logs:
        response = run(api.request_rotation(cfg, body))
    assert response.status == 400 and "unknown field" in response.body["error"]
    rows = new_rejections(cfg, set())
    assert_recorded(rows, "http", logs)
    assert CANARY not in rows[0].reason and CANARY not in rows[0].excerpt
    assert all(CANARY not in text for text in logs.texts())


def test_http_unknown_or_unreadable_cluster_is_404_and_identity_cluster_409(edge: Estate) -> None:
    open_ = edge.settings(SUBSCRIPTION_ALLOWLIST="")  # every subscription allowed: ARM decides
    edge.control.clear_requests()
    cases = {
        ARM_CLUSTER.format(sub=edge.subs[0], rg="rg-aks-payments", name="aks-nope"): 404,
        ARM_CLUSTER.format(sub=uuid.uuid4(), rg="rg-x", name="aks-other-tenant"): 404,
        edge.clusters["aks-ml"]: 409,  # managed identity: no secret to rotate
    }
    for cluster_id, status in cases.items():
        with captured() as logs:
            response = run(api.request_rotation(open_, json.dumps({"cluster_id": cluster_id}).encode()))
        assert response.status == status, (cluster_id, response)
        assert logs.rejected() and response.body["correlationId"]
    assert len(new_rejections(open_, set())) == len(cases)
    assert edge.mutations() == 0 and queue_length(open_, open_.rotation_queue) == 0


def _event(edge: Estate, version: str, *, event_id: str, cloud: bool = False, kind: str = events.NEAR_EXPIRY) -> Any:
    topic = KV_TOPIC.format(sub=edge.subs[0], rg="rg-rotator", vault=seeds.VAULT)
    doc = event_doc(cloud, kind, topic, seeds.VAULT, edge.secret, version, "1795478400", event_id)
    return json.dumps(doc) if cloud else json.dumps(doc).encode()


def test_replayed_key_vault_event_is_a_no_op_the_second_time(edge: Estate) -> None:
    cfg = edge.settings()
    edge.control.clear_requests()
    first = run(events.handle_event(cfg, _event(edge, edge.current.version, event_id="evt-1")))
    assert first.action == "queued" and first.rotation_id
    replay = run(events.handle_event(cfg, _event(edge, edge.current.version, event_id="evt-1")))
    assert (replay.action, replay.rotation_id) == ("duplicate", first.rotation_id)
    # The same news in the other schema, redelivered with a new event id: still the same rotation.
    again = run(events.handle_event(cfg, _event(edge, edge.current.version, event_id="evt-2", cloud=True)))
    assert (again.action, again.rotation_id) == ("duplicate", first.rotation_id)
    assert queue_length(cfg, cfg.rotation_queue) == 1 and edge.mutations() == 0


def test_event_about_an_older_version_is_ignored_even_out_of_order(edge: Estate) -> None:
    cfg = edge.settings()
    edge.control.clear_requests()
    stale = run(events.handle_event(cfg, _event(edge, edge.previous.version, event_id="old", kind=events.EXPIRED)))
    assert stale.action == "ignored" and "previous" in stale.reason
    current = run(events.handle_event(cfg, _event(edge, edge.current.version, event_id="new")))
    assert current.action == "queued"
    late = run(events.handle_event(cfg, _event(edge, edge.previous.version, event_id="older-arrives-late")))
    assert late.action == "ignored" and "previous" in late.reason
    assert queue_length(cfg, cfg.rotation_queue) == 1 and edge.mutations() == 0


def test_event_for_a_cluster_outside_the_allow_list_is_ignored(edge: Estate) -> None:
    cfg = edge.settings()
    edge.control.clear_requests()
    topic = KV_TOPIC.format(sub=edge.subs[0], rg="rg-rotator", vault=seeds.VAULT)
    doc = event_doc(
        False,
        events.EXPIRED,
        topic,
        seeds.VAULT,
        edge.outside_secret,
        edge.outside_current.version,
        "1795478400",
        "e",
    )
    with captured() as logs:
        outcome = run(events.handle_event(cfg, json.dumps(doc)))
    assert outcome.action == "ignored" and "SUBSCRIPTION_ALLOWLIST" in outcome.reason
    assert not [r for r in logs.records if getattr(r, "alert", False)]  # no "rotating now" alert either
    assert queue_length(cfg, cfg.rotation_queue) == 0 and edge.mutations() == 0


# ----------------------------------------------------------------------------------------------------------------
# Regressions once found in shared/rotation.py
# ----------------------------------------------------------------------------------------------------------------


def test_queue_message_for_a_subscription_outside_the_allow_list_is_rejected(edge: Estate) -> None:
    cfg = edge.settings()
    edge.control.clear_requests()
    # A random app id, so that today's behaviour (it runs) fails at lookup instead of rotating aks-legacy.
    message = new_rotation_message(
        cluster_id=edge.clusters["aks-legacy"],
        kind="sp_secret",
        reason="due",
        app_id=str(uuid.uuid4()),
        observed_expiry=datetime(2031, 1, 1, tzinfo=UTC),
    )
    outcome = run(rotation.handle_message(cfg, message.to_json()))
    assert edge.mutations() == 0
    assert outcome.action == "rejected"


def test_certificate_message_for_a_cluster_that_does_not_exist_fails_cleanly(edge: Estate) -> None:
    cfg = edge.settings()
    edge.control.clear_requests()
    message = new_rotation_message(
        cluster_id=ARM_CLUSTER.format(sub=edge.subs[0], rg="rg-aks-payments", name="aks-nope"),
        kind="cluster_certificate",
        reason="due",
        observed_expiry=datetime(2031, 1, 1, tzinfo=UTC),
    )
    try:
        outcome = run(rotation.handle_message(cfg, message.to_json()))
    finally:
        assert edge.mutations() == 0
    assert outcome.action in {"failed", "rejected"}


def test_queue_rejection_never_records_a_registered_secret_used_as_a_field_name(edge: Estate) -> None:
    cfg = edge.settings()
    message = new_rotation_message(
        cluster_id=edge.clusters["aks-payments"], kind="sp_secret", reason="due", app_id=str(uuid.uuid4())
    )
    outcome = run(rotation.handle_message(cfg, json.dumps({**json.loads(message.to_json()), CANARY: 1})))
    assert outcome.action == "rejected"
    assert all(CANARY not in r.reason for r in new_rejections(cfg, set()))


def test_queue_message_with_lone_surrogates_is_rejected(edge: Estate) -> None:
    cfg = edge.settings()
    outcome = run(rotation.handle_message(cfg, '{"schema_version": 1, "x": "\ud800"}'))
    assert outcome.action == "rejected"
