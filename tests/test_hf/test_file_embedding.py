"""An untied input embedding read from its file a row per token gives what the loaded nn.Embedding gives."""

from __future__ import annotations

import copy
import gc
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from neuronforge.hf.file_embedding import FileEmbedding
from neuronforge.hf.folders import load_model, weight_map

KEY = "model.embed_tokens.weight"


def _file(folder: Path) -> Path:
    return folder / weight_map(folder)[KEY]


@torch.inference_mode()
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_rows_are_those_of_the_loaded_embedding(make_tiny_llama, dtype: torch.dtype) -> None:
    folder = make_tiny_llama(f"rows-{dtype}", dtype=dtype, tie_word_embeddings=False)
    loaded = load_model(folder).model.embed_tokens
    from_file = FileEmbedding.from_file(_file(folder), KEY, torch.bfloat16)
    ids = torch.tensor([[5, 3, 5, 511, 0, 3], [7, 7, 7, 1, 2, 511]])  # repeats, both ends of the vocabulary
    got = from_file(ids)
    assert got.dtype == torch.bfloat16 and torch.equal(got, loaded(ids))  # cast as load_model casts: same bits
    assert from_file(ids[:, :0]).shape == loaded(ids[:, :0]).shape == (2, 0, 64)
    assert list(from_file.parameters()) == [] and list(from_file.buffers()) == []  # nothing of it is held


def test_ids_outside_the_vocabulary_raise_as_nn_embedding_does(make_tiny_llama) -> None:
    folder = make_tiny_llama("rows-range", tie_word_embeddings=False)
    from_file, loaded = (
        FileEmbedding.from_file(_file(folder), KEY, torch.bfloat16),
        load_model(folder).model.embed_tokens,
    )
    for bad in ([0, 512], [-1, 4]):
        for module in (loaded, from_file):
            with pytest.raises(IndexError):
                module(torch.tensor([bad]))


def test_rows_come_from_the_file_it_was_made_from(make_tiny_llama, tmp_path: Path) -> None:
    """The file is opened at load: a checkpoint renamed over later does not change the model. It is closed with the
    module, and a copy of the module, which would share it, is refused."""
    folder = make_tiny_llama("rows-replaced", tie_word_embeddings=False)
    file = tmp_path / "embedding.safetensors"
    save_file({KEY: load_model(folder).model.embed_tokens.weight.detach().clone()}, file)
    from_file = FileEmbedding.from_file(file, KEY, torch.bfloat16)
    ids = torch.arange(0, 512, 7)[None]
    before = from_file(ids)
    save_file({KEY: torch.zeros(512, 64, dtype=torch.bfloat16)}, tmp_path / "new.safetensors")
    os.replace(tmp_path / "new.safetensors", file)
    assert torch.equal(from_file(ids), before) and before.abs().sum() > 0
    with pytest.raises(TypeError):  # a copy would share the descriptor
        copy.deepcopy(from_file)
    fd = from_file.file.fileno()
    del from_file
    gc.collect()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_only_floating_point_matrices_are_read_by_rows(tmp_path: Path) -> None:
    file = tmp_path / "mixed.safetensors"
    save_file({"float": torch.ones(4, 2), "codes": torch.ones(4, 2, dtype=torch.int8), "vector": torch.ones(4)}, file)

    def read(key: str) -> FileEmbedding | None:
        return FileEmbedding.from_file(file, key, torch.bfloat16)

    assert read("float") is not None and read("codes") is None and read("vector") is None
    assert read("absent") is None
