"""Runs that queue: a publishing run that finds the date locked waits for it (bounded), and every
lock message names the run holding it as people find it (a Prefect flow run's name, id, URL)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from gmm_dask.errors import PublishConflictError
from gmm_dask.storage.io import TableStore

DATE = "2026-01-07"
HOLDER = (
    "Prefect flow run 'crimson-fox' (0b7d…, http://127.0.0.1:4200/runs/flow-run/0b7d), run 20261206T0301-ab"
)


def _hold(store: TableStore, held: threading.Event, release: threading.Event) -> threading.Thread:
    def run() -> None:
        with store.lock(DATE, owner=HOLDER):
            held.set()
            release.wait(120)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert held.wait(60)
    return t


def _wait_for_log(caplog, text: str) -> None:
    deadline = time.monotonic() + 60
    while not any(text in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, f"never logged {text!r}"
        time.sleep(0.05)


def test_a_run_that_finds_the_date_locked_waits_and_publishes_after_the_holder(tmp_path, caplog):
    store = TableStore(str(tmp_path / "out"))
    held, release, acquired = threading.Event(), threading.Event(), threading.Event()
    holder = _hold(store, held, release)

    def wait_then_publish() -> None:
        with store.lock(DATE, owner="run second", wait_seconds=120):
            acquired.set()

    caplog.set_level(logging.INFO, logger="gmm_dask.storage.io")
    waiter = threading.Thread(target=wait_then_publish, daemon=True)
    waiter.start()
    _wait_for_log(caplog, "waiting up to 120 s")
    msg = next(r.getMessage() for r in caplog.records if "waiting up to" in r.getMessage())
    assert "crimson-fox" in msg
    assert "http://127.0.0.1:4200/runs/flow-run/0b7d" in msg
    assert not acquired.is_set()  # the holder still holds it
    release.set()
    holder.join(60)
    assert acquired.wait(60)  # ...and the waiting run went on once it was free
    waiter.join(60)
    assert store.held_locks() == []


@pytest.mark.parametrize("wait", [0.0, 0.3])
def test_a_run_that_waited_long_enough_gives_up_naming_the_holder_and_the_key(tmp_path, wait):
    store = TableStore(str(tmp_path / "out"))
    held, release = threading.Event(), threading.Event()
    holder = _hold(store, held, release)
    try:
        with pytest.raises(PublishConflictError) as err, store.lock(DATE, wait_seconds=wait):
            pytest.fail("took a held lock")
    finally:
        release.set()
        holder.join(60)
    text = str(err.value)
    assert "'crimson-fox'" in text
    assert "http://127.0.0.1:4200/runs/flow-run/0b7d" in text
    assert "output.lock_wait_seconds" in text
    assert ("after waiting 0.3 s" in text) == (wait > 0)
    assert f"wrote nothing for {DATE}" in text


@pytest.mark.usefixtures("prefect_harness")
def test_a_flow_run_labels_its_locks_with_its_name_id_and_url(tmp_path):
    from flows._params import job_flow
    from gmm_dask.app.jobs.core import run_owner
    from gmm_dask.app.params import VacuumParams

    probe = job_flow(VacuumParams, name="probe", description="the lock owner a job in a flow run gets")(
        lambda p: run_owner("20261206T0301-ab")
    )
    state = probe(config=str(tmp_path / "job.yaml"), return_state=True)
    owner = state.result()
    run_id = str(state.state_details.flow_run_id)
    assert owner.startswith("Prefect flow run '")
    assert run_id in owner
    assert owner.endswith(", run 20261206T0301-ab")
