"""What every Kaleyra operator shares: the hook, failing fast on what waiting cannot fix, the audience."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, ObjectStoragePath
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_provider_kaleyra.client.config import DEFAULT_CONN_ID
from airflow_provider_kaleyra.client.exceptions import KaleyraAuthError
from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook
from airflow_provider_kaleyra.numbers.audience import AudienceRow, RowBlock, open_audience
from airflow_provider_kaleyra.numbers.normalize import MaskedNumbers
from airflow_provider_kaleyra.rcs.batching import Shard
from airflow_provider_kaleyra.utils.storage import as_path

if TYPE_CHECKING:
    from airflow.sdk import Context


def _as_list(value: Any, name: str) -> list[Any]:
    """A rendered ``numbers`` argument as a list: any iterable but a string (a string is a mistake)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(
            f"{name} must be a list of phone numbers, got {type(value).__name__}; to pass a templated "
            "list, use an XComArg or render_template_as_native_obj=True on the DAG"
        )
    return list(value)


# What waiting cannot fix: bad credentials (401/403), a wrong column or configuration (ValueError,
# TypeError), an audience that is not there or not readable. Retrying these only delays the failure.
_PERMANENT_ERRORS = (KaleyraAuthError, ValueError, TypeError, FileNotFoundError, PermissionError)


@functools.cache
def _non_retryable(kind: type[Exception]) -> type[AirflowFailException]:
    """``AirflowFailException`` that is still a ``kind``: code catching ``ValueError`` etc. keeps working."""
    return type(kind.__name__, (AirflowFailException, kind), {"__module__": kind.__module__})


def _fail_fast(execute: Callable[..., Any]) -> Callable[..., Any]:
    """Re-raise a permanent error of ``execute`` as non-retryable (same message, same type); others propagate."""

    @functools.wraps(execute)
    def wrapper(self: BaseOperator, context: Context) -> Any:
        try:
            return execute(self, context)
        except AirflowException:
            raise
        except _PERMANENT_ERRORS as exc:
            error = _non_retryable(type(exc))(*exc.args)
            error.__dict__.update(exc.__dict__)
            raise error.with_traceback(exc.__traceback__) from exc

    wrapper.__kaleyra_fail_fast__ = True  # type: ignore[attr-defined]
    return wrapper


class KaleyraOperator(BaseOperator):
    """Holds the connection id and the hook; the hook reads the connection on first use only.

    Every subclass's ``execute`` fails at once, without retries, on what waiting cannot fix
    (:data:`_PERMANENT_ERRORS`); transient errors keep the task's ``retries``.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        execute = cls.__dict__.get("execute")
        if execute is not None and not getattr(execute, "__kaleyra_fail_fast__", False):
            cls.execute = _fail_fast(execute)  # type: ignore[method-assign]

    def __init__(self, *, kaleyra_conn_id: str = DEFAULT_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kaleyra_conn_id = kaleyra_conn_id

    @cached_property
    def hook(self) -> KaleyraHook:
        return KaleyraHook(kaleyra_conn_id=self.kaleyra_conn_id)


_LIST_BLOCK = 4096  # rows per block of a ``numbers`` list

AUDIENCE_FIELDS = (
    "kaleyra_conn_id",
    "numbers",
    "audience",
    "column",
    "shard_index",
    "shard_count",
    "storage_conn_id",
)


class AudienceOperator(KaleyraOperator):
    """The audience arguments of the RCS bulk lookup and the SOIP check, read one way by both.

    A rendered ``numbers`` list is kept as :class:`~airflow_provider_kaleyra.numbers.normalize.MaskedNumbers`:
    Airflow records rendered fields, and they would otherwise show the audience in clear.

    :param numbers: the audience as a list, for small audiences. (templated)
    :param audience: the audience as a file (path, URL or ``ObjectStoragePath``): a CSV with a
        header naming ``column``, or plain text with one number per line. (templated)
    :param column: the CSV column holding the numbers. (templated)
    :param audience_format: ``"csv"`` or ``"text"``; by default read from the suffix.
    :param shard_index: this task's shard, from 0; set with ``shard_count``. (templated)
    :param shard_count: how many shards the audience is cut into. (templated)
    :param storage_conn_id: the Airflow connection of the object store, for ``audience`` given as a
        string. (templated)
    :param kaleyra_conn_id: the ``kaleyra`` connection. (templated)
    """

    template_fields_renderers = {"numbers": "json"}

    def __init__(
        self,
        *,
        numbers: Iterable[str] | None = None,
        audience: str | ObjectStoragePath | None = None,
        column: str = "phone",
        audience_format: str | None = None,
        shard_index: int | str | None = None,
        shard_count: int | str | None = None,
        storage_conn_id: str | None = None,
        kaleyra_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(kaleyra_conn_id=kaleyra_conn_id, **kwargs)
        if (numbers is None) == (audience is None):
            raise ValueError("pass exactly one of numbers (a list) or audience (a file)")
        self.numbers = numbers
        self.audience = audience
        self.column = column
        self.audience_format = audience_format
        self.shard_index = shard_index
        self.shard_count = shard_count
        self.storage_conn_id = storage_conn_id

    def render_template_fields(self, context: Context, jinja_env: Any = None) -> None:
        super().render_template_fields(context, jinja_env)
        if self.numbers is not None:
            self.numbers = MaskedNumbers(_as_list(self.numbers, "numbers"))

    def _shard(self) -> Shard | None:
        if self.shard_index in (None, "") and self.shard_count in (None, ""):
            return None
        if self.shard_index in (None, "") or self.shard_count in (None, ""):
            raise ValueError("shard_index and shard_count must be set together")
        index, count = int(self.shard_index), int(self.shard_count)  # type: ignore[arg-type]
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"shard_index must be in [0, shard_count), got {index} of {count}")
        return Shard(index, count)

    def _blocks(self) -> Iterator[RowBlock]:
        """The audience in blocks of rows (:func:`~airflow_provider_kaleyra.numbers.audience.open_audience`)."""
        if self.audience is not None:
            path = as_path(self.audience, self.storage_conn_id)
            yield from open_audience(path, column=self.column, fmt=self.audience_format).blocks()
            return
        numbers = _as_list(self.numbers, "numbers")
        for start in range(0, len(numbers), _LIST_BLOCK):
            yield RowBlock(numbers[start : start + _LIST_BLOCK])

    def _rows(self) -> Iterator[AudienceRow]:
        for block in self._blocks():
            yield from block.rows()
