"""Who asked for an on-demand rotation (shared/caller.py): principal headers only behind App Service authentication,
the CLI's identity from its token's claims, nothing unprintable or long echoed."""

from __future__ import annotations

import base64
import json

from shared.caller import (
    FUNCTION_KEY,
    NO_AUTH_IN_FRONT,
    Caller,
    app_service_auth_in_front,
    http_caller,
    token_caller,
)

OID = "11111111-2222-3333-4444-555555555555"
APP = "99999999-8888-7777-6666-555555555555"


def _principal(claims: list[dict[str, str]]) -> str:
    doc = {"auth_typ": "aad", "claims": claims, "name_typ": "name", "role_typ": "roles"}
    return base64.b64encode(json.dumps(doc).encode()).decode()


def _jwt(claims: dict[str, object]) -> str:
    def part(doc: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def test_without_app_service_auth_the_principal_headers_are_ignored() -> None:
    forged = {"X-MS-CLIENT-PRINCIPAL-NAME": "ceo@contoso.com", "X-MS-CLIENT-PRINCIPAL-ID": OID}
    caller = http_caller(forged, auth_in_front=False)
    assert caller == Caller("http", NO_AUTH_IN_FRONT, key=FUNCTION_KEY)
    assert "ceo@contoso.com" not in json.dumps(caller.fields())


def test_behind_app_service_auth_the_headers_name_the_caller() -> None:
    headers = {
        "x-ms-client-principal-name": "ops@contoso.com",
        "X-MS-CLIENT-PRINCIPAL-ID": OID,
        "X-MS-CLIENT-PRINCIPAL": _principal([{"typ": "appid", "val": APP}]),
    }
    caller = http_caller(headers, auth_in_front=True)
    assert caller.fields() == {
        "caller": "ops@contoso.com",
        "caller_via": "http",
        "caller_id": OID,
        "caller_app_id": APP,
        "caller_key": FUNCTION_KEY,
    }


def test_an_app_only_token_is_named_by_its_application() -> None:
    claims = [
        {"typ": "http://schemas.microsoft.com/identity/claims/objectidentifier", "val": OID},
        {"typ": "azp", "val": APP},
    ]
    caller = http_caller({"X-MS-CLIENT-PRINCIPAL": _principal(claims)}, auth_in_front=True)
    assert (caller.name, caller.principal_id, caller.app_id) == (APP, OID, APP)


def test_malformed_principal_headers_yield_unknown_never_an_error() -> None:
    for bad in ("not base64!", base64.b64encode(b"[1, 2]").decode(), "A" * 20000, base64.b64encode(b"{").decode()):
        assert http_caller({"X-MS-CLIENT-PRINCIPAL": bad}, auth_in_front=True).name == "unknown"


def test_header_values_are_bounded_and_printable() -> None:
    caller = http_caller({"X-MS-CLIENT-PRINCIPAL-NAME": "a\r\nb\x00" + "x" * 500}, auth_in_front=True)
    assert caller.name.startswith("a??b?") and len(caller.name) == 128


def test_app_service_sets_website_auth_enabled() -> None:
    assert app_service_auth_in_front({"WEBSITE_AUTH_ENABLED": "True"})
    assert not app_service_auth_in_front({"WEBSITE_AUTH_ENABLED": "False"})
    assert not app_service_auth_in_front({})


def test_the_cli_caller_comes_from_its_token_claims() -> None:
    user = token_caller(_jwt({"oid": OID, "upn": "ops@contoso.com", "appid": APP, "scp": "user_impersonation"}))
    assert (user.via, user.name, user.principal_id, user.app_id) == ("cli", "ops@contoso.com", OID, APP)
    app = token_caller(_jwt({"oid": OID, "appid": APP, "idtyp": "app"}))
    assert (app.name, app.principal_id) == (APP, OID)


def test_a_token_without_claims_is_unknown_and_never_echoed() -> None:
    for token in ("opaque-token-value", "a.b", "a.!!!.c", _jwt({}) + "x"):
        caller = token_caller(token)
        assert caller.name.startswith("unknown") and token not in json.dumps(caller.fields())
