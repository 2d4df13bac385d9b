"""The one exception a person's input raises: `InputError` carries a single sentence meant for them."""


class InputError(ValueError):
    """Something the user supplied (an image, a prompt, a setting) cannot be used; `str(err)` says why."""
