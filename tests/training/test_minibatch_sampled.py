"""--minibatch sampled: the neighbour sampler, the per-batch forward, and the trainer's refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.graphs import norm_adj_symmetric
from mrdib_cli.graphs.bipartite import to_torch_sparse
from mrdib_cli.graphs.sampling import CSRGraph, horner_mean, sample_blocks
from mrdib_cli.models.base import MiniBatch, sampled_backbones
from tests.models.test_backbones import _batch, _build
from tests.synth_data import make_dataset


@pytest.fixture(scope="module")
def handle(tmp_path_factory):
    return DatasetHandle(make_dataset(tmp_path_factory.mktemp("mb"), n_users=40, n_items=25, per_user=6))


def _dense_grads(model):
    return {n: (p.grad.to_dense() if p.grad.is_sparse else p.grad).clone()
            for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name,over,training", [("lightgcn", {"n_layers": 1}, True),
                                                ("lightgcn", {"n_layers": 3}, True), ("vbpr", {}, True),
                                                ("lgmrec", {}, False), ("freedom", {}, False)])
def test_sampled_step_equals_full_step_when_fanout_covers_every_neighbour(handle, name, over, training):
    """With a fan-out above the largest degree (and, for LGMRec, a catalogue under the uniform sample size)
    nothing is sampled away: same loss terms and same gradients. LGMRec and FREEDOM in eval mode, where
    they draw no Gumbel noise, dropout or pruned graph."""
    batch = _batch(handle)
    full, sampled = _build(name, handle, **over), _build(name, handle, **over)
    full.train(training), sampled.train(training)
    terms = full.loss(batch, full.propagate())
    sum(terms.values()).backward()
    emb, local = sampled.propagate_batch(batch, MiniBatch((10_000,), torch.Generator().manual_seed(1)))
    terms_s = sampled.loss(local, emb)
    sum(terms_s.values()).backward()
    assert terms.keys() == terms_s.keys()
    for k in terms:
        assert torch.allclose(terms[k], terms_s[k], rtol=1e-5, atol=1e-9), k
    gf, gs = _dense_grads(full), _dense_grads(sampled)
    assert gf.keys() == gs.keys()
    for k in gf:
        assert torch.allclose(gf[k], gs[k], rtol=1e-4, atol=1e-8), k
    assert sampled.sparse_parameters() and all(p.grad.is_sparse for p in sampled.sparse_parameters().values())


def test_sampled_tables_get_sparse_gradients(handle):
    model = _build("lightgcn", handle)
    emb, local = model.propagate_batch(_batch(handle), MiniBatch((3,), torch.Generator().manual_seed(0)))
    sum(model.loss(local, emb).values()).backward()
    assert model.user_embedding.grad.is_sparse and model.item_embedding.grad.is_sparse


def test_sampler_is_unbiased_and_bounded():
    """E[sampled Â x] = Â x, and no node keeps more than its fan-out."""
    rng = np.random.default_rng(0)
    import scipy.sparse as sp

    r = sp.random(30, 20, density=0.4, format="csr", random_state=1)
    r.data[:] = 1.0
    adj = to_torch_sparse(norm_adj_symmetric(r))
    graph = CSRGraph(adj)
    x = torch.from_numpy(rng.standard_normal((50, 4))).double()
    seeds = torch.arange(50)
    exact = torch.sparse.mm(adj.to_sparse_coo().double(), x)
    gen = torch.Generator().manual_seed(0)
    acc = torch.zeros_like(exact)
    n = 4000
    for _ in range(n):
        nodes, blocks = sample_blocks(graph, seeds, [3], gen)
        est = horner_mean(blocks, x[nodes[-1]]) * 2 - x  # mean of layers 0 and 1 -> layer 1
        acc += est
        assert int(torch.bincount(blocks[0].dst, minlength=50).max()) <= 3
    assert graph.degree.max() > 3  # some nodes were really sampled
    assert float((acc / n - exact).abs().max()) < 0.05  # without the deg/k weights: off by ~exact itself


def _small_graph(seed: int = 1):
    import scipy.sparse as sp

    r = sp.random(30, 20, density=0.4, format="csr", random_state=seed)
    r.data[:] = 1.0
    return to_torch_sparse(norm_adj_symmetric(r))


def test_node_budget_bounds_every_hop_and_keeps_the_estimate_unbiased():
    """Each hop adds at most the budget's nodes, and the two-hop layer mean still averages to the exact one
    (the kept new nodes' edges carry the inverse of their inclusion probability)."""
    adj = _small_graph()
    graph = CSRGraph(adj)
    a = adj.to_dense().double()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((50, 4)))
    seeds = torch.tensor([0, 7, 31, 44])
    exact = ((x + a @ x + a @ a @ x) / 3)[seeds]
    gen = torch.Generator().manual_seed(0)
    acc, n, capped = torch.zeros_like(exact), 6000, 0
    for _ in range(n):
        nodes, blocks = sample_blocks(graph, seeds, [4, 4], gen, budget=5)
        for before, after in zip(nodes, nodes[1:]):
            assert len(after) - len(before) <= 5
        capped += len(nodes[2]) - len(nodes[1]) == 5
        acc += horner_mean(blocks, x[nodes[-1]])
    assert capped > n // 2  # the budget bound most draws (without it the second hop adds more)
    assert float((acc / n - exact).abs().max()) < 0.05  # without the reweighting: off by 0.17 here


