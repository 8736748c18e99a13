"""The `gato-ros` entry point as a newcomer meets it: `--help` for every tool, one line for a mistyped
key or a refused value (closest valid key named), a traceback only with --debug."""

from __future__ import annotations

import pytest

from gato_ros import cli
from gato_ros.config import ConfigError, load_config


@pytest.mark.parametrize("tool", sorted(cli.TOOLS))
def test_every_tool_answers_help_with_its_usage_and_settings(tool: str, capsys) -> None:
    assert cli.main([tool, "--help"]) == 0
    out, err = capsys.readouterr()
    assert f"gato-ros {tool}" in out and not err
    for group in cli.TOOL_SETTINGS[tool]:
        assert f"\n  {group}." in out, f"{tool} --help lists no {group}.* setting"


def test_top_level_help_lists_the_tools(capsys) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {tool}" in out for tool in cli.TOOLS) and "--debug" in out


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "collection.episods=3",
            "unknown config key 'collection.episods' (did you mean 'collection.episodes'?)",
        ),
        ("trainig.steps=3", "did you mean 'training.steps'?"),
        ("model=medum", "unknown model option 'medum' (did you mean 'medium'?"),
        ("+experiment=state_polcy", "did you mean 'state_policy'?"),
        ("collection.episodes==", "bad override"),
    ],
)
def test_a_mistyped_override_is_one_line_naming_the_closest_key(override: str, expected: str, capsys) -> None:
    assert cli.main(["collect", override]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gato-ros collect: ") and expected in err, err
    with pytest.raises(ConfigError):
        load_config([override])


def test_a_refused_value_is_one_line_and_debug_shows_the_traceback(capsys, monkeypatch) -> None:
    assert cli.main(["collect", "collection.episodes=-3"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "collection.episodes must be >= 0" in err

    def broken(_args: list[str]) -> int:
        raise OSError(28, "No space left on device")

    assert cli.run_tool("collect", broken, []) == cli.EXIT_REFUSED
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "--debug" in err
    monkeypatch.setattr("gato_ros.tools.params.main", broken)
    with pytest.raises(OSError, match="No space"):
        cli.main(["params", "--debug"])
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(OSError, match="No space"):
        cli.main(["params"])


def test_an_unknown_tool_suggests_the_closest(capsys) -> None:
    assert cli.main(["colect"]) == cli.EXIT_USAGE
    assert "did you mean 'collect'?" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "training.steps=-5"], "training.steps must be an integer >= 1"),
        (["train", "training.batch_size=0"], "training.batch_size must be an integer >= 1"),
        (["train", "training.lr=nan"], "training.lr must be finite and >= 0"),
        (["train", "training.min_lr_ratio=2"], "training.min_lr_ratio must be in [0.0, 1.0]"),
        (["check", "evaluation.episodes_per_group=-2", "evaluation.baselines=[expert]"], "must be >= 1"),
        (["collect", "collection.workers=0"], "collection.workers must be >= 1"),
    ],
)
def test_nonsense_values_are_refused_where_read_in_one_line(argv: list[str], message: str, capsys) -> None:
    assert cli.main(argv) != 0
    err = capsys.readouterr()
    text = err.err + err.out
    assert message in text and text.strip().count("\n") == 0, text
