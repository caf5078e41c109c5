"""Red-team findings on ``lucent launch``: links in local inputs that lead out of them, and S3 keys whose
invisible Unicode characters would reach messages and logs. Real files, links and FIFOs on disk."""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path

import pytest

from container.launcher import LaunchError, copy_local_input, main, printable
from tests.test_launcher import CONFIG, local_job  # noqa: F401 - the fixture, named as a test argument

SECRET = "hunter2-very-secret"


@pytest.fixture
def secret_file(tmp_path) -> Path:
    path = tmp_path / "outside" / "credentials"
    path.parent.mkdir()
    path.write_text(f"[default]\naws_secret_access_key = {SECRET}\n")
    return path


def files_below(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- links in local --data / --config inputs ----------------------------------------------------------------

def test_a_link_out_of_a_local_data_folder_fails_the_launch(local_job, tmp_path, secret_file, capsys):  # noqa: F811
    data = tmp_path / "ldata"
    data.mkdir()
    (data / "credit.csv").write_bytes((local_job.data_dir / "credit.csv").read_bytes())
    (data / "creds.csv").symlink_to(secret_file)
    results, work = tmp_path / "results", tmp_path / "work"
    work.mkdir()
    code = main(["--config", str(local_job.root / "input" / "config"), "--data", str(data),
                 "--output", str(results), "--work-dir", str(work)])
    message = (results / "message").read_text()
    printed = capsys.readouterr().out
    assert code == 1, message
    assert message.startswith(f"ClientError: --data: {data / 'creds.csv'} is a link to {secret_file}, outside "
                              f"{data}"), message
    assert SECRET not in printed + message
    assert not any(SECRET in text for text in files_below(work).values())  # never staged


def test_a_single_file_config_that_links_out_of_its_folder_fails_the_launch(local_job, tmp_path, capsys):  # noqa: F811
    elsewhere = tmp_path / "elsewhere" / "analysis_config.json"
    elsewhere.parent.mkdir()
    elsewhere.write_text(json.dumps(CONFIG))
    link = tmp_path / "mine" / "analysis_config.json"
    link.parent.mkdir()
    link.symlink_to(elsewhere)
    results = tmp_path / "results"
    code = main(["--config", str(link), "--data", str(local_job.data_dir), "--output", str(results)])
    capsys.readouterr()
    assert code == 1
    assert (results / "message").read_text().startswith(
        f"ClientError: --config: {link} is a link to {elsewhere}, outside {link.parent}")


def test_a_link_inside_a_local_config_folder_is_followed(local_job, tmp_path, capsys):  # noqa: F811
    config = tmp_path / "cfg"
    (config / "versions").mkdir(parents=True)
    (config / "versions" / "v1.json").write_text(json.dumps(CONFIG))
    (config / "analysis_config.json").symlink_to(Path("versions") / "v1.json")
    results = tmp_path / "results"
    code = main(["--config", str(config), "--data", str(local_job.data_dir), "--output", str(results)])
    capsys.readouterr()
    assert code == 0, (results / "message").read_text()
    assert json.loads((results / "analysis.json").read_text()) == local_job.analysis()


def test_links_inside_the_input_are_copied_as_the_files_they_lead_to(tmp_path):
    source, dest = tmp_path / "in", tmp_path / "staged"
    (source / "real").mkdir(parents=True)
    (source / "real" / "a.csv").write_text("1\n")
    (source / "relative.csv").symlink_to(Path("real") / "a.csv")
    (source / "absolute.csv").symlink_to(source / "real" / "a.csv")
    (source / "folder").symlink_to(source / "real", target_is_directory=True)
    dest.mkdir()
    copy_local_input("--data", source, dest)
    assert files_below(dest) == {"absolute.csv": "1\n", "folder/a.csv": "1\n", "real/a.csv": "1\n",
                                 "relative.csv": "1\n"}
    assert not any(p.is_symlink() for p in dest.rglob("*"))


@pytest.mark.parametrize("layout", ["file out", "folder out", "nested out", "relative climb", "dangling",
                                    "link to itself", "link to its parent", "two folders linked to each other",
                                    "fifo"])
def test_every_hostile_link_layout_is_refused_by_name(tmp_path, secret_file, layout):
    source, dest = tmp_path / "in", tmp_path / "staged"
    (source / "sub").mkdir(parents=True)
    (source / "ok.csv").write_text("1\n")
    culprit = {
        "file out": source / "creds.csv",
        "folder out": source / "aws",
        "nested out": source / "sub" / "creds.csv",
        "relative climb": source / "sub" / "up.csv",
        "dangling": source / "gone.csv",
        "link to itself": source / "self",
        "link to its parent": source / "sub" / "loop",
        "two folders linked to each other": source / "sub" / "to_b",
        "fifo": source / "sub" / "pipe",
    }[layout]
    if layout == "file out" or layout == "nested out":
        culprit.symlink_to(secret_file)
    elif layout == "folder out":
        culprit.symlink_to(secret_file.parent, target_is_directory=True)
    elif layout == "relative climb":
        culprit.symlink_to(Path("..") / ".." / "outside" / "credentials")
    elif layout == "dangling":
        culprit.symlink_to(tmp_path / "nothing-here")
    elif layout == "link to itself":
        culprit.symlink_to(culprit)
    elif layout == "link to its parent":
        culprit.symlink_to(Path(".."), target_is_directory=True)
    elif layout == "two folders linked to each other":
        (source / "b").mkdir()
        (source / "b" / "to_sub").symlink_to(source / "sub", target_is_directory=True)
        culprit.symlink_to(source / "b", target_is_directory=True)
    else:
        os.mkfifo(culprit)
    dest.mkdir()
    with pytest.raises(LaunchError) as raised:
        copy_local_input("--data", source, dest)
    message = str(raised.value)
    assert message.startswith("--data: "), message
    assert str(culprit) in message or (layout == "two folders linked to each other"
                                       and str(source / "b" / "to_sub") in message), message
    assert not any(SECRET in text for text in files_below(dest).values())


def test_a_single_file_input_link_inside_its_folder_is_allowed(tmp_path):
    folder, dest = tmp_path / "cfg", tmp_path / "staged"
    folder.mkdir()
    dest.mkdir()
    (folder / "v2.json").write_text("{}")
    (folder / "analysis_config.json").symlink_to("v2.json")
    copy_local_input("--config", folder / "analysis_config.json", dest)
    assert files_below(dest) == {"analysis_config.json": "{}"}


# -- printable(): invisible characters in S3 keys ----------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("in/data/a.csv", "in/data/a.csv"),
    ("café/データ.csv", "café/データ.csv"),  # letters of any script stay as they are
    ("a\x00b\nc\x7f", "a\\x00b\\x0ac\\x7f"),
    ("invoice\u202ecsv.exe", "invoice\\u202ecsv.exe"),  # right-to-left override
    ("a\x85b", "a\\x85b"),  # NEXT LINE (C1)
    ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),  # line and paragraph separators
    ("zero\u200bwidth\ufeff", "zero\\u200bwidth\\ufeff"),
    ("tag\U000e0041", "tag\\U000e0041"),
])
def test_printable_escapes_invisible_characters(text, expected):
    assert printable(text) == expected


def test_printable_leaves_no_control_format_or_separator_character():
    every = "".join(chr(code) for code in range(0x110000) if unicodedata.category(chr(code)) in
                    ("Cc", "Cf", "Zl", "Zp"))
    shown = printable(every)
    assert all(unicodedata.category(char) not in ("Cc", "Cf", "Zl", "Zp") for char in shown)
    assert shown.isascii() and shown.count("\\") == len(every)
