"""One command-line grammar (issue #20, item 4): --set everywhere, help and defaults on every
flag, "did you mean", one-line value errors, new names with the old ones kept. In-process."""

import argparse
import dataclasses
import importlib
import json
import os
from pathlib import Path

import pytest

from ray_xray.__main__ import COMMANDS
from ray_xray.cli import HelpFormatter, run
from ray_xray.config import HELP, TrainConfig, parse_settings
from ray_xray.train import __main__ as train_cli
from ray_xray.tune import __main__ as tune_cli


def _parser_of(module: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser a command's main() builds (caught at parse_args; nothing runs)."""

    class Caught(Exception):
        pass

    seen = []

    def catch(self, *args, **kwargs):
        seen.append(self)
        raise Caught

    mod = importlib.import_module(module)
    if not hasattr(mod, "main"):
        mod = importlib.import_module(module + ".__main__")
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    with pytest.raises(Caught):
        mod.main(["x"])
    monkeypatch.undo()
    return seen[0]


def _parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


@pytest.mark.parametrize("module", [m for m, _ in COMMANDS.values()] + ["benchmarks"])
def test_every_flag_has_help_and_shows_its_default(module, monkeypatch):
    for parser in _parsers(_parser_of(module, monkeypatch)):
        assert issubclass(parser.formatter_class, HelpFormatter), parser.prog
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if action.help == argparse.SUPPRESS:  # an old spelling kept for one release
                continue
            name = "/".join(action.option_strings) or action.dest
            assert action.help, f"{parser.prog} {name}: no help"
            if action.default not in (None, False, "", []):
                assert "default" in formatter._get_help_string(action), f"{parser.prog} {name}"


def test_train_flags_are_generated_from_every_setting():
    parser = train_cli.build_parser()
    dests = {a.dest for a in parser._actions}
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"model_kwargs"}
    assert fields <= dests and fields <= set(HELP)
    help_text = parser.format_help()
    for flag in ("--lr-scheduler", "--num-workers", "--loader-workers", "--no-channels-last"):
        assert flag in help_text
    assert "--scheduler" not in help_text.replace("--lr-scheduler", "")  # old name: hidden


def _train_cfg(argv):
    return train_cli.config_from_args(train_cli.parse_args(argv))


def test_train_set_flags_and_old_names_agree():
    by_flags = _train_cfg(
        [
            "--epochs",
            "3",
            "--lr-scheduler",
            "cosine",
            "--num-workers",
            "2",
            "--loader-workers",
            "2",
            "--no-channels-last",
            "--class-weights",
            "--hp",
            "dropout=0.3",
        ]
    )
    by_set = _train_cfg(
        [
            "--set",
            "epochs=3",
            "--set",
            "lr_scheduler=cosine",
            "--set",
            "num_workers=2",
            "--set",
            "loader_workers=2",
            "--set",
            "channels_last=false",
            "--set",
            "class_weights=true",
            "--set",
            "model.dropout=0.3",
        ]
    )
    old = _train_cfg(
        [
            "--epochs",
            "3",
            "--scheduler",
            "cosine",
            "--workers",
            "2",
            "--loader-workers",
            "2",
            "--no-channels-last",
            "--class-weights",
            "--set",
            "model.dropout=0.3",
        ]
    )
    assert by_flags == by_set == old
    assert (by_set.lr_scheduler, by_set.num_workers, by_set.loader_workers) == ("cosine", 2, 2)
    assert by_set.model_kwargs == {"dropout": 0.3} and by_set.channels_last is False
    assert _train_cfg([]) == TrainConfig()  # nothing given: the dataclass defaults
    smoke = _train_cfg(["--smoke-test", "--set", "epochs=5"])
    assert (smoke.epochs, smoke.img_size, smoke.limit_per_split) == (2, 32, 64)


def _one_line_error(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        run(main, argv)
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith("note:")]
    assert exc.value.code == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


