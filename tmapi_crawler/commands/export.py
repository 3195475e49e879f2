"""``scrapy export FORMAT INPUT.jsonl -O OUTPUT``: a saved feed of product
records as a store or spreadsheet file, without a call.

The same exporters as the crawl's feeds (:mod:`tmapi_crawler.exports`), so
the file is the one a crawl with ``-O OUTPUT:FORMAT`` writes.  The input is
read a line at a time (a file of any size), each line checked as a product
record; the output is written to a temporary file beside it and renamed
only when every line was good, so that nothing is ever half-written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError

from tmapi_crawler.commands import refuse, whole_file
from tmapi_crawler.config import ConfigError, config_from_settings, describe_validation_error, shown
from tmapi_crawler.exports import EXPORTERS, RowsExporter, options_of
from tmapi_crawler.records import ProductItem, validate

if TYPE_CHECKING:
    import argparse

#: Bad lines reported before the rest are only counted.
MOST_REPORTED = 20


def check_line(number: int, line: str) -> dict[str, Any] | str:
    """The product record on *line*, or one line saying what is wrong."""
    try:
        record = json.loads(line)
    except ValueError as exc:
        return f"line {number}: not JSON ({exc})"
    if not isinstance(record, dict):
        return f"line {number}: not a product record (a JSON {type(record).__name__})"
    error = validate(ProductItem(record))
    if error is not None:
        return f"line {number}: not a product record ({describe_validation_error(error)})"
    return record


class Command(ScrapyCommand):
    requires_project = True
    requires_crawler_process = False  # it crawls nothing

    def syntax(self) -> str:
        return f"{'|'.join(EXPORTERS)} INPUT.jsonl -O OUTPUT"

    def short_desc(self) -> str:
        return "Write a saved JSON-lines feed as a store or spreadsheet file (skus, shopify, woocommerce)"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("-O", "--overwrite-output", dest="output", metavar="FILE", help="the file to write")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        if len(args) != 2:
            raise UsageError("give a format and a JSON-lines feed: scrapy export shopify products.jsonl -O shop.csv")
        name, source = args
        if name not in EXPORTERS:
            refuse(f"unknown export format {shown(name)}; the formats are: {', '.join(EXPORTERS)}")
        if not opts.output:
            refuse(f"give the file to write: scrapy export {name} {source} -O {name}.csv")
        try:
            config = config_from_settings(self.settings)
        except ConfigError as exc:
            refuse(str(exc))
        path, output = Path(source), Path(opts.output)
        if not path.is_file():
            refuse(f"cannot read {source}: no such file")
        exporter = EXPORTERS[name]
        adjusted: list[str] = []
        output.parent.mkdir(parents=True, exist_ok=True)
        try:
            with whole_file(output) as out:
                written = exporter(
                    out,
                    **options_of(config),
                    report=lambda item_id, problem: adjusted.append(f"product {item_id}: {problem}"),
                )
                products, bad = export_lines(path, written)
                if bad:
                    for problem in bad[:MOST_REPORTED]:
                        print(f"Error: {source}, {problem}", file=sys.stderr)
                    more = f" ({len(bad) - MOST_REPORTED} more not shown)" if len(bad) > MOST_REPORTED else ""
                    refuse(
                        f"{len(bad)} lines of {source} are not product records{more}: nothing was written to {output}"
                    )
        except (OSError, UnicodeDecodeError) as exc:
            refuse(f"cannot export {source} to {output}: {exc}")
        for problem in adjusted:
            print(f"Adjusted: {problem}", file=sys.stderr)
        print(f"{products} products, {written.rows_written} rows written to {output} ({name})")


def export_lines(path: Path, exporter: RowsExporter) -> tuple[int, list[str]]:
    """Export each product record of the JSON-lines file *path*, a line at a
    time; ``(products exported, one line per bad line)``.  Once a line is
    bad, the others are only checked."""
    bad: list[str] = []
    products = 0
    exporter.start_exporting()
    with path.open(encoding="utf-8", errors="strict") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            record = check_line(number, line)
            if isinstance(record, str):
                bad.append(record)
            elif not bad:
                exporter.export_item(record)
                products += 1
    exporter.finish_exporting()
    return products, bad
