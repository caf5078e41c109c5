"""Model folders -> the SageMaker handler chain ``model_fn -> input_fn -> predict_fn -> output_fn``.

A model folder is what SageMaker extracts to ``/opt/ml/model``. Two layouts are served:

* ``code/inference.py`` (or ``code/$SAGEMAKER_PROGRAM``): the user's script, imported as the
  SageMaker scikit-learn container imports it. Each of ``model_fn``, ``input_fn``, ``predict_fn``,
  ``output_fn`` is optional (``transform_fn`` replaces the last three); the defaults are those of
  that container (``predict_fn`` = ``model.predict``), except that a missing ``model_fn`` loads the
  folder's model file as below instead of failing.
* no script: one model file, found by name and content -- a joblib/pickle file (scikit-learn
  estimator or pipeline, or any object with ``predict``), an XGBoost model or a LightGBM model.
  The prediction is ``predict_proba`` when the model has it (all class columns), else ``predict``.

Handlers may take one extra trailing argument, the :class:`InvocationContext` (as in the SageMaker
inference toolkit); it carries ``X-Amzn-SageMaker-Custom-Attributes``.
"""

from __future__ import annotations

import copy
import functools
import glob
import importlib.util
import inspect
import logging
import os
import re
import shutil
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

from container.sidecar import codecs
from container.sidecar.errors import ModelLoadError

log = logging.getLogger("lucent.sidecar")

DEFAULT_ENTRY_POINT = "inference.py"
TARBALL_NAME = "model.tar.gz"
# The SageMaker containers hand text bodies to user input_fn as str and everything else as bytes.
_TEXT_TYPES = (codecs.CSV, codecs.JSON)


class InvocationError(Exception):
    """A request failed; ``status`` is the HTTP status and the message is the plain-text body."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InvocationContext:
    """What a handler that accepts a ``context`` argument gets to see of the request."""

    custom_attributes: str | None = None
    target_model: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    model_dir: str = ""

    def get_request_header(self, idx: int, key: str) -> str | None:
        """Multi Model Server style accessor (``idx`` is the batch index; always one request here)."""
        return self.headers.get(key.lower())

    @property
    def system_properties(self) -> dict[str, Any]:
        return {"model_dir": self.model_dir, "gpu_id": None}


# --------------------------------------------------------------------------------------------
# Model folder -> handlers
# --------------------------------------------------------------------------------------------


EXTRACTED_DIR_PREFIX = "lucent-model-"  # + the pid of the server that extracted it + "-" + random


def remove_abandoned_dirs(prefix: str, parent: Path | None = None) -> list[Path]:
    """Remove the temporary folders ``<prefix><pid>-*`` in ``parent`` (default: the temp folder) that
    belong to this user and whose process ``pid`` no longer exists; returns them.

    A process killed with SIGKILL runs no cleanup, so each such folder is named after the process
    that owns it and the next start removes what dead owners left. A live owner's folder is never
    touched (a reused pid only keeps a stale folder a little longer).
    """
    pattern = re.compile(re.escape(prefix) + r"(\d{1,10})-[^/]+")
    removed = []
    for path in Path(parent or tempfile.gettempdir()).glob(f"{glob.escape(prefix)}*"):
        match = pattern.fullmatch(path.name)
        try:
            owned = match is not None and path.is_dir() and not path.is_symlink() and path.stat().st_uid == os.getuid()
        except OSError:
            continue
        if owned and not process_exists(int(match[1])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.info("removed %d temporary folder(s) left by stopped processes: %s", len(removed),
                 ", ".join(map(str, removed)))
    return removed


def process_exists(pid: int) -> bool:
    """Whether a process with this id exists (owned by anyone)."""
    if pid <= 0:
        return True  # not a process id of ours: treat as alive, never remove
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def prepare_model_dir(path: Path) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """Return the folder to serve, extracting ``model.tar.gz`` into a temporary folder when given
    the tarball itself or a folder holding only it. The caller owns the returned temp folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model folder {path} does not exist")
    tarball: Path | None = None
    if path.is_file():
        tarball = path
    elif (path / TARBALL_NAME).is_file() and not (path / "code").is_dir() and not _model_files(path):
        tarball = path / TARBALL_NAME
    if tarball is None:
        return path, None
    remove_abandoned_dirs(EXTRACTED_DIR_PREFIX)  # left by a server killed with SIGKILL
    tmp = tempfile.TemporaryDirectory(prefix=f"{EXTRACTED_DIR_PREFIX}{os.getpid()}-")
    try:
        extract_model_archive(tarball, Path(tmp.name))
    except ModelLoadError:
        tmp.cleanup()
        raise
    except (tarfile.TarError, OSError) as exc:
        tmp.cleanup()
        raise ModelLoadError(f"cannot extract {tarball}: {exc}") from None
    except (EOFError, zlib.error) as exc:  # gzip's own errors, which tarfile passes through
        tmp.cleanup()
        raise ModelLoadError(f"cannot extract {tarball}: the archive is cut short or corrupt ({exc})") from None
    return Path(tmp.name), tmp


