"""The HTML page template `dvc plots show` fills, with Vega, Vega-Lite and Vega-Embed inlined.

DVC's default page loads those three from a CDN, so with no network it shows nothing. This page
carries them inside (the bundle vl-convert-python ships, about 0.9 MB) and has no `{scripts}`
placeholder, so DVC's CDN tags are never added. `make install` writes it to .dvc/offline_page.html,
which .dvc/config names as `plots.html_template`.

    python -m tools.plots_page [OUT]
"""

from __future__ import annotations

import sys
from pathlib import Path

from ecommerce_slm.cli import stage_main
from ecommerce_slm.files import atomic_write_text

OUT = Path(".dvc/offline_page.html")


def offline_page() -> str:
    import vl_convert

    # the default snippet sets window.vegaEmbed / vegaLite / vega, which DVC's plot divs call
    bundle = vl_convert.javascript_bundle().replace("</script", "<\\/script")
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n{refresh_tag}\n<title>DVC plots (offline)</title>\n'
        f"<!-- vega {vl_convert.get_vega_version()}, vega-embed {vl_convert.get_vega_embed_version()}, "
        "vega-lite bundled by vl-convert-python -->\n"
        f'<script type="text/javascript">\n{bundle}\n</script>\n'
        "<style>body { font-family: sans-serif; } table { border-spacing: 15px; }</style>\n"
        "</head>\n<body>\n{plot_divs}\n</body>\n</html>\n"
    )


@stage_main("plots_page")
def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else OUT
    atomic_write_text(out, offline_page())
    return f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, vega inlined)"


if __name__ == "__main__":
    sys.exit(main())
