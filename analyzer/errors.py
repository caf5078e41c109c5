"""Error types that decide a job's exit code and exit message.

``UserError`` is anything the user can fix (config, data, model): exit code 1 and
``ClientError: <reason>`` in the message file. ``DependencyError`` is something the job relies on
failing while it runs (the model server died or stopped answering): exit code 2 and
``AlgorithmError: <reason>``. Any other exception is an internal error (exit 2).
"""


class UserError(Exception):
    """A problem with the job's inputs; the message must name the key, file, row or column."""


class ConfigError(UserError):
    """``analysis_config.json`` is missing, unparsable or invalid.

    ``problems`` holds every problem found (one line each, starting with the key path), so that
    ``lucent validate`` can list them all at once.
    """

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class DataError(UserError):
    """The dataset cannot be read or does not fit the config (file, row or column named)."""


class DependencyError(Exception):
    """Something the job relies on failed while it ran -- neither the user's inputs nor a bug in
    Lucent's code: the model server died, the connection to the model broke, the model did not answer
    in time. The message says what failed and where (the endpoint, the server's last log lines)."""


def jmespath_error_text(error: Exception) -> str:
    """A JMESPath syntax error's reason, for a message that quotes the expression itself.

    jmespath words its errors ``invalid token: Parse error at column 0, ...`` and ``Unexpected token: ]:
    ...``: a ``token:`` field that ``analyzer.redact`` hides as a credential, which left the user
    ``invalid token: ***``. Kept: the reason and the column; dropped: the prefix and the multi-line echo.
    """
    import re

    reason = str(error).split("\n", 1)[0]
    reason = re.sub(r",? for expression:$", "", reason).rstrip(":")
    reason = re.sub(r"^(?:invalid token|Bad jmespath expression|Invalid jmespath expression): ", "", reason)
    return reason.replace("token: ", "token ")
