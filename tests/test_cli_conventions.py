"""One command-line convention across `neurode pendulum`, `latent`, `cnf` and `mnist`."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import torch

import neurode
from neurode.cli import build_parser, main
from neurode.data.mnist import default_mnist_dir

COMMANDS = ("pendulum", "latent", "cnf", "mnist")


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[command]


def _help(command: str) -> str:
    return _subparser(command).format_help()


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"neurode {neurode.__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_the_same_output_options(command):
    parser = _subparser(command)
    options = {option: action for action in parser._actions for option in action.option_strings}
    for flag in ("--quiet", "--no-progress", "--resume", "--overwrite"):
        assert flag in options, flag
        assert options[flag].nargs == 0, f"{flag} takes no value"  # the same form everywhere
    assert options["--quiet"] is options["--no-progress"]  # the old spelling is an alias
    assert "--out" in options
    arguments = parser.parse_args(["--no-progress", "--resume"])
    assert arguments.quiet is True and arguments.resume is True


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_each_default_once_and_no_markup(command):
    text = _help(command)
    for markup in ("``", ":math:", ":class:", ":mod:", "%(default)", "\\theta"):
        assert markup not in text, markup
    parser = _subparser(command)
    formatter = parser.formatter_class(prog="neurode")
    for action in parser._actions:
        if not action.option_strings or not action.help or action.default == argparse.SUPPRESS:
            continue
        shown = formatter._get_help_string(action)
        if action.default is None or isinstance(action.default, bool):
            assert shown.count("(default") <= 1, (action.option_strings, shown)
        else:
            assert shown.count("default") == 1, (action.option_strings, shown)


def test_cnf_offers_a_quick_run():
    assert "--quick" in _help("cnf")


def test_an_os_error_is_one_line_with_exit_status_2(tmp_path, monkeypatch, capsys):
    from neurode.cli import pendulum

    def refused(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x"))

    monkeypatch.setattr(pendulum, "run", refused)
    assert main(["pendulum", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"neurode pendulum: error: {tmp_path / 'x'}: Permission denied\n"


# ----------------------------------------------------------------------------- mnist messages

MNIST_DIR = default_mnist_dir()


def _mnist(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(["mnist", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_unreadable_weights_are_reported_in_full_on_one_line(tmp_path, capsys):
    weights = tmp_path / "garbage.pt"
    weights.write_bytes(b"this is not a checkpoint\n" * 10)
    code, _, err = _mnist(["--evaluate", str(weights), "--data-dir", str(tmp_path)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert str(weights) in err and "not a PyTorch state dict" in err
    assert err.rstrip().endswith(")")  # the reason is closed, not cut off


def test_weights_of_another_architecture_name_the_model_they_fit(tmp_path, capsys):
    from neurode.models.mnist import RKNet

    weights = tmp_path / "rknet.pt"
    torch.save(RKNet(steps=1).state_dict(), weights)
    code, _, err = _mnist(
        ["--model", "resnet", "--evaluate", str(weights), "--data-dir", str(tmp_path)], capsys
    )
    assert code == 2 and err.count("\n") == 1
    assert "does not fit --model resnet" in err and "tensors are missing" in err
    assert "weights of --model odenet or rknet" in err


@pytest.mark.skipif(
    not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(), reason="MNIST test files absent"
)
@pytest.mark.slow
def test_evaluate_shows_progress(tmp_path):
    from neurode.models.mnist import RKNet

    weights = tmp_path / "rknet.pt"
    torch.save(RKNet(steps=1).state_dict(), weights)
    process = subprocess.run(
        [sys.executable, "-m", "neurode", "mnist", "--model", "rknet", "--steps", "1",
         "--evaluate", str(weights), "--test-subset", "300", "--eval-batch-size", "100",
         "--data-dir", str(MNIST_DIR), "--no-download"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr
    assert "evaluate" in process.stderr and "3/3" in process.stderr
    quiet = subprocess.run(
        [sys.executable, "-m", "neurode", "mnist", "--model", "rknet", "--steps", "1",
         "--evaluate", str(weights), "--test-subset", "300", "--eval-batch-size", "100",
         "--data-dir", str(MNIST_DIR), "--no-download", "--quiet"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert quiet.returncode == 0 and "3/3" not in quiet.stderr


@pytest.mark.skipif(
    not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(), reason="MNIST test files absent"
)
def test_evaluate_shipped_finds_the_packaged_weights_from_any_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = _mnist(
        ["--model", "odenet", "--evaluate", "shipped", "--test-subset", "100", "--quiet",
         "--data-dir", str(MNIST_DIR), "--no-download"],
        capsys,
    )  # fmt: skip
    assert code == 0 and "odenet_mnist_cpu.pt: test error" in out


def test_evaluate_shipped_holds_odenet_weights_only(tmp_path, capsys):
    code, _, err = _mnist(
        ["--model", "resnet", "--evaluate", "shipped", "--data-dir", str(tmp_path)], capsys
    )
    assert code == 2 and "ODE-Net" in err
