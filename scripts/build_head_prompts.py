"""Build the prompt set that trained draft heads learn from (draft_service/heads/prompts/*.jsonl).

Chat prompts are templates x everyday topics; code and summarise prompts take their material from the Python
standard library (function sources and module documentation), so everything is offline and reproducible.
None of them is, or is about the same thing as, a benchmark prompt (bench/suites/*.jsonl: the unseen test).

Run: python scripts/build_head_prompts.py   (deterministic: seeded)

`--questions N` writes chat-generated.jsonl instead: N natural questions sampled from the default target itself
(draft_service/heads/questions.py; seeded, ~10 minutes for 1,600 here), varied where the templates are not.
`--questions N --seed S --name chat-generated-S` adds another such set, none of its questions in an earlier one.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import random
import textwrap
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "draft_service" / "heads" / "prompts"

TOPICS = [
    "volcanoes",
    "the water cycle",
    "compound interest",
    "how bicycles stay upright",
    "the history of tea",
    "learning to play the guitar",
    "composting at home",
    "black holes",
    "the Roman Empire",
    "electric cars",
    "how vaccines train the immune system",
    "the rules of chess",
    "saving for retirement",
    "honeybees",
    "how a refrigerator works",
    "public speaking",
    "the French Revolution",
    "recycling plastic",
    "earthquakes",
    "growing tomatoes on a balcony",
    "how the internet routes data",
    "meditation for beginners",
    "the Moon's phases",
    "writing a cover letter",
    "baking sourdough bread",
    "the stock market",
    "rainforests",
    "time zones",
    "how airplanes fly",
    "the printing press",
    "keeping a journal",
    "ocean tides",
    "the human heart",
    "choosing a laptop",
    "renewable energy",
    "the Great Wall of China",
    "negotiating a salary",
    "migrating birds",
    "how batteries store energy",
    "painting with watercolours",
    "the Olympic Games",
    "first aid for minor burns",
    "coral reefs",
    "the theory of evolution",
    "making friends in a new town",
    "the metric system",
    "glaciers",
    "how to care for a puppy",
    "inflation",
    "the solar system",
    "electric guitars",
    "ancient Egypt",
    "volunteering",
    "how credit scores work",
    "desert animals",
    "the invention of the telephone",
    "organising a small closet",
    "wind turbines",
    "how noise-cancelling headphones work",
    "the Renaissance",
    "learning to swim as an adult",
    "the immune system",
    "how a camera lens focuses",
    "writing a short story",
    "the Amazon river",
    "cryptography",
    "how to fix a flat bicycle tyre",
    "camping for the first time",
    "the life cycle of a star",
    "fermentation",
    "how elections work",
    "the history of jazz",
    "dinosaurs",
    "how to brew coffee with a French press",
    "the nervous system",
    "making a podcast",
    "mountain weather",
    "the periodic table",
    "owning a cat",
    "3D printing",
    "how bridges carry weight",
    "the Silk Road",
    "urban gardening",
    "magnets",
    "the Vikings",
    "typing faster",
    "how satellites stay in orbit",
    "hiking safety",
    "the history of the bicycle",
    "learning to cook rice",
    "how rainbows form",
    "sharks",
    "how a car engine works",
    "the Industrial Revolution",
    "home insulation",
    "writing a thank-you note",
    "lightning",
    "penguins",
    "how search engines rank pages",
    "keeping houseplants alive in winter",
    "the blockchain",
    "knitting",
    "the Arctic",
    "solar panels",
    "ancient Greek philosophy",
    "how to study for an exam",
    "octopuses",
    "dark matter",
    "the history of pizza",
    "traffic lights",
    "planning a road trip",
    "how soap cleans",
    "the deep sea",
    "sleep cycles",
    "origami",
    "open-source software",
    "how maps are made",
    "the Mayan civilisation",
    "drinking enough water",
    "a minimalist lifestyle",
    "how an electric kettle works",
    "the history of chocolate",
    "bird watching",
    "machine learning",
    "how tsunamis form",
    "photography at night",
    "the human skeleton",
    "Shakespeare",
]
CHAT_TEMPLATES = [
    "Explain {t} in simple terms.",
    "Can you tell me about {t}?",
    "What are the most important things a beginner should know about {t}?",
    "Give me five interesting facts about {t}.",
    "Write a short paragraph about {t} for a school newsletter.",
    "What are common misconceptions about {t}?",
    "I'm curious about {t}. Where should I start?",
    "Write a short poem about {t}.",
    "Summarise the key ideas behind {t} in a few bullet points.",
    "How would you explain {t} to a ten-year-old?",
    "What are the pros and cons of {t}?",
    "Write a brief, friendly blog post introduction about {t}.",
    "What questions should I ask an expert about {t}?",
    "Describe the history of {t} briefly.",
    "Give me a step-by-step guide related to {t}.",
    "Why does {t} matter in everyday life?",
]
EXTRA_CHAT_PROMPTS = 2000  # generating the target's answers runs at ~200 tokens/s here: ~25 minutes for these
# More chat templates for `chat-extra.jsonl` (added after the first heads shipped; chat.jsonl keeps its prompts)
EXTRA_CHAT_TEMPLATES = [
    "Write a short story that involves {t}.",
    "What is a good way to teach a friend about {t}?",
    "List three surprising things about {t} and explain each one.",
    "Compare {t} today with how it was fifty years ago.",
    "Write a haiku and then a limerick about {t}.",
    "What would a day in the life of someone who works with {t} look like?",
    "Give me a quick quiz with three questions about {t}, with answers.",
    "Write a friendly email inviting a colleague to a talk about {t}.",
    "What are the biggest open questions about {t}?",
    "Explain {t} using an analogy from cooking.",
    "Write a dialogue between a teacher and a student about {t}.",
    "What mistakes do people often make with {t}, and how can they avoid them?",
    "Plan a one-week learning schedule for {t}.",
    "Write a product description for a book about {t}.",
]
CODE_TASKS = [
    "Explain what the following Python function does, step by step.",
    "Add type hints to the following Python function. Do not change its behaviour.",
    "Write a Google-style docstring for the following Python function.",
    "Rewrite the following Python function to make it easier to read, keeping its behaviour.",
    "Write two pytest unit tests for the following Python function.",
    "Are there any bugs or edge cases in the following Python function? Explain briefly.",
    "Rename the variables in the following Python function to more descriptive names.",
    "Add comments to the following Python function explaining each part.",
]
CODE_WRITE = [
    "Write a Python function that {x}.",
    "Write a JavaScript function that {x}.",
    "Show me how to write a Python function that {x}, with a short explanation.",
]
CODE_IDEAS = [
    "reverses the words in a sentence",
    "checks whether a string is a palindrome",
    "counts vowels in a text",
    "returns the n-th Fibonacci number iteratively",
    "merges two sorted lists",
    "removes duplicates from a list while keeping order",
    "converts Celsius to Fahrenheit",
    "finds the largest number in a list without max()",
    "flattens a nested list",
    "groups words by their first letter",
    "reads a CSV file and sums a column",
    "validates an email address with a regular expression",
    "computes the factorial of a number recursively",
    "returns the most common element of a list",
    "splits a list into chunks of size n",
    "checks if a year is a leap year",
    "capitalises the first letter of every word",
    "finds all prime numbers below n",
    "calculates the average of a list of numbers",
    "counts the words in a text file",
    "transposes a matrix",
    "converts a dictionary into a list of key-value tuples sorted by value",
    "generates a random password",
    "checks whether two strings are anagrams",
    "implements binary search",
    "returns the intersection of two lists",
    "formats a number of seconds as hours, minutes and seconds",
    "parses a date string into a date object",
]
SUMMARY_TASKS = [
    "Summarise the following text in 2 or 3 sentences.",
    "Summarise the following documentation in a few bullet points.",
    "Give a one-sentence summary of the following text.",
    "Explain the following text in plain language for a beginner.",
    "What are the main points of the following text?",
]
CODE_MODULES = [
    "textwrap",
    "string",
    "shlex",
    "fnmatch",
    "glob",
    "statistics",
    "heapq",
    "bisect",
    "calendar",
    "colorsys",
    "difflib",
    "html",
    "json.encoder",
    "csv",
    "getopt",
    "gettext",
    "base64",
    "quopri",
    "uu",
    "keyword",
    "random",
    "fractions",
    "pprint",
    "reprlib",
    "tokenize",
    "posixpath",
    "genericpath",
    "copy",
    "operator",
    "functools",
]
DOC_MODULES = [
    "abc",
    "argparse",
    "asyncio",
    "base64",
    "bisect",
    "calendar",
    "codecs",
    "collections",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email",
    "enum",
    "fnmatch",
    "fractions",
    "functools",
    "getopt",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "http",
    "imaplib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "logging",
    "lzma",
    "mailbox",
    "mimetypes",
    "numbers",
    "operator",
    "optparse",
    "pathlib",
    "pickle",
    "pprint",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "smtplib",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "traceback",
    "typing",
    "unittest",
    "urllib.parse",
    "uuid",
    "warnings",
    "weakref",
    "zipfile",
    "zlib",
]


def chat_prompts(rng: random.Random, n: int) -> tuple[list[str], list[str]]:
    """(n prompts from CHAT_TEMPLATES x TOPICS, every other pair of that product) in a seeded order."""
    pairs = [(tpl, t) for tpl in CHAT_TEMPLATES for t in TOPICS]
    rng.shuffle(pairs)
    prompts = [tpl.format(t=t) for tpl, t in pairs]
    return prompts[:n], prompts[n:]


def extra_chat_prompts(unused: list[str]) -> list[str]:
    """The chat pairs `chat.jsonl` left out plus EXTRA_CHAT_TEMPLATES x TOPICS, in a seeded order of their own (so
    that the other files keep their prompts)."""
    prompts = unused + [tpl.format(t=t) for tpl in EXTRA_CHAT_TEMPLATES for t in TOPICS]
    random.Random(1).shuffle(prompts)
    return prompts[:EXTRA_CHAT_PROMPTS]


def stdlib_functions(rng: random.Random) -> list[str]:
    sources: list[str] = []
    for name in CODE_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for _, obj in inspect.getmembers(module, inspect.isfunction):
            if obj.__module__ != module.__name__:
                continue
            try:
                src = textwrap.dedent(inspect.getsource(obj))
            except (OSError, TypeError):
                continue
            if 150 <= len(src) <= 1200:
                sources.append(src)
    rng.shuffle(sources)
    return sources


def code_prompts(rng: random.Random, n_edit: int, n_write: int) -> list[str]:
    edits = [f"{rng.choice(CODE_TASKS)}\n\n```python\n{src.rstrip()}\n```" for src in stdlib_functions(rng)[:n_edit]]
    writes = [rng.choice(CODE_WRITE).format(x=x) for x in CODE_IDEAS]
    return edits + writes[:n_write]


def doc_paragraphs(rng: random.Random) -> list[str]:
    paragraphs: list[str] = []
    for name in DOC_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        docs = [inspect.getdoc(module) or ""]
        docs += [inspect.getdoc(obj) or "" for _, obj in inspect.getmembers(module) if inspect.isclass(obj)]
        for doc in docs:
            text = " ".join(doc.split())
            if 300 <= len(text) <= 1500:
                paragraphs.append(text)
    rng.shuffle(paragraphs)
    return paragraphs


def summarise_prompts(rng: random.Random, n: int) -> list[str]:
    return [f"{rng.choice(SUMMARY_TASKS)}\n\n{p}" for p in doc_paragraphs(rng)[:n]]


def first_messages(paths: Iterable[Path]) -> set[str]:
    """The first message of every prompt in these jsonl files."""
    return {
        json.loads(line)["messages"][0]["content"]
        for path in paths
        for line in path.read_text().splitlines()
        if line.strip()
    }


def bench_prompts() -> set[str]:
    return first_messages((ROOT / "bench" / "suites").glob("*.jsonl"))


def write_set(name: str, prompts: list[str], bench: set[str]) -> None:
    unique = list(dict.fromkeys(p for p in prompts if p not in bench))
    with (OUT / f"{name}.jsonl").open("w") as f:
        for i, content in enumerate(unique):
            f.write(json.dumps({"id": f"{name}-{i:03d}", "messages": [{"role": "user", "content": content}]}) + "\n")
    print(name, len(unique))


def write_generated_questions(count: int, seed: int, name: str) -> None:
    """`count` target-written questions into `name`.jsonl, none equal to a benchmark prompt or to a question of
    another written set (so a second seed only adds)."""
    from specdec.draft_service.heads.questions import write_questions
    from specdec.modeling import load_model

    bench = bench_prompts()
    earlier = first_messages(path for path in OUT.glob("chat-generated*.jsonl") if path.stem != name)
    questions = write_questions(load_model("default"), count, seed=seed, exclude=bench | earlier)
    write_set(name, questions, bench)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=0, help="write N target-written questions instead")
    parser.add_argument("--seed", type=int, default=0, help="seed of the written questions")
    parser.add_argument("--name", default="chat-generated", help="file the written questions go to (no suffix)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.questions:
        write_generated_questions(args.questions, args.seed, args.name)
        return
    rng = random.Random(0)
    chat, unused_chat = chat_prompts(rng, 520)
    sets = {
        "chat": chat,
        "code": code_prompts(rng, 130, 28),
        "summarise": summarise_prompts(rng, 150),
        "chat-extra": extra_chat_prompts(unused_chat),
    }
    bench = bench_prompts()
    for name, prompts in sets.items():
        write_set(name, prompts, bench)


if __name__ == "__main__":
    main()
