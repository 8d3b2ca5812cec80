"""Which password a cluster uses (`shared.credentials`): the rule discovery and rotation share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.credentials import (
    Basis,
    credential_in_use,
    find_in_use,
    password_display_name,
    passwords,
    product_created,
)
from shared.graph import AppCredentials, PasswordInfo

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
RID = "0123456789abcdef0123456789abcdef"


def _password(key: str, days: float | None, name: str | None = None) -> PasswordInfo:
    return PasswordInfo(key, name, None, None if days is None else NOW + timedelta(days=days), None)


def test_credential_in_use_rules() -> None:
    app = AppCredentials(
        "a",
        "app-obj",
        "sp-obj",
        (_password("k1", 5), _password("k2", 90)),
        (_password("k3", -2), _password("k4", None)),
    )
    assert credential_in_use(app, None, NOW) == ("application", app.application_passwords[0], "earliest")
    assert credential_in_use(app, "K2", NOW) == ("application", app.application_passwords[1], "keyvault")
    # Key Vault names a key the app no longer has: back to the earliest rule.
    assert credential_in_use(app, "gone", NOW) == ("application", app.application_passwords[0], "earliest")
    expired = AppCredentials("a", "o", None, (_password("x", -3), _password("y", -1)), ())
    assert credential_in_use(expired, None, NOW) == ("application", expired.application_passwords[0], "earliest")
    # Passwords on an object the product cannot see do not count; no password at all: None.
    assert credential_in_use(AppCredentials("a", None, None, (_password("z", 1),), ()), None, NOW) is None


@pytest.mark.parametrize(
    ("app_days", "sp_days", "expected", "holder"),
    [
        ((30.0,), (10.0,), "s0", "servicePrincipal"),  # the earliest active expiry wins, whichever object holds it
        ((None,), (10.0,), "s0", "servicePrincipal"),  # no end date counts as the latest
        ((-1.0, 40.0), (), "a1", "application"),  # an expired password is not the one in use while others live
        ((-5.0, -1.0), (), "a0", "application"),  # all expired: the earliest of them
    ],
)
def test_earliest_rule(
    app_days: tuple[float | None, ...], sp_days: tuple[float | None, ...], expected: str, holder: str
) -> None:
    creds = AppCredentials(
        "a",
        "app-obj",
        "sp-obj",
        tuple(_password(f"a{i}", d) for i, d in enumerate(app_days)),
        tuple(_password(f"s{i}", d) for i, d in enumerate(sp_days)),
    )
    found = credential_in_use(creds, None, NOW)
    assert found is not None and found.password.key_id == expected and found.holder == holder
    assert found.basis is Basis.EARLIEST


def test_a_rotation_never_plans_on_its_own_password() -> None:
    mine = _password("new", 1, password_display_name(RID))
    creds = AppCredentials("a", "app-obj", None, (mine, _password("old", 20)), ())
    found = find_in_use(creds, None, NOW, ignore_rotation=RID)
    assert found is not None and found.password.key_id == "old" and found.object_id == "app-obj"
    assert find_in_use(AppCredentials("a", "app-obj", None, (mine,), ()), None, NOW, ignore_rotation=RID) is None


def test_product_created_reads_the_display_name() -> None:
    assert product_created(_password("k", 1, password_display_name(RID))) == RID
    assert product_created(_password("k", 1, "aks-rotator by hand")) is None
    assert product_created(_password("k", 1, "ci secret")) is None
    assert product_created(_password("k", 1, None)) is None
    creds = AppCredentials("a", "app-obj", "sp-obj", (_password("a", 1),), (_password("s", 1),))
    assert [(h.holder, h.object_id) for h in passwords(creds)] == [
        ("application", "app-obj"),
        ("servicePrincipal", "sp-obj"),
    ]
