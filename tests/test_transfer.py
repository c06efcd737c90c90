"""One study's winner as the next study's backbone: `--weights` pointing at an export folder.

The demo study (digits, 10 classes) trains one LoRA grid point for an epoch and is exported
with `search export --weights`; a new study on generated images of 3 classes starts from that
folder. Its backbone must equal the exported merged weights and its head be new.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from run_cli import DEMO, FAST, board, search, search_in_process
from safetensors.torch import load_file, save_file

from objectives.export_folder import MERGED_FILE
from objectives.model import (
    ModelError,
    build_model,
    create_backbone,
    fuse_qkv_state_dict,
    head_name,
)
from objectives.spec import LoraParams, TrainSpec
from search.study.study_spec import train_spec_from_dict

SHAPES = 3  # classes of the generated dataset


def write_shapes_dataset(root: Path, per_class: int = 12) -> None:
    """32 px RGB images of 3 classes (horizontal bars, vertical bars, a square), with noise."""
    rng = np.random.default_rng(0)
    for index in range(per_class):
        for name in ("horizontal", "vertical", "square"):
            image = rng.integers(0, 60, (32, 32), dtype=np.uint8)
            if name == "horizontal":
                image[::6] = 230
            elif name == "vertical":
                image[:, ::6] = 230
            else:
                image[8:24, 8:24] = 230
            folder = root / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).convert("RGB").save(folder / f"{index}.png")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A demo study (baseline + rank 2, alpha 2; one epoch) with its LoRA trial exported to
    `exp/` in the same folder."""
    folder = tmp_path_factory.mktemp("transfer")
    search("grid", *FAST, "--ranks", "2", "--alphas", "2", "--workers", "1", cwd=folder)
    lora = next(row for row in board(folder) if not row["baseline"])
    search("export", "--study", "demo", "--trial", str(lora["number"]), "--out", "exp.json",
           "--weights", "exp", cwd=folder)
    return folder


def exported_spec(folder: Path, **changes) -> TrainSpec:
    """The exporting study's spec, starting from the export folder instead of its weights."""
    document = json.loads((folder / "exp" / "search_export.json").read_text())
    values = {**document["spec"], "weights": str(folder / "exp"), **changes}
    return train_spec_from_dict(values, "test")


def test_a_new_study_runs_from_the_export_folder(exported: Path) -> None:
    images = exported / "shapes"
    write_shapes_dataset(images)
    result = search("grid", *FAST, "--study", "shapes", "--dataset", f"imagefolder:{images}",
                    "--weights", "exp", "--ranks", "2", "--alphas", "2", "--workers", "1",
                    cwd=exported)
    assert "Traceback" not in result.stderr
    rows = board(exported, "shapes")
    assert len(rows) == 2 and {row["state"] for row in rows} == {"COMPLETE"}
    # Its own winner exports in turn (rebuilt on the first export, its trained part loaded).
    search("export", "--study", "shapes", "--out", "shapes.json", "--weights", "shapes-best",
           cwd=exported)
    document = json.loads((exported / "shapes.json").read_text())
    assert document["spec"]["weights"] == str(exported / "exp")
    assert document["classes"] == ["horizontal", "square", "vertical"]
    merged = load_file(str(exported / "shapes-best" / MERGED_FILE))
    assert merged["head.weight"].shape[0] == SHAPES


@pytest.mark.parametrize("num_classes", [SHAPES, 10])
def test_backbone_starts_as_the_exported_weights_with_a_new_head(exported: Path,
                                                                num_classes: int) -> None:
    merged = load_file(str(exported / "exp" / MERGED_FILE))
    spec = exported_spec(exported)
    model = build_model(spec, num_classes, None)
    head = head_name(model)
    state = fuse_qkv_state_dict(model.state_dict())  # q/k/v were split after loading
    backbone = {key for key in merged if not key.startswith(head + ".")}
    assert backbone == {key for key in state if not key.startswith(head + ".")}
    for key in backbone:
        torch.testing.assert_close(state[key], merged[key], rtol=0, atol=0, msg=key)
    # The LoRA trial had 10 classes; the new head has the new count and is never the old one,
    # even when the counts agree (10: the digits again).
    assert state[f"{head}.weight"].shape == (num_classes, spec.model_kwargs["embed_dim"])
    if num_classes == merged[f"{head}.weight"].shape[0]:
        assert not torch.allclose(state[f"{head}.weight"], merged[f"{head}.weight"])
    # A LoRA model starts on the same backbone (its adapters' B is zero).
    lora = build_model(spec, num_classes, LoraParams(2, 2, 0.0))
    query = lora.get_submodule("base_model.model.blocks.0.attn.qkv.q.base_layer").weight
    dim = spec.model_kwargs["embed_dim"]
    torch.testing.assert_close(query, merged["blocks.0.attn.qkv.weight"][:dim], rtol=0, atol=0)


