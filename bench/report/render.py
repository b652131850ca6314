"""Writing a report: :func:`write_report`.

It gathers, builds the context, renders the Jinja2 templates of ``bench/templates`` (Markdown, self-contained HTML)
and the CSV/LaTeX tables into a temp dir beside the report dir, then swaps it into place.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench.report.context import build_context
from bench.report.gather import ReportError, load_report_data
from bench.report.tables import render_csv, render_latex
from bench.schema import Suite
from todsynth.errors import first_few
from todsynth.files import folder_problem

TEMPLATES = Path(__file__).parent.parent / "templates"

# The files a report dir holds (what _render_into and the context's plots write; write_report checks its own
# output against it). Only a dir holding nothing else is replaced: a user's dir with a report.md beside other
# files is not a report.
REPORT_FILE = re.compile(r"report\.md|index\.html|results\.(csv|tex)|data_efficiency\.(csv|png)|grid_[\w.@-]+\.png"
                         r"|(rectified_steps|per_class_iou|pareto|samples|gain_correlation(_study)?)\.png")


def foreign_entries(path: Path) -> list[str]:
    """The entries of dir ``path`` that a report does not write (sub-dirs, other names), sorted."""
    return sorted(p.name for p in path.iterdir() if not (p.is_file() and REPORT_FILE.fullmatch(p.name)))


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def code_spans(text: str) -> Any:
    """HTML of a note or caption: escaped, with Markdown's `backtick` spans as ``<code>`` (not literal backticks)."""
    import re

    from markupsafe import Markup, escape

    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text))))


def _env() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=jinja2.select_autoescape(["html"]),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters["code"] = code_spans
    return env


def write_report(suite: Suite, out_dir: Path | None = None, run_id: str | None = None) -> Path:
    """Build the report of ``suite``'s latest finished run (or ``run_id``) into ``out_dir`` (default ``reports/<suite>``).

    Written to a temp dir beside ``out_dir`` and swapped into place; returns ``out_dir``.
    """
    out = Path(out_dir) if out_dir is not None else Path("reports") / suite.name
    out = out.expanduser().absolute()
    if (problem := folder_problem(out)) is not None:  # a file on the path, no permission: the default's too
        raise ReportError(f"--out: {problem}; give a new or empty dir, or a previous report's dir")
    if out.exists() and (foreign := foreign_entries(out)):
        raise ReportError(f"--out {out} is not a report dir: it holds {first_few(foreign)}, which a report does not "
                          "write, and it would be replaced whole; give a new or empty dir, or a previous report's dir")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; a report dir is as readable as any new dir
    try:
        with tempfile.TemporaryDirectory(prefix="todsynth-report-") as scratch:
            _render_into(suite, tmp, Path(scratch), run_id)
        if foreign := foreign_entries(tmp):  # a new report file: REPORT_FILE must know it, or reruns would refuse
            raise RuntimeError(f"the report wrote {', '.join(foreign)}, which REPORT_FILE does not list")
        _swap(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _swap(tmp: Path, out: Path) -> None:
    """Replace ``out`` by ``tmp`` (rename; the old report is moved aside first, then deleted)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _render_into(suite: Suite, out: Path, scratch: Path, run_id: str | None) -> None:
    """Every report file of the run into ``out``."""
    data = load_report_data(suite, scratch, run_id)
    context = build_context(suite, data, out, scratch)
    env = _env()
    (out / "results.csv").write_text(render_csv(data.results))
    (out / "results.tex").write_text(render_latex(data.results))
    (out / "report.md").write_text(env.get_template("report.md.j2").render(**context, uri=lambda f: f))
    (out / "index.html").write_text(env.get_template("report.html.j2").render(**context, uri=lambda f: _data_uri(out / f)))
