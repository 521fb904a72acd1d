"""The verifier core without gRPC: one forward per block, rollback of rejected positions, hidden states."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from specdec.errors import FailedPrecondition, InvalidArgument
from specdec.verifier_service.core import SessionOptions, VerifierSession
from tests.helpers import hf_greedy, load


def test_rejected_positions_never_survive_a_verdict(tiny_target: Path) -> None:
    lm = load(str(tiny_target))
    prompt = lm.tokenizer.encode("def add(a, b):")
    greedy = hf_greedy(lm, prompt, 12)
    session = VerifierSession(lm, SessionOptions(prompt, return_hidden_states=True))
    session.prefill()
    assert session.kv.tokens == prompt[:-1]

    wrong = (greedy[2] + 1) % lm.vocab_size
    with torch.inference_mode():
        outcome = session.verify(len(prompt), [greedy[0], greedy[1], wrong, greedy[3]], None)
    assert outcome.num_accepted == 2 and outcome.token_ids == greedy[:3]
    assert outcome.outcomes == ["accepted", "accepted", "rejected", "skipped"] and not outcome.bonus
    assert session.committed == prompt + greedy[:3]
    assert session.kv.tokens == session.committed[:-1]  # the last committed token stays uncached
    # hidden states for every committed position fed so far, from 0: the first verdict carries the prompt's rows
    # (cached by the prefill) before those of the prompt's last token and the 2 accepted drafts
    hidden_size = lm.model.config.hidden_size
    assert outcome.hidden is not None and outcome.hidden.shape == (len(prompt) + 2, hidden_size)
    assert outcome.hidden_start == 0
    rows = [outcome.hidden]

    with torch.inference_mode():  # the rolled-back cache gives the same next verdict as a fresh decode
        outcome = session.verify(len(session.committed), greedy[3:7], None)
    assert outcome.num_accepted == 4 and outcome.bonus and outcome.token_ids == greedy[3:8]
    assert session.committed == prompt + greedy[:8]
    # later verdicts: the rows of the previous step's last token and the accepted drafts, contiguous
    assert outcome.hidden is not None and outcome.hidden_start == len(prompt) + 2
    assert outcome.hidden.shape == (5, hidden_size)
    rows.append(outcome.hidden)
    with torch.inference_mode():  # the rows are the full forward pass's final hidden states
        full = lm.model(torch.tensor([session.committed[:-1]]), output_hidden_states=True).hidden_states[-1][0]
    torch.testing.assert_close(torch.cat(rows), full, atol=1e-4, rtol=1e-4)


def test_block_checks(tiny_target: Path) -> None:
    lm = load(str(tiny_target))
    session = VerifierSession(lm, SessionOptions([1, 2, 3]))
    session.prefill()
    with pytest.raises(FailedPrecondition):
        session.verify(2, [4], None)
    with pytest.raises(InvalidArgument):
        session.verify(3, [lm.vocab_size], None)
    with pytest.raises(InvalidArgument):  # greedy sessions take no q
        session.verify(3, [4], torch.ones(1, lm.vocab_size) / lm.vocab_size)
    with pytest.raises(InvalidArgument):
        VerifierSession(lm, SessionOptions([]))
