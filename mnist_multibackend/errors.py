"""The one exception type the command line turns into exit status 2."""


class InputError(Exception):
    """Bad input from the user: a file, a flag or the environment.

    The message is one line that names the offending thing and what is wrong
    with it, fit to print as is.
    """

    def __init__(self, subject, problem: str):
        self.subject = str(subject)
        self.problem = problem
        super().__init__(f"{self.subject}: {problem}")
