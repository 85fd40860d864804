"""Errors that mean "the user gave us something wrong": the CLIs print them as one line."""


class UserError(Exception):
    """Bad input (file, argument, data). The message says what is wrong and what to do."""
