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
for windows to match the crontab ticks.

Schedule names follow the SageMaker SDK's ``CronExpressionGenerator``: ``hourly`` is
``cron(0 * ? * * *)``, ``daily(H)`` is ``cron(0 H ? * * *)`` (``daily`` = ``daily(0)``), and
``daily_every_x_hours(N[, S])`` is ``cron(0 S/N ? * * *)`` (every N hours from hour S, S defaulting to 0).
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
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from container.job import EXIT_OK, EXIT_USER_ERROR

AWS_CRON = re.compile(r"^cron\((.+)\)$")
SCHEDULES = {
    "hourly": re.compile(r"^hourly(?:\(\))?$"),
    "daily": re.compile(r"^daily(?:\((\d{1,2})?\))?$"),
    "daily_every_x_hours": re.compile(r"^daily_every_x_hours\((\d{1,2})(?:,\s*(\d{1,2}))?\)$"),
}
ENTRY_MARK = "# lucent-schedule:"  # ends every line Lucent installs, so --install can replace its own line


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
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(tree["name"])):
            raise ScheduleError(f"{path}: name {tree['name']!r} must be letters, digits, '-', '_' or '.'")
        job = cls(file=path.resolve(), **{k: str(v) for k, v in tree.items()})
        crontab_expression(job.schedule)  # refuse a bad schedule when the entry is made, not at 3 a.m.
        return job

    @property
    def state_dir(self) -> Path:
        base = Path(os.environ.get("LUCENT_STATE_DIR") or Path.home() / ".cache" / "lucent" / "schedules")
        return base / self.name

    def entry(self, force: bool = False) -> str:
        """The crontab line that runs this job on its schedule."""
        command = [sys.executable, "-m", "container.schedule", str(self.file), "--run", *(["--force"] * force)]
        log = self.state_dir / "cron.log"
        # mkdir first: the shell opens the log before the command could create its folder. `%` escaped:
        # cron turns an unescaped one into a newline.
        return (f"{crontab_expression(self.schedule)} mkdir -p {shlex.quote(str(self.state_dir))} && "
                f"cd {shlex.quote(str(Path.cwd()))} && "
                f"{shlex.join(command)} >> {shlex.quote(str(log))} 2>&1 {ENTRY_MARK}{self.name}").replace("%", "\\%")


def run_window(job: Job, now: datetime | None = None, force: bool = False) -> int:
    """Run the window ``now`` falls in, unless it is running elsewhere or already completed."""
    from container.launcher import LaunchError, launch

    window = window_of(crontab_expression(job.schedule), now or datetime.now(UTC))
    stamp = window.strftime("%Y%m%dT%H%M%SZ")
    job.state_dir.mkdir(parents=True, exist_ok=True)
    done = job.state_dir / f"{stamp}.done"
    with open(job.state_dir / f"{stamp}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{job.name} {stamp}: already running; nothing done")
            return EXIT_OK
        if done.exists() and not force:
            print(f"{job.name} {stamp}: already completed ({done}); nothing done (--force reruns it)")
            return EXIT_OK
        output = f"{job.output.rstrip('/')}/{job.name}/{stamp}"
        print(f"{job.name} {stamp}: launching, results in {output}", flush=True)
        try:
            code, message = launch(job.config, output, job.data, job.model, job.image, job.endpoint_url)
        except LaunchError as error:
            code, message = EXIT_USER_ERROR, f"error: {error}"
        print(f"{job.name} {stamp}: exit code {code}: {message}")
        if code == EXIT_OK:
            done.write_text(f"{datetime.now(UTC).isoformat()} {output}\n", encoding="utf-8")
        return code


def install(entry: str, name: str) -> None:
    """Add ``entry`` to the user's crontab, replacing the line installed before for ``name``."""
    if shutil.which("crontab") is None:
        raise ScheduleError("no `crontab` command on this machine: add the --print line to your scheduler by hand")
    current = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    lines = [line for line in (current.stdout if current.returncode == 0 else "").splitlines()
             if not line.endswith(f"{ENTRY_MARK}{name}")]
    subprocess.run(["crontab", "-"], input="\n".join([*lines, entry]) + "\n", text=True, check=True)


def add_schedule_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``schedule`` on the ``lucent`` subcommand parser."""
    parser = subparsers.add_parser("schedule", help="run a launch on a cron schedule, one output per window",
                                   description=__doc__.split("\n\n", 1)[1],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", type=Path, help="job description (YAML or JSON)")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--print", action="store_true", help="print the crontab line")
    action.add_argument("--install", action="store_true", help="add (or replace) the line in your crontab")
    action.add_argument("--run", action="store_true", help="run the current window now (what cron calls)")
    parser.add_argument("--force", action="store_true", help="with --run: rerun a window that already completed")
    return parser


def run_schedule(args: argparse.Namespace) -> int:
    """``lucent schedule``: returns the exit code."""
    from container.job import configure_logging

    try:
        job = Job.load(args.job)
        if args.run:
            configure_logging()
            pinned = os.environ.get("LUCENT_SCHEDULE_NOW")  # tests and backfills: the clock to use
            return run_window(job, datetime.fromisoformat(pinned) if pinned else None, args.force)
        entry = job.entry()
        if args.install:
            install(entry, job.name)
            print(f"installed: {entry}")
        else:
            print(entry)
        return EXIT_OK
    except (ScheduleError, OSError, subprocess.CalledProcessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR


def main(argv: list[str] | None = None) -> int:
    """``python -m container.schedule ...`` is ``lucent schedule ...``."""
    from container.cli import main as lucent

    return lucent(["schedule", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
