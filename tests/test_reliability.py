"""Issue 34: sweeps that never lose or misreport results. One section per numbered case:
concurrent sweeps (lock), Ctrl-C (interrupts), odd names, full disks, train's metrics.json,
budgets, sweep names outside --storage, data outside its folder, spaces --check and --set."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from ray_xray.cli import run
from ray_xray.tune import lock

REPO = Path(__file__).resolve().parent.parent
ODD = "a b%20c?#'\"é"  # a space, a %-escape, ?, #, both quotes, non-ASCII


def one_error_line(stderr: str) -> str:
    """The stderr's only `error:` line, asserting there is exactly one and no traceback."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def run_main(main, argv, capsys) -> tuple[int, str]:
    """cli.run(main, argv) in this process: (exit code, stderr)."""
    with pytest.raises(SystemExit) as exc:
        run(main, argv)
    return exc.value.code, capsys.readouterr().err


# 1. One sweep folder, one owner ----------------------------------------------------------------


def live_owner(path: Path, host: str | None = None) -> subprocess.Popen:
    """A live process on this host (or `host`) recorded as the owner of lock file `path`."""
    proc = subprocess.Popen(["sleep", "60"])
    owner = {"host": host or socket.gethostname(), "pid": proc.pid}
    owner["started"] = lock._start_time(proc.pid)
    path.write_text(json.dumps(owner))
    return proc


def test_a_live_owner_is_named_and_a_dead_one_is_reclaimed(tmp_path, capsys):
    folder = tmp_path / "sweep"
    folder.mkdir()
    proc = live_owner(folder / lock.LOCK_FILE)
    try:
        with pytest.raises(lock.SweepLocked, match=f"in use by another sweep \\(pid {proc.pid} on"):
            lock.acquire(folder)
    finally:
        proc.kill()
        proc.wait()
    path = lock.acquire(folder)  # its owner is gone: taken over, saying so
    assert "is gone; taking it over" in capsys.readouterr().err
    assert json.loads(path.read_text())["pid"] == os.getpid()
    with pytest.raises(lock.SweepLocked):  # held: not even this process takes it twice
        lock.acquire(folder)
    lock.release(path)
    assert not path.exists()


def test_sweeps_starting_together_get_one_owner(tmp_path):
    """Four processes take one folder's lock at once: exactly one holds it (and keeps it,
    alive, until every other has answered: a dead owner's lock would be reclaimed)."""
    code = (
        "import sys; from ray_xray.tune.lock import SweepLocked, acquire\n"
        "try:\n    acquire(sys.argv[1]); print('won', flush=True); sys.stdin.read()\n"
        "except SweepLocked:\n    print('lost', flush=True)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "sweep")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for _ in range(4)
    ]
    try:
        outs = sorted(p.stdout.readline().strip() for p in procs)
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=60)
    assert outs == ["lost", "lost", "lost", "won"]


def test_a_lock_from_another_host_is_never_reclaimed(tmp_path):
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / lock.LOCK_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    with pytest.raises(lock.SweepLocked, match="pid 1 on elsewhere.*delete"):
        lock.acquire(folder)


def test_a_second_sweep_of_one_name_is_refused_in_one_line(tmp_path, capsys):
    """Case 1: both sweeps exited 0 into one folder; now the second is refused before any data
    is read or Ray starts, naming the first, and leaves the folder as it was. In-process, as
    tests/test_tune.py's bad-input cases (the console script's own path)."""
    from ray_xray.tune.__main__ import main

    exp = tmp_path / "runs" / "same"
    exp.mkdir(parents=True)
    proc = live_owner(exp / lock.LOCK_FILE)
    try:
        before = sorted(exp.iterdir())
        argv = ["--space", "cnn", "--smoke-test", "--no-ensemble"]
        code, err = run_main(
            main, [*argv, "--storage", str(tmp_path / "runs"), "--name", "same"], capsys
        )
    finally:
        proc.kill()
        proc.wait()
    assert code == 2, err
    line = one_error_line(err)
    assert f"{exp} is in use by another sweep (pid {proc.pid} on {socket.gethostname()}" in line
    assert sorted(exp.iterdir()) == before


# 2. Interrupts are interrupts (and 3: odd names, end to end) -----------------------------------


