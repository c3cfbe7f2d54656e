"""Before going parallel: ask the origins for byte 0, to learn the file and whether Range works."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import httpx

from fetcher.http.exchange import (
    Identity,
    NotSatisfiable,
    PreconditionFailed,
    open_response,
    read_answer,
)
from fetcher.http.retry import OriginRefused, Retryable, RetryPolicy, transport_errors_retryable
from fetcher.http.target import Target

log = logging.getLogger("model-fetch")


@dataclass(frozen=True)
class Probe:
    identity: Identity
    ranges: bool
    origin: int  # index of the origin that answered


# Rounds of probing after the first, when no origin answered but some failed transiently.
PROBE_RETRIES = 3


class _NoProbe(Exception):
    """This origin's answer to the probe settles nothing for parallel fetching; not retried."""


def probe(
    targets: list[Target], client: httpx.Client, policy: RetryPolicy, stop: threading.Event
) -> Probe | None:
    """Ask the origins for byte 0: the file's identity and whether Range works.

    Each origin in turn, the first answer wins. When none answered and some failed in a way
    worth another try (5xx, 408, 429, a connection error or timeout), the round is asked again
    after the retry policy's backoff (or the Retry-After asked for), up to PROBE_RETRIES times.
    None when no origin answered: the streaming path then retries and reports each origin.
    """
    why: dict[int, str] = {}
    settled: set[int] = set()  # origins whose answer is final: no use asking them again
    attempts = 1 + min(PROBE_RETRIES, policy.retries)
    for attempt in range(1, attempts + 1):
        retryable: dict[int, Retryable] = {}
        for index, target in enumerate(targets):
            if index in settled:
                continue
            try:
                return _probe_one(target, client, index, policy.read_timeout)
            except Retryable as error:
                retryable[index] = error
                why[index] = str(error)
            except (_NoProbe, OriginRefused) as error:
                settled.add(index)
                why[index] = str(error)
        if not retryable or attempt == attempts:
            break
        hints = [e.retry_after for e in retryable.values() if e.retry_after is not None]
        wait = max(hints) if hints else policy.backoff(attempt)
        if wait > policy.max_wait:
            break  # a long pause asked for: the streaming path knows how to wait for it
        log.info(
            "no origin answered the range probe (%s); asking again in %.1fs (%d/%d)",
            "; ".join(f"{targets[i].shown}: {e}" for i, e in retryable.items()),
            wait, attempt, attempts - 1,
        )  # fmt: skip
        if stop.wait(wait):
            return None
    if not stop.is_set():
        log.warning(
            "no origin answered the range probe (%s): fetching over one connection",
            "; ".join(f"{targets[i].shown}: {reason}" for i, reason in sorted(why.items())),
        )
    return None


def _probe_one(target: Target, client: httpx.Client, index: int, head_budget: float) -> Probe:
    with (
        transport_errors_retryable(),
        open_response(client, target, {"Range": "bytes=0-0"}, head_budget) as response,
    ):
        try:
            served = read_answer(response, target, first=0, last=0)
        except (NotSatisfiable, PreconditionFailed) as error:
            raise _NoProbe(f"HTTP {response.status_code} ({error or 'precondition'})") from None
        except Retryable as error:
            if response.status_code == 206:  # a 206 that does not answer: settles nothing
                raise _NoProbe(f"HTTP 206 with {error}") from None
            raise
        return Probe(served.identity, served.status == 206 and served.identity.length is not None,
                     index)  # fmt: skip
