"""The embedding cache's folders per backbone: which ones a full cycle deletes and which it keeps (real files)."""
import json
import os
from pathlib import Path

import pytest

from components.trainer import cycles, embedding_cache
from components.trainer.config import TrainerConfig
from serving.contract import MODEL_METADATA_FILE
from tests.fileio.ram import ram_root, tree, upload

SHARD = embedding_cache.SHARD_SUFFIX


def _backbone(cache: Path, name: str, written: float | None) -> None:
    """A backbone folder whose newest shard was written at `written` (seconds since the epoch); None: no shard."""
    folder = cache / name
    folder.mkdir(parents=True)
    (folder / f".tmp-partial{SHARD}").write_bytes(b"")  # a crashed writer's orphan: not a shard
    if written is not None:
        for offset, shard in ((-100, f"{embedding_cache.REFERENCE_SHARD}{SHARD}"), (0, f"later{SHARD}")):
            path = folder / shard
            path.write_bytes(b"rows")
            os.utime(path, (written + offset, written + offset))


def _folders(cache: Path) -> set[str]:
    return {path.name for path in cache.iterdir()}


@pytest.fixture
def cache(tmp_path):
    cache = tmp_path / "Embeddings"
    for name, written in (("empty", None), ("oldest", 1_000), ("old", 2_000), ("recent", 3_000),
                          ("newest", 4_000)):
        _backbone(cache, name, written)
    return cache


def test_prune_keeps_the_most_recently_written_backbones_and_every_one_in_use(cache):
    removed = embedding_cache.prune(str(cache), keep=3, in_use=["new", "oldest"])
    # "new" is not there yet (in use but absent): "oldest" counts towards keep, then the two newest.
    assert sorted(removed) == ["empty", "old"]
    assert _folders(cache) == {"oldest", "recent", "newest"}


def test_prune_keeps_what_is_in_use_even_beyond_keep(cache):
    assert sorted(embedding_cache.prune(str(cache), keep=1, in_use=["old", "recent"])) == ["empty", "newest", "oldest"]
    assert _folders(cache) == {"old", "recent"}


def test_prune_works_on_an_object_store(cache):
    remote = upload(cache, ram_root("embedding-cache") + "/Embeddings")
    assert sorted(embedding_cache.prune(remote, keep=1, in_use=["old"])) == ["empty", "newest", "oldest", "recent"]
    assert tree(remote) == {f"old/.tmp-partial{SHARD}", f"old/{embedding_cache.REFERENCE_SHARD}{SHARD}",
                            f"old/later{SHARD}"}


def test_prune_without_a_cache_folder_does_nothing(tmp_path):
    assert embedding_cache.prune("", keep=1, in_use=[]) == []
    assert embedding_cache.prune(str(tmp_path / "absent"), keep=1, in_use=[]) == []


def _model_dir(root: Path, metadata: dict) -> Path:
    path = root / "Format-Serving" / MODEL_METADATA_FILE
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(metadata))
    return root / "Format-Serving"


def test_after_a_full_cycle_the_serving_models_backbone_is_kept(cache, tmp_path):
    config = TrainerConfig(embedding_cache_dir=str(cache), embedding_cache_keep=2)
    base = _model_dir(tmp_path / "base", {"labels": ["a"], "backbone": "oldest"})
    assert sorted(cycles.prune_embeddings(config, "newest", base)) == ["empty", "old", "recent"]
    assert _folders(cache) == {"oldest", "newest"}


def test_a_serving_model_that_does_not_name_its_backbone_leaves_the_cache_alone(cache, tmp_path):
    config = TrainerConfig(embedding_cache_dir=str(cache), embedding_cache_keep=1)
    base = _model_dir(tmp_path / "base", {"labels": ["a"]})
    assert cycles.prune_embeddings(config, "newest", base) == []
    assert len(_folders(cache)) == 5


def test_a_first_full_cycle_has_no_serving_model_to_keep(cache):
    config = TrainerConfig(embedding_cache_dir=str(cache), embedding_cache_keep=1)
    cycles.prune_embeddings(config, "recent", None)
    assert _folders(cache) == {"recent"}


def test_the_cache_keeps_at_least_one_backbone():
    with pytest.raises(ValueError, match="embedding_cache_keep must be >= 1"):
        TrainerConfig(embedding_cache_keep=0)
