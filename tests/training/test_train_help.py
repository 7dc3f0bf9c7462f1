"""Declared options are visible: ``mrdib train --help`` lists the backbone's and the plug-ins' options."""

from __future__ import annotations

import dataclasses

import pytest

from mrdib_cli.cli.app import main
from mrdib_cli.models.base import available


def _help(capsys, monkeypatch, *args: str) -> str:
    monkeypatch.setenv("COLUMNS", "200")
    try:
        main(["train", *args, "--help"])
    except SystemExit as e:
        assert not e.code
    return capsys.readouterr().out


@pytest.mark.parametrize("backbone", sorted(available()))
def test_backbone_help_lists_every_declared_hyper_parameter(capsys, monkeypatch, workdir, backbone):
    cls = available()[backbone]
    text = _help(capsys, monkeypatch, "--backbone", backbone)
    assert f"Backbone options ({backbone})" in text
    for opt in cls.options():
        assert opt.flag in text
        if not opt.is_switch and opt.default is not None:
            assert f"[default: {opt.default}]" in text


def test_plugin_options_come_from_one_declaration(capsys, monkeypatch, workdir):
    from mrdib_cli.mrdib.objectives import MRdIBConfig
    from mrdib_cli.training.plugin import claim_plugin_args

    text = _help(capsys, monkeypatch)
    assert "mrdib train --backbone NAME --help" in text and "--mrdib" in text
    from mrdib_cli.mrdib import options

    flags = {o.name: o.flag for o in options()}
    assert flags["preset"] == "--mrdib-preset" and flags["units"] == "--bottleneck-units"  # spelt apart
    for name in (f.name for f in dataclasses.fields(MRdIBConfig)):  # every field is a flag, shown and accepted
        flag = flags[name]
        assert flag in text
        value = [] if isinstance(getattr(MRdIBConfig(), name), bool) else ["2"]
        claimed, rest = claim_plugin_args(["--mrdib", flag, *value])
        assert name in claimed and rest == []


def test_flags_render_without_a_metavar(capsys, monkeypatch, workdir):
    text = _help(capsys, monkeypatch)
    assert "<bool>" not in text
    assert "--resume" in text and "<int>" in text  # options with values keep theirs



def test_a_switch_that_is_on_by_default_has_an_off_flag(capsys, monkeypatch, workdir):
    from mrdib_cli.mrdib import options
    from mrdib_cli.training.plugin import claim_plugin_args

    from mrdib_cli.options import Option

    assert Option("dual_path", bool, True).off_flag == "--no-dual-path"
    assert Option("dual_path", bool, False).off_flag is None and Option("n", int, 1).off_flag is None
    on = [o for o in options() if o.off_flag]
    assert all(o.is_switch and o.default is True for o in on)
    assert all(o.off_flag is None for o in options() if o.default is not True)
    text = _help(capsys, monkeypatch)
    for o in on:  # listed, and each turns its option off while the plain switch turns it on
        assert o.off_flag in text
        assert claim_plugin_args(["--mrdib", o.off_flag])[0][o.name] is False
        assert claim_plugin_args(["--mrdib", o.flag])[0][o.name] is True