BAD_SETTINGS = [
    (["--set", "lr=abc"], "--set lr=abc: lr takes a number (e.g. 0.001), got 'abc'"),
    (["--set", "epoch=4"], "unknown setting 'epoch' (did you mean 'epochs'?); settings are "),
    (["--set", "epochs=2.5"], "--set epochs=2.5: epochs takes an integer, got '2.5'"),
    (["--set", "optimizer=adm"], "optimizer takes one of adamw, adam, sgd, got 'adm' (did you"),
    (["--set", "class_weights=maybe"], "class_weights takes true/false, got 'maybe'"),
    (["--set", "epochs"], "--set epochs: expected KEY=VALUE"),
]


@pytest.mark.parametrize("argv, message", BAD_SETTINGS)
@pytest.mark.parametrize("command", ["train", "tune", "active"])
def test_bad_settings_are_one_line_naming_key_value_and_type(
    command, argv, message, capsys, tmp_path
):
    main = importlib.import_module(f"ray_xray.{command}.__main__").main
    line = _one_line_error(
        main, [*argv, "--out" if command != "tune" else "--storage", str(tmp_path / "o")], capsys
    )
    assert message in line and "Traceback" not in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lr", "abc"], "argument --lr: lr takes a number (e.g. 0.001), got 'abc'"),
        (["--optimizer", "rmsprop"], "optimizer takes one of adamw, adam, sgd, got 'rmsprop'"),
        (["--set", "epochs=3", "--epochs", "4"], "epochs is given twice"),
        (["--num-workers", "0"], "workers must be >= 1"),
    ],
)
def test_train_flag_errors_are_one_line(argv, message, capsys, tmp_path):
    assert message in _one_line_error(train_cli.main, [*argv, "--out", str(tmp_path)], capsys)


def test_tune_refuses_settings_its_own_options_give(capsys, tmp_path):
    line = _one_line_error(
        tune_cli.main, ["--set", "workers=2", "--storage", str(tmp_path)], capsys
    )
    assert "use --num-workers" in line


def test_tune_new_names_and_old_spellings_agree(capsys):
    parse = tune_cli.build_parser().parse_args
    new = parse(["--trial-scheduler", "fifo", "--num-workers", "2"])
    old = parse(["--scheduler", "fifo", "--workers-per-trial", "2"])
    assert (new.scheduler, new.workers_per_trial) == (old.scheduler, old.workers_per_trial)
    assert (new.scheduler, new.workers_per_trial) == ("fifo", 2)
    help_text = tune_cli.build_parser().format_help()
    assert "--trial-scheduler" in help_text and "--workers-per-trial" not in help_text


def test_old_spellings_get_a_note(capsys, tmp_path):
    _one_line_error(tune_cli.main, ["--scheduler", "fifo", "--trials", "0"], capsys)
    from ray_xray.cli import note_renamed

    note_renamed(["--scheduler=fifo", "--x"], tune_cli.RENAMED)
    assert "note: --scheduler is now --trial-scheduler" in capsys.readouterr().err


def test_smoke_test_is_one_spelling_with_the_old_ones_kept():
    from benchmarks.__main__ import build_parser as bench_parser

    assert bench_parser().parse_args(["--smoke-test"]).quick
    assert bench_parser().parse_args(["--quick"]).quick
    assert "--smoke-test" in bench_parser().format_help()
    from ray_xray import spaces

    assert spaces.main(["cnn", "--smoke-test"]) == 0


def test_parse_settings_values_and_aliases():
    got = parse_settings(
        [
            "lr=3e-4",
            "epochs=4",
            "channels_last=no",
            "num_workers=2",
            "lr_scheduler=cosine",
            "model.head_dims=[64, 32]",
            "model.act=gelu",
        ]
    )
    assert got == {
        "lr": 3e-4,
        "epochs": 4,
        "channels_last": False,
        "num_workers": 2,
        "lr_scheduler": "cosine",
        "model.head_dims": [64, 32],
        "model.act": "gelu",
    }


