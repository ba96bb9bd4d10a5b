"""The README's picture of a run report, taken with headless Chromium (Debian's chromium, chromium-driver).

    python scripts/run_report_png.py                                # the synthetic ticket-triage record
    python scripts/run_report_png.py --run RUN_ID [--store URL]     # a real run from a runs store
    python scripts/run_report_png.py -o docs/run-report.png --html /tmp/report.html

The synthetic record is ``tests/records_runs.py``'s (a failed run with a retry, dead letters, LLM cost
and an error). ``docs/run-report.png`` is a real run: the quickstart in small splits, made to fail on
rows the model labels outside a shortened label list::

    HEADRACE_HOME=/tmp/rr HEADRACE_OUT=/tmp/rr/out headrace run configs/examples/quickstart.yaml \
        --set nodes.input.split_bytes=1200 --set providers.offline.config.latency_s=0.02 \
        --set 'nodes.triage.labels=[bug, billing, feature, other]' \
        --set nodes.triage.on_error.mode=dead_letter --set nodes.triage.on_error.max_failed_rows=12 \
        --set nodes.triage.on_error.dead_letter_path=/tmp/rr/out/dead
    HEADRACE_HOME=/tmp/rr python scripts/run_report_png.py --run RUN_ID
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.records import RunView, open_records  # noqa: E402
from engine.records.report import render_report  # noqa: E402
from tests.browser import MISSING, chromium, full_page_png  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-o", "--output", default=str(ROOT / "docs" / "run-report.png"), help="the PNG")
    parser.add_argument("--run", metavar="RUN_ID", help="a run in the store (default: the synthetic record)")
    parser.add_argument("--store", metavar="URL", help="the runs store (default: as `headrace runs report`)")
    parser.add_argument("--html", metavar="PATH", help="also keep the HTML page here")
    parser.add_argument("--width", type=int, default=1280, help="the page's width in pixels")
    args = parser.parse_args()
    if MISSING:
        print(MISSING, file=sys.stderr)
        return 1
    if args.run:
        from engine.runtime.graphs import store_url

        store = open_records(store_url(args.store))
        try:
            view = RunView.of(store.events(args.run))
        finally:
            store.close()
    else:
        from tests.records_runs import dataflow_run

        view = RunView.of(dataflow_run())
    html = render_report(view)
    page = Path(args.html) if args.html else Path(tempfile.mkdtemp()) / "report.html"
    page.write_text(html, encoding="utf-8")
    driver = chromium(width=args.width)
    try:
        driver.get(page.resolve().as_uri())
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        if severe:
            print(f"the browser reported errors: {severe}", file=sys.stderr)
            return 1
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        full_page_png(driver, args.output, args.width)
    finally:
        driver.quit()
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
