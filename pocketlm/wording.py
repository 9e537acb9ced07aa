"""How pocketlm's messages count, list and name things: "1 step", "2 steps", "1,024 tokens"; "a, b and c"; "an
LSTM". One helper each, so that a count of one reads in the singular in every message, the model card's and the
chat's figures included. And how text shows as written inside Markdown."""

import re


def counted(number: int, noun: str) -> str:
    """`number` `noun`s, with thousands separated, and the noun in the singular for one ("1 training block")."""
    return f"{number:,} {noun}{'s' * (number != 1)}"


FAMILIES = {"lstm": "an LSTM", "transformer": "a Transformer"}


def a_family(family: str) -> str:
    """A model family as a message names it: "an LSTM", "a Transformer" (another model type as "a 'gpt2' model")."""
    return FAMILIES.get(family, f"a {family!r} model")


def listed(names: list[str], last: str = "and") -> str:
    """`names` as a sentence lists them: "a", "a and b", "a, b and c" (or, with `last="or"`, "a, b or c")."""
    return f" {last} ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


# What Markdown reads as markup inside a line: emphasis, code, links and images, HTML and its entities, table cells,
# strikethrough, and the backslash that escapes them. An underscore inside a word (hidden_size) is not emphasis, and
# stays as it is for whoever reads the file itself.
INLINE_MARKUP = re.compile(r"([\\`*\[\]<>&~|]|(?<![^\W_])_|_(?![^\W_]))")


def in_markdown(text: str) -> str:
    """`text` to put inside a line of Markdown so that it shows as written: each character Markdown reads as markup
    there escaped with a backslash. A model's reply with '*' or '<b>' showed as emphasis or bold, `<unk>` not at all.
    (At the start of a line '#' or '-' would still begin a heading or a list: callers put text after something.)"""
    return INLINE_MARKUP.sub(r"\\\1", text)


def fenced(text: str, language: str = "text") -> str:
    """`text` as a Markdown code block that holds it whole: its fence is longer than any run of backticks in it (a
    model trained on Markdown writes ``` too, which closed a fence of three halfway through its sample)."""
    fence = "`" * max(3, max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    return f"{fence}{language}\n{text}\n{fence}"
