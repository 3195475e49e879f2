"""Spider arguments as pydantic models, one per spider, checked before any call.

Command-line values arrive as strings: "before" validators turn
``a,b,c`` into lists and ``true``/``false`` into booleans; "after" validators
check rules across fields.  A bad argument becomes a :class:`ConfigError`
whose one-line message names the argument, the value and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tmapi_crawler.api import LANGUAGES, MAX_ID, MAX_SHOP_PAGE_SIZE, SORTS, offer_id_from_url
from tmapi_crawler.config import ConfigError, check_files_store, describe_validation_error, shown
from tmapi_crawler.records import MEDIA_KINDS, MediaKind

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Self

    from scrapy.settings import BaseSettings

FOLLOW_MODES = ("listing", "detail", "detail+desc")


def _split(value: Any) -> Any:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; a single number -> ``[number]``."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, int):
        return [value]
    return value


def _boolean(value: Any) -> Any:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
    return value


def _number_text(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


Bool = Annotated[bool | None, BeforeValidator(_boolean)]
Language = Literal[LANGUAGES]  # type: ignore[valid-type]
Sort = Literal[SORTS]  # type: ignore[valid-type]


def _member_id(value: str) -> str:
    if not MEMBER_ID.fullmatch(value):
        raise ValueError(
            "is not a 1688 member id: ASCII letters, digits, '-' and '_', at most 100 (b2b-22146365959302bc20)"
        )
    return value


#: What 1688's seller member ids are made of (b2b-22146365959302bc20).
MEMBER_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")
MemberId = Annotated[str, AfterValidator(_member_id)]


def _in_range(value: int) -> int:
    if not 0 < value <= MAX_ID:
        raise ValueError(f"is out of the range of 1688's ids (1 to {MAX_ID})")
    return value


#: A product or category id: positive, within 1688's range (a signed 64-bit integer).
ItemId = Annotated[int, AfterValidator(_in_range)]
PriceText = Annotated[str, BeforeValidator(_number_text), Field(pattern=r"^\d{1,9}(\.\d{1,2})?$")]


class CommonArgs(BaseModel):
    """Arguments of every spider."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    language: Language | None = Field(default=None, description="language of the detail calls (TMAPI_LANGUAGE)")
    scene: Literal["drop_shipping"] | None = Field(default=None, description="price scene of the detail calls")
    optimize_title: Bool = Field(default=None, description="ask TMAPI to strip non-core words from titles")
    follow: Literal["listing", "detail", "detail+desc"] = Field(
        default="detail+desc", description="how far to follow each listed product"
    )
    media: Annotated[list[MediaKind], BeforeValidator(_split)] = Field(
        default_factory=list, description="files to download into FILES_STORE, comma-separated"
    )

    @field_validator("media")
    @classmethod
    def _media_kinds(cls, kinds: list[str]) -> list[str]:
        return [kind for kind in MEDIA_KINDS if kind in kinds]

    @model_validator(mode="after")
    def _media_follow(self) -> CommonArgs:
        if self.media and self.follow == "listing":
            raise ValueError("media needs product records: use follow=detail or follow=detail+desc")
        if "desc" in self.media and self.follow != "detail+desc":
            raise ValueError("media=desc needs the description: use follow=detail+desc")
        return self

    #: What names a seed: each argument that does -> the key of one such
    #: seed in JSON (``member_id=a,b`` is two seeds ``{"member_id": ...}``).
    SEED_FIELDS: ClassVar[dict[str, str]] = {}
    #: A seed as JSON, for messages.
    SEED_EXAMPLE: ClassVar[str] = ""
    #: The seed arguments, as the command line takes them, for messages.
    SEED_HINT: ClassVar[str] = ""

    def seeds(self) -> list[dict[str, Any]]:
        """One seed per shop, category or product these arguments name."""
        return [{one: value} for many, one in self.SEED_FIELDS.items() for value in getattr(self, many)]

    @classmethod
    def options_of(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The arguments in *kwargs* that are not seeds, as given: what every
        seed carries (and is checked again with, where it is read)."""
        return {k: v for k, v in kwargs.items() if k not in cls.SEED_FIELDS and k != "file"}

    def json_seeds(self, options: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Each seed with *options*, as ``scrapy cluster push`` sends it and
        :meth:`from_seed` reads it back."""
        for seed in self.seeds():
            yield {**seed, **options}

    @classmethod
    def from_seed(cls, seed: Any) -> Self:
        """A seed pushed as JSON, checked like command-line arguments (the
        singular keys of :data:`SEED_FIELDS` or the plural ones)."""
        if not isinstance(seed, dict):
            raise ConfigError(f"a seed is a JSON object such as {cls.SEED_EXAMPLE}")
        if "file" in seed:
            raise ConfigError("a seed in Redis cannot name a file: push its ids (scrapy cluster push item -a file=...)")
        values = dict(seed)
        for many, one in cls.SEED_FIELDS.items():
            if one != many and one in values:
                values[many] = values.pop(one)
        args = parse_arguments(cls, values)
        assert isinstance(args, cls)
        return args


class ListingArgs(CommonArgs):
    max_pages: int | None = Field(default=None, ge=1, description="most listing pages per seed")


class ShopArgs(ListingArgs):
    SEED_FIELDS: ClassVar[dict[str, str]] = {"member_id": "member_id"}
    SEED_EXAMPLE: ClassVar[str] = '{"member_id": "b2b-22146365959302bc20", "sort": "sales"}'
    SEED_HINT: ClassVar[str] = "-a member_id=<seller member id>[,<another>]"

    member_id: Annotated[list[MemberId], BeforeValidator(_split)] = Field(
        default_factory=list, description="seller member id(s), comma-separated"
    )
    sort: Sort | None = Field(default=None, description="the listing's order")
    shop_cat_id: str | None = Field(
        default=None, pattern=r"^\w{1,40}$", description="only this category of the shop (its own category id)"
    )
    price_start: PriceText | None = Field(default=None, description="lowest price, CNY")
    price_end: PriceText | None = Field(default=None, description="highest price, CNY")
    page_size: int = Field(
        default=20, ge=1, le=MAX_SHOP_PAGE_SIZE, description=f"products a listing page, 1 to {MAX_SHOP_PAGE_SIZE}"
    )

    @model_validator(mode="after")
    def _price_range(self) -> ShopArgs:
        if self.price_start and self.price_end and float(self.price_start) > float(self.price_end):
            raise ValueError(f"price_start={self.price_start} is above price_end={self.price_end}")
        return self


class CategoryArgs(ListingArgs):
    SEED_FIELDS: ClassVar[dict[str, str]] = {"cat_id": "cat_id"}
    SEED_EXAMPLE: ClassVar[str] = '{"cat_id": 1031910, "free_shipping": true}'
    SEED_HINT: ClassVar[str] = "-a cat_id=<numeric category id>[,<another>]"

    cat_id: Annotated[list[ItemId], BeforeValidator(_split)] = Field(
        default_factory=list, description="category id(s), comma-separated"
    )
    super_factory: Bool = Field(default=None, description="only super factories (true/false)")
    support_dropshipping: Bool = Field(default=None, description="only sellers who drop-ship (true/false)")
    free_shipping: Bool = Field(default=None, description="only products shipped free (true/false)")


class ItemArgs(CommonArgs):
    SEED_FIELDS: ClassVar[dict[str, str]] = {"item_ids": "item_id", "urls": "url"}
    SEED_EXAMPLE: ClassVar[str] = '{"item_id": 859086919394}'
    SEED_HINT: ClassVar[str] = "-a item_ids=<id>[,<id>], -a urls=<product URL>[,<URL>] or -a file=<ids.txt>"

    item_ids: Annotated[list[ItemId], BeforeValidator(_split)] = Field(
        default_factory=list, description="product ids, comma-separated"
    )
    urls: Annotated[list[str], BeforeValidator(_split)] = Field(
        default_factory=list, description="product URLs, comma-separated"
    )
    file: Path | None = Field(default=None, description="a file with one product id or URL a line")
    follow: Literal["detail", "detail+desc"] = Field(
        default="detail+desc", description="how far to follow each product"
    )

    @field_validator("follow", mode="before")
    @classmethod
    def _no_listing(cls, value: Any) -> Any:
        if value == "listing":
            raise ValueError("follow=listing needs a listing: use the shop or category spider")
        return value

    @field_validator("urls")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if offer_id_from_url(url) is None:
                raise ValueError(
                    f"{shown(url)} is not a 1688 product URL (https://detail.1688.com/offer/<id>.html, "
                    f"an id of 1 to {MAX_ID})"
                )
        return urls

    @field_validator("file")
    @classmethod
    def _file(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        if not path.is_file():
            raise ValueError("no such file")
        bad = [f"line {n}: {problem}" for n, _, problem in read_inputs(path) if problem]
        if bad:
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            raise ValueError("bad lines: " + "; ".join(bad[:5]) + more)
        return path

    def seeds(self) -> list[dict[str, Any]]:
        out = super().seeds()
        if self.file is not None:
            out.append({"file": str(self.file)})
        return out

    def json_seeds(self, options: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The ids file is read here, one seed a line: workers elsewhere
        do not have it."""
        for seed in self.seeds():
            if "file" not in seed:
                yield {**seed, **options}
                continue
            for _, text, _ in read_inputs(Path(seed["file"])):
                yield {"item_id": int(text), **options} if text.isdigit() else {"url": text, **options}


def read_inputs(path: Path) -> Iterator[tuple[int, str, str | None]]:
    """``(line number, input, problem)`` for each product line of an ids file:
    blank lines and ``#`` comments are skipped; *problem* is ``None`` for a
    valid id or product URL."""
    with path.open(encoding="utf-8-sig", errors="replace") as lines:  # a BOM (Notepad, Excel) is no character
        for number, raw in enumerate(lines, start=1):
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            if (text.isascii() and text.isdigit() and 0 < int(text) <= MAX_ID) or offer_id_from_url(text) is not None:
                yield number, text, None
            elif text.isascii() and text.isdigit():
                yield number, text, f"{shown(text)} is out of the range of 1688's ids (1 to {MAX_ID})"
            else:
                yield number, text, f"{shown(text)} is neither a product id nor a 1688 product URL"


#: The spider argument that says a spider is made for ``scrapy parse``
#: (:mod:`tmapi_crawler.commands.parse`): it parses one URL, with no seed.
PARSING = "_parse"


def tool_arguments(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments that tools running a spider add for themselves, which
    start with ``_`` (scrapyd's ``_job``): not ours to check, kept as the
    spider's attributes as Scrapy does with every argument."""
    return {k: v for k, v in kwargs.items() if k.startswith("_")}


def parse_arguments(model: type[CommonArgs], kwargs: dict[str, Any], *, require_seed: bool = True) -> CommonArgs:
    """Validate spider arguments (but for :func:`tool_arguments`); raises
    :class:`ConfigError` with one line."""
    if any("token" in name.lower() for name in kwargs):
        # Refused without its value: a message must never show the token.
        raise ConfigError(
            "the token is not a spider argument (it would show in the process list and in scrapyd's jobs): "
            "set the TMAPI_TOKEN environment variable where the crawl runs"
        )
    try:
        args = model.model_validate({k: v for k, v in kwargs.items() if not k.startswith("_")})
    except ValidationError as exc:
        raise ConfigError("invalid argument: " + describe_validation_error(exc)) from None
    if require_seed:
        check_seed(args)
    return args


def check_media(args: CommonArgs, settings: BaseSettings) -> None:
    """Refuse ``media`` without ``FILES_STORE``, where the files would go."""
    if not args.media:
        return
    if not settings.get("FILES_STORE"):
        raise ConfigError(
            f"invalid argument: media={','.join(args.media)} needs FILES_STORE, where the files go: "
            "add -s FILES_STORE=media or set the FILES_STORE environment variable (a directory, or "
            "s3://bucket/prefix, gs://..., ftp://...)"
        )
    check_files_store(settings)


def check_seed(args: CommonArgs) -> None:
    """Refuse arguments that name nothing to crawl (a worker of a
    distributed crawl may start so: its seeds come from Redis)."""
    if not args.seeds():
        raise ConfigError(f"invalid argument: no seed: give {args.SEED_HINT}")


# -- help ------------------------------------------------------------------------------


def _choices(annotation: Any) -> str:
    """The values a Literal (or a list of one) allows, ``a|b|c``; ``""``
    for any other type."""
    if get_origin(annotation) is Literal:
        return "|".join(map(str, get_args(annotation)))
    return next((found for found in map(_choices, get_args(annotation)) if found), "")


def described(model: type[CommonArgs]) -> list[tuple[str, str, str]]:
    """Each argument of *model*: its name, its default (as given on the
    command line), and what it means with the values it takes."""
    rows = []
    seeds = getattr(model, "SEED_FIELDS", {})
    fields = sorted(model.model_fields.items(), key=lambda field: field[0] not in seeds)  # the seed first
    for name, info in fields:
        default = info.get_default(call_default_factory=True)
        if default in (None, []):
            shown_default = "-"
        elif isinstance(default, bool):
            shown_default = str(default).lower()
        else:
            shown_default = str(default)
        meaning = info.description or ""
        choices = _choices(info.annotation)
        if choices and len(choices) < 90:
            meaning = f"{meaning}: {choices}" if meaning else choices
        rows.append((name, shown_default, meaning))
    return rows


def help_text(spider: str, model: type[CommonArgs]) -> str:
    """The arguments of *spider* as ``scrapy crawl SPIDER --help`` and
    ``scrapy list --verbose`` list them (``-a NAME=VALUE``)."""
    rows = described(model)
    width = max(len(name) for name, _, _ in rows)
    seed = getattr(model, "SEED_HINT", "")
    lines = [f"Arguments of the {spider} spider (-a NAME=VALUE){f'; the seed: {seed}' if seed else ''}"]
    for name, default, meaning in rows:
        lines.append(f"  {name.ljust(width)}  {meaning} (default: {default})")
    return "\n".join(lines)