def extract_model_archive(tarball: Path, dest: Path) -> None:
    """Extract the model archive ``tarball`` into the (new, empty) folder ``dest``, every member checked by
    ``check_archive_member`` just before it is written: a hostile member raises ``ModelLoadError`` naming the
    archive and the member, and nothing is written outside ``dest`` (the caller removes ``dest``).

    On every Python version: the check does not depend on ``tarfile``'s extraction filters, which Debian
    bookworm's Python 3.11.2 (the image's base) lacks. Where they exist ``filter="data"`` is used as well;
    where not, the members are given the owner and permission bits that filter would give them (no
    set-uid bits, no owner taken from the archive when extracting as root).

    Size: the archive is read through once first, and refused when it holds more than ``MAX_ARCHIVE_MEMBERS``
    members (``check_archive_member_count``, which stops reading there) or when its files' declared sizes would
    not fit in the free space of ``dest``'s file system (``check_archive_size``); while extracting, the bytes
    written are counted and extraction stops once they would exceed the declared total."""
    data_filter = hasattr(tarfile, "data_filter")
    with _SizedTarFile.open(tarball) as archive:
        check_archive_member_count(archive, tarball)
        archive.label, archive.declared = tarball, check_archive_size(archive.getmembers(), dest, tarball)

        def checked():  # lazily: extractall writes each member before taking the next, so each check sees
            for member in archive:  # the folder as the members before it left it
                check_archive_member(member, dest, tarball)
                yield member if data_filter else _plain_data(member)

        archive.extractall(dest, members=checked(), **({"filter": "data"} if data_filter else {}))


FREE_SPACE_MARGIN = 0.05  # of the free space, left free after extracting a model archive
MIN_FREE_SPACE_MARGIN = 16 * 1024 * 1024  # bytes
# Members (files, folders, links) a model archive may hold. A model folder holds a few files (a model file,
# code/inference.py, requirements.txt; a Hugging Face folder a few dozen), a few thousand with Python packages
# vendored in code/ (scikit-learn, SciPy, NumPy and pandas together: about 9,400); this project's whole
# development environment, some hundred packages, is 57,000. Empty members cost no free space
# (check_archive_size) but an inode each, and gzip to under 1 MB per 100,000: a small archive of millions
# of them would fill the file system's inode table, and take minutes to extract.
MAX_ARCHIVE_MEMBERS = 100_000


def _size(count: int) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def check_archive_member_count(members: Iterable[tarfile.TarInfo], archive: Path | str) -> None:
    """``ModelLoadError`` naming the model archive ``archive`` when it holds more than ``MAX_ARCHIVE_MEMBERS``
    ``members`` (the open ``TarFile``, which reads a member's header as it is iterated): an archive of millions
    of members is refused once the cap is passed, before the rest is read and before anything is extracted."""
    for count, _ in enumerate(members, 1):
        if count > MAX_ARCHIVE_MEMBERS:
            raise ModelLoadError(
                f"model archive {archive}: it holds more than {MAX_ARCHIVE_MEMBERS} members (files, folders and "
                "links), far more than a model folder needs, each taking an inode however small; refused. Leave "
                "out of the archive what the model does not load (caches, a whole Python environment)")


