"""The fast reliability scenarios of loadtests/reliability.py, in CI: each starts the real service
(`python -m service`: embedded Redis, default model) in a subprocess and breaks something.
The slower ones (Redis outage under load, 3x overload, fuzzing at a large budget) run from the script;
their figures are in docs/operations.md."""

import signal

import pytest

from loadtests import reliability


@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGTERM])
def test_engine_death_makes_the_service_unready_then_exit(tmp_path, stop_signal):
    figures = reliability.engine_failure(tmp_path, stop_signal)
    assert figures["exit_code"] == 3 and figures["unready_after_s"] < 5
    assert set(figures["statuses_from_the_kill"]) <= {200, 429, 503}  # a search the stopping engine aborted was a 500


def test_sigterm_lets_in_flight_requests_finish(tmp_path):
    figures = reliability.shutdown(tmp_path)
    assert figures["in_flight_answered_200"] == figures["in_flight"] == 16
    assert figures["new_request_after_sigterm"] in (-1, 503)


def test_first_start_builds_the_kernel_before_ready_and_answers_at_once(tmp_path):
    figures = reliability.first_start(tmp_path, first_request_bound_s=None)  # timing: the scenario, not CI
    assert figures["kernel_built_before_ready"] and figures["first_status"] == 200 and figures["says_where"]


def test_no_keys_on_a_network_address_refuses_to_start(tmp_path):
    figures = reliability.open_on_network(tmp_path)
    assert figures["exit_code"] == 1 and figures["says_why"]


def test_a_second_main_job_exits_saying_what_is_taken(tmp_path):
    figures = reliability.second_main_job(tmp_path)
    assert all(figures[name]["exit_code"] == 1 and figures[name]["says_why"]
               for name in ("http_port", "redis_port", "redis_folder"))
    assert figures["keys_written_to_the_first_redis"] == 0


def test_ctrl_c_while_starting_exits_as_ctrl_c_and_leaves_nothing(tmp_path):
    figures = reliability.interrupted_start(tmp_path)
    assert all(figures[moment]["exit_code"] == 130 and figures[moment]["left_behind"] == 0
               for moment in ("engine_started", "warming_up"))
    assert figures["warming_up"]["warm_up_given_up"] and not figures["warming_up"]["warm_up_finished"]


def test_replicas_share_nothing_but_redis(tmp_path):
    figures = reliability.two_replicas(tmp_path)
    assert figures["history_length_at_other_replica"] == 2


def test_a_killed_main_job_leaves_no_process_behind(tmp_path):
    figures = reliability.main_job_killed(tmp_path)
    assert not figures["left_after_bound"] and figures["history_after_restart"] == 1
