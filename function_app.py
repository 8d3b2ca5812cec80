"""Azure Functions entry points (v2 programming model) — a table of contents.

Each trigger parses what the host hands it, calls one function in `shared/`, and returns. All logic lives in
`shared/`, so the local runner (`aks-rotator`) and the tests drive exactly the same functions.
"""

from __future__ import annotations

import json

import azure.functions as func

from shared import api, discovery, events, rotation
from shared.runtime import settings

app = func.FunctionApp()


@app.timer_trigger(arg_name="timer", schedule="%ROTATION_SCHEDULE%", use_monitor=True, run_on_startup=False)
async def scan_estate(timer: func.TimerRequest) -> None:
    """Daily: find credentials nearing expiry and queue one rotation message per credential."""
    await discovery.run_scheduled(settings(), past_due=timer.past_due)


@app.queue_trigger(arg_name="msg", queue_name="%ROTATION_QUEUE%", connection="AzureWebJobsStorage")
async def rotate_credential(msg: func.QueueMessage) -> None:
    """Advance one rotation by its next idempotent step (re-queues itself when it has to wait)."""
    await rotation.handle_message(settings(), msg.get_body().decode("utf-8"), dequeue_count=msg.dequeue_count or 1)


@app.queue_trigger(arg_name="msg", queue_name="%ROTATION_QUEUE%-poison", connection="AzureWebJobsStorage")
async def rotation_poison(msg: func.QueueMessage) -> None:
    """A message failed maxDequeueCount times: record it with the reason and alert."""
    await rotation.handle_poison(settings(), msg.get_body().decode("utf-8", errors="replace"))


@app.queue_trigger(arg_name="msg", queue_name="keyvault-events", connection="AzureWebJobsStorage")
async def keyvault_events(msg: func.QueueMessage) -> None:
    """Key Vault SecretNearExpiry / SecretExpired → the same rotation messages the timer queues. Event Grid delivers
    them to this Storage queue with its managed identity (infra/app/eventgrid.bicep): no public webhook."""
    await events.handle_event(settings(), msg.get_body())


@app.route(route="status", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def http_status(req: func.HttpRequest) -> func.HttpResponse:
    """Estate summary: rotations by state, the nearest expiries, failed rotations."""
    return _json(await api.status_summary(settings()))


@app.route(route="rotations", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def http_request_rotation(req: func.HttpRequest) -> func.HttpResponse:
    """Request rotation of one cluster; the body is validated like a queue message."""
    return _json(await api.request_rotation(settings(), req.get_body()))


def _json(response: api.ApiResponse) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(response.body), status_code=response.status, mimetype="application/json")