def test_sigterm_outside_fit_raises_interrupted_with_143():
    from ray_xray.tune.interrupt import Interrupted, SignalGuard

    with pytest.raises(Interrupted) as exc, SignalGuard("resume with X"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert exc.value.exit_code == 143
    assert str(exc.value) == "interrupted (SIGTERM): nothing was marked finished; resume with X"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_a_signal_inside_fit_goes_to_tunes_stop_then_check_raises():
    from ray_xray.tune.interrupt import Interrupted, SignalGuard

    stopped = []
    old = signal.signal(signal.SIGUSR1, lambda s, f: stopped.append(s))  # as Tune installs it
    try:
        with SignalGuard("resume") as guard:
            with guard.fitting():
                assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)
            assert stopped == [signal.SIGINT]  # handed to Tune: fit saves and returns
            with pytest.raises(Interrupted) as exc:
                guard.check()
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert exc.value.exit_code == 130
    assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ


def test_fit_takes_sigterm_back_from_ray():
    """ray.init installs Ray's C++ SIGTERM handler in the driver, which aborted the sweep
    (exit 134, a core dump's trace); fitting() takes both signals back before Tune runs."""
    from ray_xray.tune.interrupt import SignalGuard

    with SignalGuard("x") as guard:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # what ray.init does, in effect
        with guard.fitting():
            assert signal.getsignal(signal.SIGTERM) == guard._handle
            assert signal.getsignal(signal.SIGINT) == guard._handle
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_sweep_in_another_thread_keeps_the_process_handlers():
    """signal.signal only works in the main thread: the Python API run from a worker thread
    must not fail on it (Tune then handles SIGINT itself, as before)."""
    import threading

    from ray_xray.tune.interrupt import SignalGuard

    seen = []

    def sweep():
        with SignalGuard("x") as guard, guard.fitting():
            seen.append(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER"))
        guard.check()
        seen.append("ok")

    before = signal.getsignal(signal.SIGINT)
    t = threading.Thread(target=sweep)
    t.start()
    t.join()
    assert seen == [None, "ok"] and signal.getsignal(signal.SIGINT) is before


def wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 400) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended ({proc.returncode}) first:\n{path.read_text()}")
        time.sleep(0.5)
    pytest.fail(f"no {text!r} after {timeout}s:\n{path.read_text()}")


@pytest.mark.slow_ray
def test_ctrl_c_leaves_a_resumable_sweep_and_the_same_command_finishes_it(tmp_path):
    """Case 2 (and 3 with real Ray): SIGINT to the process group after a trial finished exits
    130 with one line naming the command, writes no results; the same command resumes and
    finishes every trial. The storage and the name hold %, ?, #, quotes, spaces, non-ASCII:
    optuna.db is where it belongs, with every trial, none RUNNING."""
    storage, name = tmp_path / f"st {ODD}", f"n {ODD}"
    exp = storage / name
    cmd = [sys.executable, "-m", "ray_xray.tune", "--space", "cnn", "--smoke-test"]
    cmd += ["--trials", "4", "--set", "epochs=4", "--no-ensemble"]
    cmd += ["--storage", str(storage), "--name", name]
    log = tmp_path / "first.log"
    with log.open("w") as out:
        first = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True
        )
        try:
            wait_for(log, " done ", first)  # one trial finished, others to come
            os.killpg(first.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends
            assert first.wait(timeout=180) == 130, log.read_text()
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
    text = log.read_text()
    assert text.splitlines()[-1].startswith("interrupted (SIGINT): nothing was marked finished")
    assert "resume with the same command: python -m ray_xray.tune" in text
    assert "trials (0 failed)" not in text and "Tuner.restore" not in text
    assert not (exp / "results.parquet").exists() and not (exp / "best_model.pt").exists()
    assert not (exp / lock.LOCK_FILE).exists()

    again = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "found an interrupted sweep" in again.stderr
    table = pd.read_parquet(exp / "results.parquet")
    assert len(table) == 4 and set(table["status"]) <= {"TERMINATED", "ERROR"}

    import optuna

    from ray_xray.sweep_folder import study_url

    study = optuna.load_study(study_name=name, storage=study_url(exp / "optuna.db"))
    states = [t.state.name for t in study.trials]
    assert len(states) == 4 and "RUNNING" not in states
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.log", storage.name]


# 3. Any name a file system allows --------------------------------------------------------------


def test_study_url_opens_the_file_named_whatever_its_name(tmp_path):
    import optuna

    from ray_xray.sweep_folder import study_url

    db = tmp_path / ODD / "optuna.db"
    db.parent.mkdir()
    optuna.create_study(study_name=ODD, storage=study_url(db))
    assert db.is_file() and sorted(p.name for p in tmp_path.iterdir()) == [ODD]
    assert optuna.get_all_study_names(study_url(db)) == [ODD]


# 4. Full or read-only disks: one error line, exit 1 --------------------------------------------


def enospc(filename: str = "/full/metrics.json") -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)


