"""WeasyPrint is imported without library lookups (analyzer.report.pdf.import_with_direct_library_names).

Each check runs in a new interpreter: the import is what is measured, and this process may have imported
WeasyPrint already.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The libraries WeasyPrint opens, as its ffi module names them; which of them were found, and how many
# processes the import started (ctypes.util.find_library runs ldconfig, gcc and ld).
_IMPORT_REPORT = """
import json, subprocess, sys
started = []
popen_init = subprocess.Popen.__init__
def counting_init(self, args, *rest, **options):
    started.append(args)
    popen_init(self, args, *rest, **options)
subprocess.Popen.__init__ = counting_init
{importer}
from weasyprint.text import ffi
names = ["gobject", "pango", "harfbuzz", "harfbuzz_subset", "harfbuzz_vector", "fontconfig", "pangoft2"]
print(json.dumps({{"found": [n for n in names if getattr(ffi, n) is not None], "processes": len(started)}}))
"""


def _run(code: str, cwd: Path = ROOT) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_weasyprint_loads_the_same_libraries_without_starting_a_process():
    ours = _run(_IMPORT_REPORT.format(importer="from analyzer.report.pdf import require_pdf_engine; require_pdf_engine()"))
    usual = _run(_IMPORT_REPORT.format(importer="import weasyprint"))
    assert ours["processes"] == 0
    assert ours["found"] == usual["found"]
    assert {"gobject", "pango", "harfbuzz", "fontconfig", "pangoft2"} <= set(ours["found"])


def test_a_library_only_a_lookup_finds_is_imported_the_usual_way(tmp_path: Path):
    # A module that, like a library found only by ctypes.util.find_library, fails without the lookup.
    (tmp_path / "needs_lookup").mkdir()
    (tmp_path / "needs_lookup" / "__init__.py").write_text(textwrap.dedent("""
        import ctypes.util
        LIBC = ctypes.util.find_library("c")
        if LIBC is None:
            raise OSError("cannot find the C library")
    """))
    code = textwrap.dedent(f"""
        import ctypes.util, json, sys
        sys.path.insert(0, {str(tmp_path)!r})
        lookup = ctypes.util.find_library
        from analyzer.report.pdf import import_with_direct_library_names
        module = import_with_direct_library_names("needs_lookup")
        print(json.dumps({{"libc": module.LIBC, "restored": ctypes.util.find_library is lookup}}))
    """)
    outcome = _run(code)
    assert outcome["libc"] and outcome["libc"].startswith("libc.so")
    assert outcome["restored"] is True