def test_an_old_config_json_with_the_old_setting_names_loads(tmp_path):
    """config.json and checkpoint records written before the rename (scheduler, workers)
    load under today's names; --set takes the old names too."""
    want = TrainConfig(lr_scheduler="cosine", num_workers=2, epochs=3)
    old = want.to_dict()
    old["scheduler"], old["workers"] = old.pop("lr_scheduler"), old.pop("num_workers")
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert TrainConfig.from_dict(json.loads((tmp_path / "config.json").read_text())) == want
    assert parse_settings(["scheduler=cosine", "workers=2"]) == {
        "lr_scheduler": "cosine",
        "num_workers": 2,
    }
    with pytest.raises(ValueError, match="'scheduler' is the old name of 'lr_scheduler'"):
        TrainConfig.from_dict({"scheduler": "cosine", "lr_scheduler": "none"})
    same = {"scheduler": "cosine", "lr_scheduler": "cosine"}  # agreeing: nothing to choose
    assert TrainConfig.from_dict(same).lr_scheduler == "cosine"


def test_config_type_errors_name_key_value_and_type():
    with pytest.raises(ValueError, match=r"^config: lr='abc' is not a number \(lr takes a number"):
        TrainConfig(lr="abc")
    with pytest.raises(ValueError, match=r"unknown setting 'epoch' \(did you mean 'epochs'\?\)"):
        TrainConfig.from_dict({"epoch": 4})
    cfg = TrainConfig(epochs=4.0, lr=1)  # integral floats and ints are taken as they mean
    assert (cfg.epochs, type(cfg.epochs), cfg.lr, type(cfg.lr)) == (4, int, 1.0, float)


def test_predict_on_a_folder_without_a_model_names_what_it_looked_for(tmp_path, capsys):
    from ray_xray.predict import main

    line = _one_line_error(main, [str(tmp_path), str(tmp_path / "x.png")], capsys)
    assert "no best_model.pt or ensemble.pt in this folder" in line
    assert "checkpoint.pt" not in line.split("(")[0]


# The shape of a Tune trial's error.txt (Ray 2.60): a chained traceback through Ray's internals.
TUNE_ERROR_TXT = """Failure # 1 (occurred at 2026-12-01_05-52-14)
ray::ImplicitFunc.train() (pid=22712, ip=192.0.2.2, repr=trial_fn)
  File "ray/tune/trainable/trainable.py", line 329, in train
    raise skipped from exception_cause(skipped)
ray.train.WorkerGroupError: Training failed due to worker errors:
[Rank 0 Error Snippet]:
  File "ray_xray/train/worker.py", line 55, in hook
    raise RuntimeError("injected fault: CUDA out of memory")
RuntimeError: injected fault: CUDA out of memory
"""


def test_tune_traceback_of_a_failed_trial_stays_off_the_console():
    """While a sweep runs, Tune's ~60-line traceback per failed trial is dropped (the reporter
    prints one line; error.txt keeps it), other Tune errors are not, and the filter goes."""
    import logging

    from ray_xray.tune import console

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log = logging.getLogger(console.TUNE_CONTROLLER_LOG)
    log.addHandler(handler)
    try:
        with console.ray_console_quiet():
            log.error("Trial task failed for trial a_00001", exc_info=RuntimeError("x"))
            log.error("Experiment state snapshotting failed")
        log.error("Trial task failed for trial a_00002")
    finally:
        log.removeHandler(handler)
    assert seen == ["Experiment state snapshotting failed", "Trial task failed for trial a_00002"]


def test_error_reason_is_the_last_line_naming_the_error():
    from ray_xray.tune.console import error_reason

    assert error_reason(TUNE_ERROR_TXT) == "RuntimeError: injected fault: CUDA out of memory"
    assert error_reason("") == "" and error_reason("  killed\n") == "killed"


