"""Failure isolation for the engine step: one request's error fails that
request only.

Per-request work (its stop check, detokenizing its output, absorbing its
tokens into the drafter) runs under `attempt`: an exception fails that
request. Batched work (the target forward, the drafter's proposals) cannot
be attributed directly, so `batched` runs the batch and, if it raises, runs
each request alone: those that still fail are failed, the others' results
are merged and the step goes on. Nothing was committed when the batch
failed (the scheduler applies a step only after the forward), so the rerun
is the same computation. When a batched stage fails for every request,
alone too, `max_barren_steps` steps in a row, the fault is the engine's,
not a request's: EngineStalledError, and the caller stops the engine.

Failing a request calls the engine's `drop` callback (abort in the
scheduler, which frees the KV, and forget per-request state) and records a
RequestFailure for the client to report (a 500 for that request).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

from engine.outputs import EngineStalledError, RequestFailedError

log = logging.getLogger("specserve.engine")

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class RequestFailure:
    """A request the engine failed, with where and why."""

    request_id: str
    stage: str
    error: BaseException

    def as_error(self) -> RequestFailedError:
        return RequestFailedError(self.request_id, self.stage, self.error)


class FailureIsolation:
    """Runs the parts of a step so that an error fails only the request it
    belongs to. `drop(request_id)` removes a failed request from the engine."""

    def __init__(self, drop: Callable[[str], None], max_barren_steps: int = 3):
        self._drop = drop
        self.max_barren_steps = max_barren_steps
        self._failures: dict[str, RequestFailure] = {}
        self._barren: dict[str, int] = {}  # stage -> consecutive all-failed batches

    def has_failed(self, request_id: str) -> bool:
        return request_id in self._failures

    def take_failures(self) -> list[RequestFailure]:
        """The failures since the last call (the client reports each)."""
        failures, self._failures = list(self._failures.values()), {}
        return failures

    def fail(self, request_id: str, stage: str, error: BaseException, drop: bool = True) -> None:
        """Fail one request; `drop=False` when its owner finishes it anyway
        (the scheduler, after a stop check that failed)."""
        log.error("request %s failed in %s; the other requests go on", request_id, stage,
                  exc_info=error)
        self._failures.setdefault(request_id, RequestFailure(request_id, stage, error))
        if drop:
            self._drop(request_id)

    def attempt(self, request_id: str, stage: str, action: Callable[..., Result],
                *args) -> tuple[bool, Result | None]:
        """Run per-request work; (False, None) if it raised (the request failed)."""
        try:
            return True, action(*args)
        except Exception as exc:  # noqa: BLE001 - any error of one request fails only it
            self.fail(request_id, stage, exc)
            return False, None

    def batched(self, stage: str, items: Sequence[Item], request_id: Callable[[Item], str],
                run: Callable[[Sequence[Item]], Result],
                merge: Callable[[list[Result]], Result]) -> Result:
        """`run(items)`; if it raises, `run([item])` for each, failing those
        that raise alone, and the merge of the others' results."""
        try:
            result = run(items)
        except Exception as batch_error:  # noqa: BLE001 - attributed below
            result = self._one_by_one(stage, items, request_id, run, merge, batch_error)
        else:
            self._barren[stage] = 0
        return result

    def _one_by_one(self, stage, items, request_id, run, merge, batch_error):
        log.warning("%s failed for a batch of %d requests (%r); running them one by one",
                    stage, len(items), batch_error)
        results = []
        for item in items:
            ok, result = self.attempt(request_id(item), stage, run, [item])
            if ok:
                results.append(result)
        if results or not items:
            self._barren[stage] = 0
        else:
            self._barren[stage] = self._barren.get(stage, 0) + 1
            if self._barren[stage] >= self.max_barren_steps:
                raise EngineStalledError(
                    f"{stage} failed for every request, alone too, {self._barren[stage]} "
                    f"steps in a row: {batch_error!r}") from batch_error
        return merge(results)
