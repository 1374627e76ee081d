"""The disk-offloaded mode's save and load (`workers/models/streaming_save.py`,
`workers/models/decompressed.py`): an offloaded model quantized by a stage is written module by
module into the very files the in-memory save writes, sharded as transformers shards, and the
artifact decompressed module by module computes exactly what transformers' load computes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from workers.formats.loader import load_pretrained
from workers.methods.recipe import RecipeOutcome, parse_stages, run_stages, save_artifact
from workers.models.decompressed import open_artifact_offloaded
from workers.models.offloaded import open_offloaded
from workers.models.streaming_save import INDEX

CPU = torch.device("cpu")
CALIBRATION = torch.randint(0, 400, (4, 32), generator=torch.Generator().manual_seed(0)).tolist()


def _compress(
    model_dir: Path,
    tmp: Path,
    method: str,
    params: dict[str, object],
    *,
    offloaded: bool,
    shard: int | None = None,
) -> Path:
    model = (
        open_offloaded(model_dir, tmp / "offload", onload_device=CPU)
        if offloaded
        else load_pretrained(model_dir).eval()
    )
    stages = parse_stages([{"method": method, "params": params}])
    outcome = run_stages(model, None, stages, CALIBRATION, None, scratch=tmp / "stage")
    out = tmp / ("offloaded" if offloaded else "in-memory")
    save_artifact(outcome, None, out, max_shard_bytes=shard, offloaded=offloaded)
    return out


def _files(path: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in path.glob("*.safetensors")}


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for file in path.glob("*.safetensors"):
        found.update(load_file(file))
    return found


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_the_offloaded_save_writes_the_in_memory_saves_files(
    tiny_model_dir: Path, tmp_path: Path, method: str
) -> None:
    params = {"bits": 4, "group_size": 32}
    memory = _compress(tiny_model_dir, tmp_path / "a", method, params, offloaded=False)
    disk = _compress(tiny_model_dir, tmp_path / "b", method, params, offloaded=True)
    assert _files(disk) == _files(memory)  # byte for byte: the same integers, scales, layout
    quantization = [
        json.loads((d / "config.json").read_text())["quantization_config"] for d in (memory, disk)
    ]
    assert quantization[0] == quantization[1]
    assert quantization[1]["quantization_status"] == "compressed"


def test_sharded_offloaded_save_loads_with_transformers_and_its_decompression_matches(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Asymmetric (zero points stored) and shards far below the model's size.
    params = {"bits": 4, "group_size": 32, "symmetric": False}
    memory = _compress(tiny_model_dir, tmp_path / "a", "rtn", params, offloaded=False, shard=20_000)
    disk = _compress(tiny_model_dir, tmp_path / "b", "rtn", params, offloaded=True, shard=20_000)
    expected, written = _tensors(memory), _tensors(disk)
    assert expected.keys() == written.keys()
    assert all(torch.equal(expected[k], written[k]) for k in expected)
    shards = sorted(f.name for f in disk.glob("*.safetensors"))
    assert len(shards) > 2
    for file in disk.glob("*.safetensors"):
        # Over the limit only when one module's tensors alone exceed it (the embedding).
        modules = {name.rsplit(".", 1)[0] for name in load_file(file)}
        assert file.stat().st_size <= 20_000 + 4096 or len(modules) == 1, file.name
    index = json.loads((disk / INDEX).read_text())
    assert (
        set(index["weight_map"]) == set(written)
        and sorted(set(index["weight_map"].values())) == shards
    )

    ids = torch.randint(0, 400, (2, 24), generator=torch.Generator().manual_seed(1))
    loaded = load_pretrained(disk).eval()  # plain transformers, from the streamed shards
    streamed = open_artifact_offloaded(
        disk, tmp_path / "check", onload_device=CPU, dtype=torch.float32
    )
    with torch.no_grad():
        reference = load_pretrained(memory).eval()(ids).logits
        assert torch.equal(loaded(ids).logits, reference)
        assert torch.equal(streamed(ids).logits, reference)


def test_an_offloaded_model_refuses_a_layout_it_cannot_stream(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = open_offloaded(tiny_model_dir, tmp_path / "offload", onload_device=CPU)
    outcome = RecipeOutcome(
        model, save_format="dense", sparse_layers=["model.layers.0.mlp.up_proj"]
    )
    with pytest.raises(ValueError, match="only as a compressed-tensors checkpoint"):
        save_artifact(outcome, None, tmp_path / "out", offloaded=True)
    assert not (tmp_path / "out").exists()


def test_the_shard_writer_writes_save_files_bytes_from_a_spill(tmp_path: Path) -> None:
    """Every dtype a checkpoint holds, a 0-d and an empty tensor: the shard is byte for byte
    what safetensors' `save_file` writes, though no tensor waited in memory for it."""
    from safetensors.torch import save_file

    from workers.models.streaming_save import ShardWriter

    tensors = {
        "layer.weight_packed": torch.randint(0, 2**30, (8, 4), dtype=torch.int32),
        "layer.weight_scale": torch.randn(8, 2, dtype=torch.bfloat16),
        "layer.weight_shape": torch.tensor([8, 32]),
        "norm.weight": torch.randn(5),
        "mask": torch.zeros(3, dtype=torch.bool),
        "zero_point": torch.randint(-8, 8, (4,), dtype=torch.int8),
        "scalar": torch.tensor(2.5, dtype=torch.float16),
        "empty": torch.zeros(0),
    }
    writer = ShardWriter(tmp_path / "out", max_shard_bytes=10**9)
    writer.add(dict(list(tensors.items())[:4]))
    writer.add(dict(list(tensors.items())[4:]))
    assert writer.close() == [tmp_path / "out" / "model.safetensors"]
    save_file(tensors, str(tmp_path / "reference.safetensors"), metadata={"format": "pt"})
    written = (tmp_path / "out" / "model.safetensors").read_bytes()
    assert written == (tmp_path / "reference.safetensors").read_bytes()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.safetensors"]
