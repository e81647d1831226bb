"""The `pathasst` command as a user meets it: verbs, help at every level, honest exits."""

import subprocess
import sys

import pytest

from pathasst.cli import VERBS, main
from pathasst.errors import NotLandedError

VERB_NAMES = ["extract", "curate", "generate", "build", "train", "bench", "release", "space", "serve",
              "chat", "tool", "demo"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pathasst.cli", *args], capture_output=True, text=True)


def test_help_lists_every_verb():
    result = run_cli("--help")
    assert result.returncode == 0
    for verb in VERB_NAMES:
        assert f"    {verb}" in result.stdout
    assert [v.name for v in VERBS] == VERB_NAMES


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("pathasst 0.")


@pytest.mark.parametrize("verb", VERB_NAMES)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([verb, "--help"])
    assert exit_.value.code == 0
    assert "usage: pathasst" in capsys.readouterr().out


@pytest.mark.parametrize("verb", [v.name for v in VERBS if v.module is None])
def test_verbs_not_landed_say_so_and_exit_2(verb, capsys):
    code = main([verb, "anything", "--out", "x"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"`pathasst {verb}` is not available yet" in err and "Nothing was done" in err


def test_import_pathasst_stays_light():
    code = ("import sys, pathasst, pathasst.cli, pathasst.config, pathasst.records, pathasst.writer; "
            "heavy = [m for m in ('torch', 'transformers', 'gradio', 'accelerate') if m in sys.modules]; "
            "print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_console_script_is_installed():
    import shutil

    exe = shutil.which("pathasst", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "the `pathasst` console script is not on the venv's PATH"
    result = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "demo" in result.stdout


def test_errors_are_one_line_without_traceback(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run_cli("demo", "--out", str(blocker / "run"))
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    assert "pathasst demo: error: cannot create run folder" in result.stderr


def test_train_dispatches_to_the_family_registry(capsys):
    from pathasst.trainers import registry

    # every built-in family has landed: the not-landed path is shown with a synthetic one
    registry.register(registry.FamilySpec("future", "a family still to come", issue=99))
    try:
        assert main(["train", "future", "max_steps=3"]) == 2
    finally:
        registry.unregister("future")
    assert "`pathasst train future` is not available yet: it arrives with issue #99" in capsys.readouterr().err
    assert main(["train", "nosuch"]) == 2
    assert "unknown model family 'nosuch'; known: selector" in capsys.readouterr().err


def test_subcommands_not_landed_say_which_issue_brings_them(capsys):
    # a synthetic subcommand: every real one may have landed, the mechanism must keep working
    import argparse

    from pathasst.subcommands import Subcommand, add_subcommands

    parser = argparse.ArgumentParser(prog="pathasst build")
    add_subcommands(parser, "build", (Subcommand("future", "pathasst.no_such_module", "a later dataset", 99),))
    args, extra = parser.parse_known_args(["future", "caps/", "--out", "x"])
    assert args.accepts_anything
    with pytest.raises(NotLandedError) as err:
        args.func(args)
    assert "`pathasst build future` is not available yet: it arrives with issue #99. Nothing was done." in str(err.value)


def test_landed_verbs_still_refuse_unknown_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--bogus"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