def test_a_plain_checkpoint_still_loads_as_before(exported: Path) -> None:
    spec = exported_spec(exported, weights=str(exported / "exp" / MERGED_FILE))
    merged = load_file(str(exported / "exp" / MERGED_FILE))
    state = fuse_qkv_state_dict(create_backbone(spec, SHAPES).state_dict())
    torch.testing.assert_close(state["pos_embed"], merged["pos_embed"], rtol=0, atol=0)


def test_weights_that_do_not_fit_name_the_difference(exported: Path) -> None:
    spec = exported_spec(exported)
    smaller = TrainSpec(**{**spec.__dict__, "model_kwargs": {**spec.model_kwargs, "depth": 2}})
    with pytest.raises(ModelError) as caught:
        create_backbone(smaller, SHAPES)
    message = str(caught.value)
    assert "do not fit" in message and "model_kwargs.depth: 4 -> 2" in message
    assert "\n" not in message

    # Without search_export.json the keys themselves are named.
    bare = exported / "bare"
    bare.mkdir()
    (bare / MERGED_FILE).write_bytes((exported / "exp" / MERGED_FILE).read_bytes())
    with pytest.raises(ModelError, match="blocks.2.attn.proj.bias not in the model; .* more$"):
        create_backbone(TrainSpec(**{**smaller.__dict__, "weights": str(bare)}), SHAPES)


def test_unusable_folders_are_model_errors(exported: Path, tmp_path: Path) -> None:
    spec = exported_spec(exported)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match=f"{empty} has no {MERGED_FILE}"):
        create_backbone(TrainSpec(**{**spec.__dict__, "weights": str(empty)}), SHAPES)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / MERGED_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="cannot read"):
        create_backbone(TrainSpec(**{**spec.__dict__, "weights": str(damaged)}), SHAPES)
    # A file with an unrelated tensor: every backbone key is missing.
    stray = tmp_path / "stray"
    stray.mkdir()
    save_file({"something": torch.zeros(2)}, str(stray / MERGED_FILE))
    with pytest.raises(ModelError, match="missing from the file"):
        create_backbone(TrainSpec(**{**spec.__dict__, "weights": str(stray)}), SHAPES)


def test_cli_refuses_an_empty_folder_with_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = search_in_process(["grid", *FAST, "--weights", "empty", "--workers", "0"],
                                     tmp_path, capsys, monkeypatch)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"has no {MERGED_FILE}" in lines[0], err
    assert not (tmp_path / "search.db").exists()


def test_cli_refuses_a_spec_whose_model_does_not_fit(exported: Path, capsys,
                                                     monkeypatch) -> None:
    text = Path(DEMO).read_text()
    text = text.replace('weights = "weights/demo-vit-tiny-mnist.safetensors"', 'weights = "exp"')
    text = text.replace("depth = 4", "depth = 2").replace('name = "demo"', 'name = "smaller"')
    assert 'weights = "exp"' in text and "depth = 2" in text
    (exported / "smaller.toml").write_text(text)  # `weights` is relative to the spec file
    code, _, err = search_in_process(["grid", "--spec", "smaller.toml", "--workers", "0",
                                      "--study", "smaller"], exported, capsys, monkeypatch)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "model_kwargs.depth: 4 -> 2" in lines[0], err
    code, _, err = search_in_process(["leaderboard", "--study", "smaller"], exported, capsys,
                                     monkeypatch)
    assert code == 2 and "no study named 'smaller'" in err
