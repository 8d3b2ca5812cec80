"""Azure Functions entry points (v2 programming model) — a table of contents.

Each trigger parses what the host hands it, calls one function in `shared/`, and returns. All logic lives in
`shared/`, so the local runner (`aks-rotator`) and the tests drive exactly the same functions. Each trigger imports
its `shared/` module when it first runs: a cold instance indexes these functions without loading the storage,
management and Graph SDKs (`bench/cold_start.py` measures it).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import azure.functions as func

from shared.runtime import settings

if TYPE_CHECKING:
    from shared.api import ApiResponse

app = func.FunctionApp()


@app.timer_trigger(arg_name="timer", schedule="%ROTATION_SCHEDULE%", use_monitor=True, run_on_startup=False)
async def scan_estate(timer: func.TimerRequest) -> None:
    """Daily: find credentials nearing expiry and queue one rotation message per credential (a large estate:
    one shard message per subscription group instead)."""
    from shared import shards

    await shards.run_scheduled(settings(), past_due=timer.past_due)


@app.queue_trigger(arg_name="msg", queue_name="%ROTATION_QUEUE%-scan", connection="AzureWebJobsStorage")
async def scan_shard(msg: func.QueueMessage) -> None:
    """One subscription group of a sharded scan; the shard completing the run queues its rotations."""
    from shared import shards

    await shards.handle_shard(settings(), msg.get_body().decode("utf-8"))


@app.queue_trigger(arg_name="msg", queue_name="%ROTATION_QUEUE%", connection="AzureWebJobsStorage")
async def rotate_credential(msg: func.QueueMessage) -> None:
    """Advance one rotation by its next idempotent step (re-queues itself when it has to wait)."""
    from shared import rotation

    await rotation.handle_message(settings(), msg.get_body().decode("utf-8"), dequeue_count=msg.dequeue_count or 1)


@app.queue_trigger(arg_name="msg", queue_name="%ROTATION_QUEUE%-poison", connection="AzureWebJobsStorage")
async def rotation_poison(msg: func.QueueMessage) -> None:
    """A message failed maxDequeueCount times: record it with the reason and alert."""
    from shared import rotation

    await rotation.handle_poison(settings(), msg.get_body().decode("utf-8", errors="replace"))


@app.queue_trigger(arg_name="msg", queue_name="keyvault-events", connection="AzureWebJobsStorage")
async def keyvault_events(msg: func.QueueMessage) -> None:
    """Key Vault SecretNearExpiry / SecretExpired → the same rotation messages the timer queues. Event Grid delivers
    them to this Storage queue with its managed identity (infra/app/eventgrid.bicep): no public webhook."""
    from shared import events

    await events.handle_event(settings(), msg.get_body())


@app.route(route="status", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def http_status(req: func.HttpRequest) -> func.HttpResponse:
    """Estate summary: rotations by state, the nearest expiries, failed rotations."""
    from shared import api

    return _json(await api.status_summary(settings()))


@app.route(route="rotations", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def http_request_rotation(req: func.HttpRequest) -> func.HttpResponse:
    """Request rotation of one cluster; the body is validated like a queue message, the caller audited."""
    from shared import api

    return _json(await api.request_rotation(settings(), req.get_body(), req.headers))


def _json(response: ApiResponse) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(response.body), status_code=response.status, mimetype="application/json")
