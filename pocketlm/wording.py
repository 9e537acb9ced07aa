"""How pocketlm's messages count and list things: "1 step", "2 steps", "1,024 tokens"; "a, b and c". One helper
each, so that a count of one reads in the singular in every message, the model card's and the chat's figures
included."""


def counted(number: int, noun: str) -> str:
    """`number` `noun`s, with thousands separated, and the noun in the singular for one ("1 training block")."""
    return f"{number:,} {noun}{'s' * (number != 1)}"


def listed(names: list[str], last: str = "and") -> str:
    """`names` as a sentence lists them: "a", "a and b", "a, b and c" (or, with `last="or"`, "a, b or c")."""
    return f" {last} ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
