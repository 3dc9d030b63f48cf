"""The command line is generated from the config dataclasses, and --config FILE sets the same fields."""

from __future__ import annotations

import dataclasses
import json

import pytest

from thickets.cli.args import flag_of
from thickets.cli.commands import COMMANDS, RunFolder, _parse, build_parser, main
from thickets.randopt.config import SearchConfig


def parsed(*argv: str):
    return _parse(build_parser().parse_args(list(argv)))


def test_every_field_with_help_is_a_flag_of_its_commands():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for name, (_, classes, _) in COMMANDS.items():
        flags = {s for a in subparsers[name]._actions for s in a.option_strings}
        for cls in classes:
            for f in dataclasses.fields(cls):
                if f.metadata.get("cli", True) is False:
                    continue
                assert f.metadata.get("help"), (cls.__name__, f.name)  # the help text lives on the field
                expected = flag_of(f)
                if f.type in ("bool", bool) and f.default is True:
                    expected = f"--no-{f.name.replace('_', '-')}"
                assert expected in flags, (name, cls.__name__, f.name)


def test_nothing_given_means_the_dataclass_defaults():
    assert parsed("search", "--run-dir", "r")[SearchConfig] == SearchConfig()


def test_flags_are_read_as_the_command_line_always_took_them():
    config = parsed(
        "search",
        "--run-dir",
        "r",
        "--sigma",
        "1e-3,2e-3",
        "--include",
        "*.weight, *bias",
        "--no-chat-template",
        "--population",
        "7",
        "--reward",
        "r.py:f",
    )[SearchConfig]
    assert config.sigmas == (1e-3, 2e-3) and config.include == ("*.weight", "*bias")
    assert config.chat_template is False and config.population == 7 and config.reward == "r.py:f"


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_config_file_sets_the_fields_and_flags_override_it(tmp_path, suffix):
    settings = {
        "task": "products",
        "population": 48,
        "sigmas": [0.001, 0.002],
        "val_size": 48,
        "chat_template": False,
        "run_dir": "runs/x",
    }
    path = tmp_path / f"exp{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(settings))
    else:
        import yaml

        path.write_text(yaml.safe_dump(settings))
    a = parsed("search", "--config", str(path), "--population", "64")
    config = a[SearchConfig]
    assert config.task == "products" and config.sigmas == (0.001, 0.002) and config.val_size == 48
    assert config.chat_template is False
    assert config.population == 64  # the flag wins
    assert a[RunFolder].run_dir == "runs/x"


@pytest.mark.parametrize(
    "content, fragment",
    [
        ('{"populaton": 3}', "unknown settings: populaton"),
        ('{"population": "many"}', "population in --config"),
        ('{"sigmas": "0.1,x"}', "sigmas in --config"),
        ("[1, 2]", "must hold a mapping"),
        ("{not json", "is not valid JSON"),
    ],
)
def test_a_bad_config_file_is_one_line(tmp_path, capsys, content, fragment):
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert main(["search", "--config", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "run").exists()


def test_a_required_setting_missing_from_flags_and_file_is_named(tmp_path, capsys):
    assert main(["ensemble", "--top-k", "1"]) == 2
    assert "--run-dir is required" in capsys.readouterr().err


def test_a_plugin_that_cannot_be_imported_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("THICKETS_PLUGINS", "no.such.module")
    assert main(["tasks"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot import THICKETS_PLUGINS module no.such.module" in err
