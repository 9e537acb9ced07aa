"""How pocketlm's messages count things: "1 step", "2 steps", "1,024 tokens". One helper, so that a count of one
reads in the singular in every message, the model card's and the chat's figures included."""


def counted(number: int, noun: str) -> str:
    """`number` `noun`s, with thousands separated, and the noun in the singular for one ("1 training block")."""
    return f"{number:,} {noun}{'s' * (number != 1)}"
