"""The collector pause (resilience.infra.gcpause) is scoped and counted: the collector is off
inside, back on after the last of nested or concurrent pauses, and left off if it was off."""

from __future__ import annotations

import gc
import threading

import pytest

from resilience.infra.gcpause import collector_paused


def test_the_collector_is_off_inside_and_back_after_the_last_pause() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled(), "the outer pause still runs"
    assert gc.isenabled()


def test_an_error_inside_still_brings_it_back() -> None:
    with pytest.raises(ValueError), collector_paused():
        raise ValueError("the body's error")
    assert gc.isenabled()


def test_concurrent_pauses_end_with_the_last_one() -> None:
    inside, leave = threading.Event(), threading.Event()

    def other() -> None:
        with collector_paused():
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    assert inside.wait(10)
    with collector_paused():
        pass
    assert not gc.isenabled(), "the other thread's pause still runs"
    leave.set()
    thread.join(10)
    assert gc.isenabled()


def test_a_collector_off_before_stays_off() -> None:
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_as_a_decorator_each_call_pauses_and_resumes() -> None:
    @collector_paused()
    def inside() -> bool:
        return gc.isenabled()

    assert inside() is False and inside() is False
    assert gc.isenabled()