def test_a_budget_that_does_not_bind_changes_nothing():
    """Same nodes, blocks and generator state as without a budget: runs whose neighbourhoods stay under the
    budget are those of a run without one."""
    graph = CSRGraph(_small_graph())
    seeds = torch.tensor([3, 12, 40])
    g0, g1 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    n0, b0 = sample_blocks(graph, seeds, [3, 3], g0)
    n1, b1 = sample_blocks(graph, seeds, [3, 3], g1, budget=50)
    assert all(torch.equal(u, v) for u, v in zip(n0, n1))
    assert all(torch.equal(getattr(u, f), getattr(v, f)) for u, v in zip(b0, b1) for f in ("dst", "src", "weight"))
    assert torch.equal(g0.get_state(), g1.get_state())


def test_nested_node_sets_keep_the_frontier_first():
    import scipy.sparse as sp

    r = sp.random(12, 9, density=0.5, format="csr", random_state=2)
    r.data[:] = 1.0
    graph = CSRGraph(to_torch_sparse(norm_adj_symmetric(r)))
    nodes, _ = sample_blocks(graph, torch.tensor([5, 3, 5, 14]), [2, 2], torch.Generator().manual_seed(0))
    assert nodes[0].tolist() == [3, 5, 14]
    for a, b in zip(nodes, nodes[1:]):
        assert torch.equal(b[:len(a)], a) and len(set(b.tolist())) == len(b)


def test_sampled_backbones_declared():
    assert {"lightgcn", "vbpr", "lgmrec", "freedom"} <= set(sampled_backbones())
    assert "mgcn" not in sampled_backbones()


def test_cli_sampled_mode_trains_and_refuses_unsupported(cli, workdir):
    assert cli("prepare", "demo")[0] == 0
    code, _, err = cli("train", "-b", "lightgcn", "--epochs", "2", "--threads", "1", "--minibatch", "sampled",
                       "--fanout", "5", "-n", "s")
    assert code == 0, err
    import json

    conf = json.loads((workdir / "runs" / "s" / "config.json").read_text())
    assert conf["train"]["minibatch"] == "sampled" and conf["train"]["fanout"] == [5]
    res = json.loads((workdir / "runs" / "s" / "results.json").read_text())
    assert res["test"]["recall@20"] >= 0
    code, _, err = cli("train", "-b", "lightgcn", "--epochs", "3", "--minibatch", "sampled", "-n", "s",
                       "--resume")
    assert code == 0, err
    assert json.loads((workdir / "runs" / "s" / "results.json").read_text())["epochs_run"] == 3
    code, _, err = cli("train", "-b", "mgcn", "--epochs", "1", "--minibatch", "sampled", "-n", "m")
    assert code == 2 and "not available for mgcn" in err and "Traceback" not in err
    assert not (workdir / "runs" / "m").exists()
    code, _, err = cli("train", "-b", "lightgcn", "--minibatch", "tiny", "-n", "t")
    assert code == 2 and "minibatch (--minibatch) must be" in err
    code, _, err = cli("train", "-b", "lightgcn", "--node-budget", "100", "-n", "t")
    assert code == 2 and "--minibatch sampled" in err and "Traceback" not in err
    code, out, err = cli("train", "-b", "lightgcn", "--set", "train.node_budget=100", "--print-config")
    assert code == 2 and "node_budget (from --set)" in err, out  # refused when resolved, not only when trained
    code, out, err = cli("train", "-b", "lightgcn", "--fanout", "5", "--print-config")  # used by sampled only
    assert code == 2 and "fanout (--fanout)" in err and "Traceback" not in err, out
    code, out, err = cli("train", "-b", "lightgcn", "--minibatch", "sampled", "--fanout", "10", "--fanout", "5",
                         "--print-config")  # one layer: the second fan-out would go unused
    assert code == 2 and "samples 1 hop(s)" in err and "Traceback" not in err, out
    code, _, err = cli("train", "-b", "lightgcn", "--minibatch", "sampled", "--set", "train.node_budget=-1",
                       "-n", "t")
    assert code == 2 and "node_budget (from --set) must be" in err
    assert not (workdir / "runs" / "t").exists()
    code, _, err = cli("train", "-b", "lightgcn", "--epochs", "1", "--threads", "1", "--minibatch", "sampled",
                       "--node-budget", "8", "-n", "nb")
    assert code == 0, err
    assert json.loads((workdir / "runs" / "nb" / "config.json").read_text())["train"]["node_budget"] == 8


