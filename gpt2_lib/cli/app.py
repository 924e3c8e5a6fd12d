"""`main()`: parse, choose the backend, run one command, turn errors into exit codes.

Exit status: 0 success; 2 a user error (one line, `gpt2-lib: error: ...`);
130 interrupted by Ctrl-C (143 by SIGTERM); 1 an internal error (a bug:
its traceback is printed). A closed stdout (`gpt2-lib generate ... | head -1`)
ends the command quietly with status 0.
"""

import importlib
import os
import sys

from gpt2_lib.cli import backend as backend_lib
from gpt2_lib.cli import parser as parser_lib
from gpt2_lib.cli.errors import CLIError
from gpt2_lib.cli.errors import TrainingInterrupted

# Errors whose message is the whole story for a user: bad presets, files,
# handles, network. Anything else is a bug and keeps its traceback.
USER_ERRORS = (
    CLIError, ValueError, FileNotFoundError, FileExistsError, PermissionError,
    IsADirectoryError, NotADirectoryError, ConnectionError, OSError,
)


def _print_error(message):
    print(f"{parser_lib.PROG}: error: {message}", file=sys.stderr)


def _silence_stdout():
    """After a broken pipe: send further output (and the exit flush) nowhere."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _enable_compilation_cache():
    """JAX's persistent compilation cache, unless its folder cannot be made."""
    from gpt2_lib.backends.compilation_cache import enable_compilation_cache

    try:
        # Every program: streaming compiles a prefill and a decode step of
        # well under the library's 0.5 s threshold each, 1-2 s together.
        enable_compilation_cache(min_compile_seconds=0)
    except OSError:  # A read-only home: compile as without the cache.
        pass


def main(argv=None):
    """Run `gpt2-lib` with `argv` (default: `sys.argv[1:]`); returns the exit status.

    Example:
    ```python
    from gpt2_lib.cli import main
    main(["generate", "ROMEO.", "--sampler", "greedy", "--max-length", "32"])
    ```
    """
    args = parser_lib.parse_args(argv)
    try:
        if args.command not in parser_lib.NO_BACKEND_COMMANDS:
            args.backend = backend_lib.activate_backend(args.backend)
            if hasattr(args, "no_compilation_cache") and not args.no_compilation_cache:
                _enable_compilation_cache()
        command = importlib.import_module(parser_lib.COMMAND_MODULES[args.command])
        status = command.run(args) or 0
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except TrainingInterrupted as interrupted:
        print(f"{parser_lib.PROG}: {interrupted}", file=sys.stderr)
        return interrupted.exit_status
    except KeyboardInterrupt:
        print(f"{parser_lib.PROG}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        if isinstance(error, OSError) and error.errno is not None and error.filename:
            _print_error(f"{error.strerror}: {error.filename!r}")
        else:
            _print_error(str(error).strip() or type(error).__name__)
        return 2


if __name__ == "__main__":
    sys.exit(main())
