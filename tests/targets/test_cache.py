"""The target cache: a second build of a transformers config is read back, exactly what building
returns, without importing torch or transformers; anything that could change the model misses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ckptdiff.targets import build_target, cache, rebuild

BERT = {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "vocab_size": 120,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 40,
    "type_vocab_size": 2,
}


@pytest.fixture
def cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.delenv("CKPTDIFF_NO_CACHE", raising=False)
    monkeypatch.setenv("CKPTDIFF_CACHE_DIR", str(folder))
    return folder


def _config(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "bert" / "config.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({**BERT, **changes}))
    return path


def _fresh(spec: str, **kw: object):
    with cache.disabled():
        return build_target(spec, **kw)  # type: ignore[arg-type]


def test_second_build_is_read_back_exactly(cached: Path, tmp_path: Path) -> None:
    spec = f"hf-config:{_config(tmp_path)}"
    first = build_target(spec)
    assert len(list(cached.glob("*.json"))) == 1
    second = build_target(spec)
    assert second == first == _fresh(spec)
    assert second is not first
    assert second.config["id2label"] == {0: "LABEL_0", 1: "LABEL_1"}  # int keys kept


def test_a_changed_config_or_override_is_built_again(cached: Path, tmp_path: Path) -> None:
    path = _config(tmp_path)
    build_target(f"hf-config:{path}")
    wider = build_target(f"hf-config:{path}", args={"hidden_size": 32})
    assert wider.tensors["embeddings.word_embeddings.weight"].shape == (120, 32)
    _config(tmp_path, vocab_size=130)
    grown = build_target(f"hf-config:{path}")
    assert grown.tensors["embeddings.word_embeddings.weight"].shape == (130, 16)
    assert grown == _fresh(f"hf-config:{path}")
    assert len(list(cached.glob("*.json"))) == 3


def test_raised_limits_are_part_of_the_key(
    cached: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = cache_target(_config(tmp_path))
    default = cache.cache_key(target)
    monkeypatch.setenv("CKPTDIFF_MAX_LAYERS", "4096")
    assert cache.cache_key(target) not in (None, default)


def test_rebuild_always_builds(cached: Path, tmp_path: Path) -> None:
    spec = f"hf-config:{_config(tmp_path)}"
    base = build_target(spec)
    entry = next(cached.glob("*.json"))
    entry.write_text(entry.read_text().replace('"word_embeddings', '"renamed_embeddings'))
    fixed = rebuild(base, {"vocab_size": 121})
    assert fixed.tensors["embeddings.word_embeddings.weight"].shape == (121, 16)


def test_damaged_entries_are_rebuilt(cached: Path, tmp_path: Path) -> None:
    spec = f"hf-config:{_config(tmp_path)}"
    good = build_target(spec)
    entry = next(cached.glob("*.json"))
    for damage in ("{not json", json.dumps({"schema": "other"}), "[]", ""):
        entry.write_text(damage)
        assert build_target(spec) == good
    assert json.loads(entry.read_text())["schema"] == cache.SCHEMA  # stored afresh


def test_no_cache_and_uncached_kinds_write_nothing(cached: Path, tmp_path: Path) -> None:
    with cache.disabled():
        build_target(f"hf-config:{_config(tmp_path)}")
    build_target("fixtures.models:build_llama", args={"num_layers": 1})  # code the key cannot see
    config = _config(tmp_path, auto_map={"AutoModel": "modeling.Model"})
    assert cache.cache_key(cache_target(config)) is None  # repo code: never cached
    assert not cached.exists() or not list(cached.glob("*.json"))


def cache_target(path: Path):
    from ckptdiff.targets import target_spec

    return target_spec(f"hf-config:{path}")


def test_cli_second_check_imports_neither_torch_nor_transformers(
    cached: Path, tmp_path: Path, minilm_dir: Path
) -> None:
    code = (
        "import sys, json\nfrom ckptdiff.cli import main\n"
        f"sys.argv = ['ckptdiff', 'check', {str(minilm_dir)!r}, '--model', "
        f"'hf-config:{minilm_dir / 'config.json'}'] + sys.argv[1:]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "print(json.dumps([code, 'torch' in sys.modules, 'transformers' in sys.modules]))"
    )
    env = {**os.environ, "CKPTDIFF_CACHE_DIR": str(cached)}
    env.pop("CKPTDIFF_NO_CACHE", None)

    def run(*args: str) -> tuple[list[object], str]:
        out = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=True
        ).stdout
        *report, last = out.strip().splitlines()
        return json.loads(last), "\n".join(report)

    first, text1 = run()
    assert first == [0, True, True]
    second, text2 = run()
    assert second == [0, False, False] and text2 == text1
    third, _ = run("--no-cache")
    assert third == [0, True, True]
