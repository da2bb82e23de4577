"""How a worker takes a stop: at once outside training; while a trial trains, a pause at its next step boundary
(the engine checkpoints there), with a grace alarm and a second stop as the ways out (issue 21: preemption)."""

import signal

import pytest

from ablations.sweep.stops import ECHO_S, PAUSE_GRACE_S, Stop, Stops


def test_outside_training_a_stop_is_raised_at_once():
    stops = Stops()
    with pytest.raises(Stop, match="SIGTERM"):
        stops.handler(signal.SIGTERM, None)


def test_while_training_the_first_stop_asks_for_a_pause_and_arms_the_grace_alarm():
    stops = Stops()
    try:
        with stops.train():
            stops.handler(signal.SIGTERM, None)  # no raise: the engine pauses at its next step
            assert stops.pausing == "SIGTERM"
            assert 0 < signal.alarm(PAUSE_GRACE_S) <= PAUSE_GRACE_S  # armed (re-armed here to read it)
            with pytest.raises(Stop, match="SIGTERM"):
                stops.handler(signal.SIGINT, None)  # a second stop: at once, named by the first
            with pytest.raises(Stop, match="SIGTERM"):
                stops.handler(signal.SIGALRM, None)  # the grace ran out: at once
        assert signal.alarm(0) == 0  # leaving training disarms the alarm
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def test_a_held_stop_waits_for_the_release_even_while_training():
    stops = Stops()
    stops.hold()
    stops.handler(signal.SIGTERM, None)
    with pytest.raises(Stop, match="SIGTERM"):
        stops.release()


def test_each_training_starts_without_the_last_ones_pause():
    stops = Stops()
    try:
        with stops.train():
            stops.handler(signal.SIGTERM, None)
        with stops.train():
            assert stops.pausing is None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def test_the_schedulers_sigterm_right_after_the_tasks_sigusr2_is_the_same_stop():
    """In a Slurm task the task relays a stop to its workers as SIGUSR2 while the scheduler's own SIGTERM reaches
    them too, in either order: the pair is one stop (found by a preempted DDP group that lost its mid-epoch pause)."""
    stops = Stops()
    try:
        with stops.train():
            stops.handler(signal.SIGUSR2, None)
            stops.handler(signal.SIGTERM, None)  # no raise: the pause goes on
            assert stops.pausing == "SIGUSR2" and not stops.stopped
            stops.paused_at -= 2 * ECHO_S
            with pytest.raises(Stop, match="SIGUSR2"):
                stops.handler(signal.SIGTERM, None)  # a SIGTERM later on: a second stop, at once
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