def test_vbpr_step_forward_is_bit_identical_to_the_full_forward(handle):
    """The default mode's saving (only the batch's items projected) moves no bit of the loss or gradients."""
    batch = _batch(handle, n=64, seed=3)
    out = []
    for step in (True, False):
        model = _build("vbpr", handle)
        model.train()
        emb = model.propagate_step(batch) if step else model.propagate()
        terms = model.loss(batch, emb)
        sum(terms.values()).backward()
        out.append(({k: v.detach() for k, v in terms.items()}, _dense_grads(model)))
    (ta, ga), (tb, gb) = out
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert ga.keys() == gb.keys() and all(torch.equal(ga[k], gb[k]) for k in ga)


def test_row_adam_matches_sparse_adam():
    """Our lazy Adam makes the update torch's SparseAdam makes (touched rows only, global-step bias terms)."""
    from mrdib_cli.training.trainer import RowAdam

    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(30, 4))
    b = torch.nn.Parameter(a.detach().clone())
    start, touched = a.detach().clone(), torch.zeros(30, dtype=torch.bool)
    opt_a, opt_b = RowAdam([a], lr=0.01), torch.optim.SparseAdam([b], lr=0.01)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        ids = torch.randint(0, 30, (12,), generator=g)
        w = torch.randn(12, 4, generator=g)
        touched[ids] = True
        for p, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            (torch.nn.functional.embedding(ids, p, sparse=True) * w).sum().backward()
            opt.step()
    assert torch.allclose(a, b, atol=1e-6)
    assert (~touched).any() and torch.equal(a[~touched], start[~touched])
    assert not torch.allclose(a[touched], start[touched])


def test_row_adam_takes_distinct_rows_in_any_order_without_sorting_them(monkeypatch):
    """A sampled step reads each row once: its gradient's rows are used as they come (not sorted) and give
    the bits of the coalesced gradient; a gradient with a row twice is still summed per row first."""
    from mrdib_cli.training.trainer import RowAdam

    def trained(ids_per_step: list[torch.Tensor], coalesce_first: bool) -> torch.Tensor:
        p = torch.nn.Parameter(torch.randn(50, 4, generator=torch.Generator().manual_seed(0)))
        opt = RowAdam([p], lr=0.01)
        for step, ids in enumerate(ids_per_step):
            opt.zero_grad()
            w = torch.randn(len(ids), 4, generator=torch.Generator().manual_seed(step))
            (torch.nn.functional.embedding(ids, p, sparse=True) * w).sum().backward()
            if coalesce_first:
                p.grad = p.grad.coalesce()
            opt.step()
        return p.detach()

    g = torch.Generator().manual_seed(1)
    distinct = [torch.randperm(50, generator=g)[:20] for _ in range(4)]  # shuffled, no row twice
    expected = trained(distinct, coalesce_first=True)
    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "coalesce", lambda self: pytest.fail("distinct rows were sorted"))
        assert torch.equal(trained(distinct, coalesce_first=False), expected)
    repeated = [torch.cat([ids, ids[:5]]) for ids in distinct]  # rows read twice: their gradients add up
    assert torch.equal(trained(repeated, coalesce_first=False), trained(repeated, coalesce_first=True))
    assert not torch.equal(trained(repeated, coalesce_first=False), expected)


