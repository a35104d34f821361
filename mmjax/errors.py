"""The ways a run ends other than finishing, each with its exit code (mmjax.main; README "Exit codes").

Each message is one line that names the field, step or file and says what to do: `mmjax.main`
prints it as it is (the traceback goes to the workdir's log, or to the terminal with --debug).
"""
from __future__ import annotations

EXIT_ERROR = 1  # a run that failed (RunError or any unexpected exception)
EXIT_CONFIG = 2  # bad config or flags, found before any work (ConfigError)
EXIT_SIGINT = 130  # interrupted (Ctrl-C): checkpoint saved at the current step
EXIT_SIGTERM = 143  # preempted (SIGTERM): checkpoint saved at the current step; rerun to resume


class ConfigError(ValueError):
    """Config values a run cannot start with; one problem per line, each naming its field."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class RunError(RuntimeError):
    """A run stopped on purpose with a one-line reason (an unrestorable checkpoint, a failed save,
    a non-finite loss, a resume that would compute something else)."""


class Preempted(Exception):
    """SIGTERM / SIGINT: the run saved a checkpoint at `step` and stopped."""

    def __init__(self, step: int, signal_name: str):
        self.step, self.signal_name = step, signal_name
        super().__init__(f"{signal_name}: stopped after step {step} with its checkpoint committed; "
                         f"run the same command again to resume")

    @property
    def exit_code(self) -> int:
        return EXIT_SIGINT if self.signal_name == "SIGINT" else EXIT_SIGTERM
