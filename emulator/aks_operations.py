"""AKS long-running operations: starting one (202 and its polling headers, in the form the modes choose), the
refusals of a busy or stopped cluster, and the operation-status / operation-result resources in every URL form.

ARM's async pattern: 202 with `Azure-AsyncOperation` (status resource) and `Location` (result resource) and
`Retry-After`; the status resource is `{name, status, startTime, endTime?, error?}` (docs/emulator.md).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from emulator.arm_call import OPERATIONS, Call, route
from emulator.model import Estate
from emulator.records import Cluster, Operation, iso
from emulator.wire import Reply, error

Apply = Callable[[Estate, Cluster, float], tuple[str, str] | None]
BUSY = (
    "Operation is not allowed: Another operation ({state}) is in progress, please wait for it to finish before "
    "starting a new operation. See https://aka.ms/aks-pending-operation for more details"
)
STOPPED = (
    "Operation is not allowed: managed cluster is in Provisioning State({state}) and Power State(Stopped), "
    "{operation} cannot be performed. Start the cluster first."
)
RUNNING_STATES = frozenset({"Updating", "Upgrading", "Starting", "Stopping", "Deleting", "Creating", "Canceling"})
LEGACY_STATUS_API_VERSION = "2016-03-30"
# A provider segment in any letter case (the `lowercase` URL form), as one aiohttp regex variable.
_PROVIDER = (
    "{provider:[Mm][Ii][Cc][Rr][Oo][Ss][Oo][Ff][Tt]\\.[Cc][Oo][Nn][Tt][Aa][Ii][Nn][Ee][Rr][Ss][Ee][Rr][Vv][Ii][Cc][Ee]}"
)


def duration(estate: Estate, cluster: Cluster) -> float:
    return estate.lro_base_seconds + estate.lro_per_node_seconds * cluster.node_count


def ensure_idle(cluster: Cluster, operation: str) -> None:
    """409 `OperationNotAllowed` while another operation runs on the cluster, or while it is stopped."""
    if cluster.provisioning_state in RUNNING_STATES:
        raise Reply(error("arm", 409, "OperationNotAllowed", BUSY.format(state=cluster.provisioning_state)))
    if cluster.power_state == "Stopped":
        message = STOPPED.format(state=cluster.provisioning_state, operation=operation)
        raise Reply(error("arm", 409, "OperationNotAllowed", message))


def _status_base(call: Call, cluster: Cluster) -> tuple[str, str]:
    """(path prefix up to `/locations/{loc}`, api-version) of the operation URLs, in the mode's form."""
    form = call.emu.estate.modes.operation_url_form
    base = OPERATIONS.format(subscription=cluster.subscription_id, location=cluster.location)
    if form == "lowercase":
        base = base.replace("Microsoft.ContainerService", "microsoft.containerservice")
    elif form == "resourcegroup":
        base = base.replace("/providers/", f"/resourceGroups/{cluster.resource_group}/providers/", 1)
    version = LEGACY_STATUS_API_VERSION if form == "legacy_api_version" else call.api_version
    return base, version


def start(
    call: Call, cluster: Cluster, kind: str, apply: Apply, seconds: float, secret: tuple[str, str] | None = None
) -> Operation:
    """Register the operation (an `lro_fail` fault makes it fail at completion) and mark the cluster busy."""
    emu = call.emu
    now = emu.clock.timestamp()
    rule = emu.faults.take("arm", kind, ("lro_fail",), call.request.path)
    op = Operation(
        id=str(uuid.uuid4()),
        cluster_id=cluster.id,
        location=cluster.location,
        subscription_id=cluster.subscription_id,
        kind=kind,
        started=now,
        done_at=now + seconds,
        fail_message=(rule.message or f"Injected failure of {kind}.") if rule is not None else None,
        apply=apply,
        secret=secret,
        retries_left=emu.estate.modes.aks_retries_failed_reset if secret is not None else 0,
    )
    emu.estate.operations[op.id] = op
    cluster.provisioning_state = op.running_state
    return op


def accepted(call: Call, cluster: Cluster, op: Operation) -> web.Response:
    """202 with the polling headers (only `Location` under mode `lro_location_only`)."""
    base, version = _status_base(call, cluster)
    seconds = max(0.0, op.done_at - op.started)
    headers = {
        "Location": f"{call.emu.endpoint}{base}/operationresults/{op.id}?api-version={version}",
        "Retry-After": str(min(10, max(0, math.ceil(seconds)))),
    }
    if not call.emu.estate.modes.lro_location_only:
        headers["Azure-AsyncOperation"] = f"{call.emu.endpoint}{base}/operations/{op.id}?api-version={version}"
    return web.Response(status=202, headers=headers)


def _operation(call: Call, action: str, kind: str) -> Operation:
    info = call.request.match_info
    sub = info["subscription"].lower()
    scope = f"{OPERATIONS.format(subscription=sub, location=info['location'])}/{kind}/{info['operation']}"
    call.authorize(action, scope)
    op = call.emu.estate.operations.get(info["operation"])
    if op is None or op.subscription_id.lower() != sub or op.location.lower() != info["location"].lower():
        raise Reply(error("arm", 404, "NotFound", f"The operation '{info['operation']}' could not be found."))
    return op


def _retry_after(call: Call, op: Operation) -> str:
    return str(min(10, max(1, math.ceil(op.done_at - call.emu.clock.timestamp()))))


async def operation_status(request: web.Request, call: Call) -> web.Response:
    op = _operation(call, "Microsoft.ContainerService/locations/operations/read", "operations")
    body: dict[str, Any] = {
        "name": op.id,
        "status": op.status,
        "startTime": iso(datetime.fromtimestamp(op.started, UTC)),
    }
    if op.ended is not None:
        body["endTime"] = iso(datetime.fromtimestamp(op.ended, UTC))
    if op.status in ("Failed", "Canceled"):
        body["error"] = {"code": op.fail_code, "message": op.fail_message or ""}
        if op.fail_details:
            body["error"]["details"] = op.fail_details
    headers = {"Retry-After": _retry_after(call, op)} if op.status == "InProgress" else {}
    return web.json_response(body, headers=headers)


async def operation_result(request: web.Request, call: Call) -> web.Response:
    op = _operation(call, "Microsoft.ContainerService/locations/operationresults/read", "operationresults")
    if op.status == "InProgress":
        return web.Response(status=202, headers={"Location": str(request.url), "Retry-After": _retry_after(call, op)})
    if op.status in ("Failed", "Canceled"):
        status = 400 if op.fail_code == "BadRequest" else 500
        response = error("arm", status, op.fail_code, op.fail_message or "")
        if op.fail_details:
            response = web.json_response(
                {"error": {"code": op.fail_code, "message": op.fail_message or "", "details": op.fail_details}},
                status=status,
                headers={k: v for k, v in response.headers.items() if k.lower().startswith("x-ms-")},
            )
        raise Reply(response)
    return web.Response(status=204)


def setup(app: web.Application) -> None:
    """Status routes in every form AKS hands out: any provider-segment case, and under a resource group."""
    r = app.router
    sub = "/subscriptions/{subscription}"
    tail = "/providers/" + _PROVIDER + "/locations/{location}"
    for prefix, suffix in ((sub, ""), (sub + "/resourceGroups/{resource_group}", "InResourceGroup")):
        r.add_get(
            prefix + tail + "/operations/{operation}",
            route(False, operation_status),
            name="arm.operationStatus" + suffix,
        )
        r.add_get(
            prefix + tail + "/operationresults/{operation}",
            route(False, operation_result),
            name="arm.operationResult" + suffix,
        )
