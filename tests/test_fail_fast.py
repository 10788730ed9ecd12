"""Fail-fast: what waiting cannot fix fails the task without retries, still as the error it was."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_kaleyra.client.exceptions import KaleyraApiError, KaleyraAuthError
from airflow_provider_kaleyra.operators.base import NOT_RETRIED, NotRetried, fail_fast
from airflow_provider_kaleyra.operators.kaleyra import (
    KaleyraRcsBulkLookupOperator,
    KaleyraRcsLookupOperator,
)
from airflow_provider_kaleyra.operators.soip import KaleyraSoipCapabilityCheckOperator


class Raising:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    @fail_fast
    def execute(self, context):
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        KaleyraAuthError("Kaleyra refused the credentials", status=401, code="E401"),
        ValueError("no column 'phone'"),
        TypeError("numbers must be a list"),
        FileNotFoundError(2, "No such file or directory", "/nowhere/audience.csv"),
        PermissionError("audience.csv: permission denied"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_permanent_errors_fail_without_retries_keeping_kind_message_and_attributes(error):
    with pytest.raises(AirflowFailException) as raised:
        Raising(error).execute({})
    assert isinstance(raised.value, NotRetried) and isinstance(raised.value, type(error))
    assert str(raised.value) == str(error) and raised.value.__cause__ is error
    if isinstance(error, KaleyraAuthError):
        assert (raised.value.status, raised.value.code) == (401, "E401")


@pytest.mark.parametrize(
    "error",
    [
        KaleyraApiError("Kaleyra answered busy", status=503, retryable=True),
        RuntimeError("boom"),
        OSError("reset"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_transient_errors_keep_the_retries(error):
    with pytest.raises(type(error)) as raised:
        Raising(error).execute({})
    assert raised.value is error and not isinstance(raised.value, AirflowFailException)


def test_an_airflow_exception_passes_unchanged():
    error = AirflowFailException("already final")
    with pytest.raises(AirflowFailException) as raised:
        Raising(error).execute({})
    assert raised.value is error


def test_every_operator_execute_is_fail_fast():
    """The decorator is on each operator's execute (visible in its source), not added behind its back."""
    for operator in (
        KaleyraRcsLookupOperator,
        KaleyraRcsBulkLookupOperator,
        KaleyraSoipCapabilityCheckOperator,
    ):
        assert operator.execute.__wrapped__.__qualname__ == f"{operator.__name__}.execute"
    assert set(NOT_RETRIED) == {KaleyraAuthError, ValueError, TypeError, FileNotFoundError, PermissionError}
