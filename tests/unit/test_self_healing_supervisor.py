"""The supervisor's decisions without real services: restart what died, back off on failed
starts (capped), leave alone what was stopped on purpose, find start functions by registry."""

import itertools
import json
import subprocess
import sys

import pytest

from cluster import infra
from cluster.settings import Settings
from cluster.supervisor import Supervisor, read_status


@pytest.fixture()
def settings(tmp_path):
    s = Settings(var_dir=tmp_path)
    infra.ensure_dirs(s)
    return s


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture()
def live():
    procs = []

    def spawn() -> int:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        procs.append(proc)
        return proc.pid

    yield spawn
    for proc in procs:
        proc.kill()
        proc.wait()


def _fake_service(monkeypatch, settings, start):
    monkeypatch.setitem(infra.SUPERVISED, "fake", start)


def test_a_dead_service_is_restarted_and_a_live_one_left_alone(monkeypatch, settings, live):
    calls = []

    def start(s: Settings) -> str:
        calls.append(1)
        infra._record(s, "fake", [live()])
        return "fake://here"

    _fake_service(monkeypatch, settings, start)
    infra._record(settings, "fake", [live()])
    sup = Supervisor(settings)
    assert sup.check(now=0.0) == [] and calls == []
    infra._record(settings, "fake", [_dead_pid()])
    assert sup.check(now=1.0) == ["fake"] and calls == [1]
    assert sup.check(now=2.0) == [] and calls == [1]
    status = read_status(settings)["fake"]
    assert status["restarts"] == 1 and status["last_error"] is None


def test_failed_starts_back_off_exponentially_up_to_the_cap(monkeypatch, settings, live):
    attempts: list[float] = []
    clock = {"now": 0.0}

    def start(s: Settings) -> str:
        attempts.append(clock["now"])
        if len(attempts) < 6:
            raise OSError("port busy")
        infra._record(s, "fake", [live()])
        return "fake://here"

    _fake_service(monkeypatch, settings, start)
    infra._record(settings, "fake", [_dead_pid()])
    sup = Supervisor(settings, backoff_s=1.0, max_backoff_s=4.0)
    while clock["now"] < 30 and len(attempts) < 6:
        sup.check(now=clock["now"])
        clock["now"] += 0.25
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert read_status(settings)["fake"]["restarts"] == 1


def test_a_start_that_leaves_no_live_process_counts_as_failed(monkeypatch, settings):
    dead = _dead_pid()
    _fake_service(monkeypatch, settings, lambda s: "fake://here")
    infra._record(settings, "fake", [dead])
    sup = Supervisor(settings)
    assert sup.check(now=0.0) == []
    assert "not alive" in read_status(settings)["fake"]["last_error"]


def test_a_service_stopped_on_purpose_stays_down_until_started_again(monkeypatch, settings, live):
    calls = []
    _fake_service(monkeypatch, settings, lambda s: calls.append(1) or "fake://here")
    infra._record(settings, "fake", [_dead_pid()])
    infra.hold(settings, "fake")
    assert Supervisor(settings).check(now=0.0) == [] and calls == []
    infra._record(settings, "fake", [live()])  # what a start function does
    assert "fake" not in infra.read_held(settings)


def test_start_functions_are_found_from_what_recorded_the_service(settings):
    (settings.run_dir / "starters.json").write_text(
        json.dumps({"psp2": "start_localstripe", "ray": "start_ray", "evil": "_terminate"})
    )
    found = infra.supervised(settings)
    assert found["psp2"] is infra.start_localstripe
    assert "ray" not in found and "evil" not in found
    assert found["postgres"] is infra.start_postgres


def test_a_new_start_function_is_supervised_without_any_registration(monkeypatch, settings, live):
    """What another helper adds to cluster/infra.py: a start_* that records its pids."""
    source = (
        "def start_newsvc(settings, pid=None):\n"
        "    _record(settings, 'newsvc', [pid])\n"
        "    return 'newsvc://127.0.0.1:1'\n"
    )
    namespace: dict = {}
    exec(compile(source, infra.__file__, "exec"), vars(infra), namespace)
    monkeypatch.setattr(infra, "start_newsvc", namespace["start_newsvc"], raising=False)
    infra.start_newsvc(settings, _dead_pid())
    assert infra.read_starters(settings)["newsvc"] == "start_newsvc"
    assert infra.supervised(settings)["newsvc"] is infra.start_newsvc
    assert not infra._is_starter("start_ray")  # needs more than settings
    assert not infra._is_starter("start_services")
