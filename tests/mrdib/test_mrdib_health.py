"""`MRdIB.health()`: what the bottleneck passes, clamped log-variances and the hook's scale drift, per epoch."""

from __future__ import annotations

import pytest
import torch

from mrdib_cli.mrdib.bottleneck import gaussian_kl
from mrdib_cli.mrdib.objectives import MRdIB

from mrdib_toy import ToyMM, make_batch


def _eval_forward(toy: ToyMM, plugin: MRdIB) -> None:
    toy.eval()
    plugin.eval()
    with torch.no_grad():
        toy.propagate()


def _plugin(toy: ToyMM) -> MRdIB:
    plugin = MRdIB(preset="current")  # the figures below are read at the projection hook, in scaled units
    plugin.attach(toy)
    return plugin


def test_health_after_attach_is_calm_and_matches_the_closed_form(toy: ToyMM) -> None:
    plugin = _plugin(toy)
    _eval_forward(toy, plugin)
    figures, problems = plugin.health()
    assert problems == {}
    for m in ("image", "text"):
        assert figures[f"spread_{m}"] == pytest.approx(1.0, rel=1e-4)  # the scale measured at attach
        h = {"image": toy.proj_v(toy.feat_v), "text": toy.proj_t(toy.feat_t)}[m].detach()
        assert figures[f"offset_{m}"] == pytest.approx(float(h.mean(0).pow(2).mean().sqrt() / h.std(0).pow(2)
                                                             .mean().sqrt()), rel=1e-4)
        assert figures[f"clamped_{m}"] == 0.0
        st = plugin.latest(m)
        assert st.mu.shape[0] == toy.feat_v.shape[0]  # every item
        assert figures[f"nats_{m}"] == pytest.approx(float(gaussian_kl(st.mu, st.logvar).mean()), rel=1e-5)


def test_health_reports_nothing_right_after_a_training_step(toy: ToyMM) -> None:
    plugin = _plugin(toy)
    toy.train()
    plugin.train()
    batch = make_batch()
    plugin.before_step(batch)
    emb = toy.propagate()
    plugin.loss(batch, emb)
    assert plugin.health() == ({}, {})  # only the batch's sample: nothing measured on every item


def test_a_spread_hook_a_shifted_hook_and_a_runaway_head_are_problems(toy: ToyMM) -> None:
    plugin = _plugin(toy)
    with torch.no_grad():
        toy.proj_v.weight.mul_(50.0)  # the image representation spreads 50x wider after attach
        toy.proj_v.bias.mul_(50.0)
        k = plugin.bottlenecks["text"].z_dim
        plugin.bottlenecks["text"].head.bias[k:].fill_(30.0)  # every text log-variance above the clamp
    _eval_forward(toy, plugin)
    figures, problems = plugin.health()
    assert figures["spread_image"] == pytest.approx(50.0, rel=1e-3)
    assert figures["clamped_text"] == 1.0 and figures["clamped_image"] == 0.0
    assert {"spread_image", "clamped_text"} <= set(problems)
    assert "spreads 50x as wide" in problems["spread_image"]
    assert "100% of its log-variances" in problems["clamped_text"]
    assert "offset all items share" in problems["clamped_text"]  # the likely cause, in the same line
    assert "--centre-logvar" in problems["clamped_text"]  # and the remedy for it
    assert all("\n" not in p for p in problems.values())  # one line each
    with torch.no_grad():
        toy.proj_v.weight.div_(500.0)  # and shrinking tenfold is a drift too
        toy.proj_v.bias.div_(500.0)
    _eval_forward(toy, plugin)
    assert plugin.health()[0]["spread_image"] == pytest.approx(0.1, rel=1e-3)


def test_an_offset_all_items_share_moves_the_offset_not_the_spread(toy: ToyMM) -> None:
    """MMGCN on the demo: the spread stays, the shared offset grows from ~2 to 70 spreads (docs/mrdib.md)."""
    plugin = _plugin(toy)
    spread = float(toy.proj_v(toy.feat_v).detach().std(0).pow(2).mean().sqrt())
    for shift in (5.0, 15.0):
        with torch.no_grad():
            toy.proj_v.bias.fill_(0.0)
            toy.proj_v.bias[0] = shift * spread * toy.proj_v.bias.numel() ** 0.5  # RMS over dims = shift
        _eval_forward(toy, plugin)
        figures, problems = plugin.health()
        assert figures["spread_image"] == pytest.approx(1.0, rel=1e-4)  # a shift leaves the spread alone
        assert figures["offset_image"] == pytest.approx(shift, rel=0.05)
        assert "spread_image" not in problems


def test_the_section_the_warnings_point_to_exists() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "mrdib.md").read_text(encoding="utf-8")
    assert "**Health, per epoch.**" in doc and "`--centre-logvar`" in doc