def check_archive_size(members: list[tarfile.TarInfo], dest: Path, archive: Path | str) -> int:
    """The total size the files of the model archive ``archive`` declare (``members``: its member list, read
    through the archive once); ``ModelLoadError`` naming the archive when it would not fit in the free
    space of ``dest``'s file system, less a margin (``FREE_SPACE_MARGIN`` of it, at least
    ``MIN_FREE_SPACE_MARGIN``), so that a small archive of a huge zero-filled file (a "bomb") fails before
    writing anything instead of filling the disk. Large models are fine wherever there is room for them."""
    declared = sum(member.size for member in members if member.isreg())
    free = shutil.disk_usage(dest).free
    usable = free - max(int(free * FREE_SPACE_MARGIN), MIN_FREE_SPACE_MARGIN)
    if declared > usable:
        raise ModelLoadError(
            f"model archive {archive}: its {sum(m.isreg() for m in members)} file(s) hold {_size(declared)} "
            f"({declared} bytes) once extracted, and {dest} has {_size(free)} free (extraction keeps "
            f"{_size(free - max(usable, 0))} of it free); refused. Free some space, or point TMPDIR at a "
            "larger folder")
    return declared


class _SizedTarFile(tarfile.TarFile):
    """A ``TarFile`` that counts the bytes it writes into files and stops before they would exceed
    ``declared`` (the archive's declared total, ``check_archive_size``): a member list that changed since it
    was read, or a link extracted as a copy of its target, cannot write more than was checked."""

    label: Path | str = ""  # the archive as messages name it
    declared = 0
    written = 0

    def makefile(self, tarinfo: tarfile.TarInfo, targetpath: str) -> None:
        if self.written + tarinfo.size > self.declared:
            raise ModelLoadError(f"model archive {self.label}: member {tarinfo.name!r} would take the bytes "
                                 f"extracted past the {self.declared} its files declare; refused")
        super().makefile(tarinfo, targetpath)
        self.written += os.lstat(targetpath).st_size
        if self.written > self.declared:
            raise ModelLoadError(f"model archive {self.label}: {self.written} bytes extracted, more than the "
                                 f"{self.declared} its files declare; refused")


def check_archive_member(member: tarfile.TarInfo, dest: Path, archive: Path | str) -> None:
    """Raise ``ModelLoadError`` unless extracting ``member`` of the model archive ``archive`` into ``dest``
    writes a plain file, folder or link inside ``dest``. Refused: absolute names, ``..`` components, names
    that resolve (through links already extracted) outside ``dest``, device files, FIFOs and other special
    members, and links other than relative ones without ``..``.

    Links: a symlink or hardlink is accepted only when its target is relative and has no ``..`` component.
    Such a link resolves downwards from its own folder, into ``dest``, and so does any chain of them:
    whatever order the members come in and whatever other links the archive holds, no path through them
    leaves ``dest``. A ``..`` target cannot be judged member by member -- ``a -> sub/dir`` then ``b -> a/..``
    is inside when checked, outside once a later member replaces ``a`` by ``a -> .`` -- and a model archive
    rarely needs one; refusing it (with this message) is simpler and safe. The resolved-destination check
    below is then a second line of defence."""

    def refuse(why: str) -> NoReturn:
        raise ModelLoadError(f"model archive {archive}: member {member.name!r} {why}; refused")

    if os.path.isabs(member.name):
        refuse("is an absolute path")
    if ".." in member.name.split("/"):
        refuse("has a '..' component")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        kind = ("is a device file" if member.ischr() or member.isblk() else "is a FIFO" if member.isfifo()
                else f"has the special type {member.type!r}")
        refuse(f"{kind} (a model archive holds files, folders and links)")
    root = os.path.realpath(dest)

    def inside(path: str) -> bool:
        resolved = os.path.realpath(os.path.join(root, path))
        return os.path.commonpath([root, resolved]) == root

    if not inside(member.name):
        refuse(f"resolves outside the extraction folder {dest}")
    if member.issym() or member.islnk():
        link = "symlink" if member.issym() else "hardlink"
        target = member.linkname
        if not target:
            refuse(f"is a {link} with an empty target")
        if os.path.isabs(target):
            refuse(f"is a {link} to the absolute path {target!r} (only links inside the archive's folder, "
                   "relative and without '..', are extracted)")
        if ".." in target.split("/"):
            refuse(f"is a {link} to {target!r}, through '..' (only links inside the archive's folder, relative "
                   "and without '..', are extracted)")
        # A symlink's target is relative to the link's folder, a hardlink's to the archive's root.
        if not inside(os.path.join(os.path.dirname(member.name), target) if member.issym() else target):
            refuse(f"is a {link} to {target!r}, which resolves outside the extraction folder {dest}")