def test_a_full_disk_is_one_error_line_and_exit_1(capsys):
    def main(argv):
        raise enospc()

    code, err = run_main(main, [], capsys)
    assert code == 1
    assert (
        err == "error: /full/metrics.json: cannot write: No space left on device (errno ENOSPC)\n"
    )


def test_sqlites_full_disk_inside_a_results_error_is_one_line(capsys):
    import sqlalchemy.exc

    from ray_xray.tune.results import ResultsError

    def main(argv):
        try:
            raise sqlalchemy.exc.OperationalError(
                "INSERT", {}, Exception("database or disk is full")
            )
        except Exception as exc:
            raise ResultsError("writing its results failed") from exc

    code, err = run_main(main, [], capsys)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("error: cannot write: database or disk is full")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
def test_json_to_a_full_disk_is_one_error_line():
    """predict/audit --json print to stdout: `> out.json` on a full disk (/dev/full)."""
    code = "from ray_xray.cli import run; run(lambda argv: print('[1, 2]'))"
    with open("/dev/full", "w") as full:
        r = subprocess.run(
            [sys.executable, "-c", code], stdout=full, stderr=subprocess.PIPE, text=True
        )
    assert r.returncode == 1
    assert r.stderr == "error: cannot write: No space left on device (errno ENOSPC)\n"


def test_tune_on_a_full_disk_at_start_leaves_no_sweep_folder(tmp_path, monkeypatch, capsys):
    from ray_xray.tune import __main__ as tune_main
    from ray_xray.tune import service

    def full(*a, **k):  # the first write of the sweep's data: the prepared cache
        raise enospc(str(tmp_path / "cache" / "x.parquet"))

    monkeypatch.setattr(service, "load_for_config", full)
    argv = ["--space", "cnn", "--smoke-test", "--storage", str(tmp_path / "runs"), "--name", "n"]
    code, err = run_main(tune_main.main, argv, capsys)
    assert code == 1 and "No space left on device" in one_error_line(err)
    assert list((tmp_path / "runs").iterdir()) == []  # no half-made sweep folder


def test_train_out_on_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    from ray_xray.train import __main__ as train_main
    from ray_xray.train import run as train_run

    def full(cfg, out, **kw):
        raise enospc(f"{out}/config.json")

    monkeypatch.setattr(train_run, "train_and_test", full)
    code, err = run_main(train_main.main, ["--model", "cnn", "--out", str(tmp_path)], capsys)
    assert code == 1
    assert one_error_line(err).endswith(
        "config.json: cannot write: No space left on device (errno ENOSPC)"
    )


def test_a_trial_that_hit_a_full_disk_ends_the_sweep_in_one_line(capsys):
    """Mid-sweep: a trial's checkpoint could not be written. No results are written (they
    would mark the sweep finished); one line says how many trials and how to go on."""
    from ray_xray.tune.checks import check_trial_disk_errors

    check_trial_disk_errors([RuntimeError("loss is nan")], "/runs/x", "rerun")  # not the disk
    err = RuntimeError("Trial raised: OSError: [Errno 28] No space left on device: '/runs/x/t'")

    def main(argv):
        check_trial_disk_errors([err, RuntimeError("other")], "/runs/x", "rerun it")

    code, out = run_main(main, [], capsys)
    assert code == 1
    assert out == (
        "error: /runs/x: cannot write: the disk is full or read-only: 1 trial(s) could not "
        "save a checkpoint; free space, then rerun it (errno ENOSPC)\n"
    )


