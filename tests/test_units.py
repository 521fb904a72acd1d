"""Small pure pieces: n-gram lookup, sampling transforms, text assembly, draft syntax, KV rollback."""

from __future__ import annotations

import random

import pytest
import torch

from specdec import wire
from specdec.draft_service.drafts import NgramIndex
from specdec.draftspec import parse_draft
from specdec.errors import InvalidArgument, Unavailable
from specdec.kvcache import common_prefix_length
from specdec.orchestrator.streams import DraftStream, SentPropose
from specdec.orchestrator.text import OutputText
from specdec.sampling import SamplingConfig, derive_seed, logits_to_probs
from specdec.v1 import common_pb2, draft_pb2
from specdec.wire import (
    DENSE,
    SPARSE,
    decode_distribution,
    decode_distributions,
    encode_distribution,
    encode_distributions,
    resolve_shared,
)


def lookup(tokens: list[int], ngram_max: int, max_tokens: int) -> tuple[int, list[int]]:
    index = NgramIndex(ngram_max)
    index.sync(tokens)
    return index.continuation(max_tokens)


def brute_force_lookup(tokens: list[int], ngram_max: int, max_tokens: int) -> tuple[int, list[int]]:
    """The definition: for n = ngram_max .. 1, the most recent earlier occurrence of the last n tokens."""
    for n in range(min(ngram_max, len(tokens) - 1), 0, -1):
        for start in range(len(tokens) - n - 1, -1, -1):
            if tokens[start : start + n] == tokens[len(tokens) - n :]:
                agree = n
                while (
                    agree < 64
                    and start - (agree - n) - 1 >= 0
                    and (tokens[start - (agree - n) - 1] == tokens[len(tokens) - agree - 1])
                ):
                    agree += 1
                return agree, tokens[start + n : start + n + max_tokens]
    return 0, []


def test_ngram_lookup_prefers_the_longest_then_most_recent_match() -> None:
    assert lookup([1, 2, 3, 9, 1, 2, 3, 8, 5, 2, 3], 3, 4) == (2, [8, 5, 2, 3])  # "2 3" most recently -> 8
    assert lookup([1, 2, 3, 4, 7, 7, 2, 3], 2, 3) == (2, [4, 7, 7])
    assert lookup([5, 6, 7], 3, 4) == (0, [])  # no earlier occurrence
    assert lookup([5], 3, 4) == (0, [])
    assert lookup([1, 2, 1, 2], 2, 0) == (0, [])
    assert lookup([4, 4, 4], 1, 5) == (2, [4])  # continuation stops at the sequence end; "4 4" agrees
    assert lookup([7, 1, 2, 3, 9, 7, 1, 2, 3], 2, 3) == (4, [9, 7, 1])  # "7 1 2 3" agrees beyond n = 2


def test_ngram_index_follows_growth_and_rollback() -> None:
    rng = random.Random(0)
    index = NgramIndex(3)
    tokens: list[int] = []
    for _ in range(400):
        if tokens and rng.random() < 0.3:
            tokens = tokens[: rng.randrange(len(tokens))]  # roll back
            if rng.random() < 0.5:
                tokens.append(rng.randrange(4))  # and diverge
        tokens = tokens + [rng.randrange(4) for _ in range(rng.randrange(1, 5))]
        index.sync(tokens)
        assert index.tokens == tokens
        assert index.continuation(5) == brute_force_lookup(tokens, 3, 5)
    index.sync([])
    assert index.ends == {}


