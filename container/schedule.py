"""``lucent schedule``: run a launch on a schedule from cron, one output folder per schedule window.

A job description (YAML or JSON)::

    name: credit-bias
    schedule: daily_every_x_hours(6)     # see SCHEDULES below, or cron(...) / a 5-field crontab expression
    config: s3://bucket/jobs/credit/config/
    data: s3://bucket/datasets/credit/   # optional, like model, image, endpoint_url
    output: s3://bucket/monitoring/

becomes one crontab line (``--print``, or ``--install`` with ``crontab -``) whose command is
``python -m container.schedule JOB --run``. Each run publishes to ``<output>/<name>/<window>/``, the
window being the UTC time of the schedule tick the run belongs to (``20240501T060000Z``). A lock file
(``fcntl.flock``) keeps two runs of one window from overlapping, and a window that completed is not run
again unless ``--force``; a failed window may be rerun. Cron must run in UTC (the usual server setting)
for windows to match the crontab ticks. Cron's environment is nearly empty: the line pins the
``LUCENT_STATE_DIR``, ``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3``, ``AWS_DEFAULT_REGION`` and ``AWS_REGION``
set at ``--install`` (never credentials: cron jobs get them from ~/.aws or an instance role). ``--list``
shows the entries installed in your crontab; ``--remove`` takes out the lines of one (a job file, a
``--monitoring-schedule`` file or a name as ``--list`` shows it), every other line kept. A crontab that
``crontab -l`` cannot read is an error: nothing is written.

Schedule names follow the SageMaker SDK's ``CronExpressionGenerator``: ``hourly`` is
``cron(0 * ? * * *)``, ``daily(H)`` is ``cron(0 H ? * * *)`` (``daily`` = ``daily(0)``), and
``daily_every_x_hours(N[, S])`` is ``cron(0 S/N ? * * *)`` (every N hours from hour S, S defaulting to 0).

A monitoring schedule (``--monitoring-schedule``: the ``CreateMonitoringSchedule`` body the SageMaker SDK
sends, with ``--job-definition`` and ``--capture-uri``) becomes two crontab lines: one per tick of its
``ScheduleExpression`` (``--run``), fired 5 minutes after the tick so that the window's last capture files
are published, and one ``@reboot`` line (``--catch-up``). ``lucent monitor`` holds the window's lock
with ``lucent schedule`` (it inherits the lock's descriptor) and gets the SIGTERM it gets. Each run is one
``lucent monitor --now <tick> --schedule-name <MonitoringScheduleName> ...`` for the tick's window;
``NOW`` runs one execution immediately instead. ``--catch-up`` runs, oldest first, the ticks after the
last one attempted (or after ``--install``, or from ``--since T``) that have not completed, at most
``--max-windows`` of them (the most recent): the windows missed while the machine was off.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from analyzer.errors import ConfigError, UserError
from analyzer.monitor.window import utc_text
from container.outcome import EXIT_INTERNAL_ERROR, EXIT_OK, EXIT_STOPPED, EXIT_USER_ERROR, JobStopped

if TYPE_CHECKING:
    from container.monitor.definition import JobDefinition, MonitoringSchedule

AWS_CRON = re.compile(r"^cron\((.+)\)$")
SCHEDULES = {
    "hourly": re.compile(r"^hourly(?:\(\))?$"),
    "daily": re.compile(r"^daily(?:\((\d{1,2})?\))?$"),
    "daily_every_x_hours": re.compile(r"^daily_every_x_hours\((\d{1,2})(?:,\s*(\d{1,2}))?\)$"),
}
ENTRY_MARK = "# lucent-schedule:"  # ends every line Lucent installs, so --install can replace its own line
JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # no '/' (monitoring marks have one), no leading '.'
STAMP = "%Y%m%dT%H%M%SZ"  # a window's name: its tick in UTC
DEFAULT_MAX_WINDOWS = 24  # --catch-up runs at most this many windows (the most recent) unless told otherwise
MAX_SCAN = 100_000  # ticks --catch-up looks back over at most (11 years of hourly ticks)
MONITOR_COMMAND_ENV = "LUCENT_MONITOR_COMMAND"  # replaces `python -m container.cli monitor` (tests, wrappers)
# A monitoring schedule's crontab line fires this many minutes after its tick: the window's last capture files
# are published up to a roll interval (plus a margin) after its end, and `lucent monitor` refuses a window until
# then. SageMaker too starts an execution 0-20 minutes after the hour.
MONITOR_DELAY_MINUTES = 5
# Settings of the installing shell that a crontab line pins, as cron's environment is nearly empty: the state
# folder, the S3 endpoint (MinIO, moto) and the region. Never credentials: a cron job gets them from ~/.aws or
# an instance role, as any AWS client does.
PINNED_VARIABLES = ("LUCENT_STATE_DIR", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION")
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")  # not pinned for a job giving its endpoint_url


class ScheduleStopped(Exception):
    """``lucent schedule`` got SIGTERM while a window ran: the child was stopped and waited for."""


class ScheduleError(ValueError):
    """The job description or its schedule is not usable."""


def crontab_expression(schedule: str) -> str:
    """The 5-field crontab expression (UTC) for a schedule name, an AWS ``cron(...)`` or a crontab line."""
    text = schedule.strip()
    if SCHEDULES["hourly"].match(text):
        return "0 * * * *"
    if match := SCHEDULES["daily"].match(text):
        return _hours_expression(int(match.group(1) or 0), None)
    if match := SCHEDULES["daily_every_x_hours"].match(text):
        return _hours_expression(int(match.group(2) or 0), int(match.group(1)))
    if match := AWS_CRON.match(text):
        fields = match.group(1).split()
        if len(fields) != 6 or fields[5] not in ("*", "?"):
            raise ScheduleError(f"schedule {schedule!r}: an AWS cron(...) has 6 fields and Lucent needs year '*'")
        minute, hour, day, month, weekday = (("*" if f == "?" else f) for f in fields[:5])
        if any(ch.isdigit() for ch in weekday):  # AWS counts SUN=1, crontab SUN=0: names mean the same
            raise ScheduleError(f"schedule {schedule!r}: give the day of week by name (MON-FRI), not number")
        hour = re.sub(r"^(\d+)/(\d+)$", r"\1-23/\2", hour)
        text = f"{minute} {hour} {day} {month} {weekday}"
    if len(text.split()) != 5:
        raise ScheduleError(f"schedule {schedule!r}: not hourly, daily(H), daily_every_x_hours(N[, S]), "
                            "cron(<6 fields>) or a 5-field crontab expression")
    from croniter import croniter

    if not croniter.is_valid(text):
        raise ScheduleError(f"schedule {schedule!r}: {text!r} is not a valid crontab expression")
    return text


def _hours_expression(start: int, every: int | None) -> str:
    if not 0 <= start <= 23 or (every is not None and not 1 <= every <= 24):
        raise ScheduleError(f"hours out of range: start {start} (0-23), interval {every} (1-24)")
    return f"0 {start} * * *" if every is None else f"0 {start}-23/{every} * * *"


def window_of(expression: str, now: datetime) -> datetime:
    """The latest tick of ``expression`` at or before ``now`` (UTC): the window a run started then serves."""
    from croniter import croniter

    # +1 s: cron starts the command a moment after the tick, and a run exactly on the tick belongs to it.
    return croniter(expression, now + timedelta(seconds=1)).get_prev(datetime).astimezone(UTC)


def _state_base() -> Path:
    return Path(os.environ.get("LUCENT_STATE_DIR") or Path.home() / ".cache" / "lucent" / "schedules")


# What a crontab line cannot hold: cron ends a line at a newline, so a newline in any value (even inside shell
# quotes) starts a second cron entry. Every other control character is refused too, with the Unicode line
# separators (NEL, LINE SEPARATOR, PARAGRAPH SEPARATOR: line ends to str.splitlines and to many editors).
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
_CONTROL_NAMES = {"\n": "newline", "\r": "carriage return", "\t": "tab", "\x00": "NUL", "\x7f": "DEL",
                  "\x85": "NEL, U+0085", "\u2028": "line separator, U+2028", "\u2029": "paragraph separator, U+2029"}


def _refuse_control_characters(values: list[tuple[str, str]]) -> None:
    """``ScheduleError`` naming the first ``(source, value)`` whose value holds a character ``_CONTROL`` matches."""
    for source, value in values:
        if match := _CONTROL.search(value):
            char = match.group()
            name = _CONTROL_NAMES.get(char, f"U+{ord(char):04X}")
            raise ScheduleError(f"{source}: contains a control character ({name}); a crontab line cannot hold it")


def _url_credentials(value: str) -> str | None:
    """``value`` shown without its credentials when it is (or holds) a URL with userinfo
    (``http://user:password@host`` -> `` (http://***@host)``, or ``""`` when it cannot be shown without them),
    else None."""
    from urllib.parse import urlsplit

    from analyzer.redact import redact_url

    try:
        has_userinfo = "@" in urlsplit(value).netloc
    except ValueError:  # not a URL urllib can split (an unbalanced '['): the redaction pattern decides
        has_userinfo = False
    shown = redact_url(value)
    if not has_userinfo and shown == value:
        return None
    return f" ({shown})" if shown != value else ""  # a '//user:password@host' without a scheme is not shown


def _refuse_credentials_in_pins(pins: list[tuple[str, str]]) -> None:
    """``ScheduleError`` naming the first pinned variable whose value is a URL with userinfo
    (``http://user:password@host``): a crontab line is no place for a password (``crontab -l``, backups,
    the schedule's log), and boto3 does not authenticate with URL userinfo anyway."""
    for name, value in pins:
        if (shown := _url_credentials(value)) is not None:
            raise ScheduleError(f"${name}: holds credentials in its URL{shown}; boto3 does not "
                                "authenticate with them and a crontab line must not hold them: set it without "
                                "user:password@ and give the credentials through ~/.aws or an instance role")


def _refuse_credentials_in_arguments(values: list[tuple[str, str]]) -> None:
    """``ScheduleError`` naming the first ``(source, value)`` of the command whose value is a URL with userinfo
    (``--model-url http://user:password@host``), shown without it: the user typed it, but a crontab line is no
    place for a password (``crontab -l``, backups, the schedule's log), as for the pinned variables."""
    for source, value in values:
        if (shown := _url_credentials(value)) is not None:
            raise ScheduleError(f"{source}: holds credentials in its URL{shown}; a crontab line must not hold "
                                "them: give the URL without user:password@")


def _cron_line(when: str, state_dir: Path, command: list[str], mark: str,
               sources: dict[int, str] | None = None, pin_endpoint: bool = True) -> str:
    """One crontab line: ``command`` at ``when``, from this directory, its output appended to the state's log.

    Every value that reaches the line is checked here (the one place lines are made) for control characters,
    a newline above all, and for URL credentials (``--model-url http://user:password@host``, a pinned
    ``$AWS_ENDPOINT_URL``): ``ScheduleError`` naming where the value came from, before anything is installed.
    ``sources``: what the user calls ``command[i]`` where its preceding ``--option`` does not say it.
    ``pin_endpoint`` False: ``$AWS_ENDPOINT_URL`` / ``$AWS_ENDPOINT_URL_S3`` are not pinned (the job gives one)."""
    cwd = str(Path.cwd())
    # Cron's environment has none of PINNED_VARIABLES: those set at --install are pinned on the line.
    pins = [(name, value) for name in PINNED_VARIABLES if (value := os.environ.get(name))
            and (pin_endpoint or name not in ENDPOINT_VARIABLES)]
    state_source = ("$LUCENT_STATE_DIR" if os.environ.get("LUCENT_STATE_DIR")
                    else "the state folder (~/.cache/lucent/schedules, from $HOME)")
    arguments = [(_argument_source(command, i, sources or {}), arg) for i, arg in enumerate(command)]
    _refuse_credentials_in_pins(pins)
    _refuse_credentials_in_arguments(arguments)
    _refuse_control_characters([
        ("the schedule", when), (state_source, str(state_dir)), ("the current directory", cwd),
        *((f"${name}", value) for name, value in pins), *arguments, ("the entry's name", mark)])
    log = state_dir / "cron.log"
    pinned = "".join(f"{name}={shlex.quote(value)} " for name, value in pins)
    # mkdir first: the shell opens the log before the command could create its folder. `%` escaped:
    # cron turns an unescaped one into a newline.
    line = (f"{when} mkdir -p {shlex.quote(str(state_dir))} && "
            f"cd {shlex.quote(cwd)} && "
            f"{pinned}{shlex.join(command)} >> {shlex.quote(str(log))} 2>&1 {ENTRY_MARK}{mark}").replace("%", "\\%")
    _refuse_control_characters([("the crontab line", line)])  # whatever value a later change adds to it
    return line


def _argument_source(command: list[str], i: int, sources: dict[int, str]) -> str:
    """What the user calls ``command[i]`` in an error message: ``sources[i]``, else the option it follows."""
    if i in sources:
        return sources[i]
    if i == 0:
        return "the Python interpreter's path (sys.executable)"
    if command[i - 1].startswith("--") and not command[i].startswith("--"):
        return command[i - 1]
    return f"argument {i} of the command"


@dataclass(frozen=True)
class Job:
    """A scheduled job, as its description file gives it."""

    file: Path
    name: str
    schedule: str
    config: str
    output: str
    data: str | None = None
    model: str | None = None
    image: str | None = None
    endpoint_url: str | None = None

    @classmethod
    def load(cls, path: Path) -> Job:
        text = path.read_text(encoding="utf-8")
        try:
            import yaml  # JSON is YAML too; without PyYAML only JSON descriptions are read

            tree = yaml.safe_load(text)
        except ImportError:
            tree = json.loads(text)
        except Exception as error:  # noqa: BLE001 - any parse failure is the user's file
            raise ScheduleError(f"{path}: not valid YAML/JSON: {error}") from error
        if not isinstance(tree, dict):
            raise ScheduleError(f"{path}: expected a mapping of name, schedule, config, output, ...")
        fields = set(cls.__dataclass_fields__) - {"file"}
        if unknown := set(tree) - fields:
            raise ScheduleError(f"{path}: unknown key(s) {sorted(unknown)}; expected {sorted(fields)}")
        if missing := [key for key in ("name", "schedule", "config", "output") if not tree.get(key)]:
            raise ScheduleError(f"{path}: missing {missing}")
        if not JOB_NAME.fullmatch(str(tree["name"])):
            raise ScheduleError(f"{path}: name {tree['name']!r} must start with an ASCII letter or digit, followed "
                                "by ASCII letters, digits, '-', '_' or '.'")
        job = cls(file=path.resolve(), **{k: str(v) for k, v in tree.items()})
        crontab_expression(job.schedule)  # refuse a bad schedule when the entry is made, not at 3 a.m.
        return job

    @property
    def state_dir(self) -> Path:
        return _state_base() / self.name

    def entry(self, force: bool = False) -> str:
        """The crontab line that runs this job on its schedule."""
        command = [sys.executable, "-m", "container.schedule", str(self.file), "--run", *(["--force"] * force)]
        return _cron_line(crontab_expression(self.schedule), self.state_dir, command, self.name,
                          {3: "the job file's path"}, pin_endpoint=self.endpoint_url is None)


def run_once(state_dir: Path, label: str, tick: datetime, force: bool, action: Callable[[int], tuple[int, str]]) -> int:
    """Run ``action(lock_fd)`` for the window of ``tick`` unless it is running elsewhere or already completed.

    A lock file (``fcntl.flock``) keeps two runs of one window from overlapping; ``action`` gets its
    descriptor to hand to a child process, so that the lock lasts as long as the child does (a flock
    belongs to the open file, which the child then shares). The outcome is recorded
    as ``<stamp>.done`` (exit 0: never run again unless ``force``) or ``<stamp>.failed`` (may be rerun):
    what ``--catch-up`` reads to know which windows were attempted.
    """
    from analyzer.output import write_text_atomic

    stamp = tick.strftime(STAMP)
    state_dir.mkdir(parents=True, exist_ok=True)
    done, failed = state_dir / f"{stamp}.done", state_dir / f"{stamp}.failed"
    with open(state_dir / f"{stamp}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{label} {stamp}: already running; nothing done", flush=True)
            return EXIT_OK
        if done.exists() and not force:
            print(f"{label} {stamp}: already completed ({done}); nothing done (--force reruns it)", flush=True)
            return EXIT_OK
        code, note = action(lock.fileno())
        outcome, stale = (done, failed) if code == EXIT_OK else (failed, done)  # a failed rerun replaced the outputs
        write_text_atomic(outcome, f"{datetime.now(UTC).isoformat()} exit {code} {note}\n")
        stale.unlink(missing_ok=True)
        return code


def run_window(job: Job, now: datetime | None = None, force: bool = False) -> int:
    """Run the window ``now`` falls in, unless it is running elsewhere or already completed."""
    from container.launcher import launch, launch_failure

    window = window_of(crontab_expression(job.schedule), now or datetime.now(UTC))
    output = f"{job.output.rstrip('/')}/{job.name}/{window.strftime(STAMP)}"

    def action(lock_fd: int) -> tuple[int, str]:  # noqa: ARG001 - launch() runs its own processes
        print(f"{job.name} {window.strftime(STAMP)}: launching, results in {output}", flush=True)
        try:
            code, message = launch(job.config, output, job.data, job.model, job.image, job.endpoint_url)
        except (Exception, JobStopped) as error:  # noqa: BLE001 - as `lucent launch` ends: the window failed
            code, said = launch_failure(error)
            message = f"error: {said}"
        print(f"{job.name} {window.strftime(STAMP)}: exit code {code}: {message}", flush=True)
        return code, output

    return run_once(job.state_dir, job.name, window, force, action)


def missed_ticks(expression: str, state_dir: Path, now: datetime, since: datetime | None = None,
                 force: bool = False) -> list[datetime]:
    """The ticks of ``expression`` a catch-up runs, oldest first: from ``since`` (inclusive), else after the
    last tick attempted (a ``.done`` or ``.failed`` marker) or after ``--install``, up to the tick at or
    before ``now``; completed ones left out unless ``force``. With no state at all: the current tick."""
    current = window_of(expression, now)
    if since is not None:
        start = since.astimezone(UTC)
        ticks = _ticks_back(expression, current, lambda tick: tick >= start)
    elif (after := _last_attempt(state_dir)) is not None:
        ticks = _ticks_back(expression, current, lambda tick: tick > after)
    else:
        ticks = [current]
    return [tick for tick in ticks if force or not (state_dir / f"{tick.strftime(STAMP)}.done").exists()]


def _ticks_back(expression: str, current: datetime, keep: Callable[[datetime], bool]) -> list[datetime]:
    from croniter import croniter

    ticks, it, tick = [], croniter(expression, current + timedelta(seconds=1)), current
    while True:
        tick = it.get_prev(datetime).astimezone(UTC)
        if not keep(tick):
            return ticks[::-1]
        if len(ticks) >= MAX_SCAN:
            raise ScheduleError(f"more than {MAX_SCAN} windows to look back over: give a later --since")
        ticks.append(tick)


def _last_attempt(state_dir: Path) -> datetime | None:
    """The latest tick with an outcome in ``state_dir``, or the time of ``--install``; None if neither."""
    times = []
    for marker in [*state_dir.glob("*.done"), *state_dir.glob("*.failed")]:
        with contextlib.suppress(ValueError):
            times.append(datetime.strptime(marker.stem, STAMP).replace(tzinfo=UTC))
    installed = state_dir / "installed"
    if installed.exists():
        with contextlib.suppress(ValueError, OSError):
            times.append(datetime.fromisoformat(installed.read_text(encoding="utf-8").strip()).astimezone(UTC))
    return max(times, default=None)


def catch_up(label: str, expression: str, state_dir: Path, now: datetime, run: Callable[[datetime], int], *,
             since: datetime | None = None, max_windows: int = DEFAULT_MAX_WINDOWS, force: bool = False) -> int:
    """Run the missed windows (``missed_ticks``), at most ``max_windows``, the most recent ones; the exit
    code is the worst of the runs (a failed window does not stop the others)."""
    ticks = missed_ticks(expression, state_dir, now, since, force)
    if len(ticks) > max_windows:
        skipped, ticks = ticks[:-max_windows], ticks[-max_windows:]
        print(f"{label}: {len(skipped)} older missed window(s) not run (--max-windows {max_windows}): "
              f"{skipped[0].strftime(STAMP)} to {skipped[-1].strftime(STAMP)}; run them with --catch-up --since "
              f"{utc_text(skipped[0])} --max-windows {len(skipped) + len(ticks)}", flush=True)
    print(f"{label}: catching up {len(ticks)} window(s)"
          + (f": {', '.join(tick.strftime(STAMP) for tick in ticks)}" if ticks else ""), flush=True)
    return max((run(tick) for tick in ticks), default=EXIT_OK)



def _mark_installed(state_dir: Path, now: datetime) -> None:
    """Record when the schedule was installed: a catch-up before any run starts after it."""
    from analyzer.output import write_text_atomic

    state_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(state_dir / "installed", now.astimezone(UTC).isoformat() + "\n")


@dataclass(frozen=True)
class MonitoringJob:
    """A monitoring schedule with its job definition and capture location: ``lucent monitor`` on a schedule."""

    schedule_file: Path
    definition_file: Path
    capture_uri: str
    schedule: MonitoringSchedule
    definition: JobDefinition
    model_dir: Path | None = None
    model_url: str | None = None
    cloudwatch_dir: Path | None = None  # lucent monitor --cloudwatch-dir (None: its default)

    @classmethod
    def load(cls, schedule_file: Path, definition_file: Path, capture_uri: str, model_dir: Path | None = None,
             model_url: str | None = None, cloudwatch_dir: Path | None = None) -> MonitoringJob:
        """Read and check both files now, so that a bad schedule is refused when the entry is made."""
        from container.monitor.definition import (
            check_schedule_pair,
            load_job_definition,
            load_monitoring_schedule,
        )
        from container.storage import parse_uri, uri_scheme

        schedule = _naming_file(schedule_file, load_monitoring_schedule, schedule_file)
        definition = _naming_file(definition_file, load_job_definition, definition_file)
        _naming_file(schedule_file, check_schedule_pair, schedule, definition)
        _, _, local = parse_uri(capture_uri)  # a malformed URI is refused here, not at the first tick
        if local is not None and uri_scheme(capture_uri) is None:
            capture_uri = str(local)  # absolute: the entry runs from the install folder, but say so plainly
        return cls(schedule_file.resolve(), definition_file.resolve(), capture_uri, schedule, definition,
                   model_dir.resolve() if model_dir is not None else None, model_url,
                   cloudwatch_dir.resolve() if cloudwatch_dir is not None else None)

    @property
    def name(self) -> str:
        return self.schedule.name

    @property
    def mark(self) -> str:
        """The crontab mark: ``monitoring/`` cannot collide with a job name (no ``/`` in those)."""
        return f"monitoring/{self.name}"

    @property
    def state_dir(self) -> Path:
        return _state_base() / ".monitoring" / self.name  # '.': no job name starts with one

    @property
    def expression(self) -> str | None:
        """The crontab expression, None for ``NOW``."""
        return None if self.schedule.one_time else crontab_expression(self.schedule.expression)

    def arguments(self) -> list[str]:
        """The ``lucent schedule`` arguments that name this monitoring schedule (before the action)."""
        return ["--monitoring-schedule", str(self.schedule_file), "--job-definition", str(self.definition_file),
                "--capture-uri", self.capture_uri, *self._model_arguments(),
                *(["--cloudwatch-dir", str(self.cloudwatch_dir)] if self.cloudwatch_dir is not None else [])]

    def _model_arguments(self) -> list[str]:
        if self.model_dir is not None:
            return ["--model-dir", str(self.model_dir)]
        return ["--model-url", self.model_url] if self.model_url is not None else []

    def monitor_argv(self, tick: datetime) -> list[str]:
        """The ``lucent monitor`` command line of the window of ``tick``."""
        # ``--opt=value``: an offset such as -PT3H starts with '-', and argparse takes a separate "-PT3H" for
        # an option (the run fails with "expected one argument").
        options = []
        if self.schedule.data_analysis_start_time is not None:
            options.append(f"--data-analysis-start-time={self.schedule.data_analysis_start_time}")
        if self.schedule.data_analysis_end_time is not None:
            options.append(f"--data-analysis-end-time={self.schedule.data_analysis_end_time}")
        if self.cloudwatch_dir is not None:
            options.append(f"--cloudwatch-dir={self.cloudwatch_dir}")
        return [*monitor_command(), "--job-definition", str(self.definition_file), "--capture-uri", self.capture_uri,
                "--now", utc_text(tick), "--schedule-name", self.name, *options, *self._model_arguments()]

    def unfinished(self, tick: datetime) -> str | None:
        """Why the window of ``tick`` cannot run yet (``lucent monitor`` would refuse it), or None."""
        from container.monitor.run import Execution, refuse_unfinished_window

        return refuse_unfinished_window(Execution(self.definition, self.capture_uri, tick, self.name,
                                                  self.schedule.data_analysis_start_time,
                                                  self.schedule.data_analysis_end_time))

    def entry(self) -> str:
        """The crontab lines: one run per tick, and a catch-up when the machine starts."""
        if self.expression is None:
            raise ScheduleError(f"{self.name}: a NOW schedule runs once, immediately: it has no crontab entry")
        command = [sys.executable, "-m", "container.schedule", *self.arguments()]
        return "\n".join([_cron_line(_delayed(self.expression), self.state_dir, [*command, "--run"], self.mark),
                          _cron_line("@reboot", self.state_dir, [*command, "--catch-up"], self.mark)])

    def one_shot(self) -> str:
        """For ``NOW``: the shell line that runs the one execution (what ``--print`` shows)."""
        command = [sys.executable, "-m", "container.schedule", *self.arguments(), "--run"]
        return f"cd {shlex.quote(str(Path.cwd()))} && {shlex.join(command)}"


def _delayed(expression: str) -> str:
    """``expression`` firing ``MONITOR_DELAY_MINUTES`` later when its minute is one number (SageMaker's
    schedules are on the hour): ``--run`` still serves the tick before (``window_of``)."""
    minute, rest = expression.split(" ", 1)
    if minute.isdigit() and int(minute) + MONITOR_DELAY_MINUTES < 60:
        return f"{int(minute) + MONITOR_DELAY_MINUTES} {rest}"
    return expression


def _naming_file(path: Path, function: Callable, *args):
    """``function(*args)``, its ``ConfigError`` problems prefixed with the file they are about."""
    try:
        return function(*args)
    except ConfigError as error:
        raise ConfigError([f"{path}: {problem}" for problem in error.problems]) from error


def monitor_command() -> list[str]:
    """``lucent monitor`` as a command line: this interpreter's ``container.cli``, or ``$LUCENT_MONITOR_COMMAND``."""
    override = os.environ.get(MONITOR_COMMAND_ENV)
    return shlex.split(override) if override else [sys.executable, "-m", "container.cli", "monitor"]


def run_monitoring_window(job: MonitoringJob, tick: datetime, force: bool = False) -> int:
    """One ``lucent monitor`` execution for the window of ``tick`` (a tick of the schedule, or NOW's hour)."""
    from analyzer.redact import redact

    if (problem := job.unfinished(tick)) is not None:
        # Not an attempt: no marker, so that the run after the window's end (or a catch-up) still takes it.
        print(f"{job.name} {tick.strftime(STAMP)}: not started: {problem}", flush=True)
        return EXIT_USER_ERROR
    stopped: list[int] = []

    def action(lock_fd: int) -> tuple[int, str]:
        argv = job.monitor_argv(tick)
        print(f"{job.name} {tick.strftime(STAMP)}: {redact(shlex.join(argv))}", flush=True)
        try:
            # The child holds the window's lock too: if this process is killed, the window stays locked
            # until lucent monitor ends.
            child = subprocess.Popen(argv, pass_fds=(lock_fd,))
        except OSError as error:
            print(f"{job.name} {tick.strftime(STAMP)}: cannot start lucent monitor: {error}", flush=True)
            return EXIT_INTERNAL_ERROR, "not started"

        def forward(signum, frame) -> None:  # noqa: ARG001 - cron / systemd stopping us: stop the child, wait
            stopped.append(signum)
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)

        previous = signal.signal(signal.SIGTERM, forward)
        try:
            code = child.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
        code = code if code in (EXIT_OK, EXIT_USER_ERROR) else EXIT_INTERNAL_ERROR  # a signal is an internal error
        print(f"{job.name} {tick.strftime(STAMP)}: exit code {code}"
              + (" (stopped: SIGTERM passed on to lucent monitor)" if stopped else ""), flush=True)
        return code, f"{job.definition.output_uri.rstrip('/')}/{job.definition.endpoint_name}/{job.name}/" \
                     f"{tick:%Y/%m/%d/%H}"

    code = run_once(job.state_dir, job.name, tick, force, action)
    if stopped:  # no further window of a catch-up
        raise ScheduleStopped(f"{job.name}: stopped by SIGTERM; window {tick.strftime(STAMP)} recorded as failed")
    return code


# `crontab -l` exits 1 both when the user has no crontab and when it cannot be read (permissions, a broken spool):
# only the first is an empty crontab. cronie and vixie cron (Debian's cron) print "no crontab for USER"; BusyBox
# cats the file from the spool folder: "crontab: can't open 'USER': No such file or directory".
_NO_CRONTAB = re.compile(r"(?:crontab: )?(?:no crontab for \S+|can't open '[^'/]+': no such file or directory)",
                         re.IGNORECASE)
# A crontab is bytes: what is not UTF-8 in other lines goes back unchanged (surrogateescape), never replaced.
_CRONTAB_TEXT = {"text": True, "encoding": "utf-8", "errors": "surrogateescape"}


def read_crontab(unchanged: str) -> list[str]:
    """The lines of the user's crontab (none when there is no crontab). ``ScheduleError`` when it cannot be read,
    quoting ``crontab -l``: nothing may be written then, since a new table replaces the whole crontab.
    ``unchanged``: what the error adds (what was not done)."""
    if shutil.which("crontab") is None:
        raise ScheduleError("no `crontab` command on this machine: add the --print line to your scheduler by hand")
    try:
        current = subprocess.run(["crontab", "-l"], capture_output=True, **_CRONTAB_TEXT)
    except OSError as error:
        raise ScheduleError(f"cannot run `crontab -l`: {error}; {unchanged}") from None
    if current.returncode == 0:
        text = current.stdout
    elif _NO_CRONTAB.fullmatch(current.stderr.strip()) and not current.stdout.strip():
        text = ""
    else:
        said = " / ".join(line.strip() for line in current.stderr.strip().split("\n")) or "no message"
        raise ScheduleError(f"cannot read your crontab: `crontab -l` exited {current.returncode}: {said}; {unchanged}")
    # Split at newlines only, as cron does: str.splitlines also splits at \f, \v, U+2028 ..., and would cut
    # (and rewrite) other lines of the crontab holding one.
    return text.removesuffix("\n").split("\n") if text else []


def write_crontab(lines: list[str]) -> None:
    """Replace the user's crontab by ``lines`` (``crontab -``); ``ScheduleError`` quoting it when it refuses."""
    table = "".join(f"{line}\n" for line in lines)
    try:
        written = subprocess.run(["crontab", "-"], input=table, capture_output=True, **_CRONTAB_TEXT)
    except OSError as error:
        raise ScheduleError(f"cannot run `crontab -`: {error}") from None
    if written.returncode != 0:
        said = " / ".join(line.strip() for line in written.stderr.strip().split("\n")) or "no message"
        raise ScheduleError(f"`crontab -` exited {written.returncode}: {said}")


def _mark_of(line: str) -> str | None:
    """The name a line Lucent installed ends with (``credit-bias``, ``monitoring/churn-bias``), else None."""
    match = re.search(rf"{re.escape(ENTRY_MARK)}(\S+)$", line)
    return match.group(1) if match else None


def install(entry: str, name: str) -> None:
    """Add ``entry`` (one line or several) to the user's crontab, replacing the lines installed before for ``name``.
    A crontab that cannot be read is an error, and nothing is written."""
    if any(not line.endswith(f"{ENTRY_MARK}{name}") for line in entry.split("\n")):
        raise ScheduleError(f"{name}: every line installed must end with its mark {ENTRY_MARK}{name}")
    lines = read_crontab("nothing installed (installing writes the whole crontab, which could not be read)")
    write_crontab([*(line for line in lines if _mark_of(line) != name), entry])


def installed() -> dict[str, list[str]]:
    """The lines Lucent installed in the user's crontab, by name (``--list``), in the crontab's order."""
    entries: dict[str, list[str]] = {}
    for line in read_crontab("nothing listed"):
        if (mark := _mark_of(line)) is not None:
            entries.setdefault(mark, []).append(line)
    return entries


def remove(target: str, exact: bool = False, about: str = "") -> list[str]:
    """Remove the lines of the entry ``target`` names (``--list``'s name; unless ``exact``, a name without '/' also
    finds ``monitoring/<name>``), every other line kept as it is; the lines removed. ``ScheduleError`` when no
    entry or two have that name; ``about``: where the name came from, for the message."""
    lines = read_crontab("nothing removed")
    marks = {mark for line in lines if (mark := _mark_of(line)) is not None}
    candidates = [target] if exact or "/" in target else [target, f"monitoring/{target}"]
    found = [mark for mark in candidates if mark in marks]
    if not found:
        raise ScheduleError(f"{target}{about}: not installed: no line of your crontab ends with "
                            f"{' or '.join(ENTRY_MARK + mark for mark in candidates)} (lucent schedule --list shows "
                            "what is)")
    if len(found) > 1:
        raise ScheduleError(f"{target}: both a job and a monitoring schedule of that name are installed: give "
                            f"{' or '.join(found)}")
    removed = [line for line in lines if _mark_of(line) == found[0]]
    write_crontab([line for line in lines if _mark_of(line) != found[0]])
    return removed


def _describe(lines: list[str]) -> tuple[str, str]:
    """An entry's schedule (the crontab times of its lines, UTC) and the file it runs, for ``--list``."""
    times = ", ".join(line.split()[0] if line.startswith("@") else " ".join(line.split()[:5]) for line in lines)
    try:
        # cron reads `\%` as `%`; the mark is a shell comment
        words = shlex.split(lines[0].replace("\\%", "%"), comments=True)
        after = words[words.index("container.schedule") + 1:]
        file = after[1] if after[0] == "--monitoring-schedule" else after[0]
    except (ValueError, IndexError):  # a line edited by hand
        file = "?"
    return times, file


def list_schedules() -> int:
    """``--list``: the entries Lucent installed in the user's crontab, with their schedules and files."""
    entries = installed()
    if not entries:
        print("no Lucent schedule is installed in your crontab")
        return EXIT_OK
    rows = [("NAME", "SCHEDULE (crontab, UTC)", "FILE"),
            *((mark, *_describe(lines)) for mark, lines in entries.items())]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for name, times, file in rows:
        print(f"{name:<{widths[0]}}  {times:<{widths[1]}}  {file}")
    return EXIT_OK


def _removal_target(args: argparse.Namespace) -> tuple[str, bool, str]:
    """What ``--remove`` removes: the name in ``--monitoring-schedule FILE`` (``monitoring/<name>``), else the
    job description JOB's name, else JOB itself as a name (``--list`` shows them); whether the name is exact (a
    file's); where it came from."""
    if args.monitoring_schedule is not None:
        from container.monitor.definition import load_monitoring_schedule

        schedule = _naming_file(args.monitoring_schedule, load_monitoring_schedule, args.monitoring_schedule)
        return f"monitoring/{schedule.name}", True, f" (from {args.monitoring_schedule})"
    if args.job.is_file():
        return Job.load(args.job).name, True, f" (from {args.job})"
    target = str(args.job)
    name = target.removeprefix("monitoring/")
    if not JOB_NAME.fullmatch(name):
        raise ScheduleError(f"{target}: no such job description, and not the name of an entry "
                            "(lucent schedule --list shows them)")
    return target, False, " (no file of that name here: read as a name)"


def add_schedule_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``schedule`` on the ``lucent`` subcommand parser."""
    from container.monitor.cli import parse_time

    parser = subparsers.add_parser("schedule", help="run a launch or a monitoring schedule from cron, one output "
                                                    "per window",
                                   description=__doc__.split("\n\n", 1)[1],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", type=Path, nargs="?", help="job description (YAML or JSON); not with "
                                                          "--monitoring-schedule. With --remove, also the name "
                                                          "of an installed entry (as --list shows it)")
    monitoring = parser.add_argument_group("monitoring schedules (lucent monitor on a schedule)")
    monitoring.add_argument("--monitoring-schedule", type=Path, metavar="FILE",
                            help="the JSON body of CreateMonitoringSchedule (ScheduleExpression, DataAnalysis*)")
    monitoring.add_argument("--job-definition", type=Path, metavar="FILE",
                            help="the JSON body of CreateModelBiasJobDefinition / CreateModelExplainabilityJobDefinition")
    monitoring.add_argument("--capture-uri", metavar="URI", help="the endpoint's DataCaptureConfig.DestinationS3Uri")
    model = monitoring.add_mutually_exclusive_group()
    model.add_argument("--model-dir", type=Path, metavar="DIR", help="explainability: the model folder to serve")
    model.add_argument("--model-url", metavar="URL", help="explainability: a running model server")
    monitoring.add_argument("--cloudwatch-dir", type=Path, metavar="DIR",
                            help="lucent monitor --cloudwatch-dir: where CloudWatch metric files go (default: "
                                 "$LUCENT_CLOUDWATCH_DIR, else /opt/ml/output/metrics/cloudwatch)")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--print", action="store_true", help="print the crontab line(s)")
    action.add_argument("--install", action="store_true", help="add (or replace) the line(s) in your crontab; "
                                                               "a NOW monitoring schedule runs once instead")
    action.add_argument("--run", action="store_true", help="run the current window now (what cron calls)")
    action.add_argument("--catch-up", action="store_true", help="run the windows missed since the last one "
                                                                "attempted (or --since T), oldest first")
    action.add_argument("--list", action="store_true", help="list the entries installed in your crontab: name, "
                                                            "schedule and file (no JOB or --monitoring-schedule)")
    action.add_argument("--remove", action="store_true", help="remove the line(s) installed for JOB (a job "
                                                              "description or an entry's name) or for "
                                                              "--monitoring-schedule FILE; other lines kept")
    parser.add_argument("--force", action="store_true", help="with --run / --catch-up: rerun completed windows")
    parser.add_argument("--now", type=parse_time, metavar="T", help="with --run / --catch-up: the clock, ISO-8601 "
                        "UTC (default: now, or $LUCENT_SCHEDULE_NOW)")
    parser.add_argument("--since", type=parse_time, metavar="T", help="with --catch-up: run every window from T "
                        "that has not completed, failed ones included")
    parser.add_argument("--max-windows", type=int, default=DEFAULT_MAX_WINDOWS, metavar="N",
                        help=f"with --catch-up: at most N windows, the most recent (default {DEFAULT_MAX_WINDOWS})")
    return parser


def run_schedule(args: argparse.Namespace) -> int:
    """``lucent schedule``: returns the exit code."""
    from container.job import configure_logging

    try:
        _check_arguments(args)
        if args.run or args.catch_up:
            configure_logging()
        if args.list:
            return list_schedules()
        if args.remove:
            return _remove(*_removal_target(args))
        now = _clock(args)
        if args.monitoring_schedule is not None:
            return _run_monitoring_schedule(args, now)
        job = Job.load(args.job)
        if args.run:
            return run_window(job, now, args.force)
        if args.catch_up:
            return catch_up(job.name, crontab_expression(job.schedule), job.state_dir, now,
                            lambda tick: run_window(job, tick, args.force), since=args.since,
                            max_windows=args.max_windows, force=args.force)
        entry = job.entry()
        if args.install:
            install(entry, job.name)
            _mark_installed(job.state_dir, now)
            print(f"installed: {entry}")
        else:
            print(entry)
        return EXIT_OK
    except ConfigError as error:
        print(f"error: {len(error.problems)} problem(s):", file=sys.stderr)
        for problem in error.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (ScheduleError, UserError, OSError, subprocess.CalledProcessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ScheduleStopped as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_STOPPED


def _remove(target: str, exact: bool, about: str) -> int:
    lines = remove(target, exact, about)
    print("removed:\n" + "\n".join(lines))
    return EXIT_OK


def _check_arguments(args: argparse.Namespace) -> None:
    monitoring = args.monitoring_schedule is not None
    if args.list:
        given = [flag for flag, value in (("JOB", args.job), ("--monitoring-schedule", args.monitoring_schedule),
                                          ("--job-definition", args.job_definition),
                                          ("--capture-uri", args.capture_uri), ("--model-dir", args.model_dir),
                                          ("--model-url", args.model_url), ("--cloudwatch-dir", args.cloudwatch_dir))
                 if value is not None]
        if given:
            raise ScheduleError(f"--list lists every entry Lucent installed: give it no {', '.join(given)}")
    elif monitoring == (args.job is not None):
        raise ScheduleError("give a job description (lucent schedule JOB ...) or a monitoring schedule "
                            "(--monitoring-schedule FILE --job-definition FILE --capture-uri URI), one of them")
    if monitoring and not args.remove and (args.job_definition is None or args.capture_uri is None):
        raise ScheduleError("--monitoring-schedule needs --job-definition FILE and --capture-uri URI")
    extra = [flag for flag, value in (("--job-definition", args.job_definition), ("--capture-uri", args.capture_uri),
                                      ("--model-dir", args.model_dir), ("--model-url", args.model_url),
                                      ("--cloudwatch-dir", args.cloudwatch_dir)) if value]
    if not monitoring and extra:
        raise ScheduleError(f"{', '.join(extra)}: only with --monitoring-schedule")
    if args.since is not None and not args.catch_up:
        raise ScheduleError("--since goes with --catch-up")
    if args.max_windows < 1:
        raise ScheduleError(f"--max-windows must be at least 1, got {args.max_windows}")


def _clock(args: argparse.Namespace) -> datetime:
    """``--now``, else ``$LUCENT_SCHEDULE_NOW`` (tests and backfills), else the clock; in UTC."""
    from container.monitor.cli import parse_time

    if args.now is not None:
        return args.now
    pinned = os.environ.get("LUCENT_SCHEDULE_NOW")
    if not pinned:
        return datetime.now(UTC)
    try:
        return parse_time(pinned)
    except argparse.ArgumentTypeError as error:
        raise ScheduleError(f"LUCENT_SCHEDULE_NOW: {error}") from None


def _run_monitoring_schedule(args: argparse.Namespace, now: datetime) -> int:
    from analyzer.monitor.window import execution_time

    job = MonitoringJob.load(args.monitoring_schedule, args.job_definition, args.capture_uri, args.model_dir,
                             args.model_url, args.cloudwatch_dir)
    if job.expression is None:  # NOW: one execution at this hour, whether asked to run, install or print
        if args.catch_up:
            raise ScheduleError(f"{job.name}: a NOW schedule runs once (--run or --install); it has no missed "
                                "windows to catch up")
        if args.print:
            print(job.one_shot())
            return EXIT_OK
        if args.install:
            print(f"{job.name}: ScheduleExpression NOW: one execution now, no crontab entry", flush=True)
        return run_monitoring_window(job, execution_time(now), args.force)
    if args.run:
        return run_monitoring_window(job, window_of(job.expression, now), args.force)
    if args.catch_up:
        return catch_up(job.name, job.expression, job.state_dir, now,
                        lambda tick: run_monitoring_window(job, tick, args.force), since=args.since,
                        max_windows=args.max_windows, force=args.force)
    entry = job.entry()
    if (note := _default_schedule_note(job.schedule_file)) is not None:
        print(note, file=sys.stderr, flush=True)
    if args.install:
        install(entry, job.mark)
        _mark_installed(job.state_dir, now)
        print(f"installed:\n{entry}")
    else:
        print(entry)
    return EXIT_OK


def _default_schedule_note(schedule_file: Path) -> str | None:
    """The note that a schedule without ``ScheduleConfig`` runs daily at 00:00 UTC, or None. Reading the file
    logs it at INFO, which ``--print`` / ``--install`` do not show (their output is the crontab line)."""
    from container.monitor.definition import DEFAULT_EXPRESSION

    try:
        body = json.loads(schedule_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # read and checked already: not expected
    config = body.get("MonitoringScheduleConfig") if isinstance(body, dict) else None
    if not isinstance(config, dict) or config.get("ScheduleConfig") is not None:
        return None
    return (f"note: {schedule_file}: MonitoringScheduleConfig has no ScheduleConfig: Lucent runs it daily at 00:00 "
            f"UTC, {DEFAULT_EXPRESSION} (SageMaker runs such a schedule daily at a time it picks); give "
            "ScheduleConfig.ScheduleExpression to choose the hour")


def main(argv: list[str] | None = None) -> int:
    """``python -m container.schedule ...`` is ``lucent schedule ...``."""
    from container.cli import main as lucent

    return lucent(["schedule", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