def test_sqlite_full_mid_sweep_names_the_sweep_and_how_to_go_on(capsys):
    """Seen on a 2 MiB tmpfs: a trial's checkpoint failed, then optuna.db could not grow
    inside Tune's fit (sqlalchemy OperationalError)."""
    import sqlalchemy.exc

    from ray_xray.tune.checks import disk_full_in_sweep

    full = sqlalchemy.exc.OperationalError("INSERT", {}, Exception("database or disk is full"))
    assert disk_full_in_sweep(ValueError("bad"), "/runs/x", "rerun") is None

    def main(argv):
        raise disk_full_in_sweep(full, "/runs/x", "rerun it") from full

    code, out = run_main(main, [], capsys)
    assert code == 1 and out == (
        "error: /runs/x: cannot write: the disk is full or read-only; free space, then rerun it "
        "(errno ENOSPC)\n"
    )


def test_a_checkpoint_on_a_full_disk_is_enospc_naming_it(tmp_path, monkeypatch):
    """torch's zip writer says only "unexpected pos" when the disk fills (seen on a 2 MiB
    tmpfs); atomic_save turns that into ENOSPC naming the file, and leaves nothing behind."""
    import collections

    import torch

    from ray_xray import checkpoint

    def full_save(obj, f):
        Path(f).write_bytes(b"PK")  # the partial file torch leaves
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", full_save)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: usage(2 << 20, 2 << 20, 0))
    with pytest.raises(OSError) as exc:
        checkpoint.atomic_save({"w": 1}, tmp_path / "best_model.pt")
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(tmp_path / "best_model.pt")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: usage(2 << 30, 0, 2 << 30))
    with pytest.raises(RuntimeError, match="unexpected pos"):  # room left: not a full disk
        checkpoint.atomic_save({"w": 1}, tmp_path / "best_model.pt")


# 5. train's metrics.json is valid JSON ---------------------------------------------------------


def test_train_metrics_json_has_null_not_nan_and_absent_classes_null():
    from ray_xray.io import json_safe
    from ray_xray.train.run import absent_as_null

    report = {
        "test": {
            "auc": float("nan"),
            "recall": {"normal": 0.5, "tuberculosis": 0.0},
            "support": {"normal": 4, "tuberculosis": 0},
        }
    }
    text = json.dumps(json_safe(absent_as_null(report)))

    def refuse(const):
        raise ValueError(f"not JSON: {const}")

    parsed = json.loads(text, parse_constant=refuse)
    assert parsed["test"]["auc"] is None
    assert parsed["test"]["recall"] == {"normal": 0.5, "tuberculosis": None}
    assert report["test"]["recall"]["tuberculosis"] == 0.0  # the caller's report is unchanged