def test_sweep_status_line_counts_trials_and_keeps_the_best(monkeypatch, capsys, tmp_path):
    from types import SimpleNamespace

    from ray_xray.tune import console

    clock = [1000.0]
    monkeypatch.setattr(console.time, "time", lambda: clock[0])
    r = console.ConsoleReporter("val_loss", total=4, budget_s=600, epochs=2, slots=2)
    a, b = (
        SimpleNamespace(trial_id=t, config={"model": "cnn"}, last_result={}, error_file=None)
        for t in ("a_00000", "a_00001")
    )
    for t in (a, b):
        r.on_trial_start(0, [], t)
    clock[0] += 40
    r.on_trial_result(0, [], a, {"val_loss": 0.9, "epoch": 1})
    r.on_trial_result(0, [], b, {"val_loss": 0.5, "epoch": 1})
    clock[0] += 40
    r.on_trial_result(0, [], a, {"val_loss": 0.7, "epoch": 2})
    clock[0] += 50
    r.on_trial_complete(0, [], a)
    lines = capsys.readouterr().err.splitlines()
    # --objective val_loss: shown once per epoch, and the done line gives the trial's best
    # seen (the trial itself reports best_val_macro_f1, its early-stopping monitor)
    assert lines[-3].endswith("] a_00000 epoch  2  val_loss 0.7"), lines
    assert lines[-2].endswith("] a_00000 done   epochs 0  best val_loss 0.7"), lines
    assert r.status() == (
        "status: 1/4 trials finished, 1 running | best val_loss 0.5 (trial a_00001) | "
        "2m10s elapsed, 7m50s left of the budget (~1m40s at this pace)"
    )
    (tmp_path / "error.txt").write_text(TUNE_ERROR_TXT)
    b.error_file = str(tmp_path / "error.txt")
    r.on_trial_error(0, [], b)
    err = capsys.readouterr().err
    assert "status: 2/4 trials finished (1 failed), 0 running" in err  # a line after each end
    assert (
        f"a_00001 ERROR  RuntimeError: injected fault: CUDA out of memory  (traceback: "
        f"{tmp_path / 'error.txt'})"
    ) in err
    r.budget_s = 0
    # 120 trial-seconds for 3 epochs; 2 trials of 2 epochs not started, over 2 slots.
    assert r.status().endswith("2m10s elapsed, ~1m20s left at this pace")
    # a trial Tune restarts after a failure says so, and why, then 'restart', not 'start'
    (tmp_path / "retry.txt").write_text(TUNE_ERROR_TXT)
    a.error_file = str(tmp_path / "retry.txt")
    r.on_trial_recover(0, [], a)
    r.on_trial_start(0, [], a)
    err = capsys.readouterr().err.splitlines()
    assert err[-2].endswith(
        "] a_00000 failed, restarting from its last checkpoint: RuntimeError: injected fault: "
        f"CUDA out of memory  (traceback: {tmp_path / 'retry.txt'})"
    )
    assert err[-1].endswith("] a_00000 restart  model=cnn"), err[-1]
    # a trial that ran fewer epochs than planned says it was stopped early
    cut = SimpleNamespace(trial_id="c_00004", config={"epochs": 4}, last_result={"epoch": 1})
    r.on_trial_complete(0, [], cut)
    assert "] c_00004 done   epochs 1 of 4 (stopped early: " in capsys.readouterr().err
    # a --cv fold run's start line names its candidate and fold (its config holds no settings)
    fold = SimpleNamespace(trial_id="f_00003", config={"cv_run": [1, 2]}, last_result={})
    r.on_trial_start(0, [], fold)
    assert "] f_00003 start  candidate=1 fold=2\n" in capsys.readouterr().err


def _recorded_sweep(total=8, epochs=4, slots=2, start_s=5.0, epoch_s=30.0, slow_after=0.0):
    """A sweep's trial events as Tune would report them: `total` trials of `epochs` epochs,
    `slots` at a time, each trial `start_s` of start-up then `epoch_s` per epoch (x1.5 from
    `slow_after` seconds on: the machine got busier). Returns (events sorted by time, end)."""
    events, free = [], [0.0] * slots
    for k in range(total):
        slot = min(range(slots), key=free.__getitem__)
        t = free[slot]
        events.append((t, "start", f"t{k}", 0))
        t += start_s
        for e in range(1, epochs + 1):
            t += epoch_s * (1.5 if slow_after and t >= slow_after else 1.0)
            events.append((t, "epoch", f"t{k}", e))
        events.append((t, "end", f"t{k}", 0))
        free[slot] = t
    return sorted(events, key=lambda ev: (ev[0], ev[1] != "end")), max(free)


