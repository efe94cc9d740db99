"""One module per tab, each with `build(ctx)` called inside the page's Blocks."""