def test_row_adam_keeping_a_block_of_rows_updates_them_as_the_whole_table_does():
    """A rank's lazy Adam keeps the moments of its own rows only: updating them gives the bits the optimiser
    holding every row gives, with moments of the block's size; moments of every row (a checkpoint's) are cut
    down to the block, and moments of another size are refused."""
    from mrdib_cli.training.trainer import RowAdam

    torch.manual_seed(0)
    whole = torch.nn.Parameter(torch.randn(30, 4))
    part = torch.nn.Parameter(whole.detach().clone())
    opt_w, opt_p = RowAdam([whole], lr=0.01), RowAdam([part], lr=0.01)
    opt_p.keep_rows(part, 10, 20)
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        ids = torch.randint(10, 20, (8,), generator=g)
        w = torch.randn(8, 4, generator=g)
        for p, opt in ((whole, opt_w), (part, opt_p)):
            opt.zero_grad()
            (torch.nn.functional.embedding(ids, p, sparse=True) * w).sum().backward()
            opt.step()
    assert torch.equal(whole, part)
    full, kept = opt_w.state[whole], opt_p.state[part]
    assert kept["exp_avg"].shape == (10, 4) and full["exp_avg"].shape == (30, 4)
    for name in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(kept[name], full[name][10:20])
    opt_w.keep_rows(whole, 10, 20)  # what a rank does with a checkpoint's moments of every row
    assert torch.equal(opt_w.state[whole]["exp_avg_sq"], kept["exp_avg_sq"])
    with pytest.raises(ValueError, match="moments of 10 rows for a block of 5"):
        opt_w.keep_rows(whole, 0, 5)


def test_runs_from_before_the_option_keep_their_identity(cli, workdir):
    """A run folder written before --minibatch existed (no minibatch/fanout in config.json) still resumes."""
    import json

    assert cli("prepare", "demo")[0] == 0
    assert cli("train", "-b", "lightgcn", "--epochs", "1", "--threads", "1", "-n", "old")[0] == 0
    path = workdir / "runs" / "old" / "config.json"
    conf = json.loads(path.read_text())
    for k in ("minibatch", "fanout"):
        del conf["train"][k]
    path.write_text(json.dumps(conf))
    code, _, err = cli("train", "--resume", "-n", "old", "--epochs", "2", "--threads", "1")
    assert code == 0, err
    code, _, err = cli("train", "--resume", "-n", "old", "--epochs", "3", "--minibatch", "sampled")
    assert code == 2 and "different configuration" in err


def test_vbpr_sampled_step_with_mrdib(handle):
    """MRdIB on VBPR in sampled mode: its terms come from the batch's rows and their gradients reach the
    bottleneck and the tables (sparse)."""
    from mrdib_cli.training.plugin import create_plugin, forward_terms

    model = _build("vbpr", handle)
    plugin = create_plugin("mrdib", {"preset": "current"})  # the reading the sampled step supports
    plugin.attach(model)
    model.train(), plugin.train()
    emb, terms = forward_terms(model, plugin, _batch(handle, n=32), MiniBatch((10,), torch.Generator()))
    assert {"bpr", "reg", "kl", "uni"} <= set(terms)
    total = sum(terms.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.i_embedding.grad.is_sparse
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in plugin.parameters())


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A catalogue several times larger than one small batch's sampled neighbourhood."""
    return DatasetHandle(make_dataset(tmp_path_factory.mktemp("wide"), n_users=300, n_items=400, per_user=6))


def _hook_rows(model):
    seen: dict[str, list[int]] = {}
    for m in model.get_hook_points():
        model.install_hook(m, lambda name, h: seen.setdefault(name, []).append(h.shape[0]) or h)
    return seen


