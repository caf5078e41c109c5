"""Explanations of concurrent requests share model calls (``container.endpoint.app._SharedCalls``): each
request still gets exactly the entries it would get alone, one request's bad records fail only that
request, and a model that gives no answer fails the shared call once, not once per request. The fitted
online explainer is real; its model is an in-process function whose scores of a row do not depend on the
rows beside it (the property that makes sharing exact), held on its first call so that the others queue."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from analyzer.explain.online import OnlineShapSettings, fit_online_explainer
from analyzer.predict import ModelTransportError
from container.endpoint.app import _SharedCalls, shared_call_records
from container.endpoint.config import ExplainerSettings, InferenceSettings

N_FEATURES = 5


def _model(rows: np.ndarray) -> np.ndarray:
    """Two outputs computed row by row (elementwise): interactions, so that every coalition counts."""
    x = np.asarray(rows, dtype=float)
    first = np.tanh(x[:, 0] * x[:, 1] + 0.5 * x[:, 2]) + np.sin(x[:, 3]) * x[:, 4]
    return np.column_stack([first, np.exp(-x[:, 0] ** 2) * x[:, 2]])


class HeldModel:
    """The model, counting its calls; the first call waits until released (then no call waits)."""

    def __init__(self, fail: Callable[[], Exception] | None = None):
        self.calls: list[int] = []  # rows per call
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail = fail
        self.live = False

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        if not self.live:  # fitting: the baseline rows
            return _model(rows)
        self.calls.append(len(rows))
        self.entered.set()
        assert self.release.wait(30), "the test never released the model"
        if self.fail is not None and len(self.calls) > 1:
            raise self.fail()
        return _model(rows)


def _until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def _run_held(model: HeldModel, shared: _SharedCalls, requests: list[np.ndarray]) -> list[object]:
    """The first request calls the model and is held there; the others queue behind it; then all go on.
    Each request's entries, or the exception it raised."""
    results: list[object] = [None] * len(requests)

    def call(i: int) -> None:
        try:
            results[i] = shared.explain(requests[i])
        except Exception as error:  # noqa: BLE001 -- compared by the test
            results[i] = error

    threads = [threading.Thread(target=call, args=(0,))]
    threads[0].start()
    assert model.entered.wait(10)
    threads += [threading.Thread(target=call, args=(i,)) for i in range(1, len(requests))]
    for thread in threads[1:]:
        thread.start()
    _until(lambda: len(shared._queue) == len(requests) - 1)
    model.release.set()
    for thread in threads:
        thread.join(30)
    return results


def _explainer(model: HeldModel):
    baseline = np.array([[0.1, -0.2, 0.3, 0.0, 0.5]])
    explainer = fit_online_explainer(baseline, model, OnlineShapSettings(seed=4))
    model.live = True
    return explainer


def test_queued_requests_share_one_model_call_and_get_what_they_would_get_alone():
    model = HeldModel()
    explainer = _explainer(model)
    rng = np.random.default_rng(2)
    requests = [rng.normal(size=(n, N_FEATURES)) for n in (1, 1, 2, 1, 3)]
    shared = _SharedCalls(explainer.explain, slots=1, max_records=100)
    results = _run_held(model, shared, requests)
    rows = explainer.tabular.rows_per_record
    # the first request alone, then the four queued behind it in one call
    assert model.calls == [rows, rows * (1 + 2 + 1 + 3)]
    model.calls.clear()
    for request, entries in zip(requests, results, strict=True):
        assert entries == explainer.explain(request)  # exactly: the same floats, the same document
        assert len(entries) == len(request)


def test_a_shared_call_takes_no_more_records_than_its_cap():
    model = HeldModel()
    explainer = _explainer(model)
    requests = [np.full((1, N_FEATURES), float(i)) for i in range(5)]
    shared = _SharedCalls(explainer.explain, slots=1, max_records=2)
    results = _run_held(model, shared, requests)
    rows = explainer.tabular.rows_per_record
    assert model.calls == [rows, 2 * rows, 2 * rows]
    assert all(len(entries) == 1 for entries in results)


def test_records_that_do_not_fit_fail_their_own_request_only():
    model = HeldModel()
    explainer = _explainer(model)
    rng = np.random.default_rng(3)
    requests = [rng.normal(size=(1, N_FEATURES)), rng.normal(size=(1, N_FEATURES)),
                rng.normal(size=(1, N_FEATURES + 1)), rng.normal(size=(2, N_FEATURES))]
    shared = _SharedCalls(explainer.explain, slots=1, max_records=100)
    results = _run_held(model, shared, requests)
    assert isinstance(results[2], ValueError) and "columns" in str(results[2])
    for i in (0, 1, 3):
        assert results[i] == explainer.explain(requests[i])


