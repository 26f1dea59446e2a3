"""The key-name vocabulary shared by the cause rules, the lint and the audit."""

from __future__ import annotations

from ckptdiff.naming import EMBED_NAMES, VOCAB_HEAD_ROWS, containers, has_part


def test_names_match_whole_components_only():
    assert has_part("model.embed_tokens.weight", EMBED_NAMES)
    assert has_part("shared.weight", EMBED_NAMES)
    assert not has_part("mlp.shared_experts.0.weight", EMBED_NAMES)
    assert not has_part("unshared.weight", EMBED_NAMES)
    assert has_part("lm_head.weight", VOCAB_HEAD_ROWS)


def test_containers_collect_the_indices_of_every_numbered_run():
    keys = [f"visual.transformer.resblocks.{i}.ln_1.weight" for i in range(3)]
    keys += ["blocks.0.experts.1.w", "blocks.1.experts.0.w", "0.w", "logit_scale"]
    assert dict(containers(keys)) == {
        "visual.transformer.resblocks": {0, 1, 2},
        "blocks": {0, 1},
        "blocks.#.experts": {0, 1},
    }
