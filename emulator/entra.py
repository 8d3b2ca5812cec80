"""Entra ID (v2.0 endpoints): OIDC discovery, signing keys, and the client-credentials token endpoint.

The token endpoint accepts a client secret only while it is a current password credential of the application
(or its service principal) and has replicated; that is what lets tests prove a rotated secret works.
"""

from __future__ import annotations

from aiohttp import web

from emulator import signins
from emulator.core import emulator_of
from emulator.wire import Reply, error, scope_audience


def _tenant(request: web.Request) -> str:
    emu = emulator_of(request)
    tenant = request.match_info["tenant"]
    if tenant.lower() not in (emu.estate.tenant_id, "organizations"):
        message = (
            f"AADSTS90002: Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
            "signing into the correct cloud."
        )
        raise Reply(error("entra", 400, "invalid_request", message))
    return emu.estate.tenant_id


async def openid_configuration(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    tenant = _tenant(request)
    base = f"{emu.endpoint}/{tenant}"
    return web.json_response(
        {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{base}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "oid"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
        }
    )


async def keys(request: web.Request) -> web.Response:
    _tenant(request)
    return web.json_response(emulator_of(request).tokens.jwks())


async def token(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    tenant = _tenant(request)
    form = await request.post()
    grant = str(form.get("grant_type", ""))
    client_id = str(form.get("client_id", "")).lower()
    secret = str(form.get("client_secret", ""))
    scope = str(form.get("scope", ""))
    if grant != "client_credentials":
        raise Reply(
            error("entra", 400, "unsupported_grant_type", "AADSTS70003: The app requested an unsupported grant type.")
        )
    app = emu.estate.applications.get(client_id)
    if app is None:
        message = (
            f"AADSTS700016: Application with identifier '{client_id}' was not found in the directory '{tenant}'. "
            "This can happen if the application has not been installed by the administrator of the tenant."
        )
        raise Reply(error("entra", 400, "unauthorized_client", message))
    served = next((found for s in scope.split() if (found := scope_audience(s, emu.endpoint)) is not None), None)
    if served is None:
        message = (
            f"AADSTS1002012: The provided value for scope {scope[:100]} is not valid. Client credential flows "
            "must have a scope value with /.default suffixed to the resource identifier."
        )
        raise Reply(error("entra", 400, "invalid_scope", message))
    if not secret:
        message = (
            "AADSTS7000216: 'client_assertion', 'client_secret' or 'request' is required for the "
            "'client_credentials' grant type."
        )
        raise Reply(error("entra", 400, "invalid_client", message))
    refusal = emu.entra_refusal(client_id, secret)
    if refusal is not None:
        raise Reply(error("entra", 401, "invalid_client", refusal))
    used = emu.estate.find_password(client_id, secret)
    signins.record(emu.estate, used.key_id if used else None, emu.clock.timestamp())
    object_id = emu.estate.principal_object_id(client_id) or app.object_id
    surface, audience = served
    roles = sorted(emu.estate.graph_roles.get(client_id, set())) if surface == "graph" else []
    access_token, _ = emu.tokens.issue(client_id, object_id, audience, roles, emu.clock.timestamp())
    return web.json_response(
        {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": access_token}
    )


def setup(app: web.Application) -> None:
    app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", openid_configuration, name="entra.discovery")
    app.router.add_get("/{tenant}/discovery/v2.0/keys", keys, name="entra.keys")
    app.router.add_post("/{tenant}/oauth2/v2.0/token", token, name="entra.token")
