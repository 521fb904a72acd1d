"""The shipped workload suites and the prompt-file format."""

from __future__ import annotations

from pathlib import Path

import pytest

from specdec.bench.suites import load_prompts, load_suite, suite_names


def test_three_suites_of_twenty_or_more_prompts() -> None:
    assert {"chat", "code", "summarise"} <= set(suite_names())
    for name in ("chat", "code", "summarise"):
        prompts = load_suite(name)
        assert len(prompts) >= 20
        assert all(p.suite == name and p.messages and p.messages[-1][0] == "user" for p in prompts)
        assert len({p.messages for p in prompts}) == len(prompts), "prompts are distinct"
    assert all("```" in p.messages[-1][1] for p in load_suite("code")), "code prompts carry the code to edit"


def test_prompt_files(tmp_path: Path) -> None:
    good = tmp_path / "mine.jsonl"
    good.write_text('{"id": "a", "prompt": "Hello"}\n\n{"messages": [{"role": "user", "content": "Hi"}]}\n')
    first, second = load_prompts(good)
    assert (first.id, first.prompt, first.suite) == ("a", "Hello", "mine")
    assert second.messages == (("user", "Hi"),) and second.id == "3"  # no id: the line number
    for text, message in [
        ("not json", ":1: not JSON"),
        ('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}', ":2: duplicate id 'a'"),
        ('{"prompt": "x", "messages": []}', "exactly one of"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "messages[0] needs a role"),
        ("", "no prompts"),
    ]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
            load_prompts(bad)
    with pytest.raises(ValueError, match="unknown suite 'poetry'"):
        load_suite("poetry")


def test_the_sweep_crosses_tree_sizes_and_takes_sampled_trees_with_lossless_policies_only() -> None:
    from specdec.bench.sweep import SweepConfig

    cfg = SweepConfig(drafts=["eagle", "ngram"], ks=[4], tree_nodes=[0, 8], hf_peers=False)
    cfg.validate()
    labels = [m.label for m in cfg.methods()]  # prompt lookup builds no trees: no duplicate of its chain row
    assert labels == ["none", "eagle k=4 fixed", "eagle k=4 tree=8 fixed", "ngram k=4 fixed"]
    only_trees = SweepConfig(drafts=["eagle", "ngram"], ks=[4], tree_nodes=[8], hf_peers=False).methods()
    assert [m.label for m in only_trees] == ["none", "eagle k=4 tree=8 fixed", "ngram k=4 fixed"]
    SweepConfig(tree_nodes=[8], temperature=0.7).validate()  # sampled trees: rejection sampling
    with pytest.raises(ValueError, match="losslessly"):
        SweepConfig(tree_nodes=[8], policies=["typical"]).validate()