def test_eta_counts_the_trials_not_yet_started():
    """On a recorded 8-trial, 2-slot sweep the time left is known after the first epochs (the
    old estimate needed a finished trial and ignored unstarted ones) and stays within 20 % (or one epoch) of
    the truth; from then on it never grows while the pace holds."""
    from ray_xray.tune.console import EtaEstimate

    def replay(events):
        """Feed `events` to a fresh estimate; yields (time, estimate after the event)."""
        eta = EtaEstimate(total=8, epochs=4, slots=2)
        for t, kind, trial, epoch in events:
            if kind == "start":
                eta.started(trial, t)
            elif kind == "epoch":
                eta.epoch(trial, epoch, t)
            else:
                eta.ended(trial, t)
            yield t, eta.seconds_left(t)

    events, end = _recorded_sweep()
    estimates = list(replay(events))
    assert estimates[0] == (0.0, None)  # nothing measured yet: no number rather than a guess
    shown = [(t, left) for t, left in estimates if left is not None and t < end]
    assert shown[0][0] == 35.0  # the first epoch, long before the first trial ends
    for t, left in shown:
        assert left == pytest.approx(end - t, rel=0.2, abs=30), t
    lefts = [left for _, left in shown]
    assert all(b <= a + 1e-9 for a, b in zip(lefts, lefts[1:], strict=False))
    assert estimates[-1] == (end, 0.0)
    # A machine that slows down midway: the estimate follows within a few epochs.
    events, end = _recorded_sweep(slow_after=200.0)
    for t, left in replay(events):
        if 400 <= t < end:
            assert left == pytest.approx(end - t, rel=0.35), t


def test_the_sweep_says_its_expected_length_from_the_plan_and_a_timed_epoch(monkeypatch):
    """trials x epochs x (train batches x a timed step + validation at a third of a step),
    over the slots; the step is really timed on this machine."""
    from ray_xray.config import TrainConfig
    from ray_xray.tune import estimate

    cfg = TrainConfig(model="cnn", img_size=32, batch_size=4, model_kwargs={"width": 4})
    assert 0 < estimate.step_seconds(cfg, threads=1) < 60
    monkeypatch.setattr(estimate, "step_seconds", lambda cfg, threads: 0.5)
    cfg = TrainConfig(model="resnet18", img_size=64, batch_size=32)
    total, line = estimate.expected_length(cfg, 900, 96, trials=8, epochs=4, slots=2, threads=1)
    epoch = 29 * 0.5 + 96 * 0.5 / 32 / 3  # 15.0 s
    assert total == pytest.approx(4 * (4.1 + 4 * epoch))  # 4 rounds of 2 trials
    assert line.startswith(
        "expected length: ~4 min (8 trials x (4 epochs x ~15 s + ~4 s start-up), 2 at a time;"
        " an epoch of resnet18 at 64 px timed just now"
    )


@pytest.mark.parametrize("argv", [["--help"], ["--trails", "3"]])
def test_tune_parses_its_arguments_before_importing_ray_optuna_or_torch(argv):
    """`tune --help` and a mistyped flag answer before the heavy imports (they took 13 s)."""
    import subprocess
    import sys

    code = (
        "import runpy, sys\n"
        f"sys.argv = ['tune', *{argv!r}]\n"
        "try:\n"
        "    runpy.run_module('ray_xray.tune', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    print('exit', exc.code, sorted({'ray', 'optuna', 'torch'} & set(sys.modules)))\n"
    )
    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": root},
    )
    assert out.stdout.strip().splitlines()[-1] == f"exit {0 if argv == ['--help'] else 2} []"
