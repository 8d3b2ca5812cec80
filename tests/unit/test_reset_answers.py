"""What each error from a reset request means (`shared.rotation.apply.RESET_ERRORS`)."""

from __future__ import annotations

import pytest
from azure.core.exceptions import ServiceRequestError, ServiceResponseError

from shared.aks import AksError, AuthorizationFailed, ClusterBusy, ClusterNotFound, CredentialsRejected
from shared.rotation.apply import ResetAnswer, reset_answer


@pytest.mark.parametrize(
    ("error", "answer"),
    [
        (
            AuthorizationFailed("Microsoft.ContainerService/managedClusters/resetServicePrincipalProfile/action", "/s"),
            ResetAnswer.REFUSED,
        ),
        (CredentialsRejected("bad", 400, "BadRequest"), ResetAnswer.REPROVE),
        (ClusterBusy("busy", 409, "OperationNotAllowed"), ResetAnswer.BUSY),
        (AksError("slow down", 429, "TooManyRequests"), ResetAnswer.THROTTLED),
        (AksError("bad", 400, "InvalidParameter"), ResetAnswer.REFUSED),
        (ClusterNotFound("gone", 404, "NotFound"), ResetAnswer.REFUSED),
        (AksError("timeout", 408, "RequestTimeout"), ResetAnswer.UNANSWERED),
        (AksError("oops", 500, "InternalServerError"), ResetAnswer.UNANSWERED),
        (AksError("no status", None, None), ResetAnswer.UNANSWERED),
        (ServiceRequestError("connection refused"), ResetAnswer.UNANSWERED),
        (ServiceResponseError("connection reset"), ResetAnswer.UNANSWERED),
    ],
)
def test_reset_errors(error: Exception, answer: ResetAnswer) -> None:
    assert reset_answer(error) is answer


def test_a_bug_is_not_an_answer() -> None:
    assert reset_answer(KeyError("x")) is None