@pytest.mark.parametrize("name", ["lgmrec", "freedom"])
def test_sampled_step_work_is_bounded_by_batch_and_fanout(wide, name, monkeypatch):
    """Structural, not timed: the rows a sampled step projects are bounded by the batch times the fan-out
    products (and the uniform sample), whatever the catalogue; the full step projects every item."""
    import mrdib_cli.models.lgmrec as lgmrec_mod

    monkeypatch.setattr(lgmrec_mod, "GLOBAL_SAMPLE", 16)
    batch = _batch(wide, n=8, seed=5)
    model = _build(name, wide)
    model.train()
    seen = _hook_rows(model)
    fanout = 1
    emb, local = model.propagate_batch(batch, MiniBatch((fanout,), torch.Generator().manual_seed(0)))
    seeds = len(torch.unique(batch.users)) + len(torch.unique(torch.cat([batch.pos, batch.neg])))
    frontier = seeds * (1 + fanout) ** model.hp["n_mm_layers"]
    bound = frontier * (1 + fanout)  # the frontier's items and its users' sampled items
    assert seen and all(0 < r <= bound < wide.n_items for rows in seen.values() for r in rows)
    assert emb.user.shape[0] <= len(batch.users) and emb.item.shape[0] <= 2 * len(batch.pos)
    assert all(v.shape[0] <= max(16, bound) for v in emb.views.values())
    loss = sum(model.loss(local, emb).values())
    assert torch.isfinite(loss)
    loss.backward()
    hp = model.hp
    # table rows a step touches: the neighbourhoods of the seeds and of the uniform item sample
    touched = (seeds + 16) * (1 + fanout) ** hp["n_ui_layers"] + seeds * (1 + fanout) ** hp["n_mm_layers"]
    for n, p in model.sparse_parameters().items():
        rows = len(p.grad.coalesce().indices()[0])
        assert 0 < rows <= touched < p.shape[0], n
    seen.clear()
    model.propagate()
    assert all(r == wide.n_items for rows in seen.values() for r in rows)


def test_lgmrec_modality_embedding_is_exact_at_any_fanout(handle):
    """Without a plug-in at the modality hooks, M^m and F_u^m are linear in the features, so the sampled step
    reads them exactly even at fan-out 1 (no sampled hops); a hook switches to the sampled hops."""
    model = _build("lgmrec", handle)
    model.eval()
    batch = _batch(handle, n=32, seed=3)
    bu, bi = torch.unique(batch.users), torch.unique(torch.cat([batch.pos, batch.neg]))
    mge = model._mge_sampled(bu, bi, MiniBatch((1,), torch.Generator().manual_seed(0)))
    for m in model.modalities:
        full_m, full_fu = model._mge(m)
        assert torch.allclose(mge[m][0], full_m[torch.cat([bu, bi + model.n_users])], atol=1e-6), m
        assert torch.allclose(mge[m][1], full_fu[bu], atol=1e-6), m
    model.install_hook("image", lambda name, h: h)
    model._csr = None
    model.propagate_batch(batch, MiniBatch((1,), torch.Generator().manual_seed(0)))  # builds the sampler
    hops = model._mge_sampled(bu, bi, MiniBatch((1,), torch.Generator().manual_seed(0)))
    assert not torch.allclose(hops["image"][0], mge["image"][0], atol=1e-6)  # fan-out 1 samples away


def test_lgmrec_sampled_step_with_mrdib(handle):
    """MRdIB on LGMRec in sampled mode: the hooks see the step's rows with the batch's items first, so the
    plug-in's per-item terms read the batch's items; its gradients reach the bottleneck."""
    from mrdib_cli.training.plugin import create_plugin, forward_terms

    model = _build("lgmrec", handle)
    plugin = create_plugin("mrdib", {"preset": "current"})  # the reading the sampled step supports
    plugin.attach(model)
    model.train(), plugin.train()
    batch = _batch(handle, n=32)
    emb, terms = forward_terms(model, plugin, batch, MiniBatch((3,), torch.Generator().manual_seed(2)))
    assert {"bpr", "hcl", "reg", "kl", "uni", "red"} <= set(terms)
    n_items = len(torch.unique(torch.cat([batch.pos, batch.neg])))
    assert all(plugin.latest(m).out.shape[0] >= n_items for m in plugin.hooks)
    total = sum(terms.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.user_embedding.grad.is_sparse
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in plugin.bottlenecks.parameters())


def test_lgmrec_hook_rows_start_with_the_batch_items(handle):
    """The plug-in indexes its hook rows with the re-indexed batch: row k must be the batch's k-th item."""
    model = _build("lgmrec", handle)
    model.eval()
    rows: dict[str, torch.Tensor] = {}
    model.install_hook("image", lambda name, h: rows.setdefault(name, h) if name not in rows else h)
    batch = _batch(handle, n=32, seed=4)
    _, local = model.propagate_batch(batch, MiniBatch((2,), torch.Generator().manual_seed(0)))
    full = model.feat_image @ model.trs["image"]
    items = torch.cat([batch.pos, batch.neg])
    assert torch.allclose(rows["image"][torch.cat([local.pos, local.neg])], full[items], atol=1e-6)