def _plain_data(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """A copy of ``member`` with what ``filter="data"`` would change: no set-uid/set-gid/sticky bits, no
    group or other write bit, readable and writable by its owner; its owner the extracting user."""
    member = copy.copy(member)
    member.mode = 0o755 if member.isdir() else (member.mode & 0o755) | 0o600
    member.uid, member.gid, member.uname, member.gname = os.getuid(), os.getgid(), "", ""
    return member


def load_handlers(model_dir: Path, threads: int | None = None) -> ModelHandlers:
    """Load the model in ``model_dir`` (already extracted) and bind its handler functions.

    ``threads``: the threads an XGBoost or LightGBM model file may use per call (default
    ``thread_budget()``, the server worker's share); the job's in-process scorer passes 1 and runs
    batches side by side instead. The server (``app.py``) and the in-process scorer
    (``container.model_endpoint``) both load through here: one implementation of loading and of the
    handler chain."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(f"model folder {model_dir} does not exist or is not a folder")
    script = entry_script(model_dir)
    if script is not None:
        return _load_script(model_dir, script, threads)
    model = load_model_file(model_dir, threads)
    return ModelHandlers(model=model, predict_fn=predict_scores, model_dir=model_dir,
                         source=f"{model_dir} ({_describe(model)}, {BUILTIN_PREDICT})")


BUILTIN_PREDICT = "the built-in predict (model.predict / predict_proba)"  # a bare model file's prediction


def entry_script(model_dir: Path, *, report: bool = True) -> Path | None:
    """The script whose handlers serve ``model_dir``, or None for a bare model file (``BUILTIN_PREDICT``).

    ``SAGEMAKER_PROGRAM`` names it (``code/<name>``; SageMaker sets it from the model's ``entry_point``,
    e.g. the SDK's ``SKLearnModel(entry_point="predictor.py")``); else ``code/inference.py``; else, when
    ``code/`` holds exactly one other ``.py`` file, that one: a folder packed for SageMaker with another
    entry point would otherwise be served without its ``model_fn`` / ``predict_fn`` and give other
    scores, silently. Several such files: none is guessed, a WARNING names them. ``report``: log the
    choice (INFO) or the warning."""
    code = model_dir / "code"
    program = os.environ.get("SAGEMAKER_PROGRAM")
    if program:
        if not (code / program).is_file():
            raise ModelLoadError(f"SAGEMAKER_PROGRAM={program} but {code / program} does not exist")
        return code / program
    if (code / DEFAULT_ENTRY_POINT).is_file():
        return code / DEFAULT_ENTRY_POINT
    scripts = sorted(path for path in code.glob("*.py") if path.is_file()) if code.is_dir() else []
    if len(scripts) == 1:
        if report:
            log.info("Using code/%s as the model's entry point: code/ has no %s and this is its only script "
                     "(set SAGEMAKER_PROGRAM=<name> to use another file of code/)", scripts[0].name,
                     DEFAULT_ENTRY_POINT)
        return scripts[0]
    if scripts and report:
        log.warning("code/ has no %s and several scripts (%s): none is used, the model file is served with %s; "
                    "set SAGEMAKER_PROGRAM=<name> to the script SageMaker would run (the model's entry_point)",
                    DEFAULT_ENTRY_POINT, ", ".join(path.name for path in scripts), BUILTIN_PREDICT)
    return None


def model_folder_problem(model_dir: Path) -> str | None:
    """Why ``model_dir`` (a folder or ``model.tar.gz``) cannot be served, found without loading or
    extracting anything: no folder, no entry script and no single model file. None when it may work
    (a tarball is not opened; a script or a model file may still fail to load). ``lucent validate``
    reports it; the server and the in-process scorer find the same problems when they load."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        return f"model folder {model_dir} does not exist"
    if model_dir.is_file() or (model_dir / TARBALL_NAME).is_file():
        return None
    try:
        if entry_script(model_dir, report=False) is not None:
            return None
        _single_model_file(model_dir)
    except ModelLoadError as error:
        return str(error)
    return None


def _load_script(model_dir: Path, script: Path, threads: int | None = None) -> ModelHandlers:
    if (script.parent / "requirements.txt").is_file():
        log.warning("%s is not installed by Lucent: install those packages in the image", script.parent /
                    "requirements.txt")
    module = _import_script(script)
    handlers = {name: getattr(module, name, None)
                for name in ("model_fn", "input_fn", "predict_fn", "output_fn", "transform_fn")}
    if handlers["transform_fn"] and any(handlers[name] for name in ("input_fn", "predict_fn", "output_fn")):
        raise ModelLoadError(f"{script.name} defines transform_fn together with input_fn/predict_fn/output_fn; "
                             "SageMaker accepts one or the other")
    context = InvocationContext(model_dir=str(model_dir))
    model_fn = handlers["model_fn"]
    try:
        model = (call_handler(model_fn, str(model_dir), context=context) if model_fn
                 else load_model_file(model_dir, threads))
    except ModelLoadError:
        raise
    except Exception as exc:
        log.exception("model_fn failed")
        raise ModelLoadError(f"model_fn in {script.name} failed: {_describe_exception(exc)}") from None
    return ModelHandlers(
        model=model,
        input_fn=handlers["input_fn"],
        predict_fn=handlers["predict_fn"] or _sagemaker_default_predict,
        output_fn=handlers["output_fn"],
        transform_fn=handlers["transform_fn"],
        model_dir=model_dir,
        source=f"{script} ({', '.join(n for n, f in handlers.items() if f) or 'no handlers'})",
    )


def _import_script(script: Path) -> ModuleType:
    # code/ goes on sys.path so the script's own helper modules import as they do in SageMaker.
    sys.path.insert(0, str(script.parent))
    name = script.stem
    spec = importlib.util.spec_from_file_location(name, script)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"{script} is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pickles that reference the script's classes resolve through this
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # SystemExit from a training script run by mistake counts too
        if isinstance(exc, KeyboardInterrupt):
            raise
        log.exception("importing %s failed", script)
        raise ModelLoadError(f"importing code/{script.name} failed: {_describe_exception(exc)}") from None
    return module


# --------------------------------------------------------------------------------------------
# Built-in model files
# --------------------------------------------------------------------------------------------

_PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")


def _model_file_kind(path: Path) -> str | None:
    """'pickle', 'xgboost', 'lightgbm' or None, from the name and, where ambiguous, the first bytes."""
    name, suffix = path.name, path.suffix.lower()
    if suffix in _PICKLE_SUFFIXES or name == "model":
        return "pickle"
    if name == "xgboost-model" or suffix in (".ubj", ".bst"):
        return "xgboost"
    if suffix in (".json", ".txt"):
        with path.open("rb") as handle:
            head = handle.read(256)
        if suffix == ".json" and b'"learner"' in head:
            return "xgboost"
        if suffix == ".txt" and head.startswith(b"tree"):  # LightGBM text models open with "tree\nversion=..."
            return "lightgbm"
    return None


def _model_files(model_dir: Path) -> list[tuple[Path, str]]:
    found = []
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            kind = _model_file_kind(path)
            if kind:
                found.append((path, kind))
    return found


def load_model_file(model_dir: Path, threads: int | None = None) -> Any:
    """Find the folder's single model file and load it into an object with ``predict`` (``threads``:
    see ``load_handlers``)."""
    path, kind = _single_model_file(model_dir)
    loader = {"pickle": _load_pickle, "xgboost": _load_xgboost, "lightgbm": _load_lightgbm}[kind]
    try:
        model = loader(path, threads)
    except ModelLoadError:
        raise
    except Exception as exc:
        log.exception("loading %s failed", path)
        raise ModelLoadError(f"cannot load {path.name}: {_describe_exception(exc)}") from None
    if not (hasattr(model, "predict") or hasattr(model, "predict_proba")):
        raise ModelLoadError(f"{path.name} holds a {type(model).__module__}.{type(model).__qualname__}, "
                             "which has no predict or predict_proba method")
    return model


def _single_model_file(model_dir: Path) -> tuple[Path, str]:
    """The folder's one model file and its kind; ``ModelLoadError`` for none or several."""
    found = _model_files(model_dir)
    if not found:
        raise ModelLoadError(_no_model_file_message(model_dir))
    if len(found) > 1:
        names = ", ".join(path.name for path, _ in found)
        raise ModelLoadError(f"several model files in {model_dir}: {names}; keep one, or add code/inference.py "
                             "with a model_fn that loads the right one")
    return found[0]


def _no_model_file_message(model_dir: Path) -> str:
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in model_dir.iterdir() if not p.name.startswith("."))
    expected = ("expected code/inference.py or one model file: *.joblib, *.pkl, *.pickle or 'model' (joblib), "
                "xgboost-model, *.json, *.ubj or *.bst (XGBoost), *.txt (LightGBM)")
    if not entries:
        return f"model folder {model_dir} is empty: {expected}"
    hint = ""
    if len(entries) == 1 and entries[0].endswith("/"):
        hint = f" (model files must be at the top level: is {entries[0]} the folder that should have been served?)"
    return f"no model file found in {model_dir}, which holds {', '.join(entries)}{hint}: {expected}"


def _load_pickle(path: Path, threads: int | None = None) -> Any:
    import joblib  # joblib also reads plain pickle files

    model = joblib.load(path)
    return _wrap_booster(model, threads) or model


def _import_optional(module: str, purpose: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelLoadError(f"{purpose} needs the '{module}' package, which is not installed "
                             f"(pip install {module})") from None


def _load_xgboost(path: Path, threads: int | None = None) -> Any:
    xgb = _import_optional("xgboost", f"the XGBoost model {path.name}")
    booster = xgb.Booster()
    try:
        booster.load_model(str(path))
    except xgb.core.XGBoostError:
        if path.name != "xgboost-model":
            raise
        # Older SageMaker XGBoost algorithm versions pickled the Booster under this name.
        return _load_pickle(path, threads)
    return XGBoostBooster(booster, threads)


def _load_lightgbm(path: Path, threads: int | None = None) -> Any:
    lgb = _import_optional("lightgbm", f"the LightGBM model {path.name}")
    return LightGBMBooster(lgb.Booster(model_file=str(path)), threads)


def _wrap_booster(model: Any, threads: int | None = None) -> Any | None:
    """Native boosters (pickled or loaded) need their own data wrappers; sklearn-API models don't."""
    kind = (type(model).__module__.split(".")[0], type(model).__name__)
    if kind == ("xgboost", "Booster"):
        return XGBoostBooster(model, threads)
    if kind == ("lightgbm", "Booster"):
        return LightGBMBooster(model, threads)
    return None


class XGBoostBooster:
    """``predict`` over an ``xgboost.Booster``: its native output (one probability per record for
    binary:logistic, k per record for multi:softprob, the raw value for regression)."""

    def __init__(self, booster: Any, threads: int | None = None):
        self.booster = booster
        self.booster.set_param({"nthread": threads or thread_budget()})

    def predict(self, data: Any) -> Any:
        import xgboost as xgb

        names = self.booster.feature_names
        # A model trained on a DataFrame remembers its column names; requests carry none.
        if names is not None and getattr(data, "shape", (0, 0))[-1] == len(names) and not hasattr(data, "columns"):
            matrix = xgb.DMatrix(data, feature_names=names)
        else:
            matrix = xgb.DMatrix(data)
        return self.booster.predict(matrix)


class LightGBMBooster:
    """``predict`` over a ``lightgbm.Booster`` (probabilities for classifiers, as LightGBM returns them)."""

    def __init__(self, booster: Any, threads: int | None = None):
        self.booster = booster
        self.threads = threads

    def predict(self, data: Any) -> Any:
        return self.booster.predict(data, num_threads=self.threads or thread_budget())


def thread_budget() -> int:
    """Threads one worker may use: the server sets OMP_NUM_THREADS to cores // workers."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return os.cpu_count() or 1


def _describe(model: Any) -> str:
    inner = getattr(model, "booster", model)
    return f"{type(inner).__module__.split('.')[0]} {type(inner).__name__}"


def _describe_exception(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------------------------
# Invocation
# --------------------------------------------------------------------------------------------


def predict_scores(data: Any, model: Any) -> Any:
    """Default prediction for a bare model file: ``predict_proba`` (every class column) when the
    model has it, else ``predict``."""
    if hasattr(model, "predict_proba"):
        return model.predict_proba(data)
    return model.predict(data)


def _sagemaker_default_predict(data: Any, model: Any) -> Any:
    # What the SageMaker scikit-learn container does for a script without predict_fn.
    return model.predict(data)


def call_handler(fn: Callable[..., Any], *args: Any, context: InvocationContext) -> Any:
    """Call a user handler, adding ``context`` when its signature has room for it."""
    if _wants_context(fn, len(args)):
        return fn(*args, context)
    return fn(*args)


@functools.lru_cache(maxsize=64)
def _wants_context(fn: Callable[..., Any], n_args: int) -> bool:
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) > n_args


@dataclass
class ModelHandlers:
    """A loaded model and the handler chain that serves it. ``None`` handlers use the defaults."""

    model: Any
    predict_fn: Callable[..., Any]
    input_fn: Callable[..., Any] | None = None
    output_fn: Callable[..., Any] | None = None
    transform_fn: Callable[..., Any] | None = None
    model_dir: Path = Path(".")
    source: str = ""

    @property
    def default_io(self) -> bool:
        """The default input_fn and output_fn serve this model: a request is a plain array in any
        supported type, and the answer is the prediction itself."""
        return self.input_fn is None and self.output_fn is None and self.transform_fn is None

    def score(self, data: Any, accept: str, context: InvocationContext | None = None) -> Any:
        """What ``invoke`` does after the default input_fn decoded ``data``, for a model with default
        handlers (``default_io``): predict_fn, then the default output_fn. For ``application/x-npy`` the
        answer is the array its body would hold (``np.load`` gives it back unchanged, so the body is not
        made); for other types it is the body. Raises :class:`InvocationError` as ``invoke`` does."""
        context = context or InvocationContext(model_dir=str(self.model_dir))
        prediction = self._stage(self._predict_stage, 500, self.predict_fn, data, self.model, context=context)
        if codecs.media_type(accept) == codecs.NPY:
            array = codecs.as_prediction_array(prediction)
            if not array.dtype.hasobject:
                return array
        return self._stage("output_fn", 500, codecs.encode, prediction, accept)  # (object arrays: its error)

    def invoke(self, body: bytes | bytearray, content_type: str, accept: str,
               context: InvocationContext | None = None) -> tuple[bytes, str]:
        """Serve one request: returns the response body and its Content-Type.

        Raises :class:`InvocationError`: 400/415 for a body the input stage cannot read, 406 for an
        Accept the default output_fn cannot produce, 500 when the model or user code fails.
        """
        context = context or InvocationContext(model_dir=str(self.model_dir))
        if self.transform_fn is not None:
            result = self._stage("transform_fn", 500, self.transform_fn, self.model,
                                 self._user_payload(body, content_type), content_type, accept, context=context)
            return _as_response(result, accept)
        if self.input_fn is None:
            data = self._stage("input_fn", 400, codecs.decode, body, content_type)
        else:
            data = self._stage("input_fn", 400, self.input_fn, self._user_payload(body, content_type),
                               content_type, context=context)
        return self.invoke_decoded(data, accept, context)

    def invoke_decoded(self, data: Any, accept: str, context: InvocationContext | None = None) -> tuple[bytes, str]:
        """``invoke`` from the input stage's result on: predict_fn, then the output stage. For a request
        the server decoded another way (the coalition pictures it draws itself)."""
        context = context or InvocationContext(model_dir=str(self.model_dir))
        prediction = self._stage(self._predict_stage, 500, self.predict_fn, data, self.model, context=context)
        if self.output_fn is None:
            return self._stage("output_fn", 500, codecs.encode, prediction, accept), codecs.media_type(accept)
        result = self._stage("output_fn", 500, self.output_fn, prediction, accept, context=context)
        return _as_response(result, accept)

    @property
    def _predict_stage(self) -> str:
        """The prediction stage as failures name it: the script's ``predict_fn``, or the built-in predict."""
        return BUILTIN_PREDICT if self.predict_fn is predict_scores else "predict_fn"

    @staticmethod
    def _user_payload(body: bytes | bytearray, content_type: str) -> bytes | str:
        if codecs.media_type(content_type) not in _TEXT_TYPES:
            return bytes(body)  # user handlers get bytes, as in SageMaker (the server may read a bytearray)
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvocationError(f"{content_type} body is not valid UTF-8: {exc}", 400) from None

    @staticmethod
    def _stage(stage: str, status: int, fn: Callable[..., Any], *args: Any,
               context: InvocationContext | None = None) -> Any:
        """Run one stage, turning any failure into an InvocationError that names the stage."""
        try:
            if context is None:  # our own default functions take no context
                return fn(*args)
            return call_handler(fn, *args, context=context)
        except codecs.CodecError as exc:
            raise InvocationError(str(exc), exc.status) from None
        except InvocationError:
            raise
        except Exception as exc:
            message = f"{stage} failed: {_describe_exception(exc)}"
            _log_failure(stage, message)
            raise InvocationError(message, status) from None


_TRACEBACKS_PER_STAGE = 3
_failures: dict[str, int] = {}


def _log_failure(stage: str, message: str) -> None:
    """Log a failed request: with its traceback the first few times, then one line each. Clarify
    retries a failing batch record by record, so a broken model would otherwise flood the log."""
    count = _failures[stage] = _failures.get(stage, 0) + 1
    if count <= _TRACEBACKS_PER_STAGE:
        log.exception(message)
    else:
        log.error("%s (traceback logged %d times already)", message, _TRACEBACKS_PER_STAGE)


def _as_response(result: Any, accept: str) -> tuple[bytes, str]:
    """A user output_fn/transform_fn result -> (body, content type), accepting what SageMaker does:
    ``(body, content_type)``, a str/bytes body, or a Flask-style response object."""
    content_type = accept
    if isinstance(result, tuple) and len(result) == 2:
        result, content_type = result
    if hasattr(result, "get_data") and hasattr(result, "mimetype"):
        return result.get_data(), result.mimetype or content_type
    if isinstance(result, str):
        return result.encode("utf-8"), content_type
    if isinstance(result, bytes | bytearray | memoryview):
        return bytes(result), content_type
    try:  # an array, list or DataFrame: encode it as the default output_fn would
        return codecs.encode(result, content_type), content_type
    except codecs.CodecError as exc:
        raise InvocationError(f"output_fn returned a {type(result).__name__}, which cannot be sent as "
                              f"{content_type}: {exc}", 500) from None
