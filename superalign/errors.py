"""One exception type for bad user input: the CLI prints its one-line message and exits with status 2."""


class SuperalignError(ValueError):
    """Bad input or configuration. The message names the problem and the fix, on one line."""

    def __init__(self, problem: str, fix: str = ""):
        msg = problem if not fix else f"{problem}; {fix}"
        super().__init__(msg.replace("\n", " "))
