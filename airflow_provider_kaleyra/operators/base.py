"""What every Kaleyra operator shares: the hook, failing fast on what waiting cannot fix, the audience."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.sdk import BaseOperator, ObjectStoragePath
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_provider_kaleyra.client.config import DEFAULT_CONN_ID
from airflow_provider_kaleyra.client.exceptions import KaleyraAuthError
from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook
from airflow_provider_kaleyra.numbers.audience import RowBlock, open_audience
from airflow_provider_kaleyra.numbers.masking import MaskedNumbers
from airflow_provider_kaleyra.rcs.batching import Shard
from airflow_provider_kaleyra.rcs.blocks import input_blocks
from airflow_provider_kaleyra.utils.storage import as_path

if TYPE_CHECKING:
    from airflow.sdk import Context

T = TypeVar("T")


def as_list(value: Any) -> list[Any]:
    """A rendered ``numbers`` argument as a list: any iterable but a string (a string is a mistake)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(
            f"numbers must be a list of phone numbers, got {type(value).__name__}; to pass a templated "
            "list, use an XComArg or render_template_as_native_obj=True on the DAG"
        )
    return list(value)


class NotRetried(AirflowFailException):
    """What waiting cannot fix: fails the task at once, without its retries."""


# Bad credentials or channel off, a wrong argument, column or setting, a missing or unreadable
# audience: each raised as a class that is also that kind (``except ValueError`` still catches it).
NOT_RETRIED: dict[type[Exception], type[NotRetried]] = {
    kind: type(f"NotRetried{kind.__name__}", (NotRetried, kind), {"__module__": __name__})
    for kind in (KaleyraAuthError, ValueError, TypeError, FileNotFoundError, PermissionError)
}


def fail_fast(method: Callable[..., T]) -> Callable[..., T]:
    """For an operator's ``execute`` (or the sensor's ``store``): an error of :data:`NOT_RETRIED` fails the
    task without retries (same message and attributes, still its kind); others keep its ``retries``."""

    @functools.wraps(method)
    def run(self: Any, *args: Any, **kwargs: Any) -> T:  # Airflow passes ``context=``
        try:
            return method(self, *args, **kwargs)
        except AirflowException:
            raise
        except tuple(NOT_RETRIED) as exc:
            kind = next(kind for kind in NOT_RETRIED if isinstance(exc, kind))
            error = NOT_RETRIED[kind](*exc.args)
            error.__dict__.update(exc.__dict__)
            if isinstance(exc, OSError) and exc.filename is not None:  # its message shows the name
                error.errno, error.strerror, error.filename = exc.errno, exc.strerror, exc.filename
            raise error.with_traceback(exc.__traceback__) from exc

    return run


class KaleyraOperator(BaseOperator):
    """``kaleyra_conn_id`` (templated) and the hook, which reads the connection on first use only."""

    def __init__(self, *, kaleyra_conn_id: str = DEFAULT_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kaleyra_conn_id = kaleyra_conn_id

    @functools.cached_property
    def hook(self) -> KaleyraHook:
        return KaleyraHook(kaleyra_conn_id=self.kaleyra_conn_id)


def run_identity(task: BaseOperator, context: Context) -> str:
    """The task instance (DAG, run, task, map index): what a retry shares and no other run does."""
    ti = context.get("ti")
    dag_id = getattr(ti, "dag_id", None) or (task.dag_id if task.has_dag() else "")
    run_id = context.get("run_id") or getattr(ti, "run_id", "")
    map_index = getattr(ti, "map_index", -1)
    return json.dumps([dag_id, run_id, task.task_id, map_index if isinstance(map_index, int) else -1])


class AudienceOperator(KaleyraOperator):
    """The audience arguments of the RCS bulk lookup and the SOIP check, read one way by both.

    :param numbers: the audience as a list, for small audiences. (templated)
    :param audience: the audience as a file (path, URL or ``ObjectStoragePath``): a CSV with a
        header naming ``column``, or plain text with one number per line. (templated)
    :param column: the CSV column holding the numbers. (templated)
    :param audience_format: ``"csv"`` or ``"text"``; by default read from the suffix.
    :param shard_index: this task's shard, from 0, of ``shard_count`` cut from the audience. (templated)
    :param storage_conn_id: the object store's Airflow connection, for locations given as strings. (templated)
    :param e164_input: an earlier step normalized the audience: only the E.164 shape is checked.
    """

    template_fields: Sequence[str] = (
        "kaleyra_conn_id",
        "numbers",
        "audience",
        "column",
        "shard_index",
        "shard_count",
        "storage_conn_id",
    )
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
        e164_input: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (numbers is None) == (audience is None):
            raise ValueError("pass exactly one of numbers (a list) or audience (a file)")
        self.numbers = numbers
        self.audience = audience
        self.column = column
        self.audience_format = audience_format
        self.shard_index = shard_index
        self.shard_count = shard_count
        self.storage_conn_id = storage_conn_id
        self.e164_input = e164_input

    def render_template_fields(self, context: Context, jinja_env: Any = None) -> None:
        super().render_template_fields(context, jinja_env)
        if self.numbers is not None:  # Airflow records rendered fields: a masked sample only
            self.numbers = MaskedNumbers(as_list(self.numbers))

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
        if self.audience is None:
            return input_blocks(as_list(self.numbers))
        path = as_path(self.audience, self.storage_conn_id)
        return open_audience(path, column=self.column, fmt=self.audience_format).blocks()
