"""The one exception a person's input raises: `InputError` carries a single sentence meant for them."""

import re

SHOWN_CHARS = 60  # a value quoted in a message is shown up to this many characters
MESSAGE_CHARS = 2_000  # a message is never longer than this (a safety net: quoted values are cut first)

_QUOTED = re.compile(r"'(?:[^'\\]|\\.){%d,}'|\"(?:[^\"\\]|\\.){%d,}\"" % (SHOWN_CHARS + 1, SHOWN_CHARS + 1))


def clip(message: str) -> str:
    """`message` with every quoted value longer than SHOWN_CHARS cut (its length said), on one line, at most
    MESSAGE_CHARS long: an error never echoes a huge bad value back."""
    def cut(m):
        text = m.group()
        return f"{text[:SHOWN_CHARS]}…{text[0]} ({len(text) - 2} characters)"

    message = _QUOTED.sub(cut, str(message)).replace("\n", " ").replace("\r", " ")
    return message if len(message) <= MESSAGE_CHARS else message[: MESSAGE_CHARS - 1] + "…"


class InputError(ValueError):
    """Something the user supplied (an image, a prompt, a setting) cannot be used; `str(err)` says why (a
    value it quotes is cut to SHOWN_CHARS)."""

    def __init__(self, message="", *args):
        super().__init__(clip(message), *args)
