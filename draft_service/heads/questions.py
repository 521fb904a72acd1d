"""Chat prompts written by the target itself, for training draft heads on natural, varied questions.

Templated prompts ("Give me five facts about X") teach a head its templates: the shipped EAGLE head reached .44
first-token acceptance on held-out templated prompts but .29 on the benchmark's natural questions. So the target
continues a numbered list of example questions (few-shot, raw text, no chat template), sampled at temperature 1
with nucleus 0.95; each continuation's first line is one question. Each call shows a different seeded choice of
five examples under a seeded subject, which spreads the questions over everyday life. The examples only shape the
question-writing prompt and are never training prompts themselves; one of them ("What is the difference between a
virus and a bacterium?") turned out to be a benchmark chat prompt as well, which is why the written questions are
checked against the benchmark (tests/test_heads.py::test_training_prompts_are_not_benchmark_prompts: none equal,
word overlap far from a paraphrase). It stays in the list so that chat-generated.jsonl can be rebuilt exactly.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import torch
from tqdm import tqdm

from specdec.modeling import LoadedModel

EXAMPLE_QUESTIONS = [
    "How can I keep my houseplants alive while I'm away for two weeks?",
    "What's a good way to explain fractions to my eight-year-old?",
    "Why do onions make people cry when they cut them?",
    "I keep forgetting people's names right after I meet them. Any tips?",
    "Is it better to rent or buy a home if I might move in three years?",
    "Can you help me write a short thank-you note to my neighbour?",
    "What should I pack for a three-day hiking trip in the mountains?",
    "How does a credit score work, and how can I improve mine?",
    "What are the health benefits of walking every day?",
    "My code review comments sound rude. How can I phrase them more kindly?",
    "What is the difference between a virus and a bacterium?",
    "Could you suggest a few fun activities for a rainy weekend with kids?",
    "How do I get rid of fruit flies in my kitchen?",
    "What happens to my body when I don't get enough sleep?",
    "Can you give me a simple recipe for vegetable soup?",
    "Why do leaves change colour in autumn?",
]
SUBJECTS = [
    "everyday life",
    "cooking and food",
    "health and fitness",
    "money and shopping",
    "work and careers",
    "school and studying",
    "science and nature",
    "technology and computers",
    "travel and places",
    "family and friends",
    "home and garden",
    "history and culture",
    "writing and language",
    "hobbies and sports",
    "feelings and advice",
]
SHOTS = 5
MAX_QUESTION_TOKENS = 40


def few_shot_text(rng: random.Random) -> str:
    """One raw-text prompt: a seeded subject and SHOTS seeded examples, ending where question SHOTS+1 starts."""
    examples = rng.sample(EXAMPLE_QUESTIONS, SHOTS)
    lines = "".join(f"{i + 1}. {q}\n" for i, q in enumerate(examples))
    return f"Questions people asked a helpful AI assistant about {rng.choice(SUBJECTS)}:\n{lines}{SHOTS + 1}."


def first_question(continuation: str) -> str | None:
    """The question on the continuation's first line, or None when it is not a whole, plausible question (cut off
    by the token limit, too short, a list marker only)."""
    if "\n" not in continuation:
        return None  # no line end: cut off mid-question
    line = " ".join(continuation.split("\n", 1)[0].split())
    if len(line) < 12 or len(line) > 300 or not any(c.isalpha() for c in line):
        return None
    return line


def _newline_token_ids(lm: LoadedModel) -> torch.Tensor:
    """Ids of every token whose text contains a line break (and the EOS ids): a question ends at any of them."""
    tok = lm.tokenizer
    ids = [i for i in range(len(tok)) if "\n" in tok.decode([i])]
    return torch.tensor(sorted(set(ids) | set(lm.eos_token_ids)), dtype=torch.long)


@torch.inference_mode()
def _sample_batch(lm: LoadedModel, texts: list[str], line_ends: torch.Tensor, seed: int) -> list[str]:
    """Sampled continuations of a batch of raw-text prompts, each up to its first line end."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    pad = lm.eos_token_ids[0] if lm.eos_token_ids else 0
    prompts = [list(lm.tokenizer.encode(t)) for t in texts]
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=lm.device)  # [B, P]
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=lm.device)  # [B, P]
    ends = line_ends.to(lm.device)

    class LineEnded(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.Tensor:
            return torch.isin(input_ids[:, width:], ends).any(dim=1)  # [B]: this row's question is complete

    with torch.random.fork_rng(devices=[]):  # generate samples from the global generator: seed it, then restore it
        torch.manual_seed(seed)
        out = _generate(lm, input_ids, mask, pad, StoppingCriteriaList([LineEnded()]))
    eos = set(lm.eos_token_ids)
    texts_out = []
    for row in out[:, width:].tolist():
        cut = next((i for i, t in enumerate(row) if t in eos), len(row))
        texts_out.append(lm.tokenizer.decode(row[:cut]) + ("\n" if cut < len(row) else ""))
    return texts_out


def _generate(lm: LoadedModel, input_ids: torch.Tensor, mask: torch.Tensor, pad: int, stop: object) -> torch.Tensor:
    return lm.model.generate(  # type: ignore[no-any-return]
        input_ids=input_ids,
        attention_mask=mask,
        max_new_tokens=MAX_QUESTION_TOKENS,
        do_sample=True,
        temperature=1.0,
        top_p=0.95,
        top_k=0,
        pad_token_id=pad,
        stopping_criteria=stop,
    )


def write_questions(
    lm: LoadedModel, count: int, seed: int = 0, batch_size: int = 96, exclude: Iterable[str] = ()
) -> list[str]:
    """`count` distinct questions sampled from the target (fewer if 20 batches in a row bring nothing new),
    none of them in `exclude` (the benchmark's prompts) or among the examples."""
    rng = random.Random(seed)
    line_ends = _newline_token_ids(lm)
    seen = {q.casefold() for q in [*exclude, *EXAMPLE_QUESTIONS]}
    questions: list[str] = []
    barren, batch_index = 0, 0
    bar = tqdm(total=count, desc="writing questions", unit="question")
    while len(questions) < count and barren < 20:
        texts = [few_shot_text(rng) for _ in range(batch_size)]
        found = 0
        for continuation in _sample_batch(lm, texts, line_ends, seed * 1_000_003 + batch_index):
            question = first_question(continuation)
            if question is not None and question.casefold() not in seen and len(questions) < count:
                seen.add(question.casefold())
                questions.append(question)
                found += 1
        bar.update(found)
        barren = 0 if found else barren + 1
        batch_index += 1
    bar.close()
    return questions
