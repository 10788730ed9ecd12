"""The SMS-over-IP capability check: an audience submitted, its answers left to the callbacks."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypedDict

from airflow_provider_kaleyra.callbacks.store import get_store
from airflow_provider_kaleyra.client.api import SOIP_CHUNK_SIZE
from airflow_provider_kaleyra.numbers.normalize import DistinctNumbers
from airflow_provider_kaleyra.operators.base import AudienceOperator, fail_fast
from airflow_provider_kaleyra.rcs.batching import shard_slice
from airflow_provider_kaleyra.rcs.blocks import read_block

if TYPE_CHECKING:
    from airflow.sdk import Context


class SoipSubmission(TypedDict):
    """The check's XCom: what the callback sensor waits for. No phone number."""

    submission_id: str
    submitted_at: str  # ISO 8601; callbacks received before it do not count
    numbers: int
    invalid: int
    requests: int
    callback_profile_id: str


class KaleyraSoipCapabilityCheckOperator(AudienceOperator):
    """Submit an audience for an SMS-over-IP capability check; the answers arrive later by callback.

    Numbers are normalized, de-duplicated, recorded in the callback store under a new submission id
    and submitted in paced requests; the XCom (:class:`SoipSubmission`, no number) is the callback
    sensor's ``submission``. A retry is a new submission; callbacks delivered again count for it.
    The audience arguments are :class:`~.base.AudienceOperator`'s.

    :param callback_profile_id: the callback profile; defaults to the connection's. (templated)
    :param chunk_size: numbers per API request.
    """

    template_fields: Sequence[str] = (*AudienceOperator.template_fields, "callback_profile_id")

    def __init__(
        self, *, callback_profile_id: str | None = None, chunk_size: int = SOIP_CHUNK_SIZE, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self.callback_profile_id = callback_profile_id
        self.chunk_size = chunk_size

    @fail_fast
    def execute(self, context: Context) -> SoipSubmission:
        config = self.hook.config
        profile = self.hook.soip_profile(self.callback_profile_id)
        store = get_store(config.store_url)  # no store configured: fails without retries, naming the setting
        shard = self._shard()
        found = DistinctNumbers()
        for block in self._blocks():
            found.add(*read_block(block, config.default_region, self.e164_input))
        start, stop = shard_slice(len(found.seen), shard)
        numbers = list(found.seen)[start:stop]
        if found.invalid:
            reasons = "; ".join(f"{reason} ({n})" for reason, n in found.reasons.most_common(3))
            self.log.warning(
                "%s of %s inputs are not valid numbers: %s", found.invalid, found.inputs, reasons
            )
        submission_id = uuid.uuid4().hex
        store.add_submission(submission_id, numbers)  # before the first request: callbacks can be fast
        submitted_at = datetime.now(UTC)
        # chunks go out ``max_concurrency`` at a time; the transport paces and retries them
        chunks = [numbers[i : i + self.chunk_size] for i in range(0, len(numbers), self.chunk_size)]
        if not chunks:
            self.log.warning("No valid number to submit")
        else:
            workers = min(config.max_concurrency, len(chunks))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kaleyra-soip") as pool:
                # the first error ends the map, which cancels the chunks not yet sent
                list(pool.map(lambda chunk: self.hook.submit_soip(chunk, profile), chunks))
        self.log.info(
            "Submitted %s numbers in %s requests for SOIP capability (submission %s, callback profile %s)",
            len(numbers),
            len(chunks),
            submission_id,
            profile,
        )
        return {
            "submission_id": submission_id,
            "submitted_at": submitted_at.isoformat(),
            "numbers": len(numbers),
            "invalid": found.invalid,
            "requests": len(chunks),
            "callback_profile_id": profile,
        }
