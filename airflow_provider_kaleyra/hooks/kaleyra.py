"""KaleyraHook: authentication and transport for the ``kaleyra`` connection."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.sdk import BaseHook

from airflow_provider_kaleyra.client import api
from airflow_provider_kaleyra.client.config import CONN_TYPE, DEFAULT_CONN_ID, KaleyraConfig
from airflow_provider_kaleyra.client.exceptions import KaleyraApiError, KaleyraAuthError, connection_problem
from airflow_provider_kaleyra.client.pacing import InFlight
from airflow_provider_kaleyra.client.transport import Transport
from airflow_provider_kaleyra.numbers.masking import mask
from airflow_provider_kaleyra.numbers.normalize import normalize
from airflow_provider_kaleyra.rcs.answers import answer_from_device, answers_by_number, failed
from airflow_provider_kaleyra.rcs.batching import plan_batches
from airflow_provider_kaleyra.rcs.blocks import input_blocks
from airflow_provider_kaleyra.rcs.cache import CacheMode, CacheRun, resolve
from airflow_provider_kaleyra.rcs.engine import Engine

if TYPE_CHECKING:
    from airflow_provider_kaleyra.rcs.answers import Answer, RcsResult


class KaleyraHook(BaseHook):
    """Kaleyra's RCS lookup and SOIP capability-check APIs, through the ``kaleyra`` connection
    ``kaleyra_conn_id`` (login: account SID, password: API key, extras: README, "The connection")."""

    conn_name_attr = "kaleyra_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "Kaleyra"

    def __init__(self, kaleyra_conn_id: str = DEFAULT_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kaleyra_conn_id = kaleyra_conn_id
        self.last_cache: CacheRun | None = None  # the cache counts of the last lookup_rcs_many

    def __repr__(self) -> str:
        return f"KaleyraHook(kaleyra_conn_id={self.kaleyra_conn_id!r})"

    @cached_property
    def config(self) -> KaleyraConfig:
        """The connection's settings, read on first use (never at DAG-parse time); secrets masked."""
        return _masked(KaleyraConfig.from_connection(self.get_connection(self.kaleyra_conn_id)))

    async def aconfig(self) -> KaleyraConfig:
        """:attr:`config` for async code (the triggerer): the same reading and masking."""
        if "config" not in self.__dict__:
            conn = await self.aget_connection(self.kaleyra_conn_id)
            self.__dict__["config"] = _masked(KaleyraConfig.from_connection(conn))
        return self.config

    def _new_transport(self, probe: bool = False) -> Transport:
        """The connection's transport; ``probe``: the connection test's, one unretried call."""
        cfg = self.config
        return Transport(
            api_key=cfg.api_key,
            timeout=min(cfg.timeout, 15.0) if probe else cfg.timeout,
            max_retries=0 if probe else cfg.max_retries,
            rate_limit=0 if probe else cfg.rate_limit,
            pool_size=1 if probe else cfg.max_concurrency,
            backoff=cfg.retry_backoff,
            secrets=(cfg.callback_secret,),
        )

    @cached_property
    def transport(self) -> Transport:
        transport = self._new_transport()
        # ``elapsed``: from sending the request to reading the answer's headers, the pacer's wait excluded
        transport.session.hooks["response"].append(
            lambda response, **_: self.in_flight.observe(response.elapsed.total_seconds())
        )
        return transport

    @cached_property
    def in_flight(self) -> InFlight:
        """How many calls ``lookup_batches`` keeps in flight (Little's law, capped by ``max_concurrency``)."""
        return InFlight(self.config.rate_limit, self.config.max_concurrency)

    def get_conn(self) -> Transport:
        return self.transport

    def _rcs_url(self, path: str, **values: str) -> str:
        if not self.config.rcs_base_url:  # a pod with no published RCS host (eu, sg): set by hand
            raise ValueError(
                f"Kaleyra publishes no RCS host for pod {self.config.pod!r} (known: "
                f"{', '.join(api.RCS_HOSTS)}): set the connection's rcs_base_url to the RCS host Kaleyra "
                "gave your account"
            )
        return self.config.rcs_base_url + path.format(sid=quote(self.config.sid, safe=""), **values)

    def lookup_rcs(self, number: str) -> dict[str, Any]:
        """Single lookup of one E.164 number; returns Kaleyra's ``data`` object."""
        e164 = self._require_e164(number)
        url = self._rcs_url(api.RCS_SINGLE_PATH, number=quote(e164, safe=""))
        return self.transport.call("GET", url, shape=api.data_object)

    def lookup_rcs_bulk(self, numbers: Iterable[str]) -> list[dict[str, Any]]:
        """One bulk call for 100-500 distinct valid numbers (else ``ValueError``, before any request);
        returns Kaleyra's ``devices`` list."""
        distinct = list(dict.fromkeys(self._require_e164(n) for n in numbers))
        if not api.BULK_MIN <= len(distinct) <= api.BULK_MAX:
            raise ValueError(
                f"a bulk lookup takes {api.BULK_MIN}-{api.BULK_MAX} distinct valid numbers, "
                f"got {len(distinct)}; use lookup_rcs for fewer, lookup_rcs_many for any count"
            )
        return self._post_bulk(distinct)

    def _post_bulk(self, distinct: list[str]) -> list[dict[str, Any]]:
        """The bulk call itself, for numbers already normalized, distinct and 100-500 (a planned batch)."""
        return self.transport.call(
            "POST",
            self._rcs_url(api.RCS_BULK_PATH),
            json={"deviceAddresses": distinct},
            shape=api.devices_list,
            typed=api.BULK_ANSWER,
        )

    def check_soip_capability(
        self, numbers: Iterable[str], callback_profile_id: str | None = None
    ) -> dict[str, Any]:
        """Ask Kaleyra to check SMS-over-IP capability of ``numbers``; results arrive later through
        callbacks, to the URL of ``callback_profile_id`` (default: the connection's)."""
        return self.submit_soip(
            [self._require_e164(n) for n in numbers], self.soip_profile(callback_profile_id)
        )

    def soip_profile(self, callback_profile_id: str | None = None) -> str:
        """The callback profile given, else the connection's; ``ValueError`` when neither is set."""
        profile = callback_profile_id or self.config.callback_profile_id
        if not profile:
            raise ValueError("a SOIP capability check needs callback_profile_id, here or on the connection")
        return profile

    def submit_soip(self, e164s: list[str], callback_profile_id: str) -> dict[str, Any]:
        """The capability-check request itself, for numbers already normalized (a planned chunk)."""
        if not e164s:
            raise ValueError("a SOIP capability check needs at least one number")
        payload = {"number": [api.soip_number(n) for n in e164s], "callback_profile_id": callback_profile_id}
        url = self.config.soip_base_url + api.SOIP_CHECK_PATH.format(sid=quote(self.config.sid, safe=""))
        return self.transport.call("POST", url, json=payload, accept=(200, 202))

    def lookup_rcs_many(self, numbers: Iterable[str], cache: CacheMode = None) -> Iterator[RcsResult]:
        """Exactly one record per input, in input order, through the bulk operator's engine; ``cache`` as
        the bulk operator's (``self.last_cache``: the run's cache counts)."""
        run = self.last_cache = self.cache_run(cache)
        with Engine(self, cache=run) as engine:
            for block in engine.stream(input_blocks(numbers)):
                yield from block.records()

    def cache_run(
        self,
        cache: CacheMode = None,
        max_age_positive: timedelta | None = None,
        max_age_negative: timedelta | None = None,
    ) -> CacheRun | None:
        """The capability cache for one run, with the connection's ages unless given; ``None`` when off."""
        cfg = self.config
        return resolve(
            cache,
            url=cfg.cache_url,
            sid=cfg.sid,
            max_age_positive=cfg.cache_max_age_positive if max_age_positive is None else max_age_positive,
            max_age_negative=cfg.cache_max_age_negative if max_age_negative is None else max_age_negative,
        )

    def lookup_batches(self, batches: Iterable[list[str]]) -> Iterator[dict[str, Answer]]:
        """Run planned batches (100-500, or one number) concurrently; one ``{e164: Answer}`` per batch, in
        order. Calls in flight follow :attr:`in_flight`, at most twice that many answers wait to be taken;
        an auth failure stops everything at once."""
        control = self.in_flight
        ended = threading.Condition()  # notified as each call ends: no polling of every future
        counts = [0, 0]  # calls started, calls ended

        def end(_: Future[Any]) -> None:
            with ended:
                counts[1] += 1
                ended.notify()

        with ThreadPoolExecutor(max_workers=control.cap, thread_name_prefix="kaleyra") as pool:
            pending: deque[Future[dict[str, Answer]]] = deque()
            try:
                for batch in batches:
                    while True:
                        while pending and pending[0].done():
                            yield pending.popleft().result()
                        if len(pending) >= 2 * control.limit:
                            yield pending.popleft().result()
                            continue
                        with ended:
                            if counts[0] - counts[1] < control.limit:
                                break
                            ended.wait(0.05)  # the limit moves too
                    pending.append(pool.submit(self._answer_batch, batch))
                    counts[0] += 1
                    pending[-1].add_done_callback(end)
                while pending:
                    yield pending.popleft().result()
            finally:
                for future in pending:
                    future.cancel()

    def _answer_batch(self, batch: list[str], retry_missing: bool = True) -> dict[str, Answer]:
        if len(batch) < api.BULK_MIN:
            return {number: self._answer_single(number) for number in batch}
        try:
            devices = self._post_bulk(batch)  # planned batches are normalized already
        except KaleyraAuthError:
            raise
        except KaleyraApiError as exc:
            self.log.warning("Bulk lookup of %s numbers failed: %s", len(batch), exc)
            return {number: failed(str(exc)) for number in batch}
        answers, unasked = answers_by_number(batch, devices)
        if unasked:
            self.log.warning(
                "Kaleyra's bulk answer held %s numbers that were not asked for; ignored", unasked
            )
        if len(answers) < len(batch):  # (answers hold asked numbers only)
            missing = [number for number in batch if number not in answers]
            self.log.warning("Kaleyra's bulk answer left out %s of %s numbers", len(missing), len(batch))
            if retry_missing:
                for sub in plan_batches(missing):
                    answers.update(self._answer_batch(sub, retry_missing=False))
            else:
                answers.update({n: failed("left out of Kaleyra's bulk answer twice") for n in missing})
        return answers

    def _answer_single(self, number: str) -> Answer:
        try:
            return answer_from_device(self.lookup_rcs(number))
        except KaleyraAuthError:
            raise
        except KaleyraApiError as exc:
            self.log.warning("Lookup of %s failed: %s", mask(number), exc)
            return failed(str(exc))

    def _require_e164(self, number: str) -> str:
        norm = normalize(number, self.config.default_region)
        if norm.e164 is None:
            raise ValueError(f"not a valid phone number ({norm.reason}): {mask(str(number))}")
        return norm.e164

    def test_connection(self) -> tuple[bool, str]:
        """One single lookup, not retried; success only when a well-formed Kaleyra answer came. Never raises."""
        try:
            cfg = self.config
            # a valid number (+14155552671): the answer does not matter, the auth does
            url = self._rcs_url(api.RCS_SINGLE_PATH, number="%2B14155552671")
            device = self._new_transport(probe=True).call("GET", url, shape=api.data_object)
        except KaleyraApiError as exc:
            return False, connection_problem(exc, cfg.rcs_base_url)
        except Exception as exc:  # (a connection that cannot even be read) the UI shows the message
            return False, f"{type(exc).__name__}: {exc}"
        if answer_from_device(device).status != api.FAILED:
            return True, "Connection to Kaleyra works"
        return False, f"{cfg.rcs_base_url} answered a lookup without a readable rcsEnabled: is it Kaleyra?"


def _masked(config: KaleyraConfig) -> KaleyraConfig:
    """Hand the connection's secrets (and the passwords in its store URLs), only them, to Airflow's masker."""
    from airflow.sdk.log import mask_secret  # (Airflow 3.1+, as airflow.sdk.BaseHook)
    from sqlalchemy.engine import make_url

    secrets = [config.api_key, config.callback_secret, config.callback_client_secret]
    for url in filter(None, (config.callback_store_url, config.cache_url)):
        try:
            secrets.append(make_url(url).password)
        except Exception:  # an unreadable URL fails later, with the store's own message
            pass
    for secret in filter(None, secrets):
        mask_secret(str(secret))
    return config