def test_train_console_says_n_a_for_what_is_undefined(tmp_path, monkeypatch, capsys):
    from ray_xray.train import __main__ as train_main
    from ray_xray.train import run as train_run

    test = {"accuracy": 0.5, "macro_f1": 0.4, "auc": float("nan")}
    test |= {"recall": {"normal": 0.5, "tb": 0.0}, "support": {"normal": 4, "tb": 0}}
    report = {"test": test, "best_epoch": 1, "wall_s": 1.0}
    monkeypatch.setattr(train_run, "train_and_test", lambda cfg, out, **kw: report)
    assert train_main.main(["--model", "cnn", "--out", str(tmp_path), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "AUC n/a  recall: normal 0.500, tb n/a" in out


# 6. Budgets: refused when bad, and said when they end the sweep --------------------------------


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_bad_budget_minutes_are_refused_in_one_line(value, capsys):
    from ray_xray.tune.__main__ import main

    code, err = run_main(main, ["--smoke-test", "--budget-minutes", value], capsys)
    assert code == 2 and "--budget-minutes must be" in one_error_line(err)


def test_the_budget_line_says_what_the_budget_ended():
    from ray_xray.tune.service import SweepOptions, budget_line

    opts = SweepOptions(budget_minutes=0.01, trials=4)
    rows = [{"status": "INCOMPLETE"}, {"status": "TERMINATED"}]
    assert budget_line(opts, rows, wall_s=2.0) == (
        "the --budget-minutes 0.01 limit ended the sweep: 1 trial(s) stopped unfinished, "
        "2 of 4 never started"
    )
    assert budget_line(opts, rows, wall_s=0.1) is None  # ended before the budget
    done = [{"status": "TERMINATED"}] * 4
    assert budget_line(opts, done, wall_s=2.0) is None  # every trial ran to its end
    assert budget_line(SweepOptions(trials=4), rows, wall_s=99.0) is None  # no budget


def test_running_trials_are_closed_when_the_sweep_ends(tmp_path):
    import optuna

    from ray_xray.sweep_folder import study_url
    from ray_xray.tune.study import close_running

    db = tmp_path / ODD / "optuna.db"
    db.parent.mkdir()
    study = optuna.create_study(study_name="s", storage=study_url(db))
    study.ask()  # as Tune leaves a trial the budget stopped
    study.tell(study.ask(), 0.5)
    assert close_running(db, "s", "budget") == 1
    trials = optuna.load_study(study_name="s", storage=study_url(db)).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[0].user_attrs == {"ended_by": "budget"}
    assert close_running(db, "s", "budget") == 0
    assert close_running(tmp_path / "none.db", "s", "budget") == 0


def test_the_summary_names_only_files_that_exist(capsys):
    from ray_xray.tune.results import print_ranked

    rows = [
        {
            "trial_id": "t1",
            "model": None,
            "status": "INCOMPLETE",
            "epochs": 0,
            "best_val_macro_f1": None,
            "error": "",
        }
    ]
    print_ranked(rows, "best_val_macro_f1", "max", "/x", 1.0, {}, ["results.parquet"], False)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.endswith(
        "Results: /x/results.parquet (no trial kept a checkpoint: no best model, no ensemble)"
    )
    assert "best_model.pt" not in last and "best_trials.json" not in last


# 7. A sweep name is one folder inside --storage ------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", ""])
def test_names_that_leave_the_storage_are_refused(name):
    from ray_xray.tune.checks import check_sweep_name

    with pytest.raises(ValueError, match="one folder inside --storage"):
        check_sweep_name(name)


def test_odd_names_are_accepted():
    from ray_xray.tune.checks import check_sweep_name

    assert check_sweep_name(ODD) == ODD


def test_name_dotdot_writes_nothing_outside_the_storage(tmp_path, capsys):
    from ray_xray.tune.__main__ import main

    argv = ["--space", "cnn", "--smoke-test", "--name", "../x"]
    code, err = run_main(main, [*argv, "--storage", str(tmp_path / "runs" / "sub")], capsys)
    assert code == 2 and "--name '../x'" in one_error_line(err)
    assert list(tmp_path.iterdir()) == []


# 8. Data stays inside its folder ---------------------------------------------------------------


def manifest(root: Path, rows: list[str]) -> Path:
    from conftest import grey_png

    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        grey_png(root / f"{split}.png")
    lines = ["file,label,split"] + [f"{s}.png,normal,{s}" for s in ("train", "val", "test")]
    (root / "manifest.csv").write_text("\n".join(lines + rows) + "\n")
    return root / "manifest.csv"


@pytest.mark.parametrize("how", ["relative", "absolute"])
def test_a_manifest_row_outside_its_folder_is_refused(tmp_path, how, monkeypatch):
    from conftest import grey_png

    from ray_xray.data import DataError
    from ray_xray.data.sources import read_manifest

    monkeypatch.delenv("RAY_XRAY_ALLOW_OUTSIDE_DATA", raising=False)
    outside = grey_png(tmp_path / "store.png")
    row = "../store.png" if how == "relative" else str(outside)
    csv = manifest(tmp_path / "d", [f"{row},normal,train"])
    with pytest.raises(DataError, match=r"manifest.csv:5: file .* is outside the data folder"):
        read_manifest(csv)
    monkeypatch.setenv("RAY_XRAY_ALLOW_OUTSIDE_DATA", "1")  # --allow-outside-data
    assert str(outside) in [it.path for it in read_manifest(csv)]


def test_a_link_out_of_the_data_folder_is_refused(tmp_path, monkeypatch):
    from conftest import grey_png, write_tree

    from ray_xray.data import DataError
    from ray_xray.data.sources import scan

    monkeypatch.delenv("RAY_XRAY_ALLOW_OUTSIDE_DATA", raising=False)
    root = write_tree(tmp_path / "data", per_class=1, size=16)
    (root / "train" / "normal" / "x.png").symlink_to(grey_png(tmp_path / "secret.png"))
    with pytest.raises(DataError, match=r"x.png \(a link\): .*secret.png is outside"):
        scan(root)
    inside = root / "train" / "normal" / "y.png"  # a link within the folder is fine
    inside.symlink_to(root / "val" / "normal" / "normal_0.png")
    (root / "train" / "normal" / "x.png").unlink()
    assert len(scan(root)[0]) == 10


def test_audit_refuses_etc_passwd_and_the_flag_allows_a_shared_store(tmp_path, monkeypatch, capsys):
    from conftest import grey_png

    from ray_xray.audit import main

    monkeypatch.setenv("RAY_XRAY_ALLOW_OUTSIDE_DATA", "")  # restored after the flag sets it
    grey_png(tmp_path / "store.png")
    csv = manifest(tmp_path / "d", ["../store.png,normal,train"])
    code, err = run_main(main, [str(csv.parent)], capsys)
    assert code == 2 and "--allow-outside-data" in one_error_line(err)
    code, err = run_main(main, [str(csv.parent), "--allow-outside-data", "--json"], capsys)
    assert code == 0, err
    monkeypatch.setenv("RAY_XRAY_ALLOW_OUTSIDE_DATA", "")
    manifest(csv.parent, ["../../../../../../../etc/passwd,normal,test"])
    code, err = run_main(main, [str(csv.parent)], capsys)
    assert code == 2 and "/etc/passwd is outside the data folder" in one_error_line(err)


# 9. spaces --check without smoke:, tune --set checked against the model ------------------------


def test_spaces_check_accepts_a_space_without_smoke(tmp_path, capsys):
    import yaml

    from ray_xray.spaces.cli import main
    from ray_xray.spaces.files import SPACES_DIR

    raw = yaml.safe_load((SPACES_DIR / "cnn.yaml").read_text())
    raw.pop("smoke")
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["--check", str(path)]) == 0
    assert capsys.readouterr().out == f"ok  {path}  (no smoke: block: --smoke-test cannot run it)\n"


def test_tune_set_is_checked_against_the_model_before_any_trial(tmp_path, capsys):
    from ray_xray.tune.__main__ import main

    argv = ["--space", "vit", "--smoke-test", "--set", "model.patch_size=7"]
    code, err = run_main(main, [*argv, "--storage", str(tmp_path / "runs")], capsys)
    assert code == 2
    line = one_error_line(err)
    assert line.startswith("error: --set model.patch_size=7: model vit at 32 px refuses it")
    assert "divisible by patch_size 7" in line
    assert list((tmp_path / "runs").iterdir()) == []


# A space file in the old names, and the body 7794f34 (before config.RENAMED_SETTINGS) saved
# for it in space.yaml (copied from a sweep that commit ran): its sha1 is in that sweep.json.
OLD_NAMED_SPACE = """fixed: {model: cnn, epochs: 1, img_size: 32, scheduler: onecycle, model.width: 8}
params:
  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
"""
BODY_BEFORE_RENAMES = """fixed:
  model: cnn
  epochs: 1
  img_size: 32
  scheduler: onecycle
  model.width: 8
params:
  lr: {type: float, low: 0.0001, high: 0.01, log: true}
"""


def test_a_sweep_started_before_the_setting_renames_still_resumes(tmp_path):
    """`scheduler` became `lr_scheduler`: the space a sweep recorded before the rename is the same
    space, so resuming it is allowed; a space that really differs is still refused."""
    import hashlib

    from ray_xray.spaces import load_space
    from ray_xray.tune.options import SweepOptions
    from ray_xray.tune.service import sweep_differences, sweep_identity

    path = tmp_path / "old.yaml"
    path.write_text(OLD_NAMED_SPACE)
    space = load_space(path)
    assert space.fixed["lr_scheduler"] == "onecycle"
    before = f"# search space 'old', from {path}\n" + BODY_BEFORE_RENAMES
    stored = {"space_name": "old", "space_sha1": hashlib.sha1(before.encode()).hexdigest()}
    opts = SweepOptions(space=str(path))
    new = sweep_identity(opts, space, None)
    assert new["space_sha1"] != stored["space_sha1"]  # today's text says lr_scheduler
    assert sweep_differences(stored, new) == []
    path.write_text(OLD_NAMED_SPACE.replace("1.0e-2", "1.0e-1"))  # a different space
    assert sweep_differences(stored, sweep_identity(opts, load_space(path), None)) == ["space"]