def test_no_answer_from_the_model_fails_each_request_of_the_shared_call_without_a_retry_each():
    model = HeldModel(fail=lambda: ModelTransportError("no answer within 1 s"))
    explainer = _explainer(model)
    requests = [np.full((1, N_FEATURES), float(i)) for i in range(4)]
    shared = _SharedCalls(explainer.explain, slots=1, max_records=100)
    results = _run_held(model, shared, requests)
    assert not isinstance(results[0], Exception)  # the first call answered
    assert all(isinstance(result, ModelTransportError) for result in results[1:])
    assert len(model.calls) == 2  # the shared call, once


@pytest.mark.parametrize("slots", [1, 2])
def test_many_threads_at_once_all_get_their_own_entries(slots: int):
    calls: list[int] = []
    lock = threading.Lock()

    def counted(rows: np.ndarray) -> np.ndarray:
        with lock:
            calls.append(len(rows))
        return _model(rows)

    explainer = fit_online_explainer(np.zeros((1, N_FEATURES)), counted, OnlineShapSettings(seed=1))
    calls.clear()
    shared = _SharedCalls(explainer.explain, slots=slots, max_records=4)
    rng = np.random.default_rng(5)
    requests = [rng.normal(size=(int(rng.integers(1, 3)), N_FEATURES)) for _ in range(24)]
    results: list[object] = [None] * len(requests)

    def call(i: int) -> None:
        results[i] = shared.explain(requests[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(calls) == sum(len(r) for r in requests) * explainer.tabular.rows_per_record
    assert not shared._queue and shared._running == 0
    for request, entries in zip(requests, results, strict=True):
        assert entries == explainer.explain(request)


def test_two_free_slots_are_both_taken_by_the_requests_queued():
    """Both calls of two slots end together while two requests wait: the first one queued takes a slot and
    hands the other free slot on to the next (each waiting request sleeps on its own event)."""
    state = threading.Condition()
    in_flight = {1: 0, 2: 0}  # calls in the model now, by phase (the first two calls, the next two)
    peaks: list[int] = []  # the phase's in-flight count each call saw once it had company, or after 5 s
    release_first = threading.Event()
    live = False

    def model(rows: np.ndarray) -> np.ndarray:
        if not live:
            return _model(rows)
        with state:
            phase = 2 if release_first.is_set() else 1
            in_flight[phase] += 1
            state.notify_all()
            state.wait_for(lambda: in_flight[phase] >= 2, timeout=5)
            peaks.append(in_flight[phase])
        if phase == 1:  # held until the test lets both end together
            assert release_first.wait(30)
        return _model(rows)

    explainer = fit_online_explainer(np.zeros((1, N_FEATURES)), model, OnlineShapSettings(seed=2))
    live = True
    shared = _SharedCalls(explainer.explain, slots=2, max_records=1)
    requests = [np.full((1, N_FEATURES), float(i)) for i in range(4)]
    threads = [threading.Thread(target=shared.explain, args=(request,)) for request in requests]
    for thread in threads[:2]:
        thread.start()
    _until(lambda: len(peaks) == 2)  # both slots taken, both calls in the model
    for thread in threads[2:]:
        thread.start()
    _until(lambda: len(shared._queue) == 2)
    release_first.set()
    for thread in threads:
        thread.join(30)
    assert peaks == [2, 2, 2, 2]  # the two queued requests ran side by side too
    assert not shared._queue and shared._running == 0


@pytest.mark.parametrize(("payload_mb", "max_record_count", "expected"),
                         [(6, None, 23), (1, None, 3), (25, None, 48), (6, 10_000, 4), (6, 1_000, 1)])
def test_a_shared_call_fits_one_model_request(payload_mb, max_record_count, expected):
    """14 features, 2,077 rows a record: a shared call's npy rows (8 bytes a value) fit MaxPayloadInMB and
    MaxRecordCount, within the 100,000 rows of a group; at least one record."""
    inference = InferenceSettings(max_payload_mb=payload_mb, max_record_count=max_record_count)
    settings = ExplainerSettings("text/csv", "0", None, inference)
    records = shared_call_records(settings, 2077, 14)
    assert records == expected
    rows = records * 2077
    assert rows * 14 * 8 <= payload_mb * 1024 * 1024 and (max_record_count is None or rows <= max_record_count
                                                           or records == 1)
