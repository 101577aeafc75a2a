"""HTML reports from Jinja templates (``reports/templates/``): one shared page style, autoescaped
text, plots inlined as SVG (see :mod:`deltatune.reports.plots`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).with_name("templates"))),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def render(template: str, **context) -> str:
    """Render ``templates/<template>`` with ``context`` (plus the deltatune version)."""
    from deltatune import __version__

    return _environment().get_template(template).render(version=__version__, **context)
