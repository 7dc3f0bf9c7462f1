"""The CLI as a user runs it: extraction, listing, and one-line errors with the documented exit codes."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.features.fixtures import awkward_dataset, run_cli  # noqa: F401 - pytest fixtures
from tests.features.helpers import TINY_ARGS, TINY_CONFIG


def test_extract_and_ls(cli, run_cli, awkward_dataset) -> None:
    """End to end through the real entry point (one subprocess), then the listing in-process."""
    d, _, _ = awkward_dataset
    rc, out, err = cli("extract-features", "--modality", "image", *TINY_ARGS, "--max-pixels", "100000",
                       "--device", "cpu", "--workers", "0")
    assert rc == 0, err
    assert "RANDOM" in err and "warning" in err  # random weights are announced
    assert "image-tiny-vit-test-random.parquet" in out and "50.0%" in out
    rc, out, err = run_cli("features", "ls")
    assert rc == 0, err
    assert "tiny-vit-test" in out and "weights=random" in out and "(6/12)" in out


def one_line(err: str) -> str:
    """The one error line (the command's first line, naming its dataset, may come before it)."""
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_random_weights_need_explicit_consent(run_cli, awkward_dataset) -> None:
    rc, _, err = run_cli("extract-features", "--image-model-config", str(TINY_CONFIG), "--image-model", "tiny-vit-test",
                     "--image-pretrained", "none")
    assert rc == 2 and "--allow-random-weights" in one_line(err)


def test_offline_pretrained_weights_stop_before_work(run_cli, awkward_dataset, monkeypatch) -> None:
    import huggingface_hub.constants as hc

    d, _, _ = awkward_dataset
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(d / "empty-hf"))  # whatever this machine has cached
    rc, _, err = run_cli("extract-features", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(d / "empty-hf")})
    line = one_line(err)
    assert rc == 3 and "--image-checkpoint" in line and "HF_HOME" in line
    assert not (d / "features").exists() and not (d / "manifests").exists()


def test_unknown_tag_and_model(run_cli, awkward_dataset) -> None:
    rc, _, err = run_cli("extract-features", "--image-pretrained", "no-such-tag")
    assert rc == 2 and "laion2b_s34b_b79k" in one_line(err)
    rc, _, err = run_cli("extract-features", "--image-model", "ViT-Nope")
    assert rc == 2 and "unknown open_clip model" in one_line(err)


def test_checkpoint_equals_seeded_random_and_mismatch_is_one_line(run_cli, awkward_dataset, tmp_path: Path) -> None:
    import open_clip

    open_clip.add_model_config(TINY_CONFIG)
    torch.manual_seed(999)
    model = open_clip.create_model("tiny-vit-test", pretrained=None)
    ckpt = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    base = ["extract-features", "--modality", "image", "--image-model-config", str(TINY_CONFIG),
            "--image-model", "tiny-vit-test", "--device", "cpu", "--workers", "0", "--max-pixels", "100000"]
    rc, out, err = run_cli(*base, "--image-checkpoint", str(ckpt))
    assert rc == 0, err
    rc, out, err = run_cli(*base, "--image-pretrained", "none", "--allow-random-weights", "--seed", "999")
    assert rc == 0, err
    from mrdib_cli.data.feature_store import read_feature_table

    feats = sorted((awkward_dataset[0] / "features").glob("image-*.parquet"))
    assert [p.name.split("-")[-2] for p in feats] == ["ckpt", "tiny"] or len(feats) == 2
    a, b = (read_feature_table(p) for p in feats)
    ck = a if a.meta["weights"] == "checkpoint" else b
    rnd = b if ck is a else a
    assert ck.meta["weights_digest"].startswith("sha256:") and ck.meta["random_weights"] is False
    assert (ck.vectors == rnd.vectors).all()  # same weights -> same features, whichever way they came

    wide = tmp_path / "tiny-vit-wide.json"
    wide.write_text(TINY_CONFIG.read_text().replace('"width": 32', '"width": 48'))
    rc, _, err = run_cli("extract-features", "--modality", "image", "--image-model-config", str(wide),
                     "--image-model", "tiny-vit-wide", "--image-checkpoint", str(ckpt))
    assert rc == 2 and "does not fit tiny-vit-wide" in one_line(err)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    rc, _, err = run_cli(*base, "--image-checkpoint", str(garbage))
    assert rc == 1 and "cannot load checkpoint" in one_line(err)
    rc, _, err = run_cli(*base, "--image-checkpoint", str(tmp_path / "absent.pt"))
    assert rc == 3 and "not found" in one_line(err)


def test_cuda_request_without_cuda(run_cli, awkward_dataset) -> None:
    if torch.cuda.is_available():
        return
    rc, _, err = run_cli("extract-features", "--modality", "image", *TINY_ARGS, "--device", "cuda")
    assert rc == 2 and "CUDA is not available" in one_line(err)


def test_demo_dataset_pngs_found_without_options(run_cli, workdir: Path) -> None:
    """The demo's card points at its PNGs: extraction needs no image options and every item is ok."""
    rc, _, err = run_cli("prepare", "demo", "--users", "30", "--items", "40", "--interactions", "300",
                         "--image-size", "32")
    assert rc == 0, err
    rc, out, err = run_cli("extract-features", "--modality", "image", *TINY_ARGS, "--device", "cpu",
                           "--workers", "1", "--shard-size", "16")
    assert rc == 0, err
    from mrdib_cli.data.handle import DatasetHandle
    from mrdib_cli.workspace import Workspace

    h = DatasetHandle.open(Workspace(workdir))
    ft = h.features("image")  # the newest image table, validated against the dataset
    assert ft.vectors.shape == (h.n_items, 16) and (ft.status == "ok").all()
    assert ft.meta["image_source"]["kind"] == "dir" and ft.meta["image_source"]["image_dir"] == h.card["image_dir"]
    assert ft.meta["coverage"]["coverage"] == 1.0


def test_text_model_offline_or_missing_is_exit_3(run_cli, awkward_dataset, tmp_path: Path) -> None:
    rc, _, err = run_cli("extract-features", "--modality", "text", "--text-model", "some-org/not-cached-model")
    assert rc == 3 and "--text-model PATH" in one_line(err)
    rc, _, err = run_cli("extract-features", "--modality", "text", "--text-model", str(tmp_path / "nope"))
    assert rc == 3 and "not found" in one_line(err)
    assert not (awkward_dataset[0] / "features").exists()


def test_threads_option_sets_the_encoders_threads(run_cli, awkward_dataset, monkeypatch) -> None:
    """--threads N gives the encoders N torch threads and says so (torch's default, every core, is slower on
    a busy machine); without it the free cores are taken, with the reason on the same line."""
    seen: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    args = ("extract-features", "--modality", "image", *TINY_ARGS, "--device", "cpu", "--workers", "0",
            "--max-pixels", "100000")
    rc, _, err = run_cli(*args, "--threads", "1")
    assert rc == 0, err
    assert seen == [1] and "1 torch CPU thread (--threads)" in err
    for auto in ((), ("--threads", "0")):  # 0 means the default, as in train
        seen.clear()
        rc, _, err = run_cli(*args, "--force", *auto)
        assert rc == 0, err
        assert len(seen) == 1 and seen[0] >= 1 and "auto from load" in err