def test_top_k_and_top_p_truncate_then_renormalise() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    p = logits_to_probs(logits, SamplingConfig(temperature=1.0, top_k=2))
    assert torch.allclose(p, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    p = logits_to_probs(logits, SamplingConfig(temperature=1.0, top_p=0.8))  # 0.5 + 0.3 reaches 0.8
    assert torch.allclose(p, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    p = logits_to_probs(logits, SamplingConfig(temperature=1.0, top_p=0.81))
    assert torch.allclose(p, torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95)
    p = logits_to_probs(logits, SamplingConfig(temperature=1.0, top_p=0.1))  # the top token always stays
    assert torch.allclose(p, torch.tensor([1.0, 0.0, 0.0, 0.0]))
    hot = logits_to_probs(logits, SamplingConfig(temperature=0.5))
    assert torch.allclose(hot, torch.softmax(logits / 0.5, -1))
    with_inf = logits_to_probs(torch.tensor([0.0, float("-inf"), 1.0]), SamplingConfig(temperature=1.0, top_k=2))
    assert with_inf[1] == 0 and torch.isclose(with_inf.sum(), torch.tensor(1.0))


def test_sampling_config_validates_and_applies_defaults() -> None:
    assert SamplingConfig.from_wire(0.0, 0, 0.0, 1).top_p == 1.0
    for bad in [(-0.1, 0, 1.0), (float("nan"), 0, 1.0), (1.0, 0, 1.5), (1.0, -1, 1.0)]:
        with pytest.raises(InvalidArgument):
            SamplingConfig.from_wire(bad[0], bad[1], bad[2], 0)


def test_derived_seeds_differ_per_sample_and_consumer() -> None:
    seeds = {derive_seed(1, i, s) for i in range(4) for s in ("verifier", "draft")}
    assert len(seeds) == 8 and derive_seed(1, 0, "draft") == derive_seed(1, 0, "draft")


def test_distribution_encodings_round_trip_exactly() -> None:
    q = torch.softmax(torch.randn(50), -1)
    q[q < 0.01] = 0
    q = q / q.sum()
    for encoding in (DENSE, SPARSE):
        assert torch.equal(decode_distribution(encode_distribution(q, encoding), 50), q)
    with pytest.raises(InvalidArgument):
        decode_distribution(encode_distribution(q, DENSE), 49)
    for bad in (q * 2, torch.full((50,), 1.0), q - q.max()):  # sums to 2; values > 1; negatives
        with pytest.raises(InvalidArgument):
            decode_distribution(encode_distribution(bad, DENSE), 50)


def test_sibling_distributions_cross_the_wire_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sampled tree's siblings share one q tensor: it is encoded once, decoded once, and a subset of the entries
    (resolve_shared) still means the same rows."""
    a, b = torch.softmax(torch.randn(50), -1), torch.softmax(torch.randn(50), -1)
    rows = [a, a, a, b, b]  # two sibling groups
    msgs = encode_distributions(rows, SPARSE)
    shared = "same_as_previous"
    assert [m.WhichOneof("encoding") for m in msgs] == ["sparse", shared, shared, "sparse", shared]
    decoded: list[common_pb2.TokenDistribution] = []
    monkeypatch.setattr(wire, "decode_distribution", lambda m, v: decoded.append(m) or decode_distribution(m, v))
    assert torch.equal(decode_distributions(msgs, 5, 50), torch.stack(rows))
    assert len(decoded) == 2  # once per sibling group
    monkeypatch.undo()
    subset = [resolve_shared(msgs)[i] for i in (2, 4)]
    assert torch.equal(decode_distributions(subset, 2, 50), torch.stack([a, b]))
    equal_but_separate = encode_distributions([a, a.clone()], SPARSE)  # only the same tensor object is shared
    assert [m.WhichOneof("encoding") for m in equal_but_separate] == ["sparse", "sparse"]
    first = [common_pb2.TokenDistribution(same_as_previous=True)]
    with pytest.raises(InvalidArgument, match="cannot be same_as_previous"):
        decode_distributions(first, 1, 50)
    with pytest.raises(InvalidArgument, match="cannot be same_as_previous"):
        resolve_shared(first)
    false = [msgs[0], common_pb2.TokenDistribution(same_as_previous=False)]  # set in the oneof, but no q
    assert false[1].WhichOneof("encoding") == "same_as_previous"
    with pytest.raises(InvalidArgument, match="no encoding"):
        decode_distributions(false, 2, 50)


class ScriptedDraftStub:
    """Stands in for a misbehaving draft service: its session stream answers with these responses."""

    def __init__(self, responses: list[draft_pb2.DraftResponse]) -> None:
        self.responses = responses

    def Session(self, timeout: float | None = None, metadata: object = None) -> ScriptedDraftStub:
        return self

    async def read(self) -> draft_pb2.DraftResponse:
        return self.responses.pop(0)


async def test_a_chunk_that_begins_with_a_reference_is_out_of_protocol() -> None:
    """`same_as_previous` refers within one list: a chunk whose first q points into the chunk before it is the
    draft service's fault (Unavailable: the orchestrator fails over), not the client's."""
    q = encode_distribution(torch.softmax(torch.randn(8), -1), SPARSE)
    shared = common_pb2.TokenDistribution(same_as_previous=True)
    chunks = [
        draft_pb2.DraftChunk(step=1, position=5, token_ids=[3], probs=[q]),
        draft_pb2.DraftChunk(step=1, position=6, token_ids=[4], probs=[shared], last=True),
    ]
    stream = DraftStream(ScriptedDraftStub([draft_pb2.DraftResponse(chunk=c) for c in chunks]))  # type: ignore[arg-type]
    with pytest.raises(Unavailable, match="same_as_previous"):
        await stream.read_block(SentPropose(5, 1, 0.0))


class CharTokenizer:
    """Token i is chr(i); 0 is a special EOS that decodes to nothing."""

    def decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(t) for t in tokens if t != 0)


def ids(text: str) -> list[int]:
    return [ord(c) for c in text]


def test_output_text_holds_back_possible_stop_prefixes() -> None:
    text = OutputText(CharTokenizer(), ["END"])
    assert text.add(ids("abcE")) == "abc"  # "E" might start "END"
    assert text.add(ids("Nx")) == "ENx"  # it did not
    assert text.add(ids("yEN")) == "y"
    assert text.add(ids("Dzz")) == "" and text.stopped
    assert text.emitted == "abcENxy"
    assert text.tokens == ids("abcENxyEND")  # trimmed to the token completing the stop string


def test_output_text_flush_releases_held_text_at_the_end() -> None:
    text = OutputText(CharTokenizer(), ["END"])
    assert text.add(ids("abEN")) == "ab"
    assert text.flush() == "EN" and text.emitted == "abEN"


def test_draft_syntax() -> None:
    assert parse_draft("ngram").name == "ngram"
    assert parse_draft("ngram:5").ngram_max == 5
    assert parse_draft("model:org/name").model == "org/name"
    assert parse_draft("none").kind == "none"
    assert parse_draft("suffix").name == "suffix" and not parse_draft("suffix").uses_model
    assert parse_draft("quantized").name == "quantized" and parse_draft("quantized").uses_model
    assert parse_draft("quantized:org/name").name == "quantized:org/name"
    for bad in ["", "ngram:0", "ngram:x", "model:", "hydra", "suffix:3", "none:x"]:
        with pytest.raises(InvalidArgument):
            parse_draft(bad)


def test_common_prefix_length() -> None:
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_length([1, 2], [1, 2, 3]) == 2
    assert common_prefix_length([], [1]) == 0


def test_the_cache_keyword_follows_the_model_signature() -> None:
    """transformers renamed `past_key_values` to `cache` within 5.x: a wrong name would be swallowed by **kwargs."""
    from specdec.kvcache import cache_keyword

    class Old:
        def forward(self, input_ids=None, past_key_values=None, **kwargs): ...

    class New:
        def forward(self, input_ids=None, cache=None, **kwargs): ...

    assert cache_keyword(Old) == "past_key_values"
    assert cache_keyword(New) == "cache"


def test_transformers_imports_from_the_repository_root() -> None:
    """Our top-level kernels/ folder (specdec.kernels) must not shadow the `kernels` distribution that transformers
    imports when it is installed: from the repository root, `python -m` puts the root first on sys.path."""
    import subprocess
    import sys
    from pathlib import Path

    from specdec._hub_kernels import hub_kernels_init

    root = Path(__file__).resolve().parent.parent
    code = "import specdec, kernels, transformers.integrations.hub_kernels; print(kernels.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = Path(done.stdout.strip())
    installed = hub_kernels_init()
    assert loaded == (installed if installed is not None else root / "kernels" / "__init__.py")
