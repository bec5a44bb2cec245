"""Embeddings: penultimate features streamed in batches into TensorBoard's projector."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_untouched, model_state
from PIL import Image

import introspect
import introspect.images
from introspect.cli import main
from introspect.inputs import prepare_inputs, stream_inputs
from introspect.tensorboard import Reporter, new_run_dir


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)).save(photos / f"p{i} x.png")
    (photos / "notes.txt").write_text("not an image")
    return photos


def test_stream_reads_one_batch_at_a_time(folder, monkeypatch):
    calls = []
    original = introspect.images.load_image
    monkeypatch.setattr(introspect.images, "load_image", lambda p, **k: calls.append(p) or original(p, **k))
    stream = stream_inputs(folder, batch_size=2)
    assert len(stream) == 5 and calls == []  # nothing decoded up front
    batches = iter(stream)
    first = next(batches)
    assert len(first) == 2 and len(calls) == 2
    rest = list(batches)
    assert [len(b) for b in rest] == [2, 1] and len(calls) == 5
    assert first.names == ("p0_x", "p1_x")


def test_features_equal_the_penultimate_layer_by_hand(tiny_cnn, folder):
    model = tiny_cnn("small", width=12)
    loaded = introspect.load_model(model, input_size=32)
    before = model_state(model)
    result = introspect.embeddings(loaded, [folder], batch_size=2, thumbnail_size=16, progress=False)
    assert_untouched(before, model)
    batch = prepare_inputs([folder], loaded)
    with torch.no_grad():
        expected = torch.flatten(model.pool(model.features(batch.tensor)), 1)
        probs = torch.softmax(model(batch.tensor), dim=1)
    assert result.layer == "fc input"
    assert result.features.shape == (5, 12)
    np.testing.assert_allclose(result.features, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert result.image_names == batch.names
    assert result.predicted_indices == tuple(int(i) for i in probs.argmax(dim=1))
    assert result.files == tuple(str(folder / f"p{i} x.png") for i in range(5))
    assert result.thumbnails.shape == (5, 16, 16, 3) and result.thumbnails.dtype == np.uint8


def test_reporter_writes_the_projector_files(tiny_cnn, folder, tmp_path):
    loaded = introspect.load_model(tiny_cnn("small", width=12), input_size=32)
    result = introspect.embeddings(loaded, [folder], batch_size=3, progress=False)
    run = new_run_dir(tmp_path / "logs", "emb", "tiny")
    with Reporter(run) as rep:
        rep.embedding(result)
    assert rep.tags == {"embeddings": 1}
    config = (run / "projector_config.pbtxt").read_text()
    assert 'tensor_name: "embeddings/fc:00000"' in config
    assert "metadata.tsv" in config and "sprite.png" in config and "tensors.tsv" in config
    data = run / "00000" / "embeddings%2ffc"
    rows = [line.split("\t") for line in (data / "tensors.tsv").read_text().splitlines()]
    assert len(rows) == 5 and all(len(r) == 12 for r in rows)
    np.testing.assert_allclose(np.array(rows, dtype=np.float32), result.features, rtol=1e-5)
    meta = (data / "metadata.tsv").read_text().splitlines()
    assert meta[0] == "file name\tpredicted class\tprobability"
    assert [m.split("\t")[0] for m in meta[1:]] == [str(folder / f"p{i} x.png") for i in range(5)]
    assert [m.split("\t")[1] for m in meta[1:]] == list(result.predicted_names)
    sprite = Image.open(data / "sprite.png")
    assert sprite.size == (3 * 48, 3 * 48)  # ceil(sqrt(5)) thumbnails of 48 px a side


def test_cli_embeddings_section_streams_without_loading_the_batch(folder, tmp_path):
    code = main(["resnet18", "--weights", "none", "--input-size", "64", "--image", str(folder),
                 "--sections", "embeddings", "--logdir", str(tmp_path), "--run-name", "e"])
    assert code == 0
    run = tmp_path / "e"
    assert 'tensor_name: "embeddings/fc:00000"' in (run / "projector_config.pbtxt").read_text()
    rows = (run / "00000" / "embeddings%2ffc" / "tensors.tsv").read_text().splitlines()
    assert len(rows) == 5 and len(rows[0].split("\t")) == 512  # resnet18's fc input


def test_cli_embeddings_without_image_is_a_usage_error(tmp_path, capsys):
    code = main(["resnet18", "--weights", "none", "--sections", "embeddings", "--logdir", str(tmp_path)])
    assert code == 2
    assert "--image" in capsys.readouterr().err
