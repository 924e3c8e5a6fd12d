"""The exceptions the `gpt2-lib` command turns into one-line messages."""


class CLIError(Exception):
    """A user-facing error: printed as `gpt2-lib: error: ...`, exit status 2."""


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint.

    Args:
        message: the one line to print.
        exit_status: 130 for SIGINT, 143 for SIGTERM (128 + signal number).
    """

    def __init__(self, message, exit_status=130):
        super().__init__(message)
        self.exit_status = exit_status
