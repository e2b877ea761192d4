"""``graphopt cache info|clear``: the pass-result cache, as ``pip cache`` shows its own."""

from __future__ import annotations

from pathlib import Path

import click

CACHE_DIR_OPTION = click.option("--cache-dir", type=click.Path(path_type=Path),
                                help="Cache folder [default: $GRAPHOPT_CACHE_DIR or ~/.cache/graphopt].")


@click.group()
def cache() -> None:
    """Inspect or empty the pass-result cache."""


@cache.command()
@CACHE_DIR_OPTION
def info(cache_dir: Path | None) -> None:
    """Location, number of cached pass results, size and cap."""
    from graphopt.cache import CACHE_MAX_ENV, DEFAULT_MAX_BYTES, PassCache, format_size

    store = PassCache(cache_dir)
    entries = store.entries()
    source = f"${CACHE_MAX_ENV}" if store.max_bytes != DEFAULT_MAX_BYTES else f"default; ${CACHE_MAX_ENV} sets it"
    click.echo(f"location: {store.root}")
    click.echo(f"entries:  {len(entries)} pass result{'s' if len(entries) != 1 else ''}")
    click.echo(f"size:     {format_size(store.size())}")
    click.echo(f"cap:      {format_size(store.max_bytes)} ({source}; least recently used results go first)")


@cache.command()
@CACHE_DIR_OPTION
def clear(cache_dir: Path | None) -> None:
    """Remove every cached pass result."""
    from graphopt.cache import PassCache, format_size

    store = PassCache(cache_dir)
    removed, freed = store.clear()
    click.echo(f"removed {removed} pass result{'s' if removed != 1 else ''}, freed {format_size(freed)} "
               f"from {store.root}")