def test_cli_sampled_with_mrdib_trains_and_evaluates_in_full(cli, workdir):
    """End to end through the CLI on LGMRec, the slower of the two graph backbones with the plug-in (FREEDOM's
    sampled step is checked in-process above; one CLI run here keeps the suite's time in bounds)."""
    name = "lgmrec"
    import json

    make_dataset(workdir)
    code, _, err = cli("train", "-b", name, "--mrdib", "--mrdib-preset", "current", "--epochs", "2", "--threads",
                       "1", "--minibatch", "sampled", "--fanout", "4", "-n", "lg")
    assert code == 0, err
    run = workdir / "runs" / "lg"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(np.isfinite(x["loss"]["total"]) and x["loss"]["kl"] > 0 for x in lines)
    res = json.loads((run / "results.json").read_text())
    code, out, err = cli("eval", "--run", "lg", "--k", "20")
    assert code == 0, err
    ev = json.loads(next(run.glob("eval-*.json")).read_text())
    # the run's own test figures are a full-ranking evaluation of its best embeddings: `eval` agrees
    assert ev["metrics"]["recall@20"] == pytest.approx(res["test"]["recall@20"], abs=1e-9)
    code, _, err = cli("train", "-b", name, "--mrdib", "--epochs", "1", "--minibatch", "sampled", "-n", "dp")
    assert code == 2 and "add --mrdib-preset current" in err and "Traceback" not in err  # the default's reading
    code, _, err = cli("train", "-b", name, "--mrdib", "--no-dual-path", "--epochs", "1", "--minibatch", "sampled",
                       "-n", "dp")
    assert code == 2 and "input placement" in err and "add --placement projection" in err and "Traceback" not in err
    code, _, err = cli("train", "-b", name, "--mrdib", "--mrdib-preset", "current", "--dual-path", "--epochs", "1",
                       "--minibatch", "sampled", "-n", "dp")  # the setting at fault, not the preset already given
    assert code == 2 and "add --no-dual-path" in err and "preset current" not in err, err
    code, _, err = cli("train", "-b", name, "--mrdib", "--minibatch", "sampled", "--print-config")
    assert code == 2 and "dual path" in err  # refused when the configuration is resolved, as the run would be
    assert not (run.parent / "dp").exists()


@pytest.mark.parametrize("name", ["lightgcn", "lgmrec", "freedom"])
def test_a_node_budget_bounds_the_rows_a_step_touches(wide, name, monkeypatch):
    """Structural, not timed: with a budget B, the embedding rows a step reads (and updates) are at most its
    seeds plus B per hop of each neighbourhood it samples, however wide the fan-out and the catalogue."""
    import mrdib_cli.models.lgmrec as lgmrec_mod

    monkeypatch.setattr(lgmrec_mod, "GLOBAL_SAMPLE", 16)
    batch = _batch(wide, n=8, seed=5)
    model = _build(name, wide)
    model.train()
    budget = 5
    emb, local = model.propagate_batch(batch, MiniBatch((50,), torch.Generator().manual_seed(0), budget))
    sum(model.loss(local, emb).values()).backward()
    seeds = len(torch.unique(batch.users)) + len(torch.unique(torch.cat([batch.pos, batch.neg])))
    hops = model.hp.get("n_layers", model.hp.get("n_ui_layers"))
    if name == "lgmrec":
        seeds += 16  # the uniform item sample joins the collaborative neighbourhood's seeds
    if name == "freedom":  # its item table is also read over the item-item graph's hops from the batch's items
        hops += model.hp["n_mm_layers"]
    rows = sum(len(p.grad.coalesce().indices()[0]) for p in model.sparse_parameters().values()
               if p.grad is not None and p.dim() == 2 and p.shape[1] == model.dim)
    assert 0 < rows <= seeds + hops * budget
    unbounded = _build(name, wide)
    unbounded.train()
    emb, local = unbounded.propagate_batch(batch, MiniBatch((50,), torch.Generator().manual_seed(0)))
    sum(unbounded.loss(local, emb).values()).backward()
    assert sum(len(p.grad.coalesce().indices()[0]) for p in unbounded.sparse_parameters().values()
               if p.grad is not None and p.dim() == 2 and p.shape[1] == model.dim) > seeds + hops * budget


def test_ranks_share_lgmrec_uniform_samples(wide, monkeypatch):
    """LGMRec's uniform candidates are drawn once per step: with N ranks each rank draws its share (rounded up),
    as the batch and the node budget are split, so N ranks do not each repeat one process's sample."""
    import mrdib_cli.models.lgmrec as lgmrec_mod

    sizes: list[int] = []
    real = lgmrec_mod.uniform_sample
    monkeypatch.setattr(lgmrec_mod, "GLOBAL_SAMPLE", 15)
    monkeypatch.setattr(lgmrec_mod, "uniform_sample",
                        lambda n, size, *a, **k: sizes.append(size) or real(n, size, *a, **k))
    model = _build("lgmrec", wide)
    model.train()
    batch = _batch(wide, n=8, seed=5)
    for ranks in (1, 2, 4):
        model.propagate_batch(batch, MiniBatch((50,), torch.Generator().manual_seed(0), ranks=ranks))
    assert sizes == [15, 15, 8, 8, 4, 4]  # items and users, per call


@pytest.mark.parametrize("name,over,hooked", [("lightgcn", {"n_layers": 3}, False), ("vbpr", {}, False),
                                              ("freedom", {"n_ui_layers": 1, "n_mm_layers": 2}, False),
                                              ("lgmrec", {"n_ui_layers": 1, "n_mm_layers": 2}, False),
                                              ("lgmrec", {"n_ui_layers": 1, "n_mm_layers": 2}, True)])
def test_sampled_hops_is_the_deepest_hop_a_step_draws(handle, name, over, hooked, monkeypatch):
    """The configuration refuses fan-outs past ``sampled_hops``: it must be what a step really reads."""
    model = _build(name, handle, **over)
    if hooked:
        for m in model.get_hook_points():
            model.install_hook(m, lambda _, h: h)
    asked: list[int] = []
    hops = MiniBatch.hops
    monkeypatch.setattr(MiniBatch, "hops", lambda self, n: asked.append(n) or hops(self, n))
    model.propagate_batch(_batch(handle), MiniBatch((4,), torch.Generator().manual_seed(0)))
    assert max(asked, default=0) == type(model).sampled_hops(model.hp, hooked)


def test_fanouts_past_the_sampled_hops_are_refused_when_resolved():
    from mrdib_cli.errors import UsageError
    from mrdib_cli.training.resolve import resolve_run

    def resolve(backbone: str, fanout: list[int], **hparams) -> None:
        resolve_run(flags={"backbone": backbone, "dataset": "d", "hparams": hparams,
                           "train": {"minibatch": "sampled", "fanout": fanout}})

    resolve("lightgcn", [10, 5], n_layers=2)  # one value per hop
    resolve("lightgcn", [10], n_layers=3)  # the last value serves the deeper hops
    with pytest.raises(UsageError, match="samples 2 hop.*raise n_layers"):
        resolve("lightgcn", [10, 5, 5], n_layers=2)
    stored = {"backbone": "lightgcn", "dataset": "d", "hparams": {"n_layers": 1},
              "train": {"minibatch": "sampled", "fanout": [10, 5]}}  # a run stored before the check
    with pytest.raises(UsageError, match="--force, or as a new run"):
        resolve_run(stored=stored)
    with pytest.raises(UsageError, match=r"fanout \(--fanout\) must be .* to 2147483647"):  # would overflow the sampler
        resolve("lightgcn", [2**63])
    with pytest.raises(UsageError, match="no graph neighbourhood"):
        resolve("vbpr", [5])
    with pytest.raises(UsageError, match="no graph neighbourhood"):
        resolve("vbpr", [10])  # the default's value, typed: the user expects it to shape the run
    resolve_run(flags={"backbone": "vbpr", "dataset": "d", "train": {"minibatch": "sampled"}},
                file={"train": {"fanout": [10]}})  # a file may hold the default (--print-config writes it)
    with pytest.raises(UsageError, match="node_budget"):
        resolve_run(flags={"backbone": "vbpr", "dataset": "d",
                           "train": {"minibatch": "sampled", "node_budget": 100}})
